"""The ``source_words_only`` search constraint: a word written with several word pieces must be a word of the source.

Why: a model that has seen few examples of a rare word writes it from pieces it half remembers ("unsuperpervised",
"reinforcemented", "thetre"): each piece is likely after the one before, the word is not. The copy mechanism points
at the right source word but, copying piece by piece, can leave it halfway. Restricting multi-piece words to those
of the source (single-piece words, the vocabulary's whole words, stay free) removes that garbling at the cost of any
legitimate multi-piece word the source lacks ("outperforms" in a summary whose source says "outperform").

How: WordPiece marks a word's non-initial pieces ("##vised"). Per sentence, the source's multi-piece words become a
prefix table; at each step a row's partial word (its pieces since its last word-initial piece) decides which
continuation pieces may follow (those extending it towards a source word) and whether the word may end there (a
single piece, or a whole source word). A word may not start with a continuation piece.
"""
from __future__ import annotations

from typing import Sequence

import torch

from s2s_ft.errors import UsageError


def continuation_ids(tokenizer, checkpoint_path: str = "the checkpoint") -> list[int]:
    """Ids of the vocabulary's word-continuation pieces (WordPiece's "##..."); UsageError where there are none
    (byte-level BPE and SentencePiece mark word starts, and attach punctuation, differently)."""
    ids = sorted(i for token, i in tokenizer.get_vocab().items() if token.startswith("##") and len(token) > 2)
    if not ids:
        raise UsageError(f"--source_words_only needs a WordPiece vocabulary (continuation pieces written '##...'); "
                         f"{checkpoint_path}'s tokenizer has none")
    return ids


class SourceWords:
    """The multi-piece words of each sentence's source, as prefix tables; ``banned`` gives a step's mask."""

    def __init__(self, sources: Sequence[Sequence[int]], continuation: Sequence[int], vocab_size: int,
                 device: torch.device):
        self.continuation = frozenset(int(i) for i in continuation)
        self.is_continuation = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.is_continuation[torch.tensor(sorted(self.continuation), dtype=torch.long, device=device)] = True
        self.device = device
        # per sentence: partial word (tuple of ids, >= 1 piece) -> the continuation ids that extend it towards a
        # source word; and the source's multi-piece words themselves
        self.extend: list[dict[tuple, list[int]]] = []
        self.whole: list[set[tuple]] = []
        for source in sources:
            extend: dict[tuple, set[int]] = {}
            whole: set[tuple] = set()
            for word in self._words(source):
                whole.add(word)
                for i in range(1, len(word)):
                    extend.setdefault(word[:i], set()).add(word[i])
            self.extend.append({prefix: sorted(ids) for prefix, ids in extend.items()})
            self.whole.append(whole)

    def _words(self, ids: Sequence[int]) -> list[tuple]:
        """The multi-piece words of ``ids`` (a leading continuation piece, which has no start, belongs to none)."""
        words, word = [], []
        for t in list(ids) + [None]:
            if t is not None and t in self.continuation:
                if word:
                    word.append(t)
                continue
            if len(word) > 1:
                words.append(tuple(word))
            word = [] if t is None else [t]
        return words

    def partial_word(self, tokens: Sequence[int]) -> tuple:
        """The pieces since the last word-initial piece (empty before the first one)."""
        start = len(tokens)
        while start > 0 and tokens[start - 1] in self.continuation:
            start -= 1
        return tuple(tokens[start - 1:]) if start > 0 else ()

    def banned(self, tokens: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """Boolean [R, V]: the tokens each row may not write next, given its ``tokens`` [R, t] so far and its
        sentence index in ``sentences`` [R]."""
        rows = tokens.shape[0]
        banned = self.is_continuation.expand(rows, -1).clone()  # by default: no continuation piece
        for r, (row, sentence) in enumerate(zip(tokens.tolist(), sentences.tolist())):
            partial = self.partial_word(row)
            if not partial:
                continue
            allowed = self.extend[sentence].get(partial)
            if len(partial) > 1 and partial not in self.whole[sentence]:
                banned[r] = True  # a proper prefix of a source word: only its continuations may follow
            if allowed:
                banned[r, torch.tensor(allowed, dtype=torch.long, device=self.device)] = False
        return banned
