"""The decoding server (its command line: ``s2s-ft-serve``, s2s_ft/cli/serve.py). A fine-tuned checkpoint loaded once
answers JSON over HTTP (FastAPI + uvicorn + prometheus-client, the ``serve`` extra: ``pip install -e .[serve]``).

    s2s-ft-serve --model_path out/ckpt-1000 --port 8000
    curl -s localhost:8000/generate -d '{"src": "the source", "beam_size": 5}'     # {"output": "..."}

* ``POST /generate``: ``{"src": "one source"}`` -> ``{"output": "one line"}``; ``{"src": ["a", "b"]}`` ->
  ``{"output": ["..", ".."]}`` in order. The search options of ``s2s-ft-decode`` (``SEARCH_OPTIONS`` of
  s2s_ft/decoding/search.py: beam_size, max_tgt_length, min_len, length_penalty, forbid_duplicate_ngrams, ngram_size,
  forbid_ignore_word, nbest, do_sample, top_k, top_p, temperature, num_return_sequences, seed, source_words_only)
  ride along in the same object; those not given take the server's flags. With nbest or num_return_sequences > 1 a
  source's output is a list of strings. Sampling seeds from (seed, the source's position in its request, sample
  index), so a request's samples do not depend on what it was batched with; a sampling request without a ``seed``
  gets a random one, and every sampling answer says its seed (``{"output": ..., "seed": N}``) so the samples can be
  drawn again.
* ``GET /health``: 200 ``{"status": "ok"}`` while requests can be decoded; 503 once the decoding thread has
  stopped or the server is shutting down (a load balancer stops sending). ``GET /metrics``: Prometheus text.
* Dynamic batching (``Batcher``): requests are collected until the oldest has waited ``--batch_window_ms`` or
  ``--max_batch_size`` sources are waiting; the collected requests are grouped by their search settings and each
  group is decoded as one call in the one decoding thread, while the event loop keeps answering.
* Limits (``Limits``; every one a flag, a request can only stay under them): body bytes, sources per request,
  characters and tokens per source, beams, target length, the key/value cache one decoding call may hold (estimated
  from the model's shape before a request is admitted: a request that cannot fit is refused, a group that would
  not fit is decoded in smaller batches), sources waiting (beyond it: 429 at once, with ``Retry-After``), time in
  the queue (503) and time in all (504). Reading the body is capped as it arrives; parsing and tokenising run in
  worker threads after the capacity check, never on the event loop. A client that goes away is dropped from the
  queue, and a decoding call stops at its next step once every request in it is gone.
* Every answer is JSON; an error is ``{"error": "one line naming what to change", "error_type": "..."}`` with
  400 (not JSON), 413 (too large), 422 (an impossible option), 429 (queue full), 503 (unavailable / waited too long
  in the queue), 504 (past the deadline) or 500 (decoding that request failed: a failing group is retried request
  by request, so only the request that fails gets it; the server goes on).
* SIGTERM / Ctrl-C: stop accepting, answer what is in flight within ``--shutdown_grace_s``, exit 0.
"""
# No ``from __future__ import annotations``: FastAPI reads the route's ``request: Request`` annotation at runtime, and
# Request is imported inside build_app (FastAPI is an optional extra).
import asyncio
import dataclasses
import json
import logging
import math
import queue
import re
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Callable, Mapping, Optional

from s2s_ft.data.reading import prepare_sources
from s2s_ft.decoding.inference import LoadedDecoder, forbid_ignore_ids
from s2s_ft.decoding.search import (
    SEARCH_OPTIONS,
    DecodingStopped,
    SearchConfig,
    check_search_options,
    search_config,
)
from s2s_ft.errors import UsageError

