"""SQuAD question generation scored the way the published numbers are: one prediction per distinct source sentence.

Du et al. (2017) score sentence-level QG with one generated question per *distinct* sentence of the split, against
every question asked about that sentence. Our ``dev.jsonl`` repeats a sentence once per question (10,570 lines,
6,795 distinct sentences), so scoring line by line against one question each is not comparable with them.

    python experiments/squad_qg.py group DATA/squad_qg/dev.jsonl WORK/dev.grouped.jsonl [--every 20 --sample S]
    python experiments/squad_qg.py score WORK/dev.grouped.jsonl WORK/dev.pred.txt --json WORK/scores.json \
        [--train_log WORK/model/train_log.jsonl]

``group`` writes one ``{"src", "tgt", "refs"}`` line per distinct ``src`` in order of first appearance (``refs``:
all its questions, ``tgt`` the first), the file that ``decode_seq2seq.py`` and ``s2s_ft.cli.evaluate`` read, and with
``--every N --sample S`` also every N-th grouped line to S (a dev sample spread over the articles, for curves
during training). ``score`` scores the predictions (BLEU-4 as QG papers compute it, METEOR, ROUGE-L, sacreBLEU)
and, on the same references with the same scorer, two trivial baselines (copy the source sentence; "what is" +
its first six words + "?"), plus two checks that a model reads its source: the fraction of distinct predictions
and the fraction that shares a content word with their source (``output_diagnostics.shares_source_word``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for s2s_ft

from output_diagnostics import faithfulness, shares_source_word  # noqa: E402  (this folder is on sys.path when run as a script)

from s2s_ft.data.reading import DataError  # noqa: E402
from s2s_ft.evaluation.metrics import SCORES, read_dev_examples, read_hypotheses, score  # noqa: E402
from s2s_ft.fileio import write_atomic  # noqa: E402
from s2s_ft.training.rundir import logged_seconds  # noqa: E402

METRICS = ("bleu", "meteor", "rouge")
REPORTED = ("bleu4_tok", "meteor", "rougeL", "bleu")


def group_by_source(path: str) -> list[dict]:
    """One record per distinct ``src`` (first-appearance order) with all its ``tgt`` as ``refs``."""
    grouped: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                source, target = record["src"], record["tgt"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: expected a JSON object with string \"src\" and \"tgt\"") from None
            if not isinstance(source, str) or not isinstance(target, str):
                raise DataError(f"{path}:{number}: \"src\" and \"tgt\" must be strings")
            grouped.setdefault(source, []).append(target)
    return [{"src": source, "tgt": refs[0], "refs": refs} for source, refs in grouped.items()]


def baselines(sources: list[str]) -> dict[str, list[str]]:
    return {"copy the source": list(sources),
            "\"what is\" + first six words + \"?\"": [" ".join(["what", "is", *s.split()[:6], "?"]) for s in sources]}


def output_checks(outputs: list[str], sources: list[str], refs: Optional[list[list[str]]] = None) -> dict:
    """Fractions: distinct outputs, outputs sharing a content word with their own source, and with the references
    the faithfulness figures of ``output_diagnostics.faithfulness`` (unsupported words and numbers, repeats)."""
    checks = {"distinct": len(set(outputs)) / len(outputs), "source_overlap": shares_source_word(outputs, sources)}
    return checks if refs is None else {**checks, **faithfulness(outputs, sources, refs)}


def scores_of(outputs: list[str], sources: list[str], refs: list[list[str]], coco: bool = False) -> dict:
    """The reported scores (with ``coco`` also the papers' coco-caption BLEU-4 / METEOR 1.5 / ROUGE-L) and checks."""
    values = score(outputs, refs, METRICS + (("coco",) if coco else ()))
    keys = REPORTED + (SCORES["coco"] if coco else ())
    return {**{key: round(values[key], 2) for key in keys}, **{k: round(v, 4) for k, v in
                                                               output_checks(outputs, sources, refs).items()}}


def train_seconds(path: str) -> float:
    """Training wall time from a run's train_log.jsonl: the sum of its logging windows (the steps and any dev
    evaluation, not the start-up). After a resume the log holds each step once, so a kill costs nothing here."""
    return round(logged_seconds(path), 1)


def write_report(report: dict, args, table) -> None:
    """The ``score`` command's ending: adds ``train_seconds`` (with ``--train_log``), writes ``--json`` and prints
    ``table(report, grouped_file)``."""
    if args.train_log:
        report["train_seconds"] = train_seconds(args.train_log)
    write_atomic(args.json, json.dumps(report, indent=2) + "\n")
    print(table(report, args.grouped_file))


def format_table(report: dict, grouped_file: str = "") -> str:
    rows = [("model", report)] + list(report["baselines"].items())
    lines = [f"{grouped_file or 'grouped file'}: {report['n']} distinct sentences, all their questions as references",
             f"{'':38s} {'BLEU-4':>7s} {'METEOR':>7s} {'ROUGE-L':>8s} {'sacreBLEU':>9s} {'distinct':>9s} "
             f"{'src word':>9s} {'unsupp.':>8s} {'number':>7s} {'repeat':>7s}"]
    for name, row in rows:
        lines.append(f"{name:38s} {row['bleu4_tok']:7.2f} {row['meteor']:7.2f} {row['rougeL']:8.2f} {row['bleu']:9.2f} "
                     f"{100 * row['distinct']:8.1f}% {100 * row['source_overlap']:8.1f}% "
                     f"{100 * row['unsupported_word']:7.1f}% {100 * row['unsupported_number']:6.1f}% "
                     f"{100 * row['repeated_word']:6.1f}%")
    return "\n".join(lines)


def group_and_score_commands(description: str, grouped: str):
    """The parser of the QG scripts' ``group`` and ``score`` commands (``grouped``: what one grouped line is);
    returns (parser, commands, group parser, score parser) for a script to add its own."""
    parser = argparse.ArgumentParser(description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    group = commands.add_parser("group", help=f"one line per {grouped} with all its questions as refs")
    group.add_argument("dev_file")
    group.add_argument("output")
    group.add_argument("--every", type=int, default=0, help="also write every N-th grouped line to --sample")
    group.add_argument("--sample")
    scorer = commands.add_parser("score", help="score predictions and the trivial baselines on grouped references")
    scorer.add_argument("grouped_file")
    scorer.add_argument("predictions")
    scorer.add_argument("--json", required=True, help="where to write the scores")
    scorer.add_argument("--train_log", help="the run's train_log.jsonl: adds train_seconds")
    scorer.add_argument("--coco", action="store_true",
                        help="also the papers' coco-caption BLEU-4, METEOR 1.5 and ROUGE-L (.[papers] and Java)")
    return parser, commands, group, scorer


def main(argv=None) -> None:
    parser, _, _, _ = group_and_score_commands(__doc__.split("\n")[0], "distinct source")
    args = parser.parse_args(argv)
    try:
        if args.command == "group":
            if bool(args.every) != bool(args.sample):
                parser.error("--every and --sample go together")
            records = group_by_source(args.dev_file)
            for path in (args.output, args.sample):
                if path:
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            write_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            if args.sample:
                write_atomic(args.sample, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                  for r in records[::args.every]))
            print(f"{args.output}: {len(records)} distinct sources")
            return
        sources, refs, _ = read_dev_examples(args.grouped_file)
        outputs = read_hypotheses(args.predictions)
        if len(outputs) != len(sources):
            raise DataError(f"{args.predictions}: {len(outputs)} lines, but {args.grouped_file} has {len(sources)} "
                            f"sources")
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    report = {"n": len(sources), **scores_of(outputs, sources, refs, args.coco),
              "baselines": {name: scores_of(lines, sources, refs, args.coco)
                            for name, lines in baselines(sources).items()}}
    write_report(report, args, format_table)


if __name__ == "__main__":
    main()
