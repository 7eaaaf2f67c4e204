"""Prompts for the wrapper: what a valid one is, the one source-length rule, and sources (with answers) encoded as
s2s-ft-decode encodes them.

A prompt row is ``[CLS] source [SEP]`` (padding outside it). Every way in (``forward``, ``generate``, the pipeline)
reads only its first ``max_source_length - 1`` real tokens and its closing [SEP]: ``[CLS]``, the source's first
``max_source_length - 2`` pieces, ``[SEP]``, which is what ``prepare_sources`` (s2s_ft/data/reading.py) makes of a
plain source for s2s-ft-decode, the server and evaluation during training. The pieces past the budget are masked
(treated as padding), not removed, so that ``generate``'s output keeps the prompt's columns as given.

A checkpoint trained with answers reads a row ``[CLS] sentence [SEP] answer [SEP]`` (the text ``"sentence [SEP]
answer"``, as the server takes it, or a tokenizer's text pair) given without ``answer_mask`` as s2s-ft-decode reads
``AnswerSource(sentence, answer)``: ``encode_answer_sources`` (s2s_ft/data/answers.py) run on the row's columns
decides which of them are read (a long sentence windowed around its answer, the appended answer capped, for ``span``
the appended answer not read at all) and which carry the answer's token type; the columns it leaves out are treated
as padding, as above.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import BatchEncoding

from s2s_ft.data.answers import (NOT_IN_SOURCE, AnswerSource, _piece_span, encode_answer_sources, uses_segment,
                                 uses_span)
from s2s_ft.data.packing import SpecialIds, source_segments
from s2s_ft.data.reading import prepare_sources
from s2s_ft.decoding.inference import with_answers


def check_prompt_ids(input_ids, attention_mask, vocab_size: int, special: SpecialIds) -> None:
    """ValueError (one line) unless ``input_ids`` is a non-empty [batch, width] tensor of vocabulary ids whose rows'
    real tokens (``attention_mask``; None: all) are ``[CLS] ... [SEP]`` with padding only outside them."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.is_floating_point():
        shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2-D tensor of token ids [batch, width], got {shape}")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids holds no prompt (batch size 0)")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty (width 0): each prompt must be [CLS] source [SEP]")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                         f"{tuple(input_ids.shape)}: they must match")
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if outside.any():
        raise ValueError(f"input_ids holds id {int(input_ids[outside][0])}, outside the vocabulary (0 to "
                         f"{vocab_size - 1})")
    real = attention_mask.bool()
    lengths = real.sum(1)
    first = real.long().argmax(1)
    last = (first + lengths - 1).clamp(min=0)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    if (lengths < 2).any() or (input_ids[rows, first] != special.cls).any() or (
            input_ids[rows, last] != special.sep).any() or (
            real.long().cumsum(1).gather(1, last[:, None])[:, 0] != lengths).any():
        raise ValueError("each prompt must be [CLS] source [SEP] with padding only outside it (tokenize with the "
                         "tokenizer's special tokens: add_special_tokens=True, its default)")


def within_source_budget(attention_mask: torch.Tensor, max_source_length: Optional[int]) -> torch.Tensor:
    """The prompt columns the model reads (bool [B, W]): each row's first ``max_source_length - 1`` real tokens and
    its last one, [SEP] (all of them where the row fits). No host sync: it runs at every decoding step."""
    real = attention_mask.bool()
    if max_source_length is None:
        return real
    order = real.long().cumsum(1)  # 1-based index among the row's real tokens
    return real & ((order < max_source_length) | (order == real.sum(1, keepdim=True)))


def check_answer_inputs(input_ids, attention_mask, answer_mask, settings: dict, special: SpecialIds) -> None:
    """ValueError (one line) unless the prompts carry an answer as the checkpoint was trained to read one
    (``settings["answer_encoding"]``, s2s_ft/data/answers.py): each row ``[CLS] sentence [SEP] answer [SEP]`` (one
    separator inside, a non-empty answer: ``read_prompts`` encodes it), or, for the span encodings, ``answer_mask``
    over prompts ``encode`` built, within the source budget (a longer one is cut around its answer, which needs the
    rows' own layout)."""
    encoding = settings.get("answer_encoding")
    if answer_mask is not None:
        if not uses_span(encoding) or special.answer_type is None:
            raise ValueError(f"answer_mask: this checkpoint marks no answer inside the source (answer_encoding "
                             f"{encoding}); leave answer_mask out")
        if tuple(answer_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"answer_mask has shape {tuple(answer_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must match")
    if not encoding:
        return
    encode_hint = "model.encode(tokenizer, sources, answers=...) encodes them as s2s-ft-decode does"
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if answer_mask is None:
        inner = ((input_ids == special.sep) & real).sum(1) - 1  # separators before the closing one
        if inner.ne(1).any():
            raise ValueError(f"this checkpoint was trained with answers (answer_encoding {encoding}): each prompt "
                             f"must be [CLS] sentence [SEP] answer [SEP], the text \"sentence [SEP] answer\" with "
                             f"one separator (the tokenizer's sep_token) inside, as the server takes it; a prompt has "
                             f"{int(inner[inner.ne(1)][0])}; or {encode_hint}")
        last = input_ids.shape[1] - 1 - real.flip(1).long().argmax(1)
        if input_ids.gather(1, (last - 1).clamp(min=0)[:, None]).eq(special.sep).any():
            raise ValueError("a prompt's answer is empty: nothing between its separator and the closing one "
                             "(\"sentence [SEP] answer\")")
        return
    budget = settings.get("max_source_seq_length")
    if budget is not None and real.sum(1).gt(int(budget)).any():
        raise ValueError(f"a prompt with answer_mask is longer than the checkpoint's {budget} source positions; "
                         f"with answers it is cut around the answer: give it as \"sentence [SEP] answer\" without "
                         f"answer_mask, or {encode_hint}")