log = logging.getLogger("s2s_ft.serve")
TOO_LONG = ("truncate", "reject")
MB = 1 << 20


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line reason naming what to change, and a short
    ``error_type`` for programs; ``retry_after`` (seconds) for the answers that say when to come back."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request",
                 retry_after: Optional[int] = None):
        super().__init__(message)
        self.status, self.error_type, self.retry_after = status, error_type, retry_after


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def option_message(message: str) -> str:
    """A flag check's message in the words of the JSON request (``--top_k`` -> ``top_k``)."""
    return one_line(re.sub(r"--(\w+)", r"\1", str(message)))


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
        for name in ("max_kv_cache_mb", "queue_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.max_queue < self.max_sources_per_request:
            raise UsageError(f"--max_queue {self.max_queue} is below --max_sources_per_request "
                             f"{self.max_sources_per_request}: a request of that size could never be queued")


@dataclasses.dataclass(eq=False)
class Job:
    """One request: its sources (token ids), its search settings and where its answer goes."""
    ids: list[list[int]]
    config: SearchConfig
    single: bool  # src was one string: answer one output, not a list
    key: tuple = ()  # requests with equal keys are decoded together
    future: Optional[asyncio.Future] = None
    arrived: float = 0.0
    started: bool = False  # taken out of the queue into a decoding call
    # set (on the event loop) when nobody waits for the answer any more; read by the decoding thread between steps
    abandoned: threading.Event = dataclasses.field(default_factory=threading.Event)

    def __post_init__(self):
        self.key = dataclasses.astuple(self.config)


def check_type(name: str, value, wanted: type):
    """``value`` if it is a JSON value of type ``wanted`` (an int where a float is wanted); else RequestError."""
    if wanted is bool:
        ok = isinstance(value, bool)
    elif wanted is int:
        # Python's json reads 1e999 as inf and any digit string as an int: bound ints to what torch can index with
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**62
    elif wanted is float:
        try:  # a JSON integer too large for a float overflows here
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        except OverflowError:
            ok = False
    else:
        ok = isinstance(value, str)
    if not ok:
        names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
        raise RequestError(422, f"{name} must be {names[wanted]}, got {json.dumps(value)[:40]}")
    return float(value) if wanted is float else value


def check_options(options: Mapping[str, Any], max_beams: int) -> None:
    """UsageError for impossible search options: decode's checks, and the server's --max_beams."""
    check_search_options(options)
    for name in ("beam_size", "num_return_sequences"):
        if options[name] > max_beams:
            raise UsageError(f"--{name} {options[name]} exceeds --max_beams {max_beams}")


class Server:
    """What the HTTP routes do, without HTTP: parse and check a request into a ``Job`` (in a worker thread), and
    decode a group of jobs that share their settings (in the decoding thread)."""

    def __init__(self, loaded: LoadedDecoder, limits: Limits, defaults: Mapping[str, Any], types: dict[str, type],
                 model_path: str = ""):
        """``defaults``: the requests' search options when they name none (``SEARCH_OPTIONS``: the server's search
        flags); ``types``: each option's JSON type; ``model_path``: named in error messages."""
        self.loaded, self.types, self.limits = loaded, types, limits
        self.limits.check()
        self.defaults = {name: defaults[name] for name in SEARCH_OPTIONS}
        self.max_batch_size = self.limits.max_batch_size
        self.max_target_tokens = self.limits.max_target_tokens or int(loaded.settings["max_target_seq_length"])
        self.model_path = model_path
        # HF fast tokenizers must not be used from two threads at once ("Already borrowed").
        self.tokenizer_lock = threading.Lock()
        self.default_ignore = self.ignore_ids(self.defaults["forbid_ignore_word"])

    def ignore_ids(self, words: Optional[str]) -> tuple[int, ...]:
        with self.tokenizer_lock:
            return tuple(forbid_ignore_ids(self.loaded.tokenizer, words, self.model_path or "the checkpoint"))

    # -- parsing (a worker thread) ---------------------------------------------------------------------------------
    def parse(self, body: bytes) -> Job:
        """The request ``body`` as a Job; RequestError (400 / 413 / 422) with the reason if it is not one."""
        try:
            request = json.loads(body)
        except ValueError as error:
            raise RequestError(400, f"the body is not JSON: {one_line(error)}", "invalid_json") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise RequestError(400, "the body nests too deeply to be a request", "invalid_json") from None
        if not isinstance(request, dict):
            raise RequestError(400, 'the body must be a JSON object: {"src": "..." or ["...", ...], options}',
                               "invalid_json")
        if "src" not in request:
            raise RequestError(422, 'missing "src": a string or a list of strings')
        unknown = sorted(set(request) - {"src"} - set(self.types))
        if unknown:
            raise RequestError(422, f"unknown option {unknown[0][:40]!r}; the options are {', '.join(self.types)}")
        options = {name: check_type(name, value, self.types[name]) for name, value in request.items() if name != "src"}
        if options.get("do_sample", self.defaults["do_sample"]) and "seed" not in options:
            # a request that names no seed gets a fresh one (returned with the answer, so the sample can be drawn
            # again); the server's --seed would give every such request the same samples
            options["seed"] = secrets.randbits(31)
        config = self.config(options)
        single = isinstance(request["src"], str)
        ids = self.source_ids([request["src"]] if single else request["src"])
        try:
            self.loaded.check_position_budget(ids, config.max_tgt_length, remedy="lower max_tgt_length")
        except UsageError as error:
            raise RequestError(422, option_message(error)) from None
        need = self.cache_bytes(max(map(len, ids)), config)
        if need > self.limits.max_kv_cache_mb * MB:
            raise RequestError(422, f"one source of this request needs ~{need / MB:.0f} MB of key/value cache "
                                    f"(beam_size {config.beam_size}, num_return_sequences "
                                    f"{config.num_return_sequences}, max_tgt_length {config.max_tgt_length}); the "
                                    f"server allows {self.limits.max_kv_cache_mb:g} MB per decoding call "
                                    f"(--max_kv_cache_mb): lower beam_size, num_return_sequences or max_tgt_length")
        return Job(ids, config, single)

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
            raise RequestError(422, option_message(error)) from None
        return search_config(settings, settings["max_tgt_length"], ignore)

    def source_ids(self, sources) -> list[list[int]]:
        """Token ids of ``sources`` (a non-empty list of non-empty strings), truncated to the checkpoint's source
        length (``--too_long truncate``, as s2s-ft-decode does) or refused (``reject``)."""
        limits = self.limits
        if not isinstance(sources, list) or not sources:
            raise RequestError(422, '"src" must be a non-empty string or a non-empty list of strings')
        if len(sources) > limits.max_sources_per_request:
            raise RequestError(413, f"{len(sources)} sources in one request; the server takes at most "
                                    f"{limits.max_sources_per_request} (--max_sources_per_request)", "too_large")
        for i, source in enumerate(sources):
            if not isinstance(source, str):
                raise RequestError(422, f"src[{i}] must be a string, got {json.dumps(source)[:40]}")
            if not source.strip():
                raise RequestError(422, f"src[{i}] is empty" if len(sources) > 1 else "src is empty")
            try:
                source.encode("utf-8")
            except UnicodeEncodeError:  # JSON may escape a lone surrogate ("\ud800"); no tokenizer takes it
                raise RequestError(422, f"src[{i}] is not valid Unicode text (a lone surrogate)") from None
            if len(source) > limits.max_source_chars:  # before tokenising: its cost grows with the text
                raise RequestError(413, f"src[{i}] has {len(source)} characters; the server takes at most "
                                        f"{limits.max_source_chars} (--max_source_chars)", "too_large")
        with self.tokenizer_lock:
            ids, full_lengths = prepare_sources(self.loaded.tokenizer, sources, self.loaded.max_source_length)
        limit = self.loaded.max_source_length - 2  # [CLS] src [SEP]
        for i, length in enumerate(full_lengths):
            if not length:
                raise RequestError(422, f"src[{i}] tokenises to nothing")
            if length > limit and limits.too_long == "reject":
                raise RequestError(422, f"src[{i}] has {length} tokens; the checkpoint takes at most {limit} "
                                        f"(max_source_seq_length {limit + 2} less [CLS] and [SEP])")
        truncated = sum(length > limit for length in full_lengths)
        if truncated:
            log.info("%d of %d sources truncated to %d tokens", truncated, len(ids), limit)
        return ids

    # -- decoding (the decoding thread) ----------------------------------------------------------------------------
    def decode_group(self, config: SearchConfig, jobs: list[Job], should_stop: Optional[Callable] = None) -> list:
        """Each job's output, or the exception that decoding it raised. The jobs are decoded in one call; if that
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
        sources = [ids for job in jobs for ids in job.ids]
        keys = [key for job in jobs for key in range(len(job.ids))]  # sampling seeds: position in the request
        hyps = self.loaded.decode_ids(sources, config, self.batch_size(config, jobs), keys=keys,
                                      should_stop=should_stop)
        as_list = config.nbest > 1 or config.num_return_sequences > 1
        with self.tokenizer_lock:
            texts = [[self.loaded.text(h.tokens) for h in hyps_i or []] for hyps_i in hyps]
        outputs = [t if as_list else (t[0] if t else "") for t in texts]
        answers, start = [], 0
        for job in jobs:
            mine = outputs[start:start + len(job.ids)]
            start += len(job.ids)
            answers.append(mine[0] if job.single else mine)
        return answers


class DecoderStopped(Exception):
    """The decoding thread is not running (it died, or the server is stopping)."""


class DecodingThread:
    """The one thread that runs the model. ``call`` hands it a function and returns an asyncio future for the result;
    if the thread has ended (``alive`` False: an error no request handler catches escaped it, or ``kill`` for fault
    tests) every call fails with ``DecoderStopped`` and the server reports itself unavailable."""

    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        # A fresh thread per start: an app may be started again (a second test client, a restarted lifespan).
        self.inbox = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(self.inbox,), name="s2s-ft-decode", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def call(self, function: Callable, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.alive():
            future.set_exception(DecoderStopped("the decoding thread has stopped"))
        else:
            self.inbox.put((function, args, loop, future))
        return future

    def kill(self) -> None:
        """End the thread as a fatal error would (fault tests: ``--test_hooks``)."""
        def die():
            raise SystemExit("decoding thread killed on request")
        self.inbox.put((die, (), None, None))

    def stop(self) -> None:
        self.inbox.put(None)

    def _run(self, inbox: queue.SimpleQueue) -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            function, args, loop, future = item
            try:
                outcome = function(*args)
            except Exception as error:  # noqa: BLE001 (handed to the waiting request)
                outcome = error
            except BaseException:  # the thread ends; its caller must not wait for ever
                if loop is not None:
                    loop.call_soon_threadsafe(_settle, future, DecoderStopped("the decoding thread has stopped"))
                self._fail_waiting(inbox)
                raise
            loop.call_soon_threadsafe(_settle, future, outcome)

    @staticmethod
    def _fail_waiting(inbox: queue.SimpleQueue) -> None:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[2] is not None:
                item[2].call_soon_threadsafe(_settle, item[3], DecoderStopped("the decoding thread has stopped"))


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Batcher:
    """Dynamic batching. ``submit`` (on the event loop) queues a job and returns the future of its output; one task
    collects the waiting jobs until the oldest has waited ``window_s`` or ``max_batch_size`` sources wait, groups
    them by their settings and hands each group to ``decode(config, jobs, should_stop) -> [output or exception]``
    in the decoding thread. Jobs that arrive while a group decodes wait for the next collection; abandoned jobs
    (``abandon``: the client left, or its time ran out) are skipped, and a group whose jobs are all abandoned stops
    at its next step."""

    def __init__(self, decode: Callable, window_s: float, max_batch_size: int,
                 on_batch: Optional[Callable[[int], None]] = None):
        self.decode, self.window_s, self.max_batch_size = decode, window_s, max_batch_size
        self.on_batch = on_batch or (lambda sources: None)
        self.pending: deque[Job] = deque()
        self.decoding: list[Job] = []  # the jobs of the group in the decoding thread
        self.thread = DecodingThread()
        self.wake: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None
        self.draining = False  # shutting down: answer what is in flight, take nothing new

    def start(self) -> None:
        self.thread.start()
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    def ready(self) -> bool:
        return (self.thread.alive() and self.task is not None and not self.task.done()) and not self.draining

    def queued_sources(self) -> int:
        return sum(len(job.ids) for job in self.pending if not job.abandoned.is_set())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        left = [job for job in [*self.pending, *self.decoding] if not job.abandoned.is_set()]
        for job in left:
            self.abandon(job)
        self.thread.stop()
        if left:
            log.warning("stopped with %d requests unanswered (they get 503)", len(left))
        else:
            log.info("stopped; every request taken in was answered")

    def submit(self, job: Job) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job.future, job.arrived = loop.create_future(), loop.time()
        self.pending.append(job)
        self.wake.set()
        return job.future

    @staticmethod
    def abandon(job: Job) -> None:
        job.abandoned.set()
        if job.future is not None and not job.future.done():
            job.future.cancel()

    async def run(self) -> None:
        while True:
            groups: dict[tuple, list[Job]] = {}
            for job in await self.collect():
                groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                jobs = [job for job in jobs if not job.abandoned.is_set()]
                if not jobs:
                    continue
                for job in jobs:
                    job.started = True
                self.decoding = jobs
                self.on_batch(sum(len(job.ids) for job in jobs))
                gone = [job.abandoned for job in jobs]
                try:
                    outcomes = await self.thread.call(self.decode, jobs[0].config, jobs,
                                                      lambda: all(event.is_set() for event in gone))
                except Exception as error:  # noqa: BLE001 (DecoderStopped, or a last resort)
                    outcomes = [error] * len(jobs)
                self.decoding = []
                for job, outcome in zip(jobs, outcomes):
                    _settle(job.future, outcome)

    async def collect(self) -> list[Job]:
        """Wait until the oldest waiting job has waited the window or enough sources wait; take them (up to
        ``max_batch_size`` sources; one larger job alone)."""
        loop = asyncio.get_running_loop()
        while True:
            while self.pending and self.pending[0].abandoned.is_set():
                self.pending.popleft()
            waiting = self.queued_sources()
            if self.pending and (waiting >= self.max_batch_size
                                 or loop.time() >= self.pending[0].arrived + self.window_s):
                break
            self.wake.clear()
            timeout = self.pending[0].arrived + self.window_s - loop.time() if self.pending else None
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        batch, size = [], 0
        while self.pending and (not batch or size + len(self.pending[0].ids) <= self.max_batch_size):
            job = self.pending.popleft()
            if not job.abandoned.is_set():
                batch.append(job)
                size += len(job.ids)
        return batch


def require_serving_packages() -> None:
    """UsageError (one line, with the fix) unless FastAPI, uvicorn and prometheus-client are installed."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"serving needs FastAPI, uvicorn and prometheus-client ({error}): pip install -e "
                         f"'.[serve]' (or pip install fastapi uvicorn prometheus-client)") from None


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps in one process stay apart)."""

    OUTCOMES = ("ok", "invalid_json", "invalid_request", "too_large", "overloaded", "queue_timeout", "timeout",
                "unavailable", "client_gone", "decoding_failed")

    def __init__(self, batcher: Batcher, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("s2s_ft_requests", "POST /generate requests by outcome", ["outcome"],
                                registry=self.registry)
        for outcome in self.OUTCOMES:  # every outcome listed from the start, at 0
            self.requests.labels(outcome)
        queued = Gauge("s2s_ft_queue_sources", "sources waiting to be decoded", registry=self.registry)
        queued.set_function(batcher.queued_sources)
        ready = Gauge("s2s_ft_ready", "1 while requests can be decoded", registry=self.registry)
        ready.set_function(lambda: float(batcher.ready()))
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_sources = Histogram("s2s_ft_batch_sources", "sources per decoding call", buckets=buckets,
                                       registry=self.registry)
        self.latency = Histogram("s2s_ft_request_seconds", "time to answer POST /generate, any outcome",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                 registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, whatever Content-Length claims."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length {declared[:20]!r} is not a number", "invalid_json")
        if int(declared) > limit:
            raise RequestError(413, f"the body has {declared} bytes; the server takes at most {limit} "
                                    f"(--max_body_bytes)", "too_large")
    from starlette.requests import ClientDisconnect
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"the body passed {limit} bytes (--max_body_bytes)", "too_large")
    except ClientDisconnect:
        raise RequestError(499, "the client closed the connection", "client_gone") from None
    return bytes(body)


async def client_gone(request) -> None:
    """Returns when the client disconnects (the ASGI server sends http.disconnect; after the body it is the only
    message left)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Frontend:
    """What ``POST /generate`` does between HTTP and the batcher: admission (capacity before anything is read),
    reading and parsing off the event loop, waiting with the deadlines and the client's departure in view, and the
    answer or the RequestError that says why not."""

    def __init__(self, server: Server, batcher: "Batcher"):
        self.server, self.batcher, self.limits = server, batcher, server.limits
        self.parse_pool: Optional[ThreadPoolExecutor] = None  # made per lifespan (an app may be started again)

    def start(self) -> None:
        self.parse_pool = ThreadPoolExecutor(2, thread_name_prefix="s2s-ft-parse")
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.parse_pool.shutdown(wait=False, cancel_futures=True)

    def unavailable(self) -> RequestError:
        if self.batcher.draining:
            return RequestError(503, "the server is shutting down; send the request to another instance",
                                "unavailable", retry_after=1)
        return RequestError(503, "the decoding thread has stopped; the server must be restarted", "unavailable")

    def check_capacity(self, extra_sources: int, arriving: bool) -> None:
        """503 unless the server can decode (a request already taken in is answered while the server drains);
        429 if the queue cannot take ``extra_sources`` more."""
        if not self.batcher.thread.alive() or (arriving and not self.batcher.ready()):
            raise self.unavailable()
        queued = self.batcher.queued_sources()
        if queued and queued + extra_sources > self.limits.max_queue:
            raise RequestError(429, f"the server is overloaded: {queued} sources are waiting (--max_queue "
                                    f"{self.limits.max_queue}); retry later", "overloaded", retry_after=1)

    async def answer(self, request) -> dict:
        """The answer to one ``POST /generate`` (RequestError if there is none to give)."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self.check_capacity(1, arriving=True)  # before reading or parsing anything
        body = await read_body(request, self.limits.max_body_bytes)
        job = await loop.run_in_executor(self.parse_pool, self.server.parse, body)
        self.check_capacity(len(job.ids), arriving=False)
        future = self.batcher.submit(job)
        watcher = asyncio.ensure_future(client_gone(request))
        try:
            await self.wait(job, future, watcher, arrived)
        finally:
            watcher.cancel()
        if future.cancelled():
            raise self.unavailable()
        error = future.exception()
        if isinstance(error, UsageError):
            raise RequestError(422, option_message(error))
        if isinstance(error, DecoderStopped):
            raise self.unavailable()
        if isinstance(error, DecodingStopped):
            raise RequestError(504, "decoding was stopped: the request's time ran out", "timeout")
        if error is not None:
            raise RequestError(500, f"decoding failed: {type(error).__name__}: {error}", "decoding_failed")
        output = future.result()
        return {"output": output, "seed": job.config.seed} if job.config.do_sample else {"output": output}

    async def wait(self, job: Job, future: asyncio.Future, watcher: asyncio.Future, arrived: float) -> None:
        """Until ``future`` is done; the job is abandoned (and RequestError raised) if the client goes, the queue
        wait or the deadline passes first."""
        loop, limits = asyncio.get_running_loop(), self.limits
        while not future.done():
            deadline = arrived + (limits.request_timeout_s if job.started
                                  else min(limits.queue_timeout_s, limits.request_timeout_s))
            await asyncio.wait({future, watcher}, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
            if future.done():
                return
            if watcher.done():
                self.batcher.abandon(job)
                raise RequestError(499, "the client closed the connection", "client_gone")
            if loop.time() >= deadline and not job.started and deadline < arrived + limits.request_timeout_s:
                self.batcher.abandon(job)
                raise RequestError(503, f"the request waited {limits.queue_timeout_s:g} s in the queue "
                                        f"(--queue_timeout_s); retry later", "queue_timeout", retry_after=1)
            if loop.time() >= arrived + limits.request_timeout_s:
                self.batcher.abandon(job)
                raise RequestError(504, f"no answer within {limits.request_timeout_s:g} s (--request_timeout_s); "
                                        f"send fewer sources or a smaller beam_size / max_tgt_length", "timeout")


def build_app(server: Server, window_s: float = 0.005, test_hooks: bool = False):
    """The FastAPI application around ``server`` (its routes, and the batcher started with the application).
    ``test_hooks``: also ``POST /_test/kill_decoder`` (ends the decoding thread, for fault tests)."""
    require_serving_packages()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    batcher = Batcher(server.decode_group, window_s, server.max_batch_size)
    metrics = Metrics(batcher, server.max_batch_size)
    batcher.on_batch = metrics.batch_sources.observe
    frontend = Frontend(server, batcher)

    @asynccontextmanager
    async def lifespan(app):
        frontend.start()
        yield
        await frontend.stop()

    app = FastAPI(title="s2s-ft", lifespan=lifespan)
    app.state.server, app.state.batcher, app.state.metrics = server, batcher, metrics

    def error_response(status: int, message: str, error_type: str, retry_after: Optional[int] = None):
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"error": one_line(message), "error_type": error_type}, status_code=status,
                            headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # 404, 405: the same {"error": ...} shape
        return JSONResponse({"error": one_line(error.detail), "error_type": "invalid_request"},
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):  # never a text/plain 500
        log.error("unexpected error answering %s", request.url.path, exc_info=error)
        return error_response(500, f"internal error: {type(error).__name__}", "internal")

    @app.get("/health")
    async def health():
        if batcher.ready():
            return {"status": "ok", "model_path": server.model_path, "queue_sources": batcher.queued_sources()}
        return error_response(503, str(frontend.unavailable()), "unavailable")

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.text()
        return Response(body, media_type=content_type)

    if test_hooks:
        @app.post("/_test/kill_decoder")
        async def kill_decoder():
            batcher.thread.kill()
            return {"status": "killing the decoding thread"}

    @app.post("/generate")
    async def generate(request: Request):
        started = time.perf_counter()
        try:
            answer, outcome = await frontend.answer(request), "ok"
        except RequestError as error:
            outcome = error.error_type
            answer = error_response(error.status, str(error), error.error_type, error.retry_after)
        metrics.requests.labels(outcome).inc()
        metrics.latency.observe(time.perf_counter() - started)
        return answer

    return app
