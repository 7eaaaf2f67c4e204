"""Scoring generated text against references with standard libraries: ROUGE, BLEU and METEOR (the library part of
``s2s_ft.cli.evaluate``).

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

  WordNet comes from Debian's ``wordnet-base`` package, prepared for nltk by ``s2s_ft.evaluation.wordnet``.

* ``coco`` -> ``bleu4_coco``, ``meteor_coco``, ``rougeL_coco``: the coco-caption scorers that question-generation
  papers ran (Du et al.'s ``qgevalcap/eval.py``, copied into UniLM's and ProphetNet's QG evaluation), from the
  ``pycocoevalcap`` package (``pip install -e ".[papers]"``; METEOR needs Java): BLEU-4 with the closest reference
  length, METEOR 1.5 (the jar, ``-l en -norm``, with its paraphrase table) and ROUGE-L with beta 1.2 (the best
  LCS precision and recall over the references), on the same lowercased whitespace tokens. Not in the default
  set: it is the number to put beside published QG rows, and the one that needs a JVM.

Input files:

* ``--hyp``: one hypothesis per line (an empty line is an empty hypothesis).
* ``--ref``: JSONL (``.jsonl``) with ``tgt`` (a string, or a list of WordPiece pieces, joined with ``##``
  merged) and optionally ``refs`` (all references of the example; used instead of ``[tgt]`` when present),
  as written by ``examples/wordnet_glosses.py``; any other extension is read as plain text, one reference a
  line.

The command line is ``s2s-ft-eval`` / ``python -m s2s_ft.cli.evaluate`` (s2s_ft/cli/evaluate.py).

Python::

    from s2s_ft.evaluation.metrics import score
    score(["the cat sat"], [["the cat ran", "a cat sat"]], metrics=("rouge", "bleu"))
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import shutil
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from s2s_ft.data.answers import AnswerPresence
from s2s_ft.data.reading import DataError, iter_jsonl, read_source
from s2s_ft.errors import UsageError
from s2s_ft.evaluation.wordnet import (
    DEFAULT_WORDNET_DIR,
    ensure_wordnet,
    wordnet_reader,
)

log = logging.getLogger(__name__)

METRICS = ("rouge", "bleu", "meteor")  # the default set
PAPER_METRICS = ("coco",)  # asked for by name: a 100 MB package and a JVM
SCORES = {"rouge": ("rouge1", "rouge2", "rougeL"), "bleu": ("bleu", "bleu4_tok"), "meteor": ("meteor",),
          "coco": ("bleu4_coco", "meteor_coco", "rougeL_coco")}  # the keys each metric family produces
METRIC_KEYS = tuple(key for keys in SCORES.values() for key in keys)


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


def coco(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> Dict[str, float]:
    """The coco-caption BLEU-4, METEOR 1.5 and ROUGE-L (beta 1.2) of QG papers, on lowercased tokens, x 100."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise UsageError('the coco metrics need pycocoevalcap: pip install -e ".[papers]"') from None
    if shutil.which("java") is None:
        raise UsageError("the coco METEOR runs the METEOR 1.5 jar, and no java is on PATH "
                         "(Debian: apt-get install default-jre-headless)")
    # the scorers take {id: [text, ...]}; METEOR's stdin protocol splits on "|||", so it is taken out of the text
    gts = {i: [" ".join(tokens(r)).replace("|||", "") for r in sentence_refs] for i, sentence_refs in enumerate(refs)}
    res = {i: [" ".join(tokens(h)).replace("|||", "")] for i, h in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length ratios
        bleu_n, _ = Bleu(4).compute_score(gts, res)
    rouge_l, _ = Rouge().compute_score(gts, res)
    scorer = Meteor()
    try:
        meteor_value, _ = scorer.compute_score(gts, res)
    finally:
        del scorer  # stops the JVM
    return {"bleu4_coco": 100.0 * float(bleu_n[3]), "meteor_coco": 100.0 * float(meteor_value),
            "rougeL_coco": 100.0 * float(rouge_l)}


def score(hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Iterable[str] = METRICS,
          lowercase: bool = False, nltk_data_dir: Optional[str] = None,
          wordnet_dir: str = DEFAULT_WORDNET_DIR) -> Dict[str, float]:
    """Corpus scores (0-100) of ``hyps[i]`` against its references ``refs[i]`` (one or more strings each).

    ``metrics``: any of ``rouge`` (rouge1, rouge2, rougeL), ``bleu`` (bleu, bleu4_tok), ``meteor``, ``coco``
    (bleu4_coco, meteor_coco, rougeL_coco). The result
    also holds ``n``, the number of sentences. ``lowercase`` lowercases everything first (only sacrebleu's
    ``bleu`` is case-sensitive otherwise).
    """
    metrics = [m.strip().lower() for m in metrics if m.strip()]
    known = METRICS + PAPER_METRICS
    unknown = [m for m in metrics if m not in known]
    if unknown or not metrics:
        raise UsageError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}")
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
    if "coco" in metrics:
        result.update(coco(hyps, refs))
    result["n"] = len(hyps)
    return result


def metric_family(key: str) -> str:
    """The ``--metrics`` entry that produces score ``key`` (``rougeL`` -> ``rouge``)."""
    return next(family for family, keys in SCORES.items() if key in keys)


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
    file: ``src`` as the training data has it (string or word-piece list; an ``AnswerSource`` where the rows have an
    ``answer``), references as ``read_references``
    reads them. Only the records used are read, and any problem in them stops with ``FILE:LINE``."""
    sources, refs, numbers = [], [], []
    presence = AnswerPresence(path)
    for number, record in itertools.islice(iter_jsonl(path, expected='"src" and "tgt" (or "refs")'), max_examples):
        sources.append(read_source(path, number, record, presence, expected='{"src": ..., "tgt": ...}'))
        refs.append(record_references(path, number, record))
        numbers.append(number)
    return sources, refs, numbers
