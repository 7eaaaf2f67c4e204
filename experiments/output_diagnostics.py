"""Does a system read its source? Diagnostics of the outputs of a method-comparison run, next to its scores.

For every system and seed under ``WORK_DIR/DATASET/`` (``pred.txt`` against the run's evaluation file): how many
outputs are distinct, their mean length in words, and the share that has at least one word in common with its
source outside a short list of function and question words. The references get the same figures, as the bar: a
system that writes the same generic output for every input scores low on all three, whatever its ROUGE.

    python experiments/output_diagnostics.py WORK_DIR/squad_qg
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for s2s_ft

from s2s_ft.evaluation.metrics import join_pieces, read_dev_examples, read_hypotheses  # noqa: E402

FUNCTION_WORDS = frozenset(
    "the a an of in on at by for from with as to and or is are was were be been do does did what which who whom "
    "whose when where why how many much year name 's ? , . -lrb- -rrb-".split())


def content_words(text: str) -> set:
    return set(text.lower().split()) - FUNCTION_WORDS


def shares_source_word(outputs: list, sources: list) -> float:
    """The fraction of outputs with a content word in common with their own source."""
    return sum(bool(content_words(out) & content_words(src)) for out, src in zip(outputs, sources)) / len(outputs)


def unsupported_words(output: str, source: str, references: list) -> list:
    """The output's content words found neither in its source nor in any reference: specifics a question about this
    sentence had no ground for (invented names and numbers, garbled word pieces such as "thetre")."""
    grounded = content_words(source).union(*(content_words(ref) for ref in references))
    return sorted(content_words(output) - grounded)


def faithfulness(outputs: list, sources: list, references: list) -> dict:
    """Fractions over the outputs, each a symptom of a question that garbles its sentence's specifics:
    ``unsupported_word``: outputs with at least one content word found neither in the source nor in a reference;
    ``unsupported_number``: outputs with such a word that holds a digit (an invented number or year);
    ``repeated_word``: outputs that repeat a content word ("how many credits were required to be required ?")."""
    unsupported = [unsupported_words(o, s, r) for o, s, r in zip(outputs, sources, references)]
    repeated = [len(words) != len(set(words)) for words in
                ([w for w in o.lower().split() if w not in FUNCTION_WORDS] for o in outputs)]
    n = len(outputs)
    return {"unsupported_word": sum(bool(u) for u in unsupported) / n,
            "unsupported_number": sum(any(c.isdigit() for w in u for c in w) for u in unsupported) / n,
            "repeated_word": sum(repeated) / n}


def diagnostics(outputs: list, sources: list) -> dict:
    return {"distinct": len(set(outputs)), "mean_words": statistics.fmean(len(o.split()) for o in outputs),
            "shares_source_word": 100.0 * shares_source_word(outputs, sources)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset_dir", help="WORK_DIR/DATASET of experiments/method_comparison.py")
    args = parser.parse_args(argv)
    evaluation = sorted(glob.glob(os.path.join(args.dataset_dir, "eval.*.jsonl")))
    if not evaluation:
        raise SystemExit(f"{args.dataset_dir}: no eval.*.jsonl (not a method_comparison dataset dir)")
    sources, references, _ = read_dev_examples(evaluation[0])
    sources = [src if isinstance(src, str) else join_pieces(src) for src in sources]
    rows = {"references": diagnostics([refs[0] for refs in references], sources)}
    for pred in sorted(glob.glob(os.path.join(args.dataset_dir, "*", "seed*", "pred.txt"))):
        system, seed = pred.split(os.sep)[-3:-1]
        outputs = read_hypotheses(pred)
        if len(outputs) != len(sources):
            raise SystemExit(f"{pred}: {len(outputs)} lines, {evaluation[0]} has {len(sources)}")
        rows[f"{system} {seed}"] = diagnostics(outputs, sources)
    print(f"{'':24s} {'distinct':>9s} {'words':>6s} {'shares a source word':>21s}   ({len(sources)} examples)")
    for name, row in rows.items():
        print(f"{name:24s} {row['distinct']:9d} {row['mean_words']:6.1f} {row['shares_source_word']:20.1f}%")


if __name__ == "__main__":
    main()
