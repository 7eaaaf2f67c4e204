"""Trivial baselines (s2s_ft.evaluation.baselines) against hand-computed expectations and rouge-score called directly."""
from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from s2s_ft.evaluation import baselines

TRAIN = ["a member of the genus canis", "a member of a group", "a person who works", "a person who sings",
         "the act of running", "a member of the family", "having a quality"]
REFS = [["a member of the cat family", "a large cat"], ["a person who teaches"], ["the act of swimming fast"]]
SOURCES = ["lion (noun). It roars. Loudly!", "teacher (noun)", "swim (verb)"]


def test_frequent_openings_come_from_training_targets_by_count():
    openings = baselines.frequent_openings(TRAIN, max_words=3, per_length=2)
    assert openings[:2] == ["a", "the"]  # 1 word: "a" x5, then the first of the ties
    assert "a member" in openings and "a person" in openings  # 2 words: 3 and 2 times
    assert "a member of" in openings and "a person who" in openings  # 3 words
    assert len(openings) == len(set(openings))


def test_best_constant_is_the_max_of_an_independent_rouge_l():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    candidates = baselines.frequent_openings(TRAIN)

    def mean_best_f(text):
        return 100 * sum(max(scorer.score(r, text)["rougeL"].fmeasure for r in refs) for refs in REFS) / len(REFS)

    text, scores = baselines.best_constant(candidates, REFS)
    assert text == max(candidates, key=mean_best_f)
    assert scores["rougeL"] == pytest.approx(mean_best_f(text))


def test_lead_and_copy_baselines():
    assert baselines.lead_sentence("First one. Second one? Third") == "First one."
    assert baselines.lead_sentence("no end mark") == "no end mark"
    rows = baselines.baselines(TRAIN, SOURCES, REFS)
    assert set(rows) == {"constant", "copy", "lead"}
    assert rows["copy"]["output"] == SOURCES[0] and rows["lead"]["output"] == "lion (noun)."


def test_cli_writes_the_table_and_names_a_bad_line(tmp_path, capsys):
    train, ref = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps({"src": "x", "tgt": t}) + "\n" for t in TRAIN))
    ref.write_text("".join(json.dumps({"src": s, "tgt": r[0], "refs": r}) + "\n" for s, r in zip(SOURCES, REFS)))
    assert baselines.main(["--train", str(train), "--ref", str(ref), "--json", str(tmp_path / "b.json")]) == 0
    table = json.loads((tmp_path / "b.json").read_text())
    assert table["constant"]["rougeL"] > 0 and "constant" in capsys.readouterr().out
    train.write_text(json.dumps({"src": "x", "tgt": 3}) + "\n")
    with pytest.raises(SystemExit, match=r"train.jsonl:1"):
        baselines.main(["--train", str(train), "--ref", str(ref)])
