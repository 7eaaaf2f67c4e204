"""The engine every API of the server translates onto: requests as ``Job``s (sources checked and tokenised, search
settings checked against the limits), the dynamic ``Batcher`` that groups jobs with equal settings, the one
``DecodingThread`` that runs the model, and what decoding a group gives back (``Output`` per hypothesis, and for
streams the tokens as the decoder chooses them).

Streams ride in the same batches as other requests. Greedy search and sampling report each step's token
(``StepEvent``); a job turns them into text pieces (``streaming.TextStream``) and hands them to its ``StreamSink``
on the event loop. A row ends early, while the others in its batch go on, when its client has gone or a stop
sequence has ended its text (``drop`` of ``Seq2SeqDecoder.generate``): the next step no longer computes it. Beam
search revises its beams until the end, so a beam-search stream gets its tokens when the search is over.
"""
import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from s2s_ft.data.answers import AnswerSource, check_answer
from s2s_ft.data.reading import DataError, prepare_sources
from s2s_ft.decoding.inference import LoadedDecoder, forbid_ignore_ids
from s2s_ft.decoding.search import (
    SEARCH_OPTIONS,
    DecodingStopped,
    Hypothesis,
    SearchConfig,
    StepEvent,
    check_search_options,
    search_config,
)
from s2s_ft.errors import UsageError
from s2s_ft.serving.errors import RequestError, invalid, one_line, option_message
from s2s_ft.serving.streaming import TextStream, token_texts

