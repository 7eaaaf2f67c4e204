"""Incremental-state decoding: greedy and beam search over the shared model with a key/value cache.

The source is encoded once into a pre-allocated ``KVCache``; each step feeds only new tokens, with the same
positions, segments and attention ranks as training. Which tokens a step feeds is the fine-tuning method's answer
(``methods.FineTuningMethod.step_feed``):

* masked / pseudo_masked checkpoints: the previous token as a real target token (kept in the cache) plus a [MASK]
  at the next position with pseudo ranks (used to predict, never kept);
* causal checkpoints: just the previous token (the start token first), whose output predicts the next one.

Beam search caches a sentence's k beams as one sequence (one cache row per sentence): the source once, then what
the beams were fed, side by side; each beam attends to the source and its own tokens only (the model's ``visible``
mask, from the cache columns each row keeps), so following a surviving beam copies nothing and the source's keys
and values are read once per sentence per step (``_forward_beams``). A search starts with one row per sentence,
the k beams being identical until the first step has chosen them.

``use_cache=False`` is the reference path: it recomputes the whole sequence at every step with the same inputs, one
row per beam. Greedy search is beam search with one beam.

Scores are sums of token log-probabilities; finished hypotheses are ranked by score / lp(length) with GNMT's
length penalty lp(n) = ((5 + n) / 6) ** alpha (alpha = ``length_penalty``; 0 disables it), n counting the
closing [SEP].

Beam search, per sentence and step (fairseq's and HF's rule): the k live beams' continuations are ranked by their
raw summed log-probability and the best 2k are read in rank order. A [SEP] candidate ranked among the best k is
finished (ranked lower, it is dropped: it was not good enough to stay in the beam); any other candidate becomes one
of the next k live beams. At ``max_tgt_length`` every candidate ranked among the best k is finished without a
[SEP] (``Hypothesis.finished`` False). A sentence stops as soon as it holds k finished hypotheses ("early stop",
fairseq's rule and HF's ``early_stopping=True``): with a length penalty (alpha > 0) a live beam could still have
finished later with a better normalised score; like fairseq we do not wait for it. A sentence whose candidates
are all banned (min_len, n-gram blocking, layout tokens, ``source_words_only``) stops with what it has, possibly
nothing.

Sampling (``do_sample``) runs on the same cached step (``_log_probs``: the same constraints) with
``num_return_sequences`` independent rows per sentence. Each step's constrained log-probs are divided by
``temperature``, cut to the ``top_k`` most likely tokens and to the smallest nucleus whose probability reaches
``top_p``, renormalised, and one token is drawn by inverse CDF (float64, on the host) with a uniform number from the
row's own ``torch.Generator``, seeded from (``seed``, the sentence's key, the row's index j). A row therefore draws
the same numbers whatever else is in the batch. Guaranteed: the same seed, checkpoint, settings, device and
precision give the same samples, run after run. Batch size, sharding (torchrun) and --resume chunks do not change a
sentence's random numbers; they can change its log-probs in the last bits (padding, batched kernels), which changes
a sampled token only if a draw falls within that rounding of a CDF boundary (in practice never; scores can differ
in their last digits).
A row ends at [SEP] (``finished``) or at ``max_tgt_length`` (not finished); a row whose every token is banned
yields no hypothesis. ``score``/``log_prob`` are those of the model's constrained (unfiltered, temperature 1)
distribution, as in beam search. Hypotheses are returned in row order j (not sorted).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import torch

from s2s_ft.data.methods import get_method
from s2s_ft.data.packing import SpecialIds, decoding_prefix
from s2s_ft.decoding.source_words import SourceWords
from s2s_ft.errors import UsageError
from s2s_ft.model.transformer import KVCache, UnifiedTransformer

MAX_LENGTH_PENALTY = 10.0
MIN_TEMPERATURE = 1e-4


@dataclass
class SearchConfig:
    beam_size: int = 1
    max_tgt_length: int = 48  # generated tokens, the closing [SEP] included
    min_len: int = 1  # [SEP] is forbidden until this many tokens (the [SEP] not counted) have been generated
    length_penalty: float = 0.0
    forbid_duplicate_ngrams: bool = False
    ngram_size: int = 3
    forbid_ignore_ids: Sequence[int] = ()  # n-grams containing these ids are never blocked
    nbest: int = 1
    use_cache: bool = True
    do_sample: bool = False
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    temperature: float = 1.0
    num_return_sequences: int = 1  # samples per sentence (do_sample only)
    seed: int = 0
    # a word of several word pieces must be a word of the source (decoding/source_words.py); needs the vocabulary's
    # continuation-piece ids, which the tokenizer gives (LoadedDecoder fills them in)
    source_words_only: bool = False
    continuation_ids: Sequence[int] = ()

    def check(self) -> None:
        """UsageError (one line) for an impossible or contradictory setting. The one place search settings are
        checked: the command line, the server and the Python API (``generate``) all come through here."""
        for name, low in (("beam_size", 1), ("nbest", 1), ("ngram_size", 1), ("min_len", 0), ("max_tgt_length", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"--{name} must be >= {low}, got {getattr(self, name)}")
        if self.min_len > self.max_tgt_length:
            raise UsageError(f"--min_len {self.min_len} exceeds --max_tgt_length {self.max_tgt_length}")
        if self.nbest > self.beam_size:
            raise UsageError(f"--nbest {self.nbest} exceeds --beam_size {self.beam_size}")
        # GNMT's ((5 + n) / 6) ** alpha overflows a float long before alpha = 1e308; useful values lie in [0, 3]
        if not -MAX_LENGTH_PENALTY <= self.length_penalty <= MAX_LENGTH_PENALTY:
            raise UsageError(f"--length_penalty must lie in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}], got "
                             f"{self.length_penalty}")
        if self.top_k < 0:
            raise UsageError(f"--top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top_p must be in (0, 1], got {self.top_p}")
        if not MIN_TEMPERATURE <= self.temperature <= 1.0 / MIN_TEMPERATURE:
            # below it the scaled log-probabilities leave the float range and every row would end empty
            raise UsageError(f"--temperature must lie in [{MIN_TEMPERATURE:g}, {1 / MIN_TEMPERATURE:g}] (for the most "
                             f"likely token every time, decode without --do_sample), got {self.temperature}")
        if self.num_return_sequences < 1:
            raise UsageError(f"--num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.do_sample and self.beam_size > 1:
            raise UsageError(f"--do_sample samples one token per row; it cannot be combined with --beam_size "
                             f"{self.beam_size} (use --num_return_sequences for several samples)")
        if not self.do_sample:
            changed = [name for name, default in (("top_k", 0), ("top_p", 1.0), ("temperature", 1.0),
                                                  ("num_return_sequences", 1)) if getattr(self, name) != default]
            if changed:
                raise UsageError(f"--{changed[0]} needs --do_sample")


# The search options a user names, in order: flags of s2s-ft-decode and s2s-ft-serve, keys of a server request.
# Every one is a SearchConfig field, except forbid_ignore_word (words, turned into forbid_ignore_ids by a tokenizer).
SEARCH_OPTIONS = ("beam_size", "length_penalty", "min_len", "max_tgt_length", "forbid_duplicate_ngrams", "ngram_size",
                  "forbid_ignore_word", "nbest", "do_sample", "top_k", "top_p", "temperature", "num_return_sequences",
                  "seed", "source_words_only")


def search_config(options: Mapping[str, Any], max_tgt_length: int, ignore: Sequence[int] = ()) -> SearchConfig:
    """The SearchConfig of named ``options`` (``SEARCH_OPTIONS``; ``no_cache`` optional), with the target length
    resolved and ``ignore`` the ids of ``forbid_ignore_word``."""
    return SearchConfig(beam_size=options["beam_size"], max_tgt_length=max_tgt_length, min_len=options["min_len"],
                        length_penalty=options["length_penalty"],
                        forbid_duplicate_ngrams=options["forbid_duplicate_ngrams"], ngram_size=options["ngram_size"],
                        forbid_ignore_ids=tuple(ignore), nbest=options["nbest"],
                        use_cache=not options.get("no_cache", False), do_sample=options["do_sample"],
                        top_k=options["top_k"], top_p=options["top_p"], temperature=options["temperature"],
                        num_return_sequences=options["num_return_sequences"], seed=options["seed"],
                        source_words_only=options.get("source_words_only", False))


def check_search_options(options: Mapping[str, Any]) -> None:
    """UsageError (one line) for impossible or contradictory ``options`` (``max_tgt_length`` may be None: the
    checkpoint's, checked once it is known). The checks are SearchConfig.check's."""
    length = options["max_tgt_length"] if options["max_tgt_length"] is not None else max(1, options["min_len"])
    search_config(options, max_tgt_length=length).check()


class DecodingStopped(Exception):
    """A decoding call ended early because its ``should_stop`` said so."""


def stop_if_asked(should_stop: Optional[Callable[[], bool]]) -> None:
    if should_stop is not None and should_stop():
        raise DecodingStopped("decoding stopped on request")


@dataclass
class Hypothesis:
    tokens: list[int]  # without the closing [SEP]
    score: float  # length-normalised
    log_prob: float
    finished: bool = True
    # each output token's log-probability (the closing [SEP]'s last, when finished): they sum to log_prob
    token_log_probs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class StepEvent:
    """What one step did to one sentence (or one sample row of it), for callers that stream (``on_step`` of
    ``Seq2SeqDecoder.generate``): the token chosen and its log-probability, and ``end`` when this step ended it:
    "eos" (the token is [SEP]), "length" (``max_tgt_length`` reached: the token is its last), "stopped" (``drop``
    asked; no token) or "empty" (every token was banned; no token). Greedy search and sampling choose a token for
    good at each step; beam search revises its beams, so it reports no steps (its hypotheses come at the end)."""
    sentence: int  # position in the call's sources
    token: Optional[int]
    log_prob: float = 0.0
    sample: int = 0  # sampling: the row j < num_return_sequences
    end: Optional[str] = None


def gnmt_length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


def banned_ngram_mask(history: torch.Tensor, vocab_size: int, n: int, ignore_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [R, V]: tokens that would repeat an n-gram already in each row of ``history`` [R, t]."""
    rows, length = history.shape
    banned = torch.zeros(rows, vocab_size, dtype=torch.bool, device=history.device)
    if length < n:  # no complete n-gram yet
        return banned
    windows = history.unfold(1, n, 1)  # [R, t-n+1, n]
    tail = history[:, length - n + 1:] if n > 1 else history[:, :0]
    matches = (windows[:, :, :-1] == tail[:, None, :]).all(-1)
    if ignore_ids.numel():
        matches &= ~torch.isin(windows, ignore_ids).any(-1)
    row_index = torch.arange(rows, device=history.device)[:, None].expand_as(matches)
    banned[row_index[matches], windows[:, :, -1][matches]] = True
    return banned


@dataclass
class _Rows:
    """Per-row decoding state; rows are (sentence, beam) pairs and shrink as sentences finish."""
    sentence: torch.Tensor  # [R] which input sentence the row belongs to
    source_length: torch.Tensor  # [R] real source length n_src (incl. [CLS] and [SEP])
    tokens: torch.Tensor  # [R, t] generated so far
    scores: torch.Tensor  # [R] summed log-probs
    token_scores: torch.Tensor  # [R, t] each generated token's log-prob
    history: dict = field(default_factory=dict)  # no-cache path: every stored input tensor so far
    # Beam search with the cache: the cache columns of the row's sequence (its sentence's source, then its own
    # stored target tokens), in its sentence's cache row, which all the sentence's beams share.
    columns: Optional[torch.Tensor] = None
    # Copy mechanism: the row's source keys [R, S, hidden], source ids [R, S] and copyable mask [R, S], computed once
    # per sentence from its encoded source (the same last-layer states training uses).
    copy: Optional[tuple] = None

    def select(self, index: torch.Tensor) -> "_Rows":
        return _Rows(self.sentence[index], self.source_length[index], self.tokens[index], self.scores[index],
                     self.token_scores[index], {name: value[index] for name, value in self.history.items()},
                     None if self.columns is None else self.columns[index],
                     None if self.copy is None else tuple(value[index] for value in self.copy))


class Seq2SeqDecoder:
    """Loads once, decodes many batches; the model is any ``UnifiedTransformer`` with its training settings."""

    def __init__(self, model: UnifiedTransformer, special: SpecialIds, method,
                 device: torch.device | str = "cpu", autocast_dtype: Optional[torch.dtype] = None):
        self.model = model.eval().to(device)
        self.special, self.method = special, get_method(method)  # a name of METHODS or a FineTuningMethod
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype

    # -- one step's new tokens -----------------------------------------------------------------------------------
    def _step_inputs(self, rows: _Rows, step: int):
        """(input_ids, position_ids, token_type_ids, key_rank, query_rank, n_store) of the tokens fed at ``step``."""
        feed, n_store = self.method.step_feed(step)
        previous = rows.tokens[:, -1] if rows.tokens.shape[1] else None
        ids, positions, key_rank, query_rank = feed_inputs(feed, previous, rows.source_length, self.special)
        types = torch.full_like(ids, self.special.target_type)
        return ids, positions, types, key_rank, query_rank, n_store

    def _forward(self, inputs: dict, cache: Optional[KVCache], rows: _Rows, n_store: int) -> torch.Tensor:
        """[R, hidden]: each row's hidden state of its last new token (the predictor)."""
        if cache is None:
            full = {name: torch.cat([rows.history[name], value], 1) for name, value in inputs.items()}
            hidden = self.model(**full)
            for name, value in inputs.items():
                rows.history[name] = torch.cat([rows.history[name], value[:, :n_store]], 1)
            return hidden[:, -1]
        if rows.columns is None:  # sampling: a cached sequence per row
            return self.model(**inputs, cache=cache, n_store=n_store, n_out=1)[:, -1]
        return self._forward_beams(inputs, cache, rows, n_store)

    def _forward_beams(self, inputs: dict, cache: KVCache, rows: _Rows, n_store: int) -> torch.Tensor:
        """Beam search: a sentence's beams are tokens of one cached sequence, its cache row: the source once, then
        what the beams were fed, side by side. A step feeds column i of every beam next to each other (i-major:
        [sentences, n * beams]); each beam sees the source and its own tokens only (``rows.columns``), so a beam
        that follows another needs no copy, only the other's columns."""
        r, n = inputs["input_ids"].shape
        beams, start = r // cache.keys.shape[1], cache.length
        new = start + torch.arange(n, device=self.device) * beams + (torch.arange(r, device=self.device) % beams)[
            :, None]  # [R, n]: the cache columns of each row's new tokens
        visible = None  # one row per sentence (greedy, a beam search's first step): all its cache row is its own
        if beams > 1:
            seen = torch.zeros(r, start + n * beams, dtype=torch.bool, device=self.device)
            seen.scatter_(1, rows.columns, True).scatter_(1, new, True)
            visible = seen.view(-1, beams, seen.shape[1]).repeat(1, n, 1)  # query i * beams + j is beam j's
        side_by_side = {name: value.reshape(-1, beams, n).transpose(1, 2).reshape(-1, n * beams)
                        for name, value in inputs.items()}
        hidden = self.model(**side_by_side, cache=cache, n_store=n_store * beams, n_out=beams, visible=visible)
        rows.columns = torch.cat([rows.columns, new[:, :n_store]], 1)
        return hidden.reshape(r, -1)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    # -- search ----------------------------------------------------------------------------------------------------
    def _start(self, sources: Sequence[Sequence[int]], config: SearchConfig) -> tuple[_Rows, Optional[KVCache]]:
        """The first rows and the source encoded into the cache once (or kept as the no-cache path's history);
        returns (rows, cache). Beam search starts with one row per source: its k beams would all be the same
        until the first step chooses them (so that step computes one row instead of k). Sampling starts with
        num_return_sequences rows per source, all live."""
        m, n = (config.num_return_sequences if config.do_sample else 1), len(sources)
        prefix = decoding_prefix(sources, self.special).to(self.device)
        inputs = prefix.model_inputs()
        source_width = prefix.input_ids.shape[1]
        cache, source_hidden = None, None
        with self._autocast():
            if config.use_cache:
                cache = KVCache(self.model.config, n, self._cache_width(source_width, config),
                                self.device, self._cache_dtype())
                source_hidden = self.model(**inputs, cache=cache)  # encode the source once
            elif self.model.copy is not None:  # the source's states do not depend on the target: once is enough
                source_hidden = self.model(**inputs)
        expand = torch.arange(n, device=self.device).repeat_interleave(m)
        rows = _Rows(sentence=expand.clone(), source_length=(prefix.key_rank == 0).sum(1)[expand],
                     tokens=torch.zeros(n * m, 0, dtype=torch.long, device=self.device),
                     scores=torch.zeros(n * m, device=self.device),
                     token_scores=torch.zeros(n * m, 0, device=self.device))
        if cache is not None and config.do_sample:
            cache.reorder(expand)  # samples leave one by one: each row keeps its own copy of the source
        elif cache is not None:  # beams leave with their sentence: they share its cache row (_forward_beams)
            rows.columns = torch.arange(source_width, device=self.device).expand(n, -1)
        else:
            rows.history = {name: value[expand] for name, value in inputs.items()}
        if self.model.copy is not None:
            with self._autocast():
                keys = self.model.copy.source_keys(source_hidden)
            rows.copy = (keys[expand], prefix.input_ids[expand], prefix.copyable[expand])
        return rows, cache

    def _log_probs(self, rows: _Rows, step: int, cache: Optional[KVCache], config: SearchConfig,
                   never_generated: torch.Tensor, ignore_ids: torch.Tensor,
                   words: Optional[SourceWords] = None) -> torch.Tensor:
        """[R, V] next-token log-probabilities of every row, banned tokens at -inf."""
        sp = self.special
        step_inputs = self._step_inputs(rows, step)
        names = ("input_ids", "position_ids", "token_type_ids", "key_rank", "query_rank")
        with self._autocast():
            hidden = self._forward(dict(zip(names, step_inputs[:5])), cache, rows, step_inputs[5])
            if rows.copy is None:
                log_probs = self.model.log_probs(hidden)  # [R, V]
            else:
                keys, source_ids, copyable = rows.copy
                copy_scores = self.model.copy.scores(hidden[:, None], keys)[:, 0]
                log_probs = self.model.log_probs(hidden, copy_scores, source_ids, copyable)
        log_probs[:, never_generated] = float("-inf")
        if step < config.min_len:
            log_probs[:, sp.sep] = float("-inf")
        if config.forbid_duplicate_ngrams:
            banned = banned_ngram_mask(rows.tokens, log_probs.shape[-1], config.ngram_size, ignore_ids)
            log_probs.masked_fill_(banned, float("-inf"))
        if words is not None:
            log_probs.masked_fill_(words.banned(rows.tokens, rows.sentence), float("-inf"))
        return log_probs

    def _sentence_step(self, ranked, first_row: int, rows: _Rows, done: list[Hypothesis], last_step: bool,
                       config: SearchConfig) -> list[tuple[int, int, float]]:
        """One sentence's step: ``ranked`` holds its best 2k (score, beam, token) candidates in rank order. Finished
        hypotheses are appended to ``done``; returns the k (row, token, score) that stay live, [] if it is done."""
        k, sep = config.beam_size, self.special.sep
        chosen = []
        for rank, (score, b, t) in enumerate(ranked):
            if score == float("-inf"):
                break
            row = first_row + b
            if t == sep or last_step:
                # only a [SEP] that would have kept its place in the beam finishes; the break below never skips one
                # (the k-th live candidate has rank >= k - 1)
                if rank < k and len(done) < k:
                    done.append(self._hypothesis(rows, row, t, score, config, finished=t == sep))
            elif len(chosen) < k:
                chosen.append((row, t, score))
            if len(chosen) == k:
                break
        if len(done) >= k or last_step or not chosen:
            return []  # the sentence is done: its rows leave the batch
        while len(chosen) < k:  # fewer live candidates than beams: pad with dead copies
            chosen.append((chosen[0][0], chosen[0][1], float("-inf")))
        return chosen

    def _hypothesis(self, rows: _Rows, row: int, token: Optional[int], score: float, config: SearchConfig,
                    finished: bool) -> Hypothesis:
        """Row ``row``'s tokens followed by ``token`` (None: nothing more; [SEP]: finished, not an output token) as a
        hypothesis of summed log-prob ``score``."""
        ids, token_log_probs = rows.tokens[row].tolist(), rows.token_scores[row].tolist()
        if token is not None:
            token_log_probs.append(score - float(rows.scores[row]))
            if not finished:
                ids.append(token)
        length = len(ids) + 1 if finished else len(ids)
        return Hypothesis(ids, score / gnmt_length_penalty(length, config.length_penalty), score, finished=finished,
                          token_log_probs=token_log_probs)

    def _choose(self, rows: _Rows, log_probs: torch.Tensor, last_step: bool, config: SearchConfig,
                finished: list[list[Hypothesis]], beams: int) -> list[tuple[int, int, float]]:
        """The (row, token, score) of every live beam after this step, sentence by sentence; ``beams``: rows per
        sentence now (1 at the first step, then k)."""
        k, vocab = config.beam_size, log_probs.shape[-1]
        alive = rows.sentence.shape[0] // beams
        candidates = log_probs.add_(rows.scores[:, None]).view(alive, beams * vocab)  # in place: not used after
        top_scores, top_index = candidates.topk(min(2 * k, beams * vocab), dim=1)
        beam, token = top_index // vocab, top_index % vocab
        sentences = rows.sentence.view(alive, beams)[:, 0]
        # Move the small top-k tables to the host once per step: the bookkeeping is per sentence.
        top_scores_h, beam_h, token_h = top_scores.tolist(), beam.tolist(), token.tolist()
        kept = []
        for a, sentence in enumerate(sentences.tolist()):
            ranked = zip(top_scores_h[a], beam_h[a], token_h[a])
            kept += self._sentence_step(ranked, a * beams, rows, finished[sentence], last_step, config)
        return kept

    def _greedy_events(self, rows: _Rows, kept: list, finished: list[list[Hypothesis]],
                       counts: list[int]) -> list[StepEvent]:
        """One beam: what this step did to each sentence that was live (``counts``: its finished hypotheses
        before the step)."""
        live = {row: (token, score) for row, token, score in kept}
        scores, events = rows.scores.tolist(), []
        for row, sentence in enumerate(rows.sentence.tolist()):
            if len(finished[sentence]) > counts[sentence]:
                hyp = finished[sentence][-1]
                events.append(StepEvent(sentence, self.special.sep if hyp.finished else hyp.tokens[-1],
                                        hyp.token_log_probs[-1], end="eos" if hyp.finished else "length"))
            elif row in live:
                events.append(StepEvent(sentence, live[row][0], live[row][1] - scores[row]))
            else:
                events.append(StepEvent(sentence, None, end="empty"))
        return events

    def _drop_sentences(self, rows: _Rows, cache: Optional[KVCache], gone, beams: int,
                        finished: list[list[Hypothesis]], config: SearchConfig) -> tuple[_Rows, list[StepEvent]]:
        """Beam search and greedy: the sentences in ``gone`` leave the batch now, each with its best live beam as an
        unfinished hypothesis (unless it has finished ones); their cache rows go."""
        sentences = rows.sentence.tolist()
        gone = set(gone) & set(sentences)
        if not gone:
            return rows, []
        scores = rows.scores.tolist()
        for sentence in sorted(gone):
            if not finished[sentence]:
                best = max((r for r, s in enumerate(sentences) if s == sentence), key=lambda r: scores[r])
                finished[sentence].append(self._hypothesis(rows, best, None, scores[best], config, finished=False))
        keep = torch.tensor([r for r, s in enumerate(sentences) if s not in gone], dtype=torch.long,
                            device=self.device)
        if cache is not None:
            cache.reorder(keep[::beams] // beams)
        return rows.select(keep), [StepEvent(sentence, None, end="stopped") for sentence in sorted(gone)]

    def _cache_dtype(self) -> torch.dtype:
        return self.autocast_dtype or next(self.model.parameters()).dtype

    @staticmethod
    def _cache_width(source_width: int, config: SearchConfig) -> int:
        """Columns of a decoding call's cache: the source's, then a step stores at most one token per row (a
        sentence's k beams share its cache row) and feeds one more."""
        return source_width + (config.max_tgt_length + 1) * (1 if config.do_sample else config.beam_size)

    def cache_bytes(self, source_lengths: Sequence[int], config: SearchConfig) -> int:
        """A bound on the memory the key/value cache of one ``generate`` call over sources of these lengths takes
        (servers check it before admitting a request): the cache's tensors, twice, since a reorder (sentences
        leave, samples are spread out) builds the new cache before the old one goes."""
        if not config.use_cache or not source_lengths:
            return 0
        source_width = decoding_prefix([[0] * max(source_lengths)], self.special).input_ids.shape[1]
        rows = len(source_lengths) * (config.num_return_sequences if config.do_sample else 1)
        model = self.model.config
        per_column = 2 * model.num_hidden_layers * model.hidden_size * self._cache_dtype().itemsize + 2 * 8
        return 2 * rows * self._cache_width(source_width, config) * per_column

    @torch.inference_mode()
    def generate(self, sources: Sequence[Sequence[int]], config: SearchConfig,
                 keys: Optional[Sequence[int]] = None,
                 should_stop: Optional[Callable[[], bool]] = None,
                 on_step: Optional[Callable[[list[StepEvent]], object]] = None,
                 drop: Optional[Callable[[], Collection[int]]] = None) -> list[list[Hypothesis]]:
        """Best ``config.nbest`` hypotheses per source, best first; sources are token ids without specials.
        With ``config.do_sample``: ``num_return_sequences`` samples per source in row order; ``keys`` (default
        0..n-1) name the sentences for the seeds (pass input positions to make samples batch-independent).
        ``should_stop`` is asked before every step; if it says True the call ends with ``DecodingStopped`` (a
        server stops decoding for clients that have gone). For streaming: ``on_step`` gets each step's
        ``StepEvent`` list (greedy search and sampling), and ``drop`` is asked before every step for the sentences
        (positions in ``sources``) to stop now: their rows leave the batch and they end with what they have
        (``finished`` False), while the others go on."""
        config.check()
        rows, cache = self._start(sources, config)
        sp = self.special
        ignore_ids = torch.tensor(list(config.forbid_ignore_ids), dtype=torch.long, device=self.device)
        # Layout tokens are never output (s2s-ft forbids them too); [SEP] ends a hypothesis instead.
        never_generated = torch.tensor(sorted({sp.cls, sp.pad, sp.mask} - {sp.sep}), device=self.device)
        words = None
        if config.source_words_only:
            if not config.continuation_ids:
                raise UsageError("source_words_only needs the vocabulary's continuation pieces (decode through "
                                 "LoadedDecoder, or set continuation_ids from decoding.source_words.continuation_ids)")
            words = SourceWords(sources, config.continuation_ids, self.model.config.vocab_size, self.device)
        constraints = (never_generated, ignore_ids, words)
        if config.do_sample:
            return self._sample(sources, config, keys, rows, cache, constraints, should_stop, on_step, drop)
        return self._beam_search(sources, config, rows, cache, constraints, should_stop, on_step, drop)

    def _beam_search(self, sources, config: SearchConfig, rows: _Rows, cache: Optional[KVCache], constraints: tuple,
                     should_stop, on_step, drop) -> list[list[Hypothesis]]:
        finished: list[list[Hypothesis]] = [[] for _ in sources]
        k = config.beam_size
        for step in range(config.max_tgt_length):
            stop_if_asked(should_stop)
            beams = 1 if step == 0 else k  # rows per sentence
            if drop is not None:
                rows, events = self._drop_sentences(rows, cache, drop(), beams, finished, config)
                if events and on_step is not None and k == 1:
                    on_step(events)
                if not rows.tokens.shape[0]:
                    break
            log_probs = self._log_probs(rows, step, cache, config, *constraints)
            counts = [len(hyps) for hyps in finished]
            kept = self._choose(rows, log_probs, step + 1 == config.max_tgt_length, config, finished, beams)
            if on_step is not None and k == 1:
                on_step(self._greedy_events(rows, kept, finished, counts))
            if not kept:
                break
            index = torch.tensor([row for row, _, _ in kept], device=self.device)
            if cache is not None and len(kept) // k < rows.tokens.shape[0] // beams:
                cache.reorder(index[::k] // beams)  # sentences left: their cache rows go
            rows = rows.select(index)
            self._append(rows, [t for _, t, _ in kept], [score for _, _, score in kept])
        results = []
        for hyps in finished:
            hyps.sort(key=lambda h: h.score, reverse=True)
            results.append(hyps[:config.nbest])
        return results

    def _append(self, rows: _Rows, tokens: list[int], scores: list[float]) -> None:
        """Each (already selected) row's next token and its new summed log-prob."""
        scores = torch.tensor(scores, device=self.device, dtype=rows.scores.dtype)
        rows.tokens = torch.cat([rows.tokens, torch.tensor(tokens, device=self.device)[:, None]], 1)
        rows.token_scores = torch.cat([rows.token_scores, (scores - rows.scores)[:, None]], 1)
        rows.scores = scores

    # -- sampling --------------------------------------------------------------------------------------------------
    def _sample(self, sources, config: SearchConfig, keys, rows: _Rows, cache: Optional[KVCache],
                constraints: tuple, should_stop: Optional[Callable[[], bool]], on_step, drop) -> list[list[Hypothesis]]:
        m = config.num_return_sequences
        keys = list(range(len(sources))) if keys is None else list(keys)
        state = _SampleRows(rows, cache, [row_generator(config.seed, keys[i // m], i % m)
                                          for i in range(len(sources) * m)], list(range(len(sources) * m)))
        found: list[Optional[Hypothesis]] = [None] * (len(sources) * m)
        for step in range(config.max_tgt_length):
            stop_if_asked(should_stop)
            events = []
            gone = set(drop()) if drop is not None else set()
            if gone:  # these sentences' rows leave now, with what they have
                stays = []
                for r, s in enumerate(state.slot):
                    if s // m in gone:
                        found[s] = self._hypothesis(state.rows, r, None, float(state.rows.scores[r]), config, False)
                        events.append(StepEvent(s // m, None, sample=s % m, end="stopped"))
                    else:
                        stays.append(r)
                state.keep(stays, self.device)
            keep = []
            if state.slot:
                log_probs = self._log_probs(state.rows, step, state.cache, config, *constraints)
                tokens = sample_tokens(sampling_log_probs(log_probs, config), state.generators)
                chosen = log_probs.gather(1, tokens.clamp(min=0).to(log_probs.device)[:, None])[:, 0].tolist()
                last, scores = step + 1 == config.max_tgt_length, state.rows.scores.tolist()
                for r, t in enumerate(tokens.tolist()):
                    s = state.slot[r]
                    if t < 0:  # every token banned: the row ends without a hypothesis
                        events.append(StepEvent(s // m, None, sample=s % m, end="empty"))
                        continue
                    score, ended = scores[r] + chosen[r], t == self.special.sep or last
                    if ended:
                        found[s] = self._hypothesis(state.rows, r, t, score, config, finished=t == self.special.sep)
                    else:
                        keep.append((r, t, score))
                    events.append(StepEvent(s // m, t, chosen[r], sample=s % m,
                                            end=None if not ended else "eos" if t == self.special.sep else "length"))
            if on_step is not None and events:
                on_step(events)
            if not keep:
                break
            state.keep([r for r, _, _ in keep], self.device)
            self._append(state.rows, [t for _, t, _ in keep], [score for _, _, score in keep])
        return [[h for h in found[i * m:(i + 1) * m] if h is not None] for i in range(len(sources))]


@dataclass
class _SampleRows:
    """Sampling's live rows: their state, cache rows, generators and slots (sentence * m + j). Rows only ever leave;
    the live ones never move."""
    rows: _Rows
    cache: Optional[KVCache]
    generators: list
    slot: list[int]

    def keep(self, keep_rows: list[int], device) -> None:
        if len(keep_rows) == len(self.slot):
            return
        index = torch.tensor(keep_rows, dtype=torch.long, device=device)
        self.rows = self.rows.select(index)
        if self.cache is not None and keep_rows:
            self.cache.reorder(index)
        self.generators = [self.generators[r] for r in keep_rows]
        self.slot = [self.slot[r] for r in keep_rows]


def feed_inputs(feed: Sequence, previous: Optional[torch.Tensor], source_length: torch.Tensor,
                special: SpecialIds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, positions, key ranks, query ranks), each [R, len(feed)], of the columns a decoding step feeds
    (``methods.FineTuningMethod.step_feed``): "previous" is ``previous`` [R] (each row's last generated token),
    "start" / "mask" the special token, each at position source_length + its target index. The project's decoder and
    the Hugging Face wrapper (s2s_ft/hf/) both build their steps with it."""
    rows, device = source_length.shape[0], source_length.device
    fill = {"start": special.start, "mask": special.mask}
    ids = torch.stack([previous if kind == "previous" else torch.full((rows,), fill[kind], device=device)
                       for kind, _, _ in feed], 1)
    positions = torch.stack([source_length + index for _, index, _ in feed], 1)
    ranks = torch.tensor([column_ranks for _, _, column_ranks in feed], device=device)
    return ids, positions, ranks[:, 0].expand(rows, -1), ranks[:, 1].expand(rows, -1)


def row_generator(seed: int, key: int, j: int) -> torch.Generator:
    """A host generator seeded from (seed, sentence key, row j) only: its draws do not depend on the batch."""
    digest = hashlib.sha256(f"{seed}/{key}/{j}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sampling_log_probs(log_probs: torch.Tensor, config: SearchConfig) -> torch.Tensor:
    """[R, V] log-probs of the distribution sampled from: temperature, then top-k, then top-p (smallest nucleus
    whose probability reaches top_p; its last token is the one that reaches it), renormalised; rows whose every
    token is banned stay all -inf."""
    logits = log_probs.double() / config.temperature
    vocab = logits.shape[-1]
    if config.top_k and config.top_k < vocab:
        kth = logits.topk(config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    dead = torch.isneginf(logits).all(-1, keepdim=True)
    logits = logits.masked_fill(dead, 0.0)  # no NaN from an all -inf softmax; restored below
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability of the more likely tokens
        drop_sorted = before >= config.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.log_softmax(-1).masked_fill(dead, float("-inf"))


def sample_tokens(log_probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """[R] one token per row by inverse CDF with the row's generator (-1 for a row with no allowed token)."""
    probs = log_probs.exp().cpu()
    cumulative = probs.cumsum(-1)
    tokens = []
    for r, generator in enumerate(generators):
        total = float(cumulative[r, -1])
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if not total > 0:
            tokens.append(-1)
            continue
        t = int(torch.searchsorted(cumulative[r], torch.tensor([u * total], dtype=torch.float64), right=True))
        t = min(t, probs.shape[-1] - 1)
        while probs[r, t] == 0:  # rounding at the top end: step back to the last allowed token
            t -= 1
        tokens.append(t)
    return torch.tensor(tokens, dtype=torch.long)
