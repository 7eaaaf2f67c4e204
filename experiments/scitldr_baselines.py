"""SciTLDR baselines that need no model, scored like the models (``s2s_ft.evaluation.metrics.score``, multi-reference ROUGE):

* ``lead``: the abstract's first sentence (the summarisation baseline the issue names);
* ``contribution sentence``: the abstract's first sentence that states the contribution (``we propose``,
  ``we present``, ``we introduce``, ``we show``, ``we develop``, ``we demonstrate``, ``this paper``,
  ``in this work``), else the first sentence. One line of heuristic, and much stronger than lead: a TLDR
  usually paraphrases exactly that sentence, so it is the bar an extractive-leaning model should be held to.

    python experiments/scitldr_baselines.py ../shared/data/scitldr/test.jsonl [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from s2s_ft.data.reading import iter_jsonl  # noqa: E402
from s2s_ft.evaluation.baselines import SENTENCE_END, lead_sentence  # noqa: E402
from s2s_ft.evaluation.metrics import score  # noqa: E402

CONTRIBUTION = re.compile(r"\b(we (propose|present|introduce|show|develop|demonstrate)|this paper|in this work)\b",
                          re.IGNORECASE)


def contribution_sentence(abstract: str) -> str:
    sentences = SENTENCE_END.split(abstract.strip())
    return next((s for s in sentences if CONTRIBUTION.search(s)), sentences[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref", help="SciTLDR JSONL with src and refs (or tgt)")
    p.add_argument("--json", help="also write the scores here")
    args = p.parse_args(argv)
    records = [record for _, record in iter_jsonl(args.ref)]
    sources = [r["src"] for r in records]
    refs = [r.get("refs") or [r["tgt"]] for r in records]
    rows = {}
    for name, pick in (("lead", lead_sentence), ("contribution sentence", contribution_sentence)):
        outputs = [pick(s) for s in sources]
        rows[name] = {**score(outputs, refs, ["rouge"]),
                      "mean_words": sum(len(o.split()) for o in outputs) / len(outputs)}
    print("| baseline | ROUGE-1 | ROUGE-2 | ROUGE-L | mean words |\n|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['rouge1']:.2f} | {row['rouge2']:.2f} | {row['rougeL']:.2f} | {row['mean_words']:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
