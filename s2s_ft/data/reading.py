"""Reading and tokenising training data: s2s-ft JSONL (one ``{"src": ..., "tgt": ...}`` object a line, each side a
string or a pre-tokenised list of word pieces).

Every problem with a line is reported as ``FILE:LINE: what was expected`` so a bad line in a large file can be found.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

from s2s_ft.data.packing import Pair, SpecialIds

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file is unreadable or malformed; the message names the file and line."""


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")


def load_tokenizer(path: str):
    """A tokenizer from a local directory (never the hub)."""
    from transformers import AutoTokenizer

    if not path or not os.path.isdir(path):
        raise DataError(f"{path}: tokenizer directory not found (expected a local directory with tokenizer files)")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        # transformers would build an empty-vocabulary tokenizer from config.json alone
        raise DataError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: could not load a tokenizer ({first_line})") from None


def special_ids(tokenizer, source_type: int, target_type: int) -> SpecialIds:
    """The layout's special tokens from the tokenizer: [CLS]/[SEP] for BERT-likes, <s>/</s> for RoBERTa-likes."""
    ids = dict(cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id, mask=tokenizer.mask_token_id,
               pad=tokenizer.pad_token_id)
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')} has no {', '.join(missing)} token")
    return SpecialIds(**ids, vocab_size=len(tokenizer), source_type=source_type, target_type=target_type)


def iter_jsonl(path: str, inline_errors: bool = False,
               expected: str = '"src" and "tgt"') -> Iterator[tuple[int, Union[dict, "DataError"]]]:
    """(line number, object) for every non-blank line; malformed lines (bad UTF-8, bad JSON, not an object) raise
    DataError naming the line, or with ``inline_errors`` are yielded as ``(line number, DataError)`` so that the
    caller can count and skip them (``--skip_bad_lines``). ``expected`` names the fields the caller needs, for the
    empty-file message."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    seen_any = False
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            problem = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problem, text = f"not valid UTF-8 (byte {error.start})", "?"
            if not text.strip():
                continue
            seen_any = True
            if problem is None:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as error:
                    problem = f"malformed JSON ({error.msg} at column {error.colno})"
                except RecursionError:
                    problem = "malformed JSON (nested too deeply)"
            if problem is None and not isinstance(value, dict):
                problem = f"expected a JSON object, got {type(value).__name__}"
            if problem is not None:
                if not inline_errors:
                    raise DataError(f"{path}:{number}: {problem}")
                yield number, DataError(f"{path}:{number}: {problem}")
                continue
            yield number, value
    if not seen_any:
        raise DataError(f"{path}: empty file (expected JSON lines with {expected})")


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    skipped: int = 0


def check_side(path, number, record, key, expected: str = '{"src": ..., "tgt": ...}'):
    """``record[key]`` if it is a non-empty string or a non-empty list of word-piece strings, else DataError naming
    the line (``expected`` shows the record a line should hold)."""
    value = record.get(key)
    if value is None:
        raise DataError(f"{path}:{number}: missing \"{key}\" (expected {expected})")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{path}:{number}: \"{key}\" is empty")
        return value
    if isinstance(value, list) and value and all(isinstance(piece, str) for piece in value):
        return value
    raise DataError(f"{path}:{number}: \"{key}\" must be a non-empty string or a list of word-piece strings")


def report_skipped(path: str, bad: Sequence[str], consequence: str = "") -> None:
    """One warning for the bad lines ``--skip_bad_lines`` skipped: how many, and the first three."""
    if bad:
        log.warning("skipped %d bad lines in %s%s; first: %s", len(bad), path, consequence, " | ".join(bad[:3]))


def read_sources(path: str, skip_bad_lines: bool = False) -> tuple[list, list[int]]:
    """``src`` of every non-blank line of a JSONL file to decode (None for a skipped bad line) and its line number."""
    sources, numbers, bad = [], [], []
    for number, record in iter_jsonl(path, inline_errors=skip_bad_lines, expected='a "src" field'):
        try:
            if isinstance(record, DataError):
                raise record
            value = check_side(path, number, record, "src", expected='{"src": ...}')
        except DataError as error:
            if not skip_bad_lines:
                raise
            bad.append(str(error))
            value = None
        sources.append(value)
        numbers.append(number)
    report_skipped(path, bad, " (each gets an empty output line)")
    return sources, numbers


def tokenize_sides(tokenizer, values: Sequence) -> list[list[int]]:
    """Token ids without specials: strings are tokenised in one batch, word-piece lists are looked up."""
    strings = [(index, value) for index, value in enumerate(values) if isinstance(value, str)]
    result: list[Optional[list[int]]] = [None] * len(values)
    if strings:
        encoded = tokenizer([value for _, value in strings], add_special_tokens=False)["input_ids"]
        for (index, _), ids in zip(strings, encoded):
            result[index] = list(ids)
    for index, value in enumerate(values):
        if result[index] is None:
            result[index] = tokenizer.convert_tokens_to_ids(list(value))
    return result


def read_pairs(path: str, tokenizer, max_source_len: int, max_target_len: int,
               skip_bad_lines: bool = False) -> tuple[list[Pair], TokenizeStats]:
    """Tokenised pairs, truncated so ``[CLS] src [SEP]`` fits ``max_source_len`` and ``tgt [SEP]`` fits
    ``max_target_len`` (s2s-ft's convention)."""
    stats = TokenizeStats()
    numbers, sources, targets = [], [], []
    bad: list[str] = []
    for number, record in iter_jsonl(path, inline_errors=skip_bad_lines):
        try:
            if isinstance(record, DataError):
                raise record
            src, tgt = check_side(path, number, record, "src"), check_side(path, number, record, "tgt")
        except DataError as error:
            if not skip_bad_lines:
                raise
            bad.append(str(error))
            continue
        numbers.append(number)
        sources.append(src)
        targets.append(tgt)
    source_ids, target_ids = tokenize_sides(tokenizer, sources), tokenize_sides(tokenizer, targets)
    pairs = []
    for number, src, tgt in zip(numbers, source_ids, target_ids):
        empty = "src" if not src else "tgt" if not tgt else None
        if empty:
            message = f"{path}:{number}: \"{empty}\" tokenises to nothing"
            if not skip_bad_lines:
                raise DataError(message)
            bad.append(message)
            continue
        if len(src) > max_source_len - 2:
            src, stats.truncated_sources = src[:max_source_len - 2], stats.truncated_sources + 1
        if len(tgt) > max_target_len - 1:
            tgt, stats.truncated_targets = tgt[:max_target_len - 1], stats.truncated_targets + 1
        pairs.append(Pair(src, tgt))
    stats.examples, stats.skipped = len(pairs), len(bad)
    report_skipped(path, bad)
    if not pairs:
        raise DataError(f"{path}: no usable examples")
    if stats.truncated_sources or stats.truncated_targets:
        log.warning("%s: truncated %d sources to %d tokens and %d targets to %d tokens", path,
                    stats.truncated_sources, max_source_len, stats.truncated_targets, max_target_len)
    return pairs, stats


def prepare_sources(tokenizer, sources: Sequence, max_source_length: int) -> tuple[list[list[int]], list[int]]:
    """What every path that decodes does to its sources (s2s-ft-decode, the server, evaluation during training):
    token ids without specials, cut to fit ``[CLS] src [SEP]`` in ``max_source_length`` positions. Returns the ids
    and each source's length before the cut (longer than ``max_source_length - 2``: it was cut)."""
    ids = tokenize_sides(tokenizer, sources)
    limit = max_source_length - 2
    return [x[:limit] for x in ids], [len(x) for x in ids]
