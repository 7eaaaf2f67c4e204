"""The pure table / argument / diagnostic helpers of experiments/method_comparison.py and output_diagnostics.py,
and the identity start of hf_bert2bert's fresh LM head (no data, tiny models;
the one subprocess sources recipe_common.sh)."""
import json

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


def test_markdown_table_shows_checks_as_percentages_never_bold():
    cell = lambda mean, std=None: {"mean": mean, "std": std, "n": 1, "values": [mean]}  # noqa: E731
    aggregated = {"causal": {"bleu": cell(9.0), "distinct": cell(0.5), "source_overlap": cell(0.25)},
                  "masked": {"bleu": cell(8.0), "distinct": cell(0.9, 0.01), "source_overlap": cell(0.875)}}
    text = mc.markdown_table(aggregated, (("bleu", "BLEU-4"),), ["causal", "masked", "hf_bert2bert"],
                             mc.CHECK_COLUMNS)
    lines = text.splitlines()
    assert lines[0] == "| system | seeds | BLEU-4 | distinct % | src word % |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| causal | 1 | **9.00** | 50.00 | 25.00 |"
    assert lines[3] == "| masked | 1 | 8.00 | 90.00 ± 1.00 | 87.50 |"
    assert lines[4] == "| hf_bert2bert | 0 | – | – | – |"


def test_cpu_precision_reads_the_bf16_flags(tmp_path):
    def flags(text):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {text}\n")
        return mc.cpu_precision(str(path))
    assert flags("avx512f avx512_bf16 avx512vl") == "bf16"
    assert flags("amx_tile amx_bf16") == "bf16"
    assert flags("avx512f avx2") == "fp32"
    assert flags("avx512_bf16x") == "fp32"  # whole flag names only
    assert mc.cpu_precision(str(tmp_path / "missing")) == "fp32"


def test_parse_args_recipe_defaults_and_overrides(tmp_path):
    args = mc.parse_args(["--work_dir", str(tmp_path)])
    assert args.precision == mc.cpu_precision()
    assert args.steps["squad_qg"] == 2800 and args.max_tokens["squad_qg"] == 2400 and args.lr["squad_qg"] == 5e-4
    assert args.detokenize == {"squad_qg": "ptb", "scitldr": "text"}
    assert args.eval_examples == 0  # all
    settings = mc.settings_for(args, "squad_qg", "/ckpt")
    assert settings["warmup_steps"] == 196 and settings["grouped_eval"] is True
    assert {"max_tokens", "fresh_head_init", "precision", "min_len", "no_repeat_ngram", "detokenize",
            "length_penalty", "beam_size"} <= set(settings)
    args = mc.parse_args(["--work_dir", str(tmp_path), "--precision", "fp32", "--detokenize", "scitldr=spaced",
                          "--min_len", "2", "--max_tokens", "0"])
    assert args.precision == "fp32" and args.detokenize == {"squad_qg": "ptb", "scitldr": "spaced"}
    assert args.min_len == {"squad_qg": 2, "scitldr": 2} and args.max_tokens == {"squad_qg": 0, "scitldr": 0}
    with pytest.raises(SystemExit):
        mc.parse_args(["--detokenize", "squad_qg=nltk"])
    with pytest.raises(SystemExit):
        mc.parse_args(["--precision", "fp16"])


def test_changed_recipe_setting_is_refused(tmp_path):
    args = mc.parse_args(["--work_dir", str(tmp_path)])
    path = str(tmp_path / "settings.json")
    mc.check_settings(path, mc.settings_for(args, "squad_qg", "/ckpt"))
    mc.check_settings(path, mc.settings_for(args, "squad_qg", "/ckpt"))  # same settings: fine
    changed = mc.parse_args(["--work_dir", str(tmp_path), "--detokenize", "text"])
    with pytest.raises(SystemExit, match="detokenize: ptb -> text"):
        mc.check_settings(path, mc.settings_for(changed, "squad_qg", "/ckpt"))


def write_dev(path):
    rows = [("s1", "q1"), ("s2", "q2"), ("s1", "q3"), ("s3", "q4"), ("s2", "q5")]
    path.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in rows) + "\n")


def test_write_eval_file_grouped_and_plain(tmp_path):
    dev = tmp_path / "dev.jsonl"
    write_dev(dev)
    grouped = tmp_path / mc.eval_file_name(0, True)
    assert grouped.name == "eval.grouped.all.jsonl"
    assert mc.write_eval_file(str(dev), str(grouped), 0, True) == 3
    records = [json.loads(line) for line in grouped.read_text().splitlines()]
    assert records == [{"src": "s1", "tgt": "q1", "refs": ["q1", "q3"]},
                       {"src": "s2", "tgt": "q2", "refs": ["q2", "q5"]}, {"src": "s3", "tgt": "q4", "refs": ["q4"]}]
    first2 = tmp_path / mc.eval_file_name(2, True)
    assert first2.name == "eval.grouped.first2.jsonl"
    assert mc.write_eval_file(str(dev), str(first2), 2, True) == 2
    assert [json.loads(line)["src"] for line in first2.read_text().splitlines()] == ["s1", "s2"]
    plain = tmp_path / mc.eval_file_name(4, False)
    assert plain.name == "eval.first4.jsonl"
    assert mc.write_eval_file(str(dev), str(plain), 4, False) == 4
    assert [json.loads(line)["tgt"] for line in plain.read_text().splitlines()] == ["q1", "q2", "q3", "q4"]
    assert mc.write_eval_file(str(tmp_path / "missing.jsonl"), str(plain), 4, False) == 4  # written once, kept


