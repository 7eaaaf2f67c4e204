"""Scoring generated text against references with standard libraries: ROUGE, BLEU and METEOR.

s2s-ft shipped a vendored pyrouge; this module uses the maintained packages instead (``pip install -e ".[eval]"``:
rouge-score, sacrebleu, nltk). Every score is reported on a 0-100 scale.

Metrics (``--metrics``, comma-separated):

* ``rouge`` -> ``rouge1``, ``rouge2``, ``rougeL``: F1 from Google's ``rouge-score`` (``use_stemmer=True``; its
  tokenizer lowercases and keeps ASCII letters and digits only). With several references a sentence gets the
  best F1 over its references (per ROUGE type), the usual multi-reference convention; the corpus score is the
  mean over sentences x 100. ``rougeL`` is sentence-level LCS (not ``rougeLsum``).
* ``bleu`` -> ``bleu`` and ``bleu4_tok``.

  - ``bleu``: corpus BLEU-4 from ``sacrebleu`` with its defaults (``13a`` tokenisation, ``exp`` smoothing,
    case-sensitive unless ``--lowercase``); the score to compare with MT-style papers. Multi-reference natively:
    sacrebleu takes reference *streams* of equal length, so a sentence with fewer references than the most any
    sentence has is padded with ``None``, which sacrebleu drops for that sentence (an empty string would *not*
    be dropped: it would count as a zero-length reference in the brevity penalty).
  - ``bleu4_tok``: the "BLEU-4" that question-generation papers report (Du et al., 2017, "Learning to Ask"):
    ``nltk.translate.bleu_score.corpus_bleu`` with weights (0.25, 0.25, 0.25, 0.25), no smoothing, on
    **lowercased, whitespace-tokenised** text (hypotheses and references are expected to be tokenised already,
    as decoder output is: WordPiece output detokenised with ``##`` merged keeps punctuation as separate
    tokens). Clipped n-gram counts over all references, brevity penalty from the closest reference length.
    Du et al. scored with the coco-caption scorer, which applies the same formula with a tiny epsilon
    smoothing, so scores can differ in the last digits (and are 0 here when a corpus has no 4-gram match).
    One nltk quirk: a hypothesis shorter than n tokens counts as one (unmatched) n-gram (``modified_precision``
    divides by ``max(1, count)``), so corpora with 1-3 token hypotheses score a little lower than with
    coco-caption or ``bleu``'s own counting.

* ``meteor`` -> ``meteor``: ``nltk.translate.meteor_score.meteor_score`` (exact, Porter-stem and WordNet-synonym
  matching; alpha=0.9, beta=3, gamma=0.5; the best score over a sentence's references), averaged over sentences
  x 100, on the same lowercased whitespace tokens as ``bleu4_tok``. This is nltk's METEOR, not the METEOR 1.5
  Java jar that some papers used: numbers are close to but not identical with those (no paraphrase table,
  different parameters, and nltk looks WordNet synonyms up for the Porter *stems* of the words left after
  exact and stem matching, so e.g. "automobile" -> "automobil" finds no synonym while "auto" matches "car").

  nltk needs WordNet and must never download it: ``ensure_wordnet`` copies WordNet 3.0 from Debian's
  ``wordnet-base`` package (``/usr/share/wordnet``) into ``<nltk_data>/corpora/wordnet/`` (default
  ``~/.cache/s2s_ft/nltk_data``, override with ``$S2S_FT_NLTK_DATA``), writes the ``lexnames`` file that the
  Debian package lacks (the 45 lexicographer files of ``man 5 lexnames``), and puts the directory on
  ``nltk.data.path``. The reader used for METEOR does not need ``index.sense`` (also absent from Debian's
  package; nltk only uses it for the multilingual OMW mapping and sense-key look-ups).

Input files:

* ``--hyp``: one hypothesis per line (an empty line is an empty hypothesis).
* ``--ref``: JSONL (``.jsonl``) with ``tgt`` (a string, or a list of WordPiece pieces, joined with ``##``
  merged) and optionally ``refs`` (all references of the example; used instead of ``[tgt]`` when present),
  as written by ``s2s_ft.datasets.wordnet_glosses``; any other extension is read as plain text, one reference a
  line.

CLI::

    python -m s2s_ft.evaluate --hyp dev.pred --ref dev.jsonl [--metrics rouge,bleu,meteor] [--json scores.json]
        [--lowercase]

Python::

    from s2s_ft.evaluate import score
    score(["the cat sat"], [["the cat ran", "a cat sat"]], metrics=("rouge", "bleu"))
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .cli import UsageError, run_cli
from .data import DataError, iter_jsonl
from .data import check_side
from .fileio import write_atomic

log = logging.getLogger(__name__)

METRICS = ("rouge", "bleu", "meteor")
SCORES = {"rouge": ("rouge1", "rouge2", "rougeL"), "bleu": ("bleu", "bleu4_tok"), "meteor": ("meteor",)}  # keys
METRIC_KEYS = tuple(key for keys in SCORES.values() for key in keys)
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
NLTK_DATA_ENV = "S2S_FT_NLTK_DATA"
WORDNET_DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv",
                      "index.noun", "index.verb", "index.adj", "index.adv")

# The WordNet 3.0 lexicographer files, in file-number order (man 5 lexnames): (name, syntactic category) with
# categories 1 NOUN, 2 VERB, 3 ADJECTIVE, 4 ADVERB. The data files refer to them by number (lex_filenum).
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1), ("noun.animal", 1),
    ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1), ("noun.cognition", 1),
    ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1),
    ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2),
    ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2),
    ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
)


class WordNetMissing(DataError):
    """WordNet 3.0 is not installed where we looked (one line, with the command that installs it)."""

    def __init__(self, wordnet_dir: str):
        super().__init__(
            f"METEOR needs WordNet 3.0, not found in {wordnet_dir} (expected data.noun, index.noun, ...): "
            "install it with `apt-get install wordnet-base` (or: bash scripts/setup.sh --with-wordnet), "
            "or leave meteor out of --metrics")


# -- text ------------------------------------------------------------------------------------------------------
def join_pieces(pieces: Sequence[str]) -> str:
    """WordPiece pieces to text: ``["who", "wrote", "##s"]`` -> ``"who wrotes"``."""
    text = " ".join(str(p) for p in pieces).replace(" ##", "")
    return text[2:] if text.startswith("##") else text


def tokens(text: str) -> List[str]:
    """The tokens of ``bleu4_tok`` and METEOR: lowercased, split on whitespace."""
    return text.lower().split()


# -- metrics ---------------------------------------------------------------------------------------------------
def rouge(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Mean over sentences of the best-over-references ROUGE-1/2/L F1, x 100."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # "Using default tokenizer." on every scorer
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for hyp, sentence_refs in zip(hyps, refs):
        scores = scorer.score_multi(list(sentence_refs), hyp)  # per type: the reference with the best F1
        for name in types:
            totals[name] += scores[name].fmeasure
    n = max(len(hyps), 1)
    return {name: 100.0 * totals[name] / n for name in types}


def reference_streams(refs: Sequence[Sequence[str]]) -> List[List[Optional[str]]]:
    """sacrebleu's layout: stream k holds every sentence's k-th reference, ``None`` where a sentence has fewer."""
    width = max((len(r) for r in refs), default=0)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], lowercase: bool = False) -> float:
    """sacrebleu corpus BLEU-4 (13a tokenisation, exp smoothing)."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(tokenize="13a", lowercase=lowercase).corpus_score(list(hyps), reference_streams(refs)).score)


