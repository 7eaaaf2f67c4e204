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

from s2s_ft.data.answers import AnswerPresence, AnswerSource, encode_answer_sources, read_answer_source
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


def special_ids(tokenizer, source_type: int, target_type: int, answer_type: Optional[int] = None) -> SpecialIds:
    """The layout's special tokens from the tokenizer: [CLS]/[SEP] for BERT-likes, <s>/</s> for RoBERTa-likes."""
    ids = dict(cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id, mask=tokenizer.mask_token_id,
               pad=tokenizer.pad_token_id)
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')} has no {', '.join(missing)} token")
    return SpecialIds(**ids, vocab_size=len(tokenizer), source_type=source_type, target_type=target_type,
                      answer_type=answer_type)


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


def first_row_has_answer(path: str) -> bool:
    """Whether the first row of a JSONL file has an ``answer`` (False for a missing or unreadable file: reading it
    for real reports that, naming the line)."""
    try:
        for _, record in iter_jsonl(path, inline_errors=True):
            return isinstance(record, dict) and "answer" in record
    except DataError:
        pass
    return False


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


def read_source(path: str, number: int, record, presence: AnswerPresence, expected: str = '{"src": ...}'):
    """A row's source: ``src``, or an ``AnswerSource`` where the row has an ``answer`` (s2s_ft/data/answers.py);
    DataError naming the line for a bad source or answer, or an answer where the file's first row had none (or the
    other way round)."""
    if isinstance(record, DataError):
        raise record
    value, problem = read_answer_source(record, check_side(path, number, record, "src", expected=expected))
    problem = problem or presence.check(number, isinstance(value, AnswerSource))
    if problem:
        raise DataError(f"{path}:{number}: {problem}")
    return value


def read_sources(path: str, skip_bad_lines: bool = False) -> tuple[list, list[int]]:
    """The source of every non-blank line of a JSONL file to decode (``read_source``; None for a skipped bad line)
    and its line number."""
    sources, numbers, bad = [], [], []
    presence = AnswerPresence(path)
    for number, record in iter_jsonl(path, inline_errors=skip_bad_lines, expected='a "src" field'):
        try:
            value = read_source(path, number, record, presence)
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


def read_pairs(path: str, tokenizer, max_source_len: int, max_target_len: int, skip_bad_lines: bool = False,
               answer_encoding: Optional[str] = None) -> tuple[list[Pair], TokenizeStats]:
    """Tokenised pairs, truncated so ``[CLS] src [SEP]`` fits ``max_source_len`` and ``tgt [SEP]`` fits
    ``max_target_len`` (s2s-ft's convention). Rows with an ``answer`` need ``answer_encoding`` (and rows without
    one refuse it): their sources are encoded as ``prepare_sources`` does for decoding."""
    stats = TokenizeStats()
    numbers, sources, targets = [], [], []
    bad: list[str] = []
    presence = AnswerPresence(path)
    for number, record in iter_jsonl(path, inline_errors=skip_bad_lines):
        try:
            src = read_source(path, number, record, presence, expected='{"src": ..., "tgt": ...}')
            tgt = check_side(path, number, record, "tgt")
        except DataError as error:
            if not skip_bad_lines:
                raise
            bad.append(str(error))
            continue
        numbers.append(number)
        sources.append(src)
        targets.append(tgt)
    check_answer_encoding(path, presence.has_answers, answer_encoding)
    source_ids, full_lengths = prepare_sources(tokenizer, sources, max_source_len, answer_encoding)
    target_ids = tokenize_sides(tokenizer, targets)
    pairs = []
    for number, src, full_length, tgt in zip(numbers, source_ids, full_lengths, target_ids):
        empty = "src" if not src else "tgt" if not tgt else None
        if empty:
            message = f"{path}:{number}: \"{empty}\" tokenises to nothing"
            if not skip_bad_lines:
                raise DataError(message)
            bad.append(message)
            continue
        stats.truncated_sources += full_length > max_source_len - 2
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


def check_answer_encoding(path: str, has_answers: bool, answer_encoding: Optional[str],
                          checkpoint: Optional[str] = None) -> None:
    """DataError unless the rows of ``path`` carry answers exactly when an answer encoding is in use: the training
    run's ``--answer_encoding``, or with ``checkpoint`` the one that checkpoint was trained with."""
    if has_answers and not answer_encoding:
        raise DataError(f'{path}: the rows have an "answer", but ' + (
            f"{checkpoint} was trained without answers" if checkpoint else
            "--answer_encoding is not set (the model would not see it)"))
    if answer_encoding and not has_answers:
        raise DataError(f"{path}: " + (f"{checkpoint} was trained with answers (answer_encoding {answer_encoding})"
                                       if checkpoint else f"--answer_encoding is {answer_encoding}")
                        + ', but the rows have no "answer"')


def prepare_sources(tokenizer, sources: Sequence, max_source_length: int,
                    answer_encoding: Optional[str] = None) -> tuple[list[list[int]], list[int]]:
    """What every path that trains or decodes does to its sources (s2s-ft-train, s2s-ft-decode, the server, evaluation
    during training, the Hugging Face wrapper): token ids without specials, cut to fit ``[CLS] src [SEP]`` in
    ``max_source_length`` positions. Returns the ids and each source's length before the cut (longer than
    ``max_source_length - 2``: it was cut).

    ``AnswerSource`` sources (rows with an answer) are encoded as ``answer_encoding`` says (s2s_ft/data/answers.py)
    and need it; plain sources refuse it."""
    answered = [isinstance(source, AnswerSource) for source in sources]
    if not sources:
        return [], []
    if any(answered) != all(answered) or (any(answered) and not answer_encoding):
        raise DataError('some sources have an "answer" and some do not' if any(answered) != all(answered) else
                        'the sources have an "answer", but the model was trained without answers')
    if answer_encoding and not any(answered):
        raise DataError(f'the model was trained with answers (answer_encoding {answer_encoding}): give each source '
                        f'its "answer"')
    if any(answered):
        return encode_answer_sources(tokenizer, sources, max_source_length, answer_encoding, tokenizer.sep_token_id)
    ids = tokenize_sides(tokenizer, sources)
    limit = max_source_length - 2
    return [x[:limit] for x in ids], [len(x) for x in ids]