def read_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_mask: Optional[torch.Tensor],
                 settings: dict, special: SpecialIds) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(the prompt columns the model reads, bool [B, W]; the columns given the answer's token type, or None) of
    prompts ``check_prompt_ids`` and ``check_answer_inputs`` accepted: ``within_source_budget`` and ``answer_mask``
    as given, or, for a checkpoint trained with answers and no ``answer_mask``, ``read_answer_prompts``."""
    if not settings.get("answer_encoding") or answer_mask is not None:
        budget = settings.get("max_source_seq_length")
        return within_source_budget(attention_mask, None if budget is None else int(budget)), answer_mask
    return read_answer_prompts(input_ids, attention_mask, settings, special)


class _PromptColumns:
    """The "tokenizer" ``encode_answer_sources`` is given for sources whose pieces are prompt columns (pre-tokenised
    lists): a column is its own id, so what it returns are the columns the decoder's source is made of."""

    @staticmethod
    def convert_tokens_to_ids(tokens) -> list:
        return list(tokens)

    def __call__(self, texts, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [[] for _ in texts]}  # only asked for string answers, which there are none of


def read_answer_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: dict,
                        special: SpecialIds) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``read_prompts`` of rows ``[CLS] sentence [SEP] answer [SEP]`` as s2s-ft-decode reads ``AnswerSource(sentence,
    answer)``: the answer's span is the first occurrence of its ids among the sentence's (``_piece_span``, as for
    pre-tokenised sources; none: not marked), and ``encode_answer_sources`` on the columns makes the decoder's source
    (window, capped answer, ``span`` without the appended answer, whose columns are then not read: the inner
    [SEP] closes the source). One host transfer; the tensors are on ``input_ids``' device."""
    encoding, budget = settings["answer_encoding"], int(settings["max_source_seq_length"])
    read = torch.zeros(input_ids.shape, dtype=torch.bool)
    marked = torch.zeros_like(read)
    for row, (ids, real) in enumerate(zip(input_ids.tolist(), attention_mask.bool().tolist())):
        columns = [column for column, is_real in enumerate(real) if is_real]
        inner = next(column for column in columns[1:-1] if ids[column] == special.sep)
        sentence, answer = [c for c in columns[1:-1] if c < inner], [c for c in columns[1:-1] if c > inner]
        span = _piece_span([ids[c] for c in sentence], [ids[c] for c in answer], None)
        item = AnswerSource(sentence, answer, NOT_IN_SOURCE if span is None else span[0])
        (source,), _ = encode_answer_sources(_PromptColumns(), [item], budget, encoding, inner)
        read[row, [columns[0], *source, columns[-1] if uses_segment(encoding) else inner]] = True
        if source.answer_span is not None:
            marked[row, source[source.answer_span[0]:source.answer_span[1]]] = True
    device = input_ids.device
    return read.to(device), marked.to(device) if uses_span(encoding) else None


def encode_sources(tokenizer, sources: Sequence, answers: Optional[Sequence], settings: dict, special: SpecialIds,
                   return_tensors: Optional[str] = "pt") -> BatchEncoding:
    """``input_ids`` / ``attention_mask`` (and ``answer_mask`` for the span encodings) of ``[CLS] source [SEP]`` per
    source, left-padded, built by ``prepare_sources`` as s2s-ft-decode builds them (cut to the source budget, the
    answer encoded by the checkpoint's ``answer_encoding``)."""
    if isinstance(sources, str) or not len(sources):
        raise ValueError("encode() takes a non-empty list of sources")
    encoding = settings.get("answer_encoding")
    ids, _ = prepare_sources(tokenizer, with_answers(sources, answers), int(settings["max_source_seq_length"]),
                             encoding)
    rows = [[special.cls, *row, special.sep] for row in ids]
    marked = [[token_type == special.answer_type for token_type in source_segments(row, special)] for row in ids]
    width = max(map(len, rows))
    data = {"input_ids": [[special.pad] * (width - len(row)) + row for row in rows],
            "attention_mask": [[0] * (width - len(row)) + [1] * len(row) for row in rows]}
    if uses_span(encoding):
        data["answer_mask"] = [[False] * (width - len(row)) + row for row in marked]
    return BatchEncoding(data, tensor_type=return_tensors)
