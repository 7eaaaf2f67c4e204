"""The answer a generated text must be about (answer-aware question generation), and how it reaches the model.

A JSONL row may carry ``answer`` (a string, or a list of word pieces when ``src`` is one) and optionally
``answer_start``: the index of the answer's first word in ``src.split()`` (of its first piece when ``src`` is a list),
or -1 when the answer is not inside the source. Without ``answer_start`` the answer is looked up in the source (its
first occurrence: the words exactly, then ignoring case, then as characters ignoring case). For paragraph-level input
the paragraph *is* the source: put it in ``src`` and point ``answer_start`` into it.

The model stays one model: how the answer is shown is decided here, in the packing layer, and recorded in every
checkpoint (``answer_encoding`` in s2s_ft_settings.json), so that decoding shows it the same way. The encodings
(``ANSWER_ENCODINGS``):

* ``segment``: the answer as a second source segment, ``[CLS] source [SEP] answer [SEP]`` (how UniLM and s2s-ft feed
  ``paragraph [SEP] answer``; a tokenizer's text-pair encoding gives the same layout);
* ``span``: the answer's word pieces inside the source carry a token type of their own (``SpecialIds.answer_type``,
  one more row of the token-type embeddings, ``answer_type_id`` in config.json): a learned answer-position embedding,
  as the answer-position features of Zhou et al. 2017 or BERT-HLSQG's highlight, at no extra length;
* ``span+segment``: both.

Sources longer than the budget are cut around the answer (never cutting it off); the appended answer takes at most
half the budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from s2s_ft.data.packing import SourceIds

ANSWER_ENCODINGS = ("segment", "span", "span+segment")
DEFAULT_ANSWER_ENCODING = "span+segment"  # what training uses for rows with answers unless told (chosen on dev)
NOT_IN_SOURCE = -1  # answer_start of an answer that is not inside its source


def uses_span(encoding: Optional[str]) -> bool:
    return bool(encoding) and "span" in encoding.split("+")


def uses_segment(encoding: Optional[str]) -> bool:
    return bool(encoding) and "segment" in encoding.split("+")


def check_encoding(encoding: Optional[str]) -> None:
    if encoding is not None and encoding not in ANSWER_ENCODINGS:
        raise ValueError(f"unknown answer encoding {encoding!r}; choose one of {', '.join(ANSWER_ENCODINGS)}")


@dataclass(frozen=True)
class AnswerSource:
    """A source together with its answer (as a JSONL row gives them)."""
    src: Union[str, list]
    answer: Union[str, list]
    answer_start: Optional[int] = None  # see the module docstring; None: look it up

    def words(self) -> list:
        return self.src.split() if isinstance(self.src, str) else list(self.src)

    def answer_words(self) -> list:
        return self.answer.split() if isinstance(self.answer, str) else list(self.answer)


def check_answer(src, answer, answer_start) -> Optional[str]:
    """What is wrong with a row's ``answer`` / ``answer_start`` (None: nothing); ``src`` is already checked."""
    if isinstance(src, str):
        if not isinstance(answer, str) or not answer.strip():
            return '"answer" must be a non-empty string'
    elif not (isinstance(answer, str) and answer.strip()) and not (
            isinstance(answer, list) and answer and all(isinstance(piece, str) for piece in answer)):
        return '"answer" must be a non-empty string or a list of word-piece strings'
    if answer_start is None:
        return None
    if isinstance(answer_start, bool) or not isinstance(answer_start, int):
        return f'"answer_start" must be an integer (a word index into "src", or -1), got {answer_start!r}'
    if answer_start == NOT_IN_SOURCE:
        return None
    words = AnswerSource(src, answer).words()
    wanted = AnswerSource(src, answer).answer_words()
    found = words[answer_start:answer_start + len(wanted)] if answer_start >= 0 else []
    if found != wanted:
        shown = " ".join(found) if found else "past the end" if answer_start >= 0 else "a negative index"
        return (f'"answer_start" {answer_start} does not point at the answer: "src" word {answer_start} on is '
                f'"{shown}", the answer is "{" ".join(wanted)}" (-1: the answer is not in "src")')
    return None


class AnswerPresence:
    """A file gives every row an answer or none: the first row decides, a row that differs is an error."""

    def __init__(self, path: str):
        self.path, self.first = path, None  # (line number, has an answer) of the first row

    def check(self, number: int, has_answer: bool) -> Optional[str]:
        if self.first is None:
            self.first = (number, has_answer)
            return None
        first_number, first_has = self.first
        if has_answer == first_has:
            return None
        return (f'{"an" if has_answer else "no"} "answer", but line {first_number} has {"one" if first_has else "none"}'
                f' (every row of a file has an "answer", or none has)')

    @property
    def has_answers(self) -> bool:
        return bool(self.first and self.first[1])


