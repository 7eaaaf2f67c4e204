"""Definition generation from WordNet 3.0 glosses: the built-in, offline default dataset.

Reads the WordNet database files that Debian's ``wordnet-base`` package installs under
``/usr/share/wordnet`` (``data.noun``, ``data.verb``, ``data.adj``, ``data.adv`` and, when present,
``cntlist.rev`` for sense frequencies) and writes two JSONL files:

* ``train.jsonl``: one line per (lemma, synset): ``{"src": "dog (noun)", "tgt": "a member of the genus ..."}``
* ``dev.jsonl``: one line per (lemma, part of speech), ``tgt`` is the definition of the lemma's most
  frequent sense, and ``refs`` lists the definitions of *every* synset of that lemma with that part of
  speech (most frequent first), for multi-reference scoring.

Selection (all deterministic, no randomness at all):

* a synset is used only through its *first* lemma, and only if that lemma is a single common word:
  lowercase ASCII letters only (no multiword expressions, proper nouns, hyphens or digits) and, when
  ``cntlist.rev`` is present, tagged at least ``--min_count`` times in the semantic concordances;
* the definition is the gloss up to the first ``; "`` example quote; definitions longer than
  ``--max_def_words`` words are skipped;
* at most ``--max_senses`` synsets per (lemma, part of speech) are kept, most frequent first;
* every lemma goes to exactly one split, by a SHA-1 hash of the lemma, so no lemma appears in both;
* within each split the most frequent senses are kept (ties broken by hash) up to ``--max_train`` /
  ``--max_dev``.

WordNet data line format (``man 5 wndb``)::

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames...] | gloss

``w_cnt`` and ``lex_id`` are hexadecimal; lines starting with two spaces are the licence header.

CLI (an example application of the library, not part of it; ``scripts/quickstart.sh`` runs it)::

    python examples/wordnet_glosses.py --output_dir DIR [--wordnet_dir /usr/share/wordnet]
        [--max_train 3000] [--max_dev 200]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script from a checkout: import the library next to it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s2s_ft.fileio import write_atomic  # noqa: E402
from s2s_ft.evaluation.wordnet import DATA_FILES, DEFAULT_WORDNET_DIR, WordNetMissing, present_files  # noqa: E402

COUNT_FILE = "cntlist.rev"

# ss_type -> the part of speech written into ``src``; adjective satellites are adjectives.
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
# ss_type -> the number used in sense keys (cntlist.rev).
SS_TYPE_NUMBERS = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_EXAMPLE_START = re.compile(r'(?:^|;)\s*"')
_COMMON_WORD = re.compile(r"^[a-z]{2,}$")
_MULTIWORD = re.compile(r"^[a-z]+(?:[ '-][a-z]+)*$")


@dataclass(frozen=True)
class Synset:
    offset: int
    lex_filenum: int
    ss_type: str  # one of n v a s r
    words: Tuple[str, ...]  # as in the file (underscores kept), adjective markers removed
    lex_ids: Tuple[int, ...]
    gloss: str  # the full gloss, examples included
    definition: str  # the gloss before the first example quote

    @property
    def pos(self) -> str:
        """The part-of-speech name used in ``src`` (``s`` satellites count as adjectives)."""
        return POS_NAMES[self.ss_type]


@dataclass(frozen=True)
class Sense:
    lemma: str  # underscores replaced by spaces
    pos: str
    synset: Synset
    count: int  # tag count from cntlist.rev, 0 when unknown


# --------------------------------------------------------------------------------------------- parsing
def split_definition(gloss: str) -> str:
    """The definition part of a gloss: everything before the first ``; "`` example quote, stripped.

    A gloss that starts with a quote is all examples and has an empty definition.
    """
    definition = _EXAMPLE_START.split(gloss, maxsplit=1)[0]
    return definition.strip().rstrip(";").strip()


def lemma_text(word: str) -> str:
    """A WordNet word as plain text: ``hot_dog`` -> ``hot dog``."""
    return word.replace("_", " ")


def format_src(lemma: str, pos: str) -> str:
    """The model input: ``dog (noun)``."""
    return f"{lemma} ({pos})"


def parse_data_line(line: str) -> Optional[Synset]:
    """Parse one line of a ``data.*`` file; ``None`` for licence header and blank lines."""
    if not line.strip() or line.startswith(" "):
        return None
    head, sep, gloss = line.partition(" | ")
    if not sep:
        head, gloss = line.rstrip("\n").rstrip(" |"), ""
    fields = head.split()
    if len(fields) < 6:
        raise ValueError(f"malformed WordNet data line: {line[:80]!r}")
    offset, lex_filenum, ss_type = int(fields[0]), int(fields[1]), fields[2]
    if ss_type not in POS_NAMES:
        raise ValueError(f"unknown synset type {ss_type!r} in line: {line[:80]!r}")
    w_cnt = int(fields[3], 16)
    word_fields = fields[4 : 4 + 2 * w_cnt]
    if len(word_fields) != 2 * w_cnt:
        raise ValueError(f"truncated word list in line: {line[:80]!r}")
    words = tuple(_ADJ_MARKER.sub("", w) for w in word_fields[0::2])
    lex_ids = tuple(int(x, 16) for x in word_fields[1::2])
    gloss = gloss.strip()
    return Synset(offset, lex_filenum, ss_type, words, lex_ids, gloss, split_definition(gloss))


def data_files(wordnet_dir: str) -> List[str]:
    """The ``data.*`` files present in ``wordnet_dir``; raises ``WordNetMissing`` if none are."""
    found = present_files(wordnet_dir, DATA_FILES)
    if not found:
        raise WordNetMissing(wordnet_dir, needed_by="the WordNet definition dataset", expected="data.noun ...",
                             way_out="")
    return found


def read_synsets(wordnet_dir: str) -> List[Synset]:
    synsets: List[Synset] = []
    for path in data_files(wordnet_dir):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                synset = parse_data_line(line)
                if synset is not None:
                    synsets.append(synset)
    return synsets


def read_sense_counts(wordnet_dir: str) -> Optional[Dict[Tuple[str, int, int, int], int]]:
    """Tag counts from ``cntlist.rev``, keyed by (lemma, ss_type number, lex_filenum, lex_id).

    A sense key is ``lemma%ss_type:lex_filenum:lex_id:head_word:head_id``; the head word only matters
    for adjective satellites and is not needed to tell senses apart. ``None`` if the file is missing.
    """
    path = os.path.join(wordnet_dir, COUNT_FILE)
    if not os.path.isfile(path):
        return None
    counts: Dict[Tuple[str, int, int, int], int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3 or "%" not in parts[0]:
                continue
            lemma, _, rest = parts[0].partition("%")
            key_fields = rest.split(":")
            try:
                key = (lemma.lower(), int(key_fields[0]), int(key_fields[1]), int(key_fields[2]))
                counts[key] = counts.get(key, 0) + int(parts[2])
            except (ValueError, IndexError):
                continue
    return counts


# ------------------------------------------------------------------------------------------- selection
def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def lemma_split(lemma: str, dev_percent: float) -> str:
    """``"dev"`` or ``"train"``, decided by a hash of the lemma alone (stable across runs and machines)."""
    return "dev" if _hash(lemma.lower()) % 10000 < dev_percent * 100 else "train"


def _sense_count(counts, word: str, synset: Synset, index: int) -> int:
    if counts is None:
        return 0
    key = (word.lower(), SS_TYPE_NUMBERS[synset.ss_type], synset.lex_filenum, synset.lex_ids[index])
    return counts.get(key, 0)


def _usable_definition(definition: str, max_def_words: int) -> bool:
    return bool(definition) and '"' not in definition and len(definition.split()) <= max_def_words


def build_examples(
    synsets: Sequence[Synset],
    counts: Optional[Dict[Tuple[str, int, int, int], int]] = None,
    *,
    max_train: int = 3000,
    max_dev: int = 200,
    dev_percent: float = 10.0,
    max_senses: int = 3,
    max_def_words: int = 30,
    min_count: int = 1,
    allow_multiword: bool = False,
) -> Tuple[List[dict], List[dict]]:
    """Select senses and return ``(train_rows, dev_rows)``; see the module docstring for the rules."""
    word_ok = _MULTIWORD if allow_multiword else _COMMON_WORD

    # Every definition of every (lemma, pos), for the dev references: (count, offset, definition).
    all_defs: Dict[Tuple[str, str], List[Tuple[int, int, str]]] = {}
    # Candidate senses: the synset's first lemma only.
    candidates: Dict[Tuple[str, str], List[Sense]] = {}
    for synset in synsets:
        for i, word in enumerate(synset.words):
            if synset.definition and '"' not in synset.definition:
                key = (lemma_text(word), synset.pos)
                all_defs.setdefault(key, []).append(
                    (_sense_count(counts, word, synset, i), synset.offset, synset.definition)
                )
        first = synset.words[0]
        lemma = lemma_text(first)
        if not word_ok.match(lemma):
            continue
        if not _usable_definition(synset.definition, max_def_words):
            continue
        count = _sense_count(counts, first, synset, 0)
        if counts is not None and count < min_count:
            continue
        candidates.setdefault((lemma, synset.pos), []).append(Sense(lemma, synset.pos, synset, count))

    def sense_rank(sense: Sense):
        return (-sense.count, _hash(f"{sense.lemma}|{sense.pos}|{sense.synset.offset}"))

    train_senses: List[Sense] = []
    dev_groups: List[Tuple[int, int, Tuple[str, str], List[Sense]]] = []
    for (lemma, pos), senses in candidates.items():
        senses = sorted(senses, key=lambda s: (-s.count, s.synset.offset))
        if max_senses > 0:
            senses = senses[:max_senses]
        if lemma_split(lemma, dev_percent) == "dev":
            total = sum(s.count for s in senses)
            dev_groups.append((-total, _hash(f"{lemma}|{pos}"), (lemma, pos), senses))
        else:
            train_senses.extend(senses)

    train_senses.sort(key=sense_rank)
    train_senses = train_senses[:max_train] if max_train >= 0 else train_senses
    # Output order: a fixed pseudo-random shuffle (hash order), not frequency order.
    train_senses.sort(key=lambda s: _hash(f"order|{s.lemma}|{s.pos}|{s.synset.offset}"))
    train_rows = [{"src": format_src(s.lemma, s.pos), "tgt": s.synset.definition} for s in train_senses]

    dev_groups.sort(key=lambda g: (g[0], g[1]))
    dev_groups = dev_groups[:max_dev] if max_dev >= 0 else dev_groups
    dev_rows = []
    for _, _, (lemma, pos), senses in dev_groups:  # most frequent (lemma, pos) first
        tgt = senses[0].synset.definition
        refs: List[str] = []
        for _, _, definition in sorted(all_defs.get((lemma, pos), []), key=lambda d: (-d[0], d[1])):
            if definition not in refs:
                refs.append(definition)
        if tgt not in refs:
            refs.insert(0, tgt)
        dev_rows.append({"src": format_src(lemma, pos), "tgt": tgt, "refs": refs})
    return train_rows, dev_rows


# ---------------------------------------------------------------------------------------------- output
def write_jsonl_atomic(path: str, rows: Iterable[dict]) -> int:
    """Write ``rows`` as JSON lines, atomically (see s2s_ft.fileio); returns the number of rows."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_atomic(path, "".join(lines))
    return len(lines)