def test_with_output_checks_adds_fractions(tmp_path):
    dev = tmp_path / "eval.jsonl"
    dev.write_text("".join(json.dumps({"src": s, "tgt": "q"}) + "\n" for s in
                           ["denver broncos won super bowl 50", "the game was played in santa clara", "beyonce sang"]))
    pred = tmp_path / "pred.txt"
    pred.write_text("what team won super bowl 50 ?\nin what year was the name ?\nin what year was the name ?\n")
    scores = mc.with_output_checks({"bleu": 1.0, "n": 3}, str(pred), str(dev))
    assert scores == {"bleu": 1.0, "n": 3, "distinct": round(2 / 3, 4), "source_overlap": round(1 / 3, 4)}
    pred.write_text("one line\n")
    with pytest.raises(SystemExit):
        mc.with_output_checks({}, str(pred), str(dev))


def test_table_heading_says_grouped_references():
    s = {"steps": 2800, "max_tokens": 2400, "batch_size": 16, "lr": 5e-4, "warmup_steps": 196, "precision": "bf16",
         "max_source_len": 96, "max_target_len": 32, "beam_size": 5, "length_penalty": 2.0, "min_len": 6,
         "no_repeat_ngram": 3, "detokenize": "ptb", "grouped_eval": True}
    text = mc.table_heading("squad_qg", s, {"causal": {1: {"n": 6795}}})
    assert text.startswith("### squad_qg: 2800 steps x <= 2400 tokens, lr 0.0005 (warmup 196), bf16")
    assert "no repeated 3-gram" in text and text.endswith("6,795 distinct dev sentences, all their questions as "
                                                          "references")


def test_hf_head_as_identity():
    transformers = pytest.importorskip("transformers")
    import torch
    hf = load_script("experiments", "hf_bert2bert")
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=16, is_decoder=True)
    torch.manual_seed(0)
    decoder = transformers.BertLMHeadModel(config)
    with torch.no_grad():
        decoder.bert.encoder.layer[-1].output.LayerNorm.weight.uniform_(0.5, 1.5)
    hf.head_as_identity(decoder)
    head = decoder.cls.predictions
    assert torch.equal(head.transform.dense.weight, torch.eye(8))
    assert not head.transform.dense.bias.any() and not head.bias.any()
    assert torch.equal(head.transform.LayerNorm.weight, decoder.bert.encoder.layer[-1].output.LayerNorm.weight)


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


def test_dropout_reaches_every_trainer(tmp_path):
    """--dropout is a recorded setting and both trainers get it; without it (the checkpoint's dropout) neither
    command carries the flag."""
    for flags, expected in (([], None), (["--dropout", "0"], ["--dropout", "0.0"])):
        args = mc.parse_args(["--work_dir", str(tmp_path), *flags])
        settings = mc.settings_for(args, "scitldr", "/ckpt")
        assert settings["dropout"] == (None if expected is None else float(expected[1]))
        for system in ("pseudo_masked", "hf_bert2bert"):
            command = mc.Unit(args, "scitldr", system, 1, settings, "/eval.jsonl").train_command()
            if expected is None:
                assert "--dropout" not in command
            else:
                at = command.index("--dropout")
                assert command[at:at + 2] == expected


def test_scitldr_contribution_sentence_baseline():
    baselines = load_script("experiments", "scitldr_baselines")
    abstract = "Deep nets forget. In this work we study forgetting. We propose a fix! It works."
    assert baselines.contribution_sentence(abstract) == "In this work we study forgetting."
    assert baselines.contribution_sentence("No claim here. None at all.") == "No claim here."


def test_report_only_tables_the_done_units_and_runs_nothing(tmp_path, capsys):
    data = tmp_path / "data" / "squad_qg"
    data.mkdir(parents=True)
    for name in ("train.jsonl", "dev.jsonl"):
        (data / name).write_text("")
    work = tmp_path / "work"
    done = work / "squad_qg" / "causal" / "seed1"
    done.mkdir(parents=True)
    scores = {"n": 7, "bleu": 9.82, "bleu4_tok": 9.72, "meteor": 31.31, "rougeL": 31.77,
              "distinct": 0.997, "source_overlap": 0.963}
    (done / "scores.json").write_text(json.dumps(scores))
    partly = work / "squad_qg" / "masked" / "seed1" / "model"
    partly.mkdir(parents=True)
    (partly / "train_log.jsonl").write_text("{}\n")

    mc.main(["--data_root", str(tmp_path / "data"), "--work_dir", str(work), "--model_dir", str(tmp_path),
             "--datasets", "squad_qg", "--systems", "causal,masked", "--seeds", "1", "--report_only"])

    table = (work / "results.md").read_text()
    assert "| causal | 1 | 9.82 | 9.72 | 31.31 | 31.77 | 99.70 | 96.30 |" in table
    assert "| masked | 0 |" in table
    assert "not done, left out: squad_qg masked seed 1 (partly trained)" in capsys.readouterr().out
    assert sorted(p.name for p in partly.iterdir()) == ["train_log.jsonl"]  # nothing trained
    assert not (work / "squad_qg" / "eval.grouped.all.jsonl").exists()  # nor the evaluation file rewritten


