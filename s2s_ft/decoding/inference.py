"""The Python decoding API: load a fine-tuned checkpoint once, decode many texts.

    from s2s_ft.decoding.inference import load_decoder
    decoder = load_decoder("out/ckpt-1000")
    print(decoder.decode_texts(["the source sentence"], beam_size=5))

The command line (``s2s-ft-decode``, ``decode_seq2seq.py``) is s2s_ft/cli/decode.py; it is built on this module.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Collection, Optional, Sequence

import torch
from tqdm.auto import tqdm

from s2s_ft.data.answers import AnswerSource, check_answer
from s2s_ft.data.packing import SpecialIds
from s2s_ft.data.reading import load_tokenizer, prepare_sources
from s2s_ft.decoding.detokenize import DETOKENIZERS, detokenize
from s2s_ft.decoding.search import Hypothesis, SearchConfig, Seq2SeqDecoder, StepEvent
from s2s_ft.decoding.source_words import continuation_ids
from s2s_ft.errors import UsageError
from s2s_ft.model import checkpoint
from s2s_ft.model.precision import AUTOCAST_DTYPES, resolve_precision
from s2s_ft.model.quantize import check_quantize, quantize_int8

log = logging.getLogger("s2s_ft")

__all__ = ["AUTOCAST_DTYPES", "AnswerSource", "LoadedDecoder", "load_decoder", "forbid_ignore_ids", "with_answers"]


class LoadedDecoder:
    """A checkpoint's model, tokenizer and settings with text-in / text-out helpers."""

    def __init__(self, decoder: Seq2SeqDecoder, tokenizer, settings: dict, detokenize: str = "text"):
        if detokenize not in DETOKENIZERS:
            raise UsageError(f"--detokenize {detokenize}: choose from {', '.join(DETOKENIZERS)}")
        self.decoder, self.tokenizer, self.settings = decoder, tokenizer, settings
        self.detokenize = detokenize  # see s2s_ft/decoding/detokenize.py

    @property
    def max_source_length(self) -> int:
        return int(self.settings["max_source_seq_length"])

    @property
    def answer_encoding(self) -> Optional[str]:
        """How the checkpoint was shown answers (s2s_ft/data/answers.py), or None: it was trained without."""
        return self.settings.get("answer_encoding")

    def source_ids(self, sources: Sequence, max_source_length: Optional[int] = None) -> tuple[list[list[int]], int]:
        """Token ids (no specials), truncated to fit ``[CLS] src [SEP]``; returns (ids, number truncated). Sources
        with an answer are ``AnswerSource`` objects (or use ``with_answers``)."""
        length = max_source_length or self.max_source_length
        ids, full_lengths = prepare_sources(self.tokenizer, sources, length, self.answer_encoding)
        return ids, sum(n > length - 2 for n in full_lengths)

    def text(self, tokens: Sequence[int]) -> str:
        """Detokenised text in the ``detokenize`` style (the tokenizer's decoder, or spaced / PTB tokens)."""
        return detokenize(self.tokenizer, tokens, self.detokenize)

    def check_position_budget(self, sources: Sequence[Sequence[int]], max_tgt_length: int,
                              remedy: str = "lower --max_tgt_length or --max_seq_length") -> None:
        """UsageError unless the longest source plus ``max_tgt_length`` generated tokens fit the position table
        (checked here: the model checks positions only on CPU, where it costs no sync)."""
        model_config = self.decoder.model.config
        usable = model_config.max_position_embeddings - model_config.position_offset
        needed = max(map(len, sources), default=0) + 2 + max_tgt_length  # [CLS] src [SEP] + generated
        if needed > usable:
            raise UsageError(f"the longest source ({needed - 2 - max_tgt_length} tokens) plus {max_tgt_length} "
                             f"target tokens needs {needed} positions; the checkpoint has {usable} ({remedy})")

    @functools.cached_property
    def continuation_ids(self) -> list[int]:
        """The tokenizer's word-continuation pieces (``source_words_only``); computed on first use."""
        return continuation_ids(self.tokenizer)

    def decode_ids(self, sources: Sequence[Sequence[int]], config: SearchConfig, batch_size: int = 32,
                   progress: bool = False, shard: tuple[int, int] = (0, 1),
                   keys: Optional[Sequence[int]] = None,
                   should_stop: Optional[Callable[[], bool]] = None,
                   after_batch: Optional[Callable[[], object]] = None,
                   on_step: Optional[Callable[[list[StepEvent]], object]] = None,
                   drop: Optional[Callable[[], Collection[int]]] = None) -> list[Optional[list[Hypothesis]]]:
        """Hypotheses per source in input order; batches are formed from length-sorted sources.

        With ``config.do_sample`` each source's samples are seeded from (``config.seed``, its key, the sample's
        index): ``keys`` default to the positions 0..n-1 in ``sources``, so the samples do not depend on
        ``batch_size`` or ``shard`` (see s2s_ft/decoding/search.py for what is guaranteed).

        ``shard=(rank, world)`` decodes only batches rank, rank + world, ... (the other entries stay None). The
        batches are cut before sharding, so every batch is exactly what a single process decodes: the ranks'
        results together are a single process's results, bit for bit.

        ``should_stop``: asked before every decoding step; True ends the call with ``DecodingStopped``.
        ``after_batch``: called after each batch (e.g. to trim the heap during training's dev evaluation).
        ``on_step`` / ``drop``: as ``Seq2SeqDecoder.generate``'s (streaming), with sentences named by their positions
        in ``sources``.
        """
        if config.source_words_only and not config.continuation_ids:
            config = dataclasses.replace(config, continuation_ids=self.continuation_ids)
        config.check()
        self.check_position_budget(sources, config.max_tgt_length)
        keys = list(range(len(sources))) if keys is None else list(keys)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        mine = batches[shard[0]::shard[1]]
        results: list[Optional[list[Hypothesis]]] = [None] * len(sources)
        bar = tqdm(total=sum(map(len, mine)), desc="decode", disable=not progress or None)
        for chunk in mine:
            stepped = None if on_step is None else functools.partial(_events_in_call, on_step, chunk)
            local = None if drop is None else functools.partial(_drop_in_chunk, drop, chunk)
            for index, hyps in zip(chunk, self.decoder.generate([sources[i] for i in chunk], config,
                                                                [keys[i] for i in chunk], should_stop, stepped, local)):
                results[index] = hyps
            bar.update(len(chunk))
            if after_batch is not None:
                after_batch()
        bar.close()
        empty = sum(hyps == [] for hyps in results)
        if empty:  # not a silent blank line: say how many, and why it happens
            log.warning("%d of %d sentences ended with no hypothesis (every candidate was banned: min_len, n-gram "
                        "blocking or the length limit); their outputs are empty", empty, len(sources))
        return results

    def decode_texts(self, sources: Sequence, batch_size: int = 32,
                     after_batch: Optional[Callable[[], object]] = None, answers: Optional[Sequence] = None,
                     **search) -> list[str]:
        """The best hypothesis of each source (sampling: the first sample) as text; ``search`` are SearchConfig
        fields, e.g. ``beam_size=5`` or ``do_sample=True, top_p=0.9, temperature=0.8, seed=1``. A checkpoint
        trained with answers needs each source's ``answers`` (text, looked up in the source; or give
        ``AnswerSource`` objects as ``sources``, with ``answer_start``)."""
        ids, _ = self.source_ids(with_answers(sources, answers))
        config = SearchConfig(max_tgt_length=search.pop("max_tgt_length", self.settings["max_target_seq_length"]),
                              **search)
        return [self.text(hyps[0].tokens) if hyps else ""
                for hyps in self.decode_ids(ids, config, batch_size, after_batch=after_batch)]


