"""Incremental-state decoding: greedy and beam search over the shared model with a key/value cache.

The source is encoded once into a pre-allocated ``KVCache``; each step feeds only new tokens, with the same
positions, segments and attention ranks as training (``packing`` defines them):

* masked / pseudo_masked checkpoints: the previous token as a real target token (kept in the cache) plus a [MASK]
  at the next position with pseudo ranks (used to predict, never kept);
* causal checkpoints: just the previous token (the start token first), whose output predicts the next one.

``use_cache=False`` is the reference path: it recomputes the whole sequence at every step with the same inputs.
Greedy search is beam search with one beam.

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
are all banned (min_len, n-gram blocking, layout tokens) stops with what it has, possibly nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .model import KVCache, UnifiedTransformer
from .packing import SpecialIds, decoding_prefix, pseudo_ranks, real_target_ranks


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


@dataclass
class Hypothesis:
    tokens: list[int]  # without the closing [SEP]
    score: float  # length-normalised
    log_prob: float
    finished: bool = True


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
    history: dict = field(default_factory=dict)  # no-cache path: every stored input tensor so far

    def select(self, index: torch.Tensor) -> "_Rows":
        return _Rows(self.sentence[index], self.source_length[index], self.tokens[index], self.scores[index],
                     {name: value[index] for name, value in self.history.items()})


class Seq2SeqDecoder:
    """Loads once, decodes many batches; the model is any ``UnifiedTransformer`` with its training settings."""

    def __init__(self, model: UnifiedTransformer, special: SpecialIds, method: str,
                 device: torch.device | str = "cpu", autocast_dtype: Optional[torch.dtype] = None):
        self.model = model.eval().to(device)
        self.special, self.method = special, method
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype

    # -- one step's new tokens -----------------------------------------------------------------------------------
    def _step_inputs(self, rows: _Rows, step: int):
        """(input_ids, position_ids, token_type_ids, key_rank, query_rank, n_store) of the tokens fed at ``step``."""
        r = rows.tokens.shape[0]
        columns = []  # (ids [R], target index, ranks)
        if self.method == "causal":
            previous = rows.tokens[:, -1] if step else torch.full((r,), self.special.start, device=self.device)
            columns.append((previous, step, real_target_ranks(step)))
            n_store = 1
        else:
            if step:
                columns.append((rows.tokens[:, -1], step - 1, real_target_ranks(step - 1)))
            columns.append((torch.full((r,), self.special.mask, device=self.device), step, pseudo_ranks(step)))
            n_store = 1 if step else 0
        ids = torch.stack([c[0] for c in columns], 1)
        positions = torch.stack([rows.source_length + c[1] for c in columns], 1)
        ranks = torch.tensor([c[2] for c in columns], device=self.device)
        key_rank = ranks[:, 0].expand(r, -1)
        query_rank = ranks[:, 1].expand(r, -1)
        types = torch.full_like(ids, self.special.target_type)
        return ids, positions, types, key_rank, query_rank, n_store

    def _forward(self, inputs: dict, cache: Optional[KVCache], rows: _Rows, n_store: int) -> torch.Tensor:
        """Hidden state of the last new token (the predictor)."""
        if cache is not None:
            hidden = self.model(**inputs, cache=cache, n_store=n_store)
        else:
            full = {name: torch.cat([rows.history[name], value], 1) for name, value in inputs.items()}
            hidden = self.model(**full)
            for name, value in inputs.items():
                rows.history[name] = torch.cat([rows.history[name], value[:, :n_store]], 1)
        return hidden[:, -1]

    @torch.inference_mode()
    def generate(self, sources: Sequence[Sequence[int]], config: SearchConfig) -> list[list[Hypothesis]]:
        """Best ``config.nbest`` hypotheses per source, best first; sources are token ids without specials."""
        k, sp = config.beam_size, self.special
        n = len(sources)
        prefix = decoding_prefix(sources, sp).to(self.device)
        inputs = prefix.model_inputs()
        source_width = prefix.input_ids.shape[1]
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        ignore_ids = torch.tensor(list(config.forbid_ignore_ids), dtype=torch.long, device=self.device)
        finished: list[list[Hypothesis]] = [[] for _ in range(n)]
        # Layout tokens are never output (s2s-ft forbids them too); [SEP] ends a hypothesis instead.
        never_generated = torch.tensor(sorted({sp.cls, sp.pad, sp.mask} - {sp.sep}), device=self.device)

        cache = None
        with autocast:
            if config.use_cache:
                cache_dtype = self.autocast_dtype or next(self.model.parameters()).dtype
                cache = KVCache(self.model.config, n, source_width + config.max_tgt_length + 1, self.device,
                                cache_dtype)
                self.model(**inputs, cache=cache)  # encode the source once
        expand = torch.arange(n, device=self.device).repeat_interleave(k)
        rows = _Rows(sentence=expand.clone(), source_length=(prefix.key_rank == 0).sum(1)[expand],
                     tokens=torch.zeros(n * k, 0, dtype=torch.long, device=self.device),
                     scores=torch.zeros(n, k, device=self.device).index_fill_(
                         1, torch.arange(1, k, device=self.device), float("-inf")).view(-1))
        if cache is not None:
            cache.reorder(expand)
        else:
            rows.history = {name: value[expand] for name, value in inputs.items()}

        for step in range(config.max_tgt_length):
            step_inputs = self._step_inputs(rows, step)
            names = ("input_ids", "position_ids", "token_type_ids", "key_rank", "query_rank")
            with autocast:
                hidden = self._forward(dict(zip(names, step_inputs[:5])), cache, rows, step_inputs[5])
                log_probs = torch.log_softmax(self.model.head(hidden).float(), -1)  # [R, V]
            vocab = log_probs.shape[-1]
            log_probs[:, never_generated] = float("-inf")
            if step < config.min_len:
                log_probs[:, sp.sep] = float("-inf")
            if config.forbid_duplicate_ngrams:
                banned = banned_ngram_mask(rows.tokens, vocab, config.ngram_size, ignore_ids)
                log_probs.masked_fill_(banned, float("-inf"))
            last_step = step + 1 == config.max_tgt_length

            alive = rows.sentence.shape[0] // k
            candidates = (rows.scores[:, None] + log_probs).view(alive, k * vocab)
            top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)
            beam, token = top_index // vocab, top_index % vocab
            sentences = rows.sentence.view(alive, k)[:, 0]

            # Move the small top-k tables to the host once per step: the bookkeeping below is per sentence.
            top_scores_h, beam_h, token_h = top_scores.tolist(), beam.tolist(), token.tolist()
            sentences_h = sentences.tolist()
            tokens_h = rows.tokens
            keep_rows, keep_tokens, keep_scores = [], [], []
            for a in range(alive):
                sentence = sentences_h[a]
                chosen = []
                for rank, (score, b, t) in enumerate(zip(top_scores_h[a], beam_h[a], token_h[a])):
                    if score == float("-inf"):
                        break
                    row = a * k + b
                    if t == sp.sep or last_step:
                        # only a [SEP] that would have kept its place in the beam finishes; the break below never
                        # skips one (the k-th live candidate has rank >= k - 1)
                        if rank < k and len(finished[sentence]) < k:
                            ids = tokens_h[row].tolist() + ([] if t == sp.sep else [t])
                            length = len(ids) + 1 if t == sp.sep else len(ids)
                            finished[sentence].append(Hypothesis(
                                ids, score / gnmt_length_penalty(length, config.length_penalty), score,
                                finished=t == sp.sep))
                    elif len(chosen) < k:
                        chosen.append((row, t, score))
                    if len(chosen) == k:
                        break
                if len(finished[sentence]) >= k or last_step or not chosen:
                    continue  # the sentence is done: its rows leave the batch
                while len(chosen) < k:  # fewer live candidates than beams: pad with dead copies
                    chosen.append((chosen[0][0], chosen[0][1], float("-inf")))
                for row, t, score in chosen:
                    keep_rows.append(row)
                    keep_tokens.append(t)
                    keep_scores.append(score)
            if not keep_rows:
                break
            index = torch.tensor(keep_rows, device=self.device)
            rows = rows.select(index)
            rows.tokens = torch.cat([rows.tokens, torch.tensor(keep_tokens, device=self.device)[:, None]], 1)
            rows.scores = torch.tensor(keep_scores, device=self.device, dtype=rows.scores.dtype)
            if cache is not None and keep_rows != list(range(len(tokens_h))):  # greedy: usually nothing moves
                # Beams only ever move within their sentence, whose source part of the cache they all share.
                cache.reorder(index, shared_prefix=source_width)

        results = []
        for hyps in finished:
            hyps.sort(key=lambda h: h.score, reverse=True)
            results.append(hyps[:config.nbest])
        return results
