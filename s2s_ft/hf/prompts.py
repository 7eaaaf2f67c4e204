"""Prompts for the wrapper: what a valid one is, the one source-length rule, and sources (with answers) encoded as
s2s-ft-decode encodes them.

A prompt row is ``[CLS] source [SEP]`` (padding outside it). Every way in (``forward``, ``generate``, the pipeline)
reads only its first ``max_source_length - 1`` real tokens and its closing [SEP]: ``[CLS]``, the source's first
``max_source_length - 2`` pieces, ``[SEP]``, which is what ``prepare_sources`` (s2s_ft/data/reading.py) makes of a
plain source for s2s-ft-decode, the server and evaluation during training. The pieces past the budget are masked
(treated as padding), not removed, so that ``generate``'s output keeps the prompt's columns as given.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import BatchEncoding

from s2s_ft.data.answers import uses_segment, uses_span
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
    """ValueError (one line) unless the prompts carry an answer exactly as the checkpoint was trained to read one
    (``settings["answer_encoding"]``, s2s_ft/data/answers.py): ``answer_mask`` for the span encodings, a second
    segment (``[CLS] source [SEP] answer [SEP]``) for the segment encodings, within the source budget (a longer one
    is cut around its answer, which needs the text: ``model.encode``)."""
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
    if uses_span(encoding) and answer_mask is None:
        raise ValueError(f"this checkpoint was trained with answers marked in the source (answer_encoding "
                         f"{encoding}): pass answer_mask; {encode_hint}")
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if uses_segment(encoding) and ((input_ids == special.sep) & real).sum(1).lt(2).any():
        raise ValueError(f"this checkpoint was trained with the answer as a second segment (answer_encoding "
                         f"{encoding}): each prompt must be [CLS] source [SEP] answer [SEP]; {encode_hint}")
    budget = settings.get("max_source_seq_length")
    if budget is not None and real.sum(1).gt(int(budget)).any():
        raise ValueError(f"a prompt is longer than the checkpoint's {budget} source positions; with answers it is cut "
                         f"around the answer: {encode_hint}")


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
