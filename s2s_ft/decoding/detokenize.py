"""Generated token ids back to text, in the tokenisation the references use (``--detokenize``).

* ``text``: the tokenizer's own decoder. Natural text for natural-text data; a WordPiece (BERT) decoder also glues
  punctuation to the word before it (``stadium,`` ``-?``) and cannot know that the data kept it apart.
* ``spaced``: for pre-tokenised data (tokens separated by spaces): WordPiece pieces are merged at ``##`` and the
  words joined by single spaces, so every split the tokenizer made stays a space (``stadium , in``). Byte-level BPE
  and SentencePiece keep the input's spaces themselves, so for them this is the decoder's output unchanged.
* ``ptb``: ``spaced``, then the splits that a WordPiece tokenizer makes inside Penn-Treebank tokens are undone:
  clitics (``' s`` -> ``'s``, ``n ' t`` -> ``n't``), escaped brackets (``- lrb -`` -> ``-lrb-``), ``--``,
  ```` `` '' ````, ``...``, hyphenated and slashed words (``play - by - play`` -> ``play-by-play``),
  numbers (``80 , 000``, ``3 . 5``) and dotted initials (``u . s .``). For data tokenised
  like SQuAD-QG (Stanford CoreNLP), which is what QG papers score with whitespace BLEU: there a perfect WordPiece
  model's questions score BLEU-4 75 with ``text``, 92 with ``spaced`` and 99 with ``ptb`` against the grouped
  references (the rest is accents an uncased vocabulary drops).
"""
from __future__ import annotations

import re
from typing import Sequence

DETOKENIZERS = ("text", "spaced", "ptb")
DETOKENIZE_HELP = ("output text: the tokenizer's decoder (text), pre-tokenised words joined by spaces (spaced), or "
                   "spaced with Penn-Treebank tokens re-joined (ptb: 's n't -lrb- ...; for PTB-tokenised data such "
                   "as SQuAD-QG, scored on whitespace tokens)")

_PTB_RULES = [
    (re.compile(r"(?<=\S) ' (s|m|d|ll|re|ve)\b"), r" '\1"),  # it 's, they 're
    (re.compile(r"\bn ' t\b"), "n't"),  # did n't
    (re.compile(r"- (lrb|rrb|lsb|rsb|lcb|rcb) -", re.IGNORECASE), r"-\1-"),  # escaped brackets
    (re.compile(r"(?<!\S)- -(?!\S)"), "--"),
    (re.compile(r"(?<!\S)` `(?!\S)"), "``"),
    (re.compile(r"(?<!\S)' '(?!\S)"), "''"),
    (re.compile(r"(?<!\S)\. \. \.(?!\S)"), "..."),
    (re.compile(r"(?<=\w) - (?=\w)"), "-"),  # hyphenated words stay one token in the treebank
    (re.compile(r"(?<=\w) / (?=\w)"), "/"),  # yes/no
    (re.compile(r"(?<=\d) , (?=\d{3}\b)"), ","),  # 80,000
    (re.compile(r"(?<=\d) \. (?=\d)"), "."),  # 3.5
    (re.compile(r"\b(\w) \. (\w) \.(?!\S)"), r"\1.\2."),  # u.s.
]


def ptb_rejoin(text: str) -> str:
    for pattern, replacement in _PTB_RULES:
        text = pattern.sub(replacement, text)
    return text


def is_wordpiece(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "WordPiece"


def detokenize(tokenizer, ids: Sequence[int], style: str = "text") -> str:
    if style not in DETOKENIZERS:
        raise ValueError(f"detokenize style must be one of {', '.join(DETOKENIZERS)}, got {style!r}")
    if style == "text" or not is_wordpiece(tokenizer):
        text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
    else:
        special = set(tokenizer.all_special_ids)
        words: list[str] = []
        for piece in tokenizer.convert_ids_to_tokens([i for i in ids if i not in special]):
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece)
        text = " ".join(words)
    return ptb_rejoin(text) if style == "ptb" else text
