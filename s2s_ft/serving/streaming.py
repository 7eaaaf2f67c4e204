"""One output's text as its tokens arrive: what may be sent now, and where a stop sequence ends it.

Detokenising is not prefix-stable token by token: a WordPiece piece glues to the word before it (``stadium`` +
``##s``), byte-level BPE may end mid-character, and the Penn-Treebank re-joining (``--detokenize ptb``) rewrites
spaces a few characters back once the next token shows what they were (``80 , 000`` -> ``80,000``, ``n ' t`` ->
``n't``, ``u . s .`` -> ``u.s.``). ``TextStream`` re-renders the whole output after every token (a few dozen tokens:
cheap) and sends only a prefix that no later token can change: the text less its last ``HOLD_CHARS[style]``
characters (every re-joining rule decides within that reach of the end), less a trailing replacement character (an
unfinished UTF-8 sequence) and less a tail that could be the start of a stop sequence. What was sent is always a
prefix of the final text, so the pieces sent, plus what ``finish`` returns, concatenate to exactly the text a
non-streamed request gets (tested on random token sequences, tests/test_streaming.py).

Stop sequences (``stop``): the first occurrence of any of them in the text ends the output there; ``include_stop``
keeps the stop sequence in the text (TGI's rule) or drops it (OpenAI's).
"""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

# How far back from the end of the text a later token can still change it, per detokenize style (the longest
# re-joining rule's match plus its look-ahead: "u . s ." + one character; "80 , 000" + a boundary).
HOLD_CHARS = {"text": 0, "spaced": 0, "ptb": 10}
REPLACEMENT = "\ufffd"  # what a decoder writes for an unfinished UTF-8 sequence


@dataclass
class StopMatch:
    stop: str
    start: int  # where it starts in the text
    end: int


def find_stop(text: str, stops: Sequence[str]) -> Optional[StopMatch]:
    """The stop sequence that ends first in ``text`` (the earliest start among those), or None."""
    found = [StopMatch(s, text.find(s), text.find(s) + len(s)) for s in stops if s and s in text]
    return min(found, key=lambda m: (m.end, m.start)) if found else None


def cut_at_stop(text: str, stops: Sequence[str], include_stop: bool) -> tuple[str, Optional[str]]:
    """(``text`` ended at its first stop sequence, that stop sequence or None)."""
    match = find_stop(text, stops)
    if match is None:
        return text, None
    return text[:match.end if include_stop else match.start], match.stop


def _stop_prefix_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop sequence (it may still become one)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextStream:
    """One output row: ``add`` a token, get the text that may be sent now; ``stopped`` once a stop sequence ended
    it; ``finish`` the rest. ``render`` turns the token ids so far into the text (the server's detokenizer)."""

    def __init__(self, render: Callable[[list[int]], str], style: str = "text", stops: Sequence[str] = (),
                 include_stop: bool = True):
        self.render, self.hold = render, HOLD_CHARS.get(style, 10)
        self.stops, self.include_stop = [s for s in stops if s], include_stop
        self.tokens: list[int] = []
        self.sent = ""
        self.text = ""  # the whole text so far, ended at a stop sequence once one is found
        self.stop: Optional[str] = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    def add(self, token: int) -> str:
        """Take the next token (ignored once stopped); returns the text that may be sent now ("" if none)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        self.text, self.stop = cut_at_stop(self.render(self.tokens), self.stops, self.include_stop)
        if self.stopped:
            return ""  # the stop sequence ended it: finish() sends the rest
        safe = len(self.text) - self.hold - _stop_prefix_tail(self.text, self.stops)
        while safe > 0 and self.text[safe - 1] == REPLACEMENT:
            safe -= 1
        return self._send(self.text[:max(0, safe)])

    def _send(self, prefix: str) -> str:
        if len(prefix) <= len(self.sent) or not prefix.startswith(self.sent):
            return ""  # nothing new (a rewrite reaching back further than the hold waits for finish)
        piece, self.sent = prefix[len(self.sent):], prefix
        return piece

    def finish(self, text: Optional[str] = None) -> str:
        """The rest of the final text (``text``: the final text if it was rendered elsewhere; default the stream's
        own). Raises if what was sent is not its beginning (never, if HOLD_CHARS is right; the tests check it)."""
        final = self.text if text is None else text
        if not final.startswith(self.sent):
            raise RuntimeError(f"streamed text {self.sent!r} is not the start of the final text {final!r}")
        rest, self.sent = final[len(self.sent):], final
        return rest


def token_texts(render: Callable[[list[int]], str], tokens: Sequence[int], style: str, stops: Sequence[str] = (),
                include_stop: bool = True) -> tuple[list[str], str, Optional[str], int]:
    """What a stream sends with each of ``tokens`` (the last one taken also gets the rest), the final text, the stop
    sequence that ended it and how many tokens it took (all, or up to the one that completed the stop sequence): a
    non-streamed answer's per-token texts, concatenating to its text."""
    stream = TextStream(render, style, stops, include_stop)
    pieces = []
    for token in tokens:
        if stream.stopped:
            break
        pieces.append(stream.add(token))
    rest = stream.finish()
    if pieces:
        pieces[-1] += rest
    return pieces, stream.text, stream.stop, len(stream.tokens)