def bleu4_tok(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """QG-paper BLEU-4: nltk corpus_bleu, equal weights, lowercased whitespace tokens, x 100."""
    from nltk.translate.bleu_score import corpus_bleu

    with warnings.catch_warnings():  # nltk warns (and returns 0) when an n-gram order has no match at all
        warnings.simplefilter("ignore")
        value = corpus_bleu([[tokens(r) for r in sentence_refs] for sentence_refs in refs],
                            [tokens(h) for h in hyps], weights=(0.25, 0.25, 0.25, 0.25))
    return 100.0 * float(value)


def meteor(hyps: Sequence[str], refs: Sequence[Sequence[str]], nltk_data_dir: Optional[str] = None,
           wordnet_dir: str = DEFAULT_WORDNET_DIR) -> float:
    """Mean nltk METEOR (best over references) x 100, with WordNet from ``ensure_wordnet``."""
    from nltk.translate.meteor_score import meteor_score

    wordnet = wordnet_reader(ensure_wordnet(nltk_data_dir, wordnet_dir))
    total = 0.0
    for hyp, sentence_refs in zip(hyps, refs):
        total += meteor_score([tokens(r) for r in sentence_refs], tokens(hyp), wordnet=wordnet)
    return 100.0 * total / max(len(hyps), 1)


def score(hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Iterable[str] = METRICS,
          lowercase: bool = False, nltk_data_dir: Optional[str] = None,
          wordnet_dir: str = DEFAULT_WORDNET_DIR) -> Dict[str, float]:
    """Corpus scores (0-100) of ``hyps[i]`` against its references ``refs[i]`` (one or more strings each).

    ``metrics``: any of ``rouge`` (rouge1, rouge2, rougeL), ``bleu`` (bleu, bleu4_tok), ``meteor``. The result
    also holds ``n``, the number of sentences. ``lowercase`` lowercases everything first (only sacrebleu's
    ``bleu`` is case-sensitive otherwise).
    """
    metrics = [m.strip().lower() for m in metrics if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UsageError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(METRICS)}")
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    refs = [[r] if isinstance(r, str) else list(r) for r in refs]
    for index, sentence_refs in enumerate(refs):
        if not sentence_refs or not all(isinstance(r, str) for r in sentence_refs):
            raise DataError(f"sentence {index}: expected one or more reference strings, got {sentence_refs!r}")
    hyps = [str(h) for h in hyps]
    if lowercase:
        hyps = [h.lower() for h in hyps]
        refs = [[r.lower() for r in sentence_refs] for sentence_refs in refs]
    result: Dict[str, float] = {}
    if "rouge" in metrics:
        result.update(rouge(hyps, refs))
    if "bleu" in metrics:
        result["bleu"] = bleu(hyps, refs, lowercase=lowercase)
        result["bleu4_tok"] = bleu4_tok(hyps, refs)
    if "meteor" in metrics:
        result["meteor"] = meteor(hyps, refs, nltk_data_dir, wordnet_dir)
    result["n"] = len(hyps)
    return result


def metric_family(key: str) -> str:
    """The ``--metrics`` entry that produces score ``key`` (``rougeL`` -> ``rouge``)."""
    return next(family for family, keys in SCORES.items() if key in keys)


# -- WordNet for nltk, from Debian's wordnet-base ---------------------------------------------------------------
def default_nltk_data_dir() -> str:
    return os.environ.get(NLTK_DATA_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "s2s_ft", "nltk_data")


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` for the 45 lexicographer files."""
    return "".join(f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES))


def _write_if_changed(path: str, data: bytes) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            if handle.read() == data:
                return
    write_atomic(path, data)  # a concurrent reader never sees half a file


def ensure_wordnet(nltk_data_dir: Optional[str] = None, wordnet_dir: str = DEFAULT_WORDNET_DIR) -> str:
    """Make WordNet 3.0 readable by nltk without downloading anything; returns ``<nltk_data_dir>/corpora/wordnet``.

    Copies the database files of ``wordnet_dir`` (Debian: ``/usr/share/wordnet``) that are missing or differ in
    size, writes ``lexnames``, and puts ``nltk_data_dir`` first on ``nltk.data.path``. Idempotent.
    """
    if not all(os.path.isfile(os.path.join(wordnet_dir, name)) for name in WORDNET_DATA_FILES):
        raise WordNetMissing(wordnet_dir)
    nltk_data_dir = nltk_data_dir or default_nltk_data_dir()
    target = os.path.join(nltk_data_dir, "corpora", "wordnet")
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(wordnet_dir)):
        source = os.path.join(wordnet_dir, name)
        if not os.path.isfile(source) or name == "lexnames":  # skip bin/, pixmaps/, wnres/; our lexnames wins
            continue
        destination = os.path.join(target, name)
        if os.path.isfile(destination) and os.path.getsize(destination) == os.path.getsize(source):
            continue
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
        log.debug("copied %s -> %s", source, destination)
    _write_if_changed(os.path.join(target, "lexnames"), lexnames_text().encode("ascii"))

    import nltk

    if nltk_data_dir not in nltk.data.path:
        nltk.data.path.insert(0, nltk_data_dir)
    return target


_READERS: Dict[str, object] = {}


def wordnet_reader(corpus_dir: str):
    """An nltk WordNetCorpusReader over ``corpus_dir`` (cached), usable without ``index.sense`` and OMW."""
    corpus_dir = os.path.abspath(corpus_dir)
    if corpus_dir not in _READERS:
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        class _WordNet30Reader(WordNetCorpusReader):
            def map_wn(self, version="wordnet"):
                # nltk maps the loaded WordNet onto "wordnet" (3.0) for OMW through index.sense; this *is* 3.0
                # and OMW is not used, so there is nothing to map.
                return None

        with warnings.catch_warnings():  # "The multilingual functions are not available ..."
            warnings.simplefilter("ignore")
            _READERS[corpus_dir] = _WordNet30Reader(corpus_dir, None)
    return _READERS[corpus_dir]


# -- files -----------------------------------------------------------------------------------------------------
def _text_lines(path: str) -> List[str]:
    if not os.path.exists(path) or os.path.isdir(path):  # exists: /dev/stdin works too
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (byte {error.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _reference_text(path: str, number: int, value, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(piece, str) for piece in value):
        return join_pieces(value)
    raise DataError(f"{path}:{number}: {what} must be a string or a list of word pieces, "
                    f"got {type(value).__name__}")


def read_hypotheses(path: str) -> List[str]:
    return [line.strip() for line in _text_lines(path)]


def record_references(path: str, number: int, record: dict) -> List[str]:
    """The references of one JSONL record: ``refs`` (all of them) when present, else ``[tgt]``."""
    if "refs" in record:
        refs = record["refs"]
        if not isinstance(refs, list) or not refs:
            raise DataError(f"{path}:{number}: \"refs\" must be a non-empty list of references")
        return [_reference_text(path, number, r, "each of \"refs\"") for r in refs]
    if "tgt" in record:
        return [_reference_text(path, number, record["tgt"], "\"tgt\"")]
    raise DataError(f"{path}:{number}: expected \"tgt\" (or \"refs\")")


def read_references(path: str) -> List[List[str]]:
    """Per example, its references: JSONL ``refs`` (else ``[tgt]``) for ``.jsonl``, else one line each."""
    if not path.endswith(".jsonl"):
        return [[line.strip()] for line in _text_lines(path)]
    return [record_references(path, number, record)
            for number, record in iter_jsonl(path, expected='"tgt" or "refs"')]


def read_dev_examples(path: str, max_examples: Optional[int] = None) -> Tuple[List, List[List[str]], List[int]]:
    """(sources, references, line numbers) of the first ``max_examples`` records (all when None) of a JSONL dev
    file: ``src`` as the training data has it (string or word-piece list), references as ``read_references``
    reads them. Only the records used are read, and any problem in them stops with ``FILE:LINE``."""
    sources, refs, numbers = [], [], []
    for number, record in itertools.islice(iter_jsonl(path, expected='"src" and "tgt" (or "refs")'), max_examples):
        sources.append(check_side(path, number, record, "src"))
        refs.append(record_references(path, number, record))
        numbers.append(number)
    return sources, refs, numbers


def format_table(scores: Dict[str, float]) -> str:
    rows = [f"{'metric':<10} {'score':>8}"]
    for name, value in scores.items():
        rows.append(f"{name:<10} {value:>8d}" if name == "n" else f"{name:<10} {value:>8.2f}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s2s_ft.evaluate",
                                     description="Score hypotheses with ROUGE-1/2/L, BLEU-4 and METEOR.")
    parser.add_argument("--hyp", required=True, help="hypotheses, one a line")
    parser.add_argument("--ref", required=True,
                        help="references: JSONL with tgt (and refs for multi-reference), or text, one a line")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated: rouge,bleu,meteor")
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")
    parser.add_argument("--lowercase", action="store_true", help="lowercase hypotheses and references first")
    parser.add_argument("--nltk_data", default=None,
                        help=f"where WordNet is prepared for nltk (default ${NLTK_DATA_ENV} or "
                             "~/.cache/s2s_ft/nltk_data)")
    parser.add_argument("--wordnet_dir", default=DEFAULT_WORDNET_DIR, help="WordNet 3.0 database (wordnet-base)")
    parser.add_argument("--log_level", default="info")
    return parser


def run(args: argparse.Namespace) -> Dict[str, float]:
    metrics = args.metrics.split(",")
    hyps = read_hypotheses(args.hyp)
    refs = read_references(args.ref)
    if len(hyps) != len(refs):
        raise DataError(f"line counts differ: {args.hyp} has {len(hyps)} hypotheses, "
                        f"{args.ref} has {len(refs)} references")
    scores = score(hyps, refs, metrics, lowercase=args.lowercase, nltk_data_dir=args.nltk_data,
                   wordnet_dir=args.wordnet_dir)
    print(format_table(scores))
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(scores, handle, indent=2)
            handle.write("\n")
    return scores


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
