"""Monolingual training data for MASS: one sentence a line.

Two formats, chosen by the file name:

* ``*.jsonl`` / ``*.json``: JSON lines with a ``"text"`` field, a string (tokenised with the checkpoint's
  tokenizer) or a list of word pieces already in the vocabulary (as ``src``/``tgt`` in s2s_ft/data/reading.py).
* anything else: plain UTF-8 text, one sentence a line.

Blank lines are skipped. A line longer than ``max_length`` word pieces is split into the fewest chunks of at most
``max_length`` pieces, of near-equal size (so no tiny tail chunk); each chunk is a sentence of its own. Problems
are reported as ``FILE:LINE: what was expected`` (malformed lines can be counted and skipped with
``skip_bad_lines``, undecodable bytes and malformed JSON included, as in s2s_ft/data/reading.py).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator, Union

from s2s_ft.data.reading import (
    DataError,
    check_side,
    iter_jsonl,
    report_skipped,
    tokenize_sides,
)

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
TOKENIZE_BLOCK = 4096  # lines tokenised per tokenizer call (bounds the memory of one call on large corpora)


@dataclass
class SentenceStats:
    lines: int = 0      # usable non-blank lines
    sentences: int = 0  # after splitting long lines
    split_lines: int = 0
    skipped: int = 0


def is_jsonl(path: str) -> bool:
    return path.lower().endswith(JSONL_SUFFIXES)


def iter_text_lines(path: str, inline_errors: bool = False) -> Iterator[tuple[int, Union[str, DataError]]]:
    """(line number, text) for every non-blank line of a UTF-8 text file (an undecodable line raises DataError, or
    with ``inline_errors`` is yielded as ``(line number, DataError)``)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if not inline_errors:
                    raise DataError(f"{path}:{number}: not valid UTF-8 (byte {error.start})") from None
                yield number, DataError(f"{path}:{number}: not valid UTF-8 (byte {error.start})")
                continue
            if text.strip():
                yield number, text.strip()


def _iter_texts(path: str, skip_bad_lines: bool = False) -> Iterator[tuple[int, Union[str, list, DataError]]]:
    """(line number, text or word-piece list) per record; a malformed record yields its DataError instead."""
    if not is_jsonl(path):
        yield from iter_text_lines(path, inline_errors=skip_bad_lines)
        return
    for number, record in iter_jsonl(path, inline_errors=skip_bad_lines, expected='a "text" field'):
        if isinstance(record, DataError):
            yield number, record
            continue
        try:
            value = check_side(path, number, record, "text", expected='{"text": ...}')
        except DataError as error:
            value = error
        yield number, value


def split_chunks(ids: list[int], max_length: int) -> list[list[int]]:
    """The fewest chunks of at most ``max_length`` ids, sizes differing by at most one."""
    count = -(-len(ids) // max_length)
    bounds = [len(ids) * i // count for i in range(count + 1)]
    return [ids[bounds[i]:bounds[i + 1]] for i in range(count)]


def read_sentences(path: str, tokenizer, max_length: int,
                   skip_bad_lines: bool = False) -> tuple[list[list[int]], SentenceStats]:
    """Tokenised sentences (ids without specials), each at most ``max_length`` word pieces."""
    if max_length < 1:
        raise ValueError("max_length must be >= 1")
    stats = SentenceStats()
    sentences: list[list[int]] = []
    bad: list[str] = []

    def problem(message: str) -> None:
        if not skip_bad_lines:
            raise DataError(message)
        bad.append(message)

    def flush(block: list[tuple[int, Union[str, list]]]) -> None:
        for (number, _), ids in zip(block, tokenize_sides(tokenizer, [value for _, value in block])):
            if not ids:
                problem(f"{path}:{number}: \"text\" tokenises to nothing" if is_jsonl(path)
                        else f"{path}:{number}: line tokenises to nothing")
                continue
            stats.lines += 1
            chunks = split_chunks(ids, max_length)
            stats.split_lines += len(chunks) > 1
            sentences.extend(chunks)
        block.clear()

    block: list[tuple[int, Union[str, list]]] = []
    any_line = False
    for number, value in _iter_texts(path, skip_bad_lines):
        any_line = True
        if isinstance(value, DataError):
            problem(str(value))
            continue
        block.append((number, value))
        if len(block) >= TOKENIZE_BLOCK:
            flush(block)
    flush(block)
    if not any_line:
        raise DataError(f"{path}: empty file (expected one sentence a line)")
    stats.sentences, stats.skipped = len(sentences), len(bad)
    report_skipped(path, bad)
    if not sentences:
        raise DataError(f"{path}: no usable sentences")
    if stats.split_lines:
        log.warning("%s: split %d lines longer than %d word pieces into chunks", path, stats.split_lines,
                    max_length)
    return sentences, stats