def build_dataset(output_dir: str, wordnet_dir: str = DEFAULT_WORDNET_DIR, **kwargs) -> Dict[str, int]:
    """Read WordNet from ``wordnet_dir`` and write ``train.jsonl`` / ``dev.jsonl`` into ``output_dir``."""
    synsets = read_synsets(wordnet_dir)
    counts = read_sense_counts(wordnet_dir)
    train_rows, dev_rows = build_examples(synsets, counts, **kwargs)
    n_train = write_jsonl_atomic(os.path.join(output_dir, "train.jsonl"), train_rows)
    n_dev = write_jsonl_atomic(os.path.join(output_dir, "dev.jsonl"), dev_rows)
    return {
        "synsets": len(synsets),
        "train": n_train,
        "train_lemmas": len({row["src"] for row in train_rows}),
        "dev": n_dev,
        "dev_refs": sum(len(row["refs"]) for row in dev_rows),
        "sense_counts": counts is not None,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python examples/wordnet_glosses.py",
        description="Build the WordNet definition-generation dataset (train.jsonl, dev.jsonl).",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--wordnet_dir", default=DEFAULT_WORDNET_DIR)
    parser.add_argument("--max_train", type=int, default=3000, help="-1: no limit")
    parser.add_argument("--max_dev", type=int, default=200, help="-1: no limit")
    parser.add_argument("--dev_percent", type=float, default=10.0,
                        help="share of lemmas (by hash) that go to the dev split")
    parser.add_argument("--max_senses", type=int, default=3,
                        help="most synsets kept per (lemma, part of speech); 0: no limit")
    parser.add_argument("--max_def_words", type=int, default=30)
    parser.add_argument("--min_count", type=int, default=1,
                        help="minimum cntlist.rev tag count of a sense (ignored without cntlist.rev)")
    parser.add_argument("--allow_multiword", action="store_true",
                        help="also use multiword / hyphenated first lemmas (underscores become spaces)")
    args = parser.parse_args(argv)
    try:
        stats = build_dataset(
            args.output_dir,
            args.wordnet_dir,
            max_train=args.max_train,
            max_dev=args.max_dev,
            dev_percent=args.dev_percent,
            max_senses=args.max_senses,
            max_def_words=args.max_def_words,
            min_count=args.min_count,
            allow_multiword=args.allow_multiword,
        )
    except WordNetMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"read {stats['synsets']} synsets from {args.wordnet_dir}"
          + ("" if stats["sense_counts"] else f" (no {COUNT_FILE}: no frequency filter)"))
    print(f"train: {stats['train']} examples ({stats['train_lemmas']} distinct sources) -> "
          f"{os.path.join(args.output_dir, 'train.jsonl')}")
    print(f"dev: {stats['dev']} examples ({stats['dev_refs']} references) -> "
          f"{os.path.join(args.output_dir, 'dev.jsonl')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
