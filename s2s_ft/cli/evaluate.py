"""The scoring command line: ``s2s-ft-eval`` / ``python -m s2s_ft.cli.evaluate``.

    s2s-ft-eval --hyp dev.pred --ref dev.jsonl [--metrics rouge,bleu,meteor] [--json scores.json] [--lowercase]

Inputs: ``--hyp``, one hypothesis per line (an empty line is an empty hypothesis); ``--ref``, JSONL (``.jsonl``)
with ``tgt`` and optionally ``refs`` (all references of the example), or any other file as plain text, one
reference a line. The metrics themselves (ROUGE, BLEU, METEOR: what each score means) are s2s_ft/evaluation/metrics.py, the
Python API: ``from s2s_ft.evaluation.metrics import score``; the names below stay importable from here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional, Sequence

from s2s_ft.cli.common import add_log_level_flag, run_cli
from s2s_ft.data.reading import DataError
from s2s_ft.errors import UsageError  # noqa: F401  (re-exported)
from s2s_ft.evaluation.metrics import (  # noqa: F401
    METRIC_KEYS,
    METRICS,
    SCORES,
    bleu,
    bleu4_tok,
    join_pieces,
    meteor,
    metric_family,
    read_dev_examples,
    read_hypotheses,
    read_references,
    record_references,
    reference_streams,
    rouge,
    score,
    tokens,
)
from s2s_ft.evaluation.wordnet import (  # noqa: F401
    DEFAULT_WORDNET_DIR,
    LEXNAMES,
    NLTK_DATA_ENV,
    WordNetMissing,
    default_nltk_data_dir,
    ensure_wordnet,
    lexnames_text,
    wordnet_reader,
)


def format_table(scores: Dict[str, float]) -> str:
    rows = [f"{'metric':<10} {'score':>8}"]
    for name, value in scores.items():
        rows.append(f"{name:<10} {value:>8d}" if name == "n" else f"{name:<10} {value:>8.2f}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score hypotheses with ROUGE-1/2/L, BLEU-4 and METEOR.")
    parser.add_argument("--hyp", required=True, help="hypotheses, one a line")
    parser.add_argument("--ref", required=True,
                        help="references: JSONL with tgt (and refs for multi-reference), or text, one a line")
    parser.add_argument("--metrics", default=",".join(METRICS),
                        help="comma-separated: rouge,bleu,meteor (the default) and coco (the QG papers' coco-caption "
                             "BLEU-4, METEOR 1.5 and ROUGE-L: needs .[papers] and Java)")
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")
    parser.add_argument("--lowercase", action="store_true", help="lowercase hypotheses and references first")
    parser.add_argument("--nltk_data", default=None,
                        help=f"where WordNet is prepared for nltk (default ${NLTK_DATA_ENV} or "
                             "~/.cache/s2s_ft/nltk_data)")
    parser.add_argument("--wordnet_dir", default=DEFAULT_WORDNET_DIR, help="WordNet 3.0 database (wordnet-base)")
    add_log_level_flag(parser.add_argument)
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