log = logging.getLogger("s2s_ft.serve")
TOO_LONG = ("truncate", "reject")
MB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request, and the server as a whole, may take. Every field is a server flag (``build_parser`` says
    why each default is what it is); a request can only stay under them."""
    max_body_bytes: int = MB
    max_sources_per_request: int = 64
    max_source_chars: int = 20_000
    too_long: str = "truncate"  # a source over the checkpoint's token length: "truncate" it or "reject" (422)
    max_beams: int = 16  # beam_size and num_return_sequences
    max_target_tokens: Optional[int] = None  # a request's max_tgt_length at most (None: the checkpoint's)
    max_kv_cache_mb: float = 1024.0
    max_batch_size: int = 32
    max_queue: int = 128  # sources waiting to be decoded
    queue_timeout_s: float = 30.0
    request_timeout_s: float = 60.0
    max_stop_sequences: int = 4  # stop sequences per request (TGI's and OpenAI's default)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "Limits":
        """The limits named in ``options`` (e.g. the server's flags); other names are ignored."""
        return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls) if f.name in options})

    def check(self) -> None:
        """UsageError (one line) for limits that cannot work together."""
        for name in ("max_body_bytes", "max_sources_per_request", "max_source_chars", "max_beams", "max_batch_size",
                     "max_queue"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_target_tokens is not None and self.max_target_tokens < 1:
            raise UsageError(f"--max_target_tokens must be >= 1, got {self.max_target_tokens}")
        if self.max_stop_sequences < 0:
            raise UsageError(f"--max_stop_sequences must be >= 0, got {self.max_stop_sequences}")
        for name in ("max_kv_cache_mb", "queue_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.max_queue < self.max_sources_per_request:
            raise UsageError(f"--max_queue {self.max_queue} is below --max_sources_per_request "
                             f"{self.max_sources_per_request}: a request of that size could never be queued")


@dataclasses.dataclass
class Output:
    """One hypothesis as every API answers it: its text (ended at a stop sequence, if one came), its token ids
    (without the closing [SEP]), each token's log-probability and the piece of the text it brought (a stream's
    pieces; they concatenate to ``text``), and why it ended: "eos" ([SEP]), "length", "stop" (``stop`` is the stop
    sequence), "cancelled" (its client went) or "empty" (every token was banned)."""
    text: str
    tokens: list[int]
    token_log_probs: list[float]
    token_texts: list[str]
    finish_reason: str
    log_prob: float = 0.0
    stop: Optional[str] = None

    @property
    def generated_tokens(self) -> int:
        """Tokens generated, the closing [SEP] included (what TGI and OpenAI count)."""
        return len(self.tokens) + (self.finish_reason == "eos")


@dataclasses.dataclass(frozen=True)
class StreamItem:
    """What a stream's consumer gets on the event loop: a token (``text``: the piece of text that may be shown now;
    ``special``: the closing [SEP], which has no text), or with ``output`` set the row's end. ``source`` / ``sample``
    name the row (a request's source, and its sample j)."""
    source: int
    sample: int
    token: Optional[int] = None
    log_prob: float = 0.0
    text: str = ""
    special: bool = False
    output: Optional[Output] = None


def on_loop(loop: asyncio.AbstractEventLoop, function: Callable, *args) -> None:
    """``function(*args)`` on ``loop``, from another thread; nothing if the loop has closed meanwhile (the app
    stopped while a call was decoding: nobody waits for its outcome any more)."""
    try:
        loop.call_soon_threadsafe(function, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


class StreamSink:
    """Where a streaming job's items go: an asyncio queue on the event loop, fed from the decoding thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item: StreamItem) -> None:
        on_loop(self.loop, self.queue.put_nowait, item)


@dataclasses.dataclass(eq=False)
class Job:
    """One request: its sources (token ids), its search settings, its stop sequences and where its answer goes."""
    ids: list[list[int]]
    config: SearchConfig
    single: bool = False  # src was one string: answer one output, not a list
    stops: tuple = ()
    include_stop: bool = True  # TGI keeps a stop sequence in the text, OpenAI drops it
    stream: Optional[StreamSink] = None
    key: tuple = ()  # requests with equal keys are decoded together
    future: Optional[asyncio.Future] = None
    arrived: float = 0.0
    started: bool = False  # taken out of the queue into a decoding call
    # set (on the event loop) when nobody waits for the answer any more; read by the decoding thread between steps
    abandoned: threading.Event = dataclasses.field(default_factory=threading.Event)
    steps_after_abandoned: int = 0  # decoding steps that still computed a row of this job after it was abandoned
    rows: dict = dataclasses.field(default_factory=dict)  # (source, sample) -> TextStream (decoding thread)
    ended: set = dataclasses.field(default_factory=set)  # sources whose every row has ended (decoding thread)

    def __post_init__(self):
        self.key = dataclasses.astuple(self.config)

    @property
    def samples(self) -> int:
        return self.config.num_return_sequences if self.config.do_sample else 1

    @property
    def follows_steps(self) -> bool:
        """Whether the decoding thread follows this job's rows step by step (streams and stop sequences; beam
        search reports no steps)."""
        return (self.stream is not None or bool(self.stops)) and self.config.beam_size == 1


def answer_source(engine_answer_encoding: Optional[str], separator: Optional[str], text: str,
                  answer: Optional[str], name: str):
    """A request's source: ``text``, or an ``AnswerSource`` for a checkpoint trained with answers (the answer given
    as ``answer``, or inside the text as ``sentence SEP answer``, SEP the tokenizer's separator, e.g. [SEP])."""
    if not engine_answer_encoding:
        if answer is not None:
            raise invalid(f"{name}: this checkpoint was trained without answers; leave the answer out", "answer")
        return text
    if answer is None and separator and separator in text:
        text, _, answer = text.partition(separator)
        text, answer = text.strip(), answer.strip()
    if answer is None:
        raise invalid(f"{name}: this checkpoint writes about a given answer: send \"answer\" (or the text as "
                      f"\"source {separator} answer\")", "answer")
    problem = check_answer(text, answer, None)
    if problem:
        raise invalid(f"{name}: {problem}", "answer")
    return AnswerSource(text, answer)


def check_options(options: Mapping[str, Any], max_beams: int) -> None:
    """UsageError for impossible search options: decode's checks, and the server's --max_beams."""
    check_search_options(options)
    for name in ("beam_size", "num_return_sequences"):
        if options[name] > max_beams:
            raise UsageError(f"--{name} {options[name]} exceeds --max_beams {max_beams}")


class Engine:
    """What every API does, without HTTP: check and tokenise sources and settings into a ``Job`` (in a worker
    thread), and decode a group of jobs that share their settings (in the decoding thread)."""

    def __init__(self, loaded: LoadedDecoder, limits: Limits, defaults: Mapping[str, Any], types: dict[str, type],
                 model_path: str = "", model_id: str = ""):
        """``defaults``: the requests' search options when they name none (``SEARCH_OPTIONS``: the server's search
        flags); ``types``: each option's JSON type; ``model_path``: named in error messages; ``model_id``: the name
        the OpenAI and TGI APIs give the model."""
        self.loaded, self.types, self.limits = loaded, types, limits
        self.limits.check()
        self.defaults = {name: defaults[name] for name in SEARCH_OPTIONS}
        self.max_batch_size = self.limits.max_batch_size
        self.max_target_tokens = self.limits.max_target_tokens or int(loaded.settings["max_target_seq_length"])
        self.model_path, self.model_id = model_path, model_id or model_path
        self.created = time.time()  # the model's "created" time in OpenAI's model list
        self.step_delay_s = 0.0  # tests only (--test_hooks): every decoding step waits this long
        # HF fast tokenizers must not be used from two threads at once ("Already borrowed").
        self.tokenizer_lock = threading.Lock()
        self.default_ignore = self.ignore_ids(self.defaults["forbid_ignore_word"])

    @property
    def answer_encoding(self) -> Optional[str]:
        return self.loaded.answer_encoding

    @property
    def separator(self) -> Optional[str]:
        return self.loaded.tokenizer.sep_token

    def ignore_ids(self, words: Optional[str]) -> tuple[int, ...]:
        with self.tokenizer_lock:
            return tuple(forbid_ignore_ids(self.loaded.tokenizer, words, self.model_path or "the checkpoint"))

    # -- a request into a Job (a worker thread) ----------------------------------------------------------------------
    def job(self, sources: list, options: dict, single: bool = False, stops: Sequence[str] = (),
            include_stop: bool = True, stream: Optional[StreamSink] = None,
            truncate: Optional[int] = None) -> Job:
        """A Job of checked ``sources`` (texts or AnswerSources) and search ``options`` (RequestError if they are
        impossible or over a limit). ``truncate``: cut sources to this many tokens (below the checkpoint's budget)."""
        if len(stops) > self.limits.max_stop_sequences:
            raise invalid(f"{len(stops)} stop sequences; the server takes at most {self.limits.max_stop_sequences} "
                          f"(--max_stop_sequences)", "stop")
        config = self.config(options)
        ids = self.source_ids(sources, truncate)
        try:
            self.loaded.check_position_budget(ids, config.max_tgt_length, remedy="lower max_tgt_length")
        except UsageError as error:
            raise invalid(option_message(error)) from None
        need = self.cache_bytes(max(map(len, ids)), config)
        if need > self.limits.max_kv_cache_mb * MB:
            raise invalid(f"one source of this request needs ~{need / MB:.0f} MB of key/value cache (beam_size "
                          f"{config.beam_size}, num_return_sequences {config.num_return_sequences}, max_tgt_length "
                          f"{config.max_tgt_length}); the server allows {self.limits.max_kv_cache_mb:g} MB per decoding "
                          f"call (--max_kv_cache_mb): lower beam_size, num_return_sequences or max_tgt_length")
        return Job(ids, config, single, tuple(stops), include_stop, stream)

    def cache_bytes(self, source_length: int, config: SearchConfig, sources: int = 1) -> int:
        return self.loaded.decoder.cache_bytes([source_length] * sources, config)

    def settings(self, options: dict) -> dict:
        """The server's search options overridden by a request's ``options`` (max_tgt_length resolved)."""
        settings = {**self.defaults, **options}
        if settings["max_tgt_length"] is None:
            settings["max_tgt_length"] = min(int(self.loaded.settings["max_target_seq_length"]),
                                             self.max_target_tokens)
        return settings

    def config(self, options: dict) -> SearchConfig:
        """A request's search settings (RequestError 422 if they are impossible or over a limit)."""
        settings = self.settings(options)
        try:
            check_options(settings, self.limits.max_beams)
            if settings["max_tgt_length"] > self.max_target_tokens:
                raise UsageError(f"--max_tgt_length {settings['max_tgt_length']} exceeds the server's limit of "
                                 f"{self.max_target_tokens} target tokens (--max_target_tokens)")
            ignore = self.default_ignore if "forbid_ignore_word" not in options else self.ignore_ids(
                settings["forbid_ignore_word"])
        except UsageError as error:
            raise invalid(option_message(error)) from None
        return search_config(settings, settings["max_tgt_length"], ignore)

    def check_texts(self, texts: list) -> None:
        """RequestError unless ``texts`` is a non-empty list of non-empty strings within the limits."""
        limits = self.limits
        if not isinstance(texts, list) or not texts:
            raise invalid('"src" must be a non-empty string or a non-empty list of strings')
        if len(texts) > limits.max_sources_per_request:
            raise RequestError(413, f"{len(texts)} sources in one request; the server takes at most "
                                    f"{limits.max_sources_per_request} (--max_sources_per_request)", "too_large")
        for i, text in enumerate(texts):
            name = f"src[{i}]" if len(texts) > 1 else "src"
            if not isinstance(text, str):
                raise invalid(f"{name} must be a string, got {repr(text)[:40]}")
            if not text.strip():
                raise invalid(f"{name} is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON may escape a lone surrogate ("\ud800"); no tokenizer takes it
                raise invalid(f"{name} is not valid Unicode text (a lone surrogate)") from None
            if len(text) > limits.max_source_chars:  # before tokenising: its cost grows with the text
                raise RequestError(413, f"{name} has {len(text)} characters; the server takes at most "
                                        f"{limits.max_source_chars} (--max_source_chars)", "too_large")

    def source_ids(self, sources: list, truncate: Optional[int] = None) -> list[list[int]]:
        """Token ids of checked ``sources``, truncated to the checkpoint's source length (``--too_long truncate``,
        as s2s-ft-decode does; and to ``truncate`` tokens) or refused (``reject``)."""
        budget = self.loaded.max_source_length if truncate is None else min(truncate + 2,
                                                                           self.loaded.max_source_length)
        try:
            with self.tokenizer_lock:
                ids, full_lengths = prepare_sources(self.loaded.tokenizer, sources, budget, self.answer_encoding)
        except DataError as error:
            raise invalid(str(error)) from None
        limit = self.loaded.max_source_length - 2  # [CLS] src [SEP]
        for i, length in enumerate(full_lengths):
            if not length or not ids[i]:
                raise invalid(f"src[{i}] tokenises to nothing")
            if length > limit and self.limits.too_long == "reject":
                raise invalid(f"src[{i}] has {length} tokens; the checkpoint takes at most {limit} "
                              f"(max_source_seq_length {limit + 2} less [CLS] and [SEP])")
        truncated = sum(length > budget - 2 for length in full_lengths)
        if truncated:
            log.info("%d of %d sources truncated to %d tokens", truncated, len(ids), budget - 2)
        return ids

    # -- decoding (the decoding thread) ------------------------------------------------------------------------------
    def decode_group(self, config: SearchConfig, jobs: list[Job], should_stop: Optional[Callable] = None) -> list:
        """Each job's outputs, or the exception that decoding it raised. The jobs are decoded in one call; if that
        fails, each job is decoded alone, so that only a job that fails by itself gets the exception.
        ``should_stop``: asked between steps; True ends the call (``DecodingStopped`` for every job)."""
        try:
            return self.decode_jobs(config, jobs, should_stop)
        except DecodingStopped as stopped:
            return [stopped] * len(jobs)
        except Exception as error:  # noqa: BLE001 (any failure is answered, never raised into the server)
            if len(jobs) == 1:
                log.error("decoding failed", exc_info=True)
                return [error]
            log.warning("decoding a group of %d requests failed (%s); decoding them one by one", len(jobs),
                        one_line(error))
            return [outcome for job in jobs for outcome in self.decode_group(config, [job], job.abandoned.is_set)]

    def batch_size(self, config: SearchConfig, jobs: list[Job]) -> int:
        """Sources per decoding call: ``--max_batch_size``, fewer where their key/value cache would pass
        ``--max_kv_cache_mb`` (every admitted source fits alone)."""
        per_source = self.cache_bytes(max(len(ids) for job in jobs for ids in job.ids), config)
        fit = int(self.limits.max_kv_cache_mb * MB // per_source) if per_source else self.max_batch_size
        return max(1, min(self.max_batch_size, fit))

    def decode_jobs(self, config: SearchConfig, jobs: list[Job], should_stop: Optional[Callable] = None) -> list:
        """Each job's outputs: per source, its hypotheses (nbest or samples) as ``Output``s. Streams get their
        tokens as they come (``StreamSink``) and each row's end as soon as it ends."""
        sources = [ids for job in jobs for ids in job.ids]
        owner = [(job, i) for job in jobs for i in range(len(job.ids))]  # the group's source -> (job, its source)
        keys = [i for _, i in owner]  # sampling seeds: position in the request
        following = any(job.follows_steps for job in jobs) or self.step_delay_s
        hyps = self.loaded.decode_ids(
            sources, config, self.batch_size(config, jobs), keys=keys, should_stop=should_stop,
            on_step=(lambda events: self.on_step(owner, events)) if following else None,
            drop=lambda: [n for n, (job, i) in enumerate(owner) if job.abandoned.is_set() or i in job.ended])
        answers, start = [], 0
        for job in jobs:
            mine = [self.outputs(job, i, hyps[start + i] or []) for i in range(len(job.ids))]
            start += len(job.ids)
            if job.stream is not None and not job.follows_steps:  # beam search: the whole stream at the end
                self.stream_at_end(job, mine)
            answers.append(mine)
        return answers

    # -- rows followed step by step (the decoding thread) ---------------------------------------------------------
    def on_step(self, owner: list, events: list[StepEvent]) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        for event in events:
            job, source = owner[event.sentence]
            if job.abandoned.is_set():
                job.steps_after_abandoned += event.token is not None
                continue
            if not job.follows_steps:
                continue
            row = job.rows.get((source, event.sample))
            if row is None:
                row = job.rows[source, event.sample] = Row(self.text_stream(job))
            if row.output is None:
                self.follow(job, source, event, row)

    def follow(self, job: Job, source: int, event: StepEvent, row: "Row") -> None:
        """One step of a followed row: its text piece to the stream, and its end once it ends."""
        sep = event.end == "eos"
        if event.token is not None:
            piece = "" if sep else row.stream.add(event.token)
            row.log_probs.append(event.log_prob)
            if not sep:
                row.pieces.append(piece)
            if job.stream is not None:
                job.stream.put(StreamItem(source, event.sample, event.token, event.log_prob, piece, special=sep))
        if event.end is None and not row.stream.stopped:
            return
        reason = ("stop" if row.stream.stopped else "cancelled" if event.end == "stopped" else event.end)
        rest = row.stream.finish()
        if row.pieces:
            row.pieces[-1] += rest
        tokens = list(row.stream.tokens)
        row.output = Output(row.stream.text, tokens, list(row.log_probs), list(row.pieces), reason,
                            sum(row.log_probs), row.stream.stop)
        if job.stream is not None:
            job.stream.put(StreamItem(source, event.sample, text=rest, output=row.output))
        if all(job.rows.get((source, j)) is not None and job.rows[source, j].output is not None
               for j in range(job.samples)):
            job.ended.add(source)  # every row of this source has ended: drop it at the next step

    def text_stream(self, job: Job) -> TextStream:
        return TextStream(self.render, self.loaded.detokenize, job.stops, job.include_stop)

    def render(self, tokens: Sequence[int]) -> str:
        with self.tokenizer_lock:
            return self.loaded.text(tokens)

    def outputs(self, job: Job, source: int, hyps: list[Hypothesis]) -> list[Output]:
        """The ``Output`` of each of a source's hypotheses: a followed row's own, else rendered from the hypothesis
        (a stop sequence cuts it here)."""
        if job.follows_steps:
            rows = [job.rows.get((source, j)) for j in range(job.samples)]
            return [row.output for row in rows
                    if row is not None and row.output is not None and row.output.finish_reason != "empty"]
        outputs = []
        for hyp in hyps:
            pieces, text, stop, kept = token_texts(self.render, hyp.tokens, self.loaded.detokenize, job.stops,
                                                   job.include_stop)
            reason = "stop" if stop is not None else "eos" if hyp.finished else "length"
            log_probs = hyp.token_log_probs[:kept + (reason == "eos")]
            outputs.append(Output(text, hyp.tokens[:kept], log_probs, pieces[:kept], reason, sum(log_probs), stop))
        return outputs

    def stream_at_end(self, job: Job, outputs: list[list[Output]]) -> None:
        """Beam search: every token of each source's best hypothesis, then its end."""
        for source, hyps in enumerate(outputs):
            if not hyps:
                job.stream.put(StreamItem(source, 0, output=Output("", [], [], [], "empty")))
                continue
            best = hyps[0]
            for token, log_prob, piece in zip(best.tokens, best.token_log_probs, best.token_texts):
                job.stream.put(StreamItem(source, 0, token, log_prob, piece))
            if best.finish_reason == "eos":
                job.stream.put(StreamItem(source, 0, self.loaded.decoder.special.sep, best.token_log_probs[-1], "",
                                          special=True))
            job.stream.put(StreamItem(source, 0, output=best))


@dataclasses.dataclass
class Row:
    """A followed row's state in the decoding thread: its text stream, each token's log-prob and text piece, and
    its ``Output`` once it has ended."""
    stream: TextStream
    log_probs: list = dataclasses.field(default_factory=list)
    pieces: list = dataclasses.field(default_factory=list)
    output: Optional[Output] = None
