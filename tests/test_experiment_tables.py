"""The pure table / argument / diagnostic helpers of experiments/method_comparison.py and output_diagnostics.py
(no data, no models, no subprocesses)."""
import pytest

from conftest import load_script

mc = load_script("experiments", "method_comparison")


def test_aggregate_mean_and_sample_std_over_seeds():
    per_seed = {"causal": {1: {"bleu": 10.0, "rougeL": 30.0}, 2: {"bleu": 12.0, "rougeL": 34.0},
                           3: {"bleu": 14.0, "rougeL": 38.0}},
                "masked": {1: {"bleu": 9.0, "rougeL": 29.0}},
                "hf_bert2bert": {}}
    table = mc.aggregate(per_seed, ["bleu", "rougeL"])
    assert table["causal"]["bleu"]["mean"] == pytest.approx(12.0)
    assert table["causal"]["bleu"]["std"] == pytest.approx(2.0)  # sample (n - 1) deviation
    assert table["causal"]["rougeL"]["std"] == pytest.approx(4.0)
    assert table["causal"]["bleu"]["values"] == [10.0, 12.0, 14.0]  # seed order
    assert table["masked"]["bleu"] == {"mean": 9.0, "std": None, "n": 1, "values": [9.0]}
    assert "hf_bert2bert" not in table  # no finished seed yet


def test_markdown_table_bolds_the_best_mean_and_marks_missing_systems():
    aggregated = {"causal": {"bleu": {"mean": 12.0, "std": 2.0, "n": 3, "values": []}},
                  "masked": {"bleu": {"mean": 9.5, "std": None, "n": 1, "values": []}}}
    text = mc.markdown_table(aggregated, (("bleu", "BLEU-4"),), ["causal", "masked", "hf_bert2bert"])
    lines = text.splitlines()
    assert lines[0] == "| system | seeds | BLEU-4 |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| causal | 3 | **12.00 ± 2.00** |"
    assert lines[3] == "| masked | 1 | 9.50 |"  # one seed: no deviation to show
    assert lines[4] == "| hf_bert2bert | 0 | – |"


def test_markdown_table_bolds_nothing_when_all_means_tie():
    cell = {"mean": 0.0, "std": None, "n": 1, "values": [0.0]}
    text = mc.markdown_table({"causal": {"bleu": cell}, "masked": {"bleu": cell}}, (("bleu", "BLEU-4"),),
                             ["causal", "masked"])
    assert "**" not in text


def test_per_dataset_values():
    defaults = {"squad_qg": 1000, "scitldr": 500}
    assert mc.per_dataset(None, defaults, int, mc.DATASETS) == defaults
    assert mc.per_dataset("7", defaults, int, mc.DATASETS) == {"squad_qg": 7, "scitldr": 7}
    assert mc.per_dataset("scitldr=9", defaults, int, mc.DATASETS) == {"squad_qg": 1000, "scitldr": 9}
    with pytest.raises(SystemExit):
        mc.per_dataset("nope=1", defaults, int, mc.DATASETS)


def test_parse_args_subsets_and_seeds(tmp_path):
    args = mc.parse_args(["--systems", "causal,hf_bert2bert", "--datasets", "scitldr", "--seeds", "3,1",
                          "--steps", "squad_qg=5", "--work_dir", str(tmp_path)])
    assert args.systems == ["causal", "hf_bert2bert"] and args.datasets == ["scitldr"]
    assert args.seeds == [1, 3]
    assert args.steps == {"squad_qg": 5, "scitldr": mc.DEFAULTS["steps"]["scitldr"]}
    with pytest.raises(SystemExit):
        mc.parse_args(["--systems", "causal,bart"])


def test_output_diagnostics_count_distinct_outputs_and_source_words():
    diagnostics = load_script("experiments", "output_diagnostics").diagnostics
    sources = ["denver broncos won super bowl 50", "the game was played in santa clara", "beyonce sang"]
    outputs = ["what team won super bowl 50 ?", "in what year was the name ?", "in what year was the name ?"]
    row = diagnostics(outputs, sources)
    assert row["distinct"] == 2
    assert row["mean_words"] == (7 + 7 + 7) / 3
    # Only the first output shares a word beyond function and question words ("super", "bowl", "50");
    # the second shares "the", "was" and "in" with its source, which do not count.
    assert row["shares_source_word"] == pytest.approx(100 / 3)