def read_answer_source(record: dict, src) -> tuple[Union[str, list, AnswerSource], Optional[str]]:
    """(the row's source: ``src`` itself, or an ``AnswerSource`` when the row has an answer; what is wrong, or None)."""
    if "answer" not in record:
        if "answer_start" in record:
            return src, '"answer_start" without "answer"'
        return src, None
    answer, start = record["answer"], record.get("answer_start")
    problem = check_answer(src, answer, start)
    return (src if problem else AnswerSource(src, answer, start)), problem


# ------------------------------------------------------------------------------------------------------- encoding
def _char_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in re.finditer(r"\S+", text)]


def answer_char_span(item: AnswerSource) -> Optional[tuple[int, int]]:
    """[start, end) characters of the answer in a string source, or None when it is not there."""
    words, wanted, spans = item.words(), item.answer_words(), _char_spans(item.src)
    start = item.answer_start
    if start is None:
        lowered, wanted_lower = [w.lower() for w in words], [w.lower() for w in wanted]
        start = next((i for i in range(len(words) - len(wanted) + 1) if words[i:i + len(wanted)] == wanted), None)
        if start is None:
            start = next((i for i in range(len(words) - len(wanted) + 1)
                          if lowered[i:i + len(wanted)] == wanted_lower), None)
        if start is None:
            at = item.src.lower().find(" ".join(wanted).lower())
            return None if at < 0 or not wanted else (at, at + len(" ".join(wanted)))
    if start == NOT_IN_SOURCE or not wanted:
        return None
    return spans[start][0], spans[start + len(wanted) - 1][1]


def _piece_span(pieces: Sequence, wanted: Sequence, start: Optional[int]) -> Optional[tuple[int, int]]:
    if start is None:
        start = next((i for i in range(len(pieces) - len(wanted) + 1) if list(pieces[i:i + len(wanted)]) == list(
            wanted)), None)
    if start is None or start == NOT_IN_SOURCE or not wanted:
        return None
    return start, start + len(wanted)


def _token_span(offsets: Sequence[tuple[int, int]], chars: tuple[int, int]) -> Optional[tuple[int, int]]:
    """The tokens whose characters overlap ``chars``."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < chars[1] and b > chars[0] and b > a]
    return (inside[0], inside[-1] + 1) if inside else None


def _tokenize_with_spans(tokenizer, items: Sequence[AnswerSource]) -> list[tuple[list[int], Optional[tuple]]]:
    """Source ids (no specials) and the answer's [start, end) among them, per item."""
    result: list = [None] * len(items)
    strings = [i for i, item in enumerate(items) if isinstance(item.src, str)]
    if strings:
        encoded = tokenizer([items[i].src for i in strings], add_special_tokens=False, return_offsets_mapping=True)
        for i, ids, offsets in zip(strings, encoded["input_ids"], encoded["offset_mapping"]):
            chars = answer_char_span(items[i])
            result[i] = (list(ids), None if chars is None else _token_span(offsets, chars))
    for i, item in enumerate(items):
        if result[i] is None:
            wanted = item.answer_words() if isinstance(item.answer, list) else tokenizer.tokenize(item.answer)
            result[i] = (tokenizer.convert_tokens_to_ids(list(item.src)), _piece_span(item.src, wanted,
                                                                                       item.answer_start))
    return result


def _window(ids: list[int], span: Optional[tuple[int, int]], room: int) -> tuple[list[int], Optional[tuple]]:
    """At most ``room`` ids: the first ones, or where the answer lies beyond them, a window centred on it."""
    if len(ids) <= room:
        return ids, span
    if span is None or span[1] <= room:
        return ids[:room], span
    length = min(span[1] - span[0], room)
    start = max(0, min(len(ids) - room, span[0] - (room - length) // 2))
    return ids[start:start + room], (span[0] - start, span[0] - start + length)


def encode_answer_sources(tokenizer, items: Sequence[AnswerSource], max_source_length: int, encoding: str,
                          sep: int) -> tuple[list[SourceIds], list[int]]:
    """Source ids (no [CLS] / final [SEP]) for ``encoding``, fitting ``[CLS] ... [SEP]`` in ``max_source_length``,
    and each source's length before the cut (the cut happened where it exceeds ``max_source_length - 2``)."""
    check_encoding(encoding)
    budget = max_source_length - 2
    tokenized = _tokenize_with_spans(tokenizer, items)
    answers = ([list(a) for a in tokenizer([item.answer if isinstance(item.answer, str) else "" for item in items],
                                           add_special_tokens=False)["input_ids"]] if uses_segment(encoding) else [])
    encoded, full_lengths = [], []
    for index, (ids, span) in enumerate(tokenized):
        appended: list[int] = []
        if uses_segment(encoding):
            item = items[index]
            answer = answers[index] if isinstance(item.answer, str) else tokenizer.convert_tokens_to_ids(item.answer)
            appended = [sep, *answer[:max(1, budget // 2) - 1]]
        full_lengths.append(len(ids) + len(appended))
        ids, span = _window(ids, span, max(1, budget - len(appended)))
        encoded.append(SourceIds(ids + appended, span if uses_span(encoding) else None))
    return encoded, full_lengths