def _events_in_call(on_step: Callable, chunk: list[int], events: list[StepEvent]) -> None:
    """A batch's step events, their sentences renamed from positions in the batch to positions in the call."""
    on_step([dataclasses.replace(event, sentence=chunk[event.sentence]) for event in events])


def _drop_in_chunk(drop: Callable, chunk: list[int]) -> list[int]:
    """The call's sentences to drop, as positions in the batch ``chunk``."""
    gone = set(drop())
    return [i for i, position in enumerate(chunk) if position in gone]


def with_answers(sources: Sequence, answers: Optional[Sequence]) -> list:
    """``sources`` paired with ``answers`` (None: the sources as they are) as ``AnswerSource`` objects."""
    if answers is None:
        return list(sources)
    if isinstance(answers, str) or len(answers) != len(sources):
        raise UsageError(f"answers: expected a list of {len(sources)} answers, one per source")
    for index, (source, answer) in enumerate(zip(sources, answers)):
        problem = check_answer(source, answer, None)
        if problem:
            raise UsageError(f"answers[{index}]: {problem}")
    return [AnswerSource(source, answer) for source, answer in zip(sources, answers)]


def load_decoder(path: str, device: Optional[str] = None, precision: str = "fp32",
                 detokenize: str = "text", quantize: str = "none") -> LoadedDecoder:
    """The checkpoint directory ``path`` (written by training) ready to decode on ``device`` (default: the GPU if
    there is one) in ``precision`` (fp32, bf16, or fp16 on a GPU), detokenising in the ``detokenize`` style.
    ``quantize="int8"``: dynamic int8 linear layers (CPU, fp32 only; s2s_ft/model/quantize.py), applied to the model in
    memory; the checkpoint directory is only read."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(precision, device=device)
    check_quantize(quantize, device, precision)
    model, settings = checkpoint.load_finetuned(path)
    if quantize == "int8":
        quantize_int8(model)
    tokenizer = load_tokenizer(path)
    special = SpecialIds(**settings["special_ids"])
    decoder = Seq2SeqDecoder(model, special, settings["fine_tune"], device, AUTOCAST_DTYPES[precision])
    return LoadedDecoder(decoder, tokenizer, settings, detokenize)


def forbid_ignore_ids(tokenizer, words: Optional[str], checkpoint_path: str) -> list[int]:
    """Ids of the '|'-separated ``--forbid_ignore_word`` tokens; a word the vocabulary lacks is refused (it would
    silently become the unknown token)."""
    words = [w for w in (words or "").split("|") if w]
    ids = tokenizer.convert_tokens_to_ids(words)
    unknown = [w for w, i in zip(words, ids) if i is None or (i == tokenizer.unk_token_id and w != tokenizer.unk_token)]
    if unknown:
        raise UsageError(f"--forbid_ignore_word: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                         f"a token of {checkpoint_path}'s vocabulary (it would match only {tokenizer.unk_token}); "
                         f"give single vocabulary tokens, as the tokenizer writes them")
    return ids