def test_contribution_first_moves_the_heuristic_sentence_to_the_front_and_keeps_every_sentence():
    guided = load_script("experiments", "scitldr_guided")
    abstract = "Deep nets are big. They are slow!  We propose a pruning rule. It halves the cost. This paper also shows X."
    assert guided.contribution_first(abstract) == (
        "We propose a pruning rule. Deep nets are big. They are slow! It halves the cost. This paper also shows X.")
    assert guided.contribution_first("No claim here. Nor here.") == "No claim here. Nor here."  # none found
    assert guided.contribution_first("We show A. Then B.") == "We show A. Then B."  # already first


def test_recipe_model_dir_may_name_a_run_directory(tmp_path):
    """recipe_common.sh: MODEL_DIR naming a training run's output directory stands for its last complete checkpoint
    (ckpt-STEP with training_state.pt; a later one without it is an unfinished save), a checkpoint stays itself."""
    import os
    import subprocess
    import sys
    run = tmp_path / "model"
    for step, complete in ((100, True), (300, True), (400, False)):
        (run / f"ckpt-{step}").mkdir(parents=True)
        (run / f"ckpt-{step}" / "config.json").write_text("{}")
        if complete:
            (run / f"ckpt-{step}" / "training_state.pt").write_bytes(b"")
    common = os.path.join(os.path.dirname(__file__), "..", "experiments", "recipe_common.sh")

    def resolved(model_dir):
        script = f'source "{common}" data work && echo "$MODEL_DIR"'
        env = {**os.environ, "MODEL_DIR": str(model_dir), "PYTHON": sys.executable}
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert resolved(run) == str(run / "ckpt-300")
    assert resolved(run / "ckpt-100") == str(run / "ckpt-100")


def test_answer_aware_grouping_paragraphs_baselines_and_answer_use(tmp_path):
    """experiments/squad_qg_answer.py: one line per distinct (sentence, answer) with all its questions, the answer
    moved into its paragraph by letters and digits alone (quotes and tokenisation may differ), the "what" baseline,
    and the answer-use figures, each recomputed here by hand."""
    qa = load_script("experiments", "squad_qg_answer")
    rows = [("the bbc was founded in 1922 .", "1922", 5, "when was the bbc founded ?", 0),
            ("the bbc was founded in 1922 .", "1922", 5, "what year was the bbc founded ?", 0),
            ("the bbc was founded in 1922 .", "the bbc", 0, "what was founded in 1922 ?", 0),
            ("it said ` hello ' loudly .", "hello", 3, "what did it say ?", 1)]
    split = tmp_path / "dev.jsonl"
    split.write_text("".join(json.dumps({"src": s, "answer": a, "answer_start": i, "tgt": t, "paragraph_id": p}) + "\n"
                             for s, a, i, t, p in rows))
    paragraphs = tmp_path / "dev.paragraphs.jsonl"
    paragraphs.write_text(json.dumps({"id": 0, "text": "intro words . the bbc was founded in 1922 ."}) + "\n"
                          + json.dumps({"id": 1, "text": "first . it said 'hello' loudly ."}) + "\n")
    grouped = qa.group_by_pair(str(split))
    assert [(g["src"], g["answer"], g["refs"]) for g in grouped] == [
        (rows[0][0], "1922", [rows[0][3], rows[1][3]]), (rows[0][0], "the bbc", [rows[2][3]]),
        (rows[3][0], "hello", [rows[3][3]])]
    at_paragraph = qa.group_by_pair(str(split), str(paragraphs))
    assert at_paragraph[0]["src"].split()[at_paragraph[0]["answer_start"]] == "1922"
    assert at_paragraph[2]["answer"] == "'hello'" and at_paragraph[2]["sentence_answer"] == "hello"
    assert qa.what_baseline(grouped[0]) == "the bbc was founded in what ?"
    assert qa.what_baseline(grouped[1]) == "what was founded in 1922 ?"
    use = qa.answer_use(grouped, ["when was it founded ?", "what was founded in 1922 ?", "what did it say ?"])
    assert use["sentences_with_several_answers"] == 1 and use["several_answers_several_questions"] == 1.0
    assert use["contains_answer"] == 0.0 and use["refs_contain_answer"] == 0.0
    same = qa.answer_use(grouped, ["what is it ?", "what is it ?", "what was 1923 ?"])
    assert same["several_answers_several_questions"] == 0.0
    assert same["unsupported_number"] == 1 / 3  # "1923" is not in its sentence
