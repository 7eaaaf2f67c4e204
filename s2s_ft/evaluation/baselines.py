"""Trivial baselines, scored with the same scorer on the same references as the model they are compared with.

A model score means something only next to what no model at all achieves. Three baselines:

* ``constant``: the same output for every input; candidates are the most frequent openings (first 1..4 words) of
  the *training* targets, and the best of them on the references is reported (multi-reference ROUGE rewards
  generic text, so this is the bar a generator of generic text clears);
* ``copy``: the source itself (question generation copies much of its sentence);
* ``lead``: the source's first sentence (summarisation's lead baseline).

    python -m s2s_ft.evaluation.baselines --train train.jsonl --ref dev.jsonl [--metrics rouge,bleu] [--metric rougeL]
        [--json baselines.json]

Only training targets choose the constant's candidates; the references pick the best candidate, which makes the
constant baseline an upper bound of what a constant output can score (optimistic for the baseline, never for the
model).
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import Dict, List, Sequence

from s2s_ft.data.reading import DataError, check_side, iter_jsonl
from s2s_ft.evaluation.metrics import (
    METRIC_KEYS,
    METRICS,
    join_pieces,
    metric_family,
    read_dev_examples,
    score,
)
from s2s_ft.fileio import write_atomic

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def frequent_openings(targets: Sequence[str], max_words: int = 4, per_length: int = 5) -> List[str]:
    """The ``per_length`` most frequent first-n-word openings of ``targets`` for n = 1..max_words (no repeats)."""
    chosen: List[str] = []
    for n in range(1, max_words + 1):
        counts = Counter(" ".join(t.split()[:n]) for t in targets if len(t.split()) >= n)
        chosen += [text for text, _ in counts.most_common(per_length) if text not in chosen]
    return chosen


def best_constant(candidates: Sequence[str], refs: Sequence[Sequence[str]], metric: str = "rougeL",
                  metrics: Sequence[str] = ("rouge",)) -> tuple[str, Dict[str, float]]:
    """The candidate that, output for every input, scores best on ``metric``; with its scores."""
    if not candidates:
        raise ValueError("no constant candidates (empty training targets?)")
    families = sorted(set(metrics) | {metric_family(metric)})
    results = [(text, score([text] * len(refs), refs, families)) for text in candidates]
    return max(results, key=lambda item: item[1][metric])


def lead_sentence(text: str) -> str:
    return SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def baselines(train_targets: Sequence[str], sources: Sequence[str], refs: Sequence[Sequence[str]],
              metric: str = "rougeL", metrics: Sequence[str] = ("rouge",)) -> Dict[str, dict]:
    """{name: {"output": example output, **scores}} for the constant, copy and lead baselines."""
    constant, constant_scores = best_constant(frequent_openings(train_targets), refs, metric, metrics)
    rows = {"constant": {"output": constant, **constant_scores}}
    for name, outputs in (("copy", list(sources)), ("lead", [lead_sentence(s) for s in sources])):
        rows[name] = {"output": outputs[0] if outputs else "", **score(outputs, refs, metrics)}
    return rows


def training_targets(path: str) -> List[str]:
    targets = [check_side(path, number, record, "tgt") for number, record in iter_jsonl(path)]
    return [t if isinstance(t, str) else join_pieces(t) for t in targets]


def format_rows(rows: Dict[str, dict]) -> str:
    keys = [k for k in next(iter(rows.values())) if k not in ("output", "n")]
    lines = [f"{'baseline':10s} " + " ".join(f"{k:>9s}" for k in keys) + "  example output"]
    for name, row in rows.items():
        example = row["output"] if len(row["output"]) <= 60 else row["output"][:57] + "..."
        lines.append(f"{name:10s} " + " ".join(f"{row[k]:9.2f}" for k in keys) + f"  {example!r}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="training JSONL: its targets give the constant's candidates")
    parser.add_argument("--ref", required=True, help="JSONL with src and tgt (or refs), as s2s_ft.cli.evaluate reads")
    parser.add_argument("--metrics", default="rouge", help=f"comma-separated, of {','.join(METRICS)}")
    parser.add_argument("--metric", default="rougeL", help="picks the best constant")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.metric not in METRIC_KEYS or not set(metrics) <= set(METRICS):
        parser.error(f"--metric is one of {', '.join(METRIC_KEYS)}; --metrics of {','.join(METRICS)}")
    try:
        sources, refs, _ = read_dev_examples(args.ref)
        sources = [s if isinstance(s, str) else join_pieces(s) for s in sources]
        rows = baselines(training_targets(args.train), sources, refs, args.metric, metrics)
    except (DataError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_rows(rows))
    if args.json:
        write_atomic(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
