"""Evaluation during training (--eval_file): eval_log.jsonl at the right steps, best/ = the best-scoring model (an
ordinary checkpoint the decoder loads, kept through --save_total_limit and resume), training untouched by
evaluation (bit-identical weights), start-up errors for bad dev files, and the training-curve PNG
(s2s_ft/training/plotting.py) with and without matplotlib."""
from __future__ import annotations

import json
import logging
import os
import sys

import pytest
import torch
from conftest import WORDS, torchrun, train_args, write_tiny_bert
from safetensors.torch import load_file

from s2s_ft.cli import plot as plot_cli
from s2s_ft.cli import train
from s2s_ft.decoding import inference
from s2s_ft.training import dev_eval, plotting, rundir

pytest.importorskip("rouge_score")
pytest.importorskip("sacrebleu")
pytest.importorskip("nltk")

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest on a busy machine
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEV = [{"src": "the cat sat on the mat", "refs": ["who sat on the mat ?", "who sat ?"]},
       {"src": "a dog ran", "tgt": "what ran ?"},
       {"src": "the big red bird", "refs": ["what is red ?"]},
       {"src": ["a", "small", "fish"], "tgt": ["what", "is", "small", "?"]},
       {"src": "the tree is blue", "tgt": "what is blue ?"},
       {"src": "a house", "tgt": "where is the house ?"},
       {"src": "a blue bird", "tgt": "what is blue ?"}]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-bert-eval")
    write_tiny_bert(directory, WORDS)  # dropout 0.1 stays on: evaluation must not disturb its RNG stream
    return str(directory)


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dev") / "dev.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in DEV))
    return str(path)


def eval_args(model_dir, data, dev, out, *extra):
    return train_args(model_dir, data, out, "--label_smoothing", "0", "--eval_file", dev, *extra)


def records(path):
    return [json.loads(line) for line in open(path)]


def same_weights(a, b) -> bool:
    a, b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def is_png(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_MAGIC and os.path.getsize(path) > 1000


@pytest.fixture(scope="module")
def evaluated_run(single_thread, tiny_bert, train_file, dev_file, tmp_path_factory):
    """22 steps, evaluated every 5 (and at the end) on the first 5 dev records, a checkpoint at every evaluation."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    assert train.main(eval_args(tiny_bert, train_file, dev_file, out, "--num_training_steps", "22",
                                "--save_steps", "5", "--eval_steps", "5", "--eval_max_examples", "5")) == 0
    return out


def test_eval_log_and_best_checkpoint(evaluated_run, dev_file):
    out = evaluated_run
    log = records(out / rundir.EVAL_LOG)
    assert [r["step"] for r in log] == [5, 10, 15, 20, 22]
    for r in log:
        assert {"rouge1", "rouge2", "rougeL", "bleu", "bleu4_tok"} <= set(r) and "meteor" not in r
        assert r["n"] == 5 and r["metric"] == "rougeL"
    assert max(r["rougeL"] for r in log) > 0  # the model learnt something, so the comparison below means something
    first_max = max(log, key=lambda r: r["rougeL"])  # max() keeps the first of equal scores, as the run does
    best = json.load(open(out / "best" / rundir.BEST_JSON))
    assert (best["step"], best["metric"], best["score"]) == (first_max["step"], "rougeL", first_max["rougeL"])
    assert [r["step"] for r in log if r["best"]][-1] == best["step"]
    # best/ holds the weights of that step, as an ordinary checkpoint without the resume state
    assert same_weights(out / "best", out / f"ckpt-{best['step']}")
    assert not os.path.exists(out / "best" / rundir.TRAINING_STATE)
    assert rundir.latest_checkpoint(str(out)) == str(out / "ckpt-22")  # resume never picks best/
    decoder = inference.load_decoder(str(out / "best"))
    hyps = decoder.decode_texts([DEV[0]["src"], DEV[1]["src"]], max_tgt_length=6)
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    assert is_png(out / plotting.PLOT_NAME)


def test_evaluation_does_not_change_training(tiny_bert, train_file, dev_file, tmp_path):
    common = ("--num_training_steps", "6", "--save_steps", "6")
    plain, evaluated = tmp_path / "plain", tmp_path / "evaluated"
    assert train.main(train_args(tiny_bert, train_file, plain, "--label_smoothing", "0", *common)) == 0
    assert train.main(eval_args(tiny_bert, train_file, dev_file, evaluated, *common, "--eval_steps", "1",
                                "--eval_beam_size", "2")) == 0
    assert [r["step"] for r in records(evaluated / rundir.EVAL_LOG)] == [1, 2, 3, 4, 5, 6]
    assert same_weights(plain / "ckpt-6", evaluated / "ckpt-6")
    losses = lambda out: [r["loss"] for r in records(out / "train_log.jsonl")]
    assert losses(plain) == losses(evaluated)


def test_evaluation_offers_a_heap_trim_after_each_decoding_batch(tiny_bert, train_file, dev_file, tmp_path,
                                                                 monkeypatch):
    from s2s_ft.training import memory
    offered = []
    monkeypatch.setenv("S2S_FT_TRIM_EVERY", "1000")  # the steps' trims by period, not by growth: counted apart
    monkeypatch.setattr(memory.HeapTrimmer, "if_grown", lambda self: offered.append(1) or False)
    assert train.main(eval_args(tiny_bert, train_file, dev_file, tmp_path / "run", "--num_training_steps", "2",
                                "--save_steps", "2", "--eval_steps", "2", "--eval_max_examples", "0",
                                "--eval_batch_size", "2")) == 0
    assert len(offered) == (len(DEV) + 1) // 2  # one evaluation (step 2), four batches of <= 2 sources


def scripted_scores(monkeypatch, values):
    """DevEvaluator.scores returns these rougeL values in turn (the real decoding is tested above)."""
    values = iter(values)
    monkeypatch.setattr(dev_eval.DevEvaluator, "scores", lambda self, after_batch=None: {
        "rouge1": 0.0, "rouge2": 0.0, "rougeL": next(values), "bleu": 1.0, "bleu4_tok": 0.0, "n": len(DEV)})


def test_resume_and_pruning_keep_the_best(tiny_bert, train_file, dev_file, tmp_path, monkeypatch,
                                          caplog):
    out = tmp_path / "run"
    args = lambda steps, *extra: eval_args(tiny_bert, train_file, dev_file, out, "--num_training_steps", str(steps),
                                           "--save_steps", "2", "--eval_steps", "2", "--save_total_limit", "1",
                                           "--allow_changed_flags", *extra)  # a longer run, another --eval_metric
    scripted_scores(monkeypatch, [10.0, 50.0])
    assert train.main(args(4)) == 0
    best_weights = load_file(str(out / "best" / "model.safetensors"))
    assert json.load(open(out / "best" / rundir.BEST_JSON))["step"] == 4

    scripted_scores(monkeypatch, [20.0, 30.0])  # resumed from ckpt-4: both worse than step 4's 50
    assert train.main(args(8)) == 0
    log = records(out / rundir.EVAL_LOG)
    assert [(r["step"], r["rougeL"], r["best"]) for r in log] == [(2, 10.0, True), (4, 50.0, True), (6, 20.0, False),
                                                                   (8, 30.0, False)]
    best = json.load(open(out / "best" / rundir.BEST_JSON))
    assert (best["step"], best["score"]) == (4, 50.0)
    kept = load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.equal(kept[k], best_weights[k]) for k in best_weights)
    assert sorted(name for name in os.listdir(out) if name.startswith(("ckpt", "best"))) == ["best", "ckpt-8"]

    # another --eval_metric: the old best's score is not comparable, so the next evaluation replaces it
    scripted_scores(monkeypatch, [5.0])
    with caplog.at_level(logging.WARNING, logger="s2s_ft"):
        assert train.main(args(10, "--eval_metric", "bleu")) == 0
    assert "other evaluation settings" in caplog.text
    best = json.load(open(out / "best" / rundir.BEST_JSON))
    assert (best["step"], best["metric"], best["score"]) == (10, "bleu", 1.0)


def test_killed_while_replacing_best_keeps_the_old_one(tmp_path):
    (tmp_path / "best.old.tmp").mkdir()  # a kill between moving best/ aside and renaming the new one in
    (tmp_path / "best.old.tmp" / rundir.BEST_JSON).write_text('{"step": 4, "metric": "rougeL", "score": 1.0}')
    (tmp_path / "best.tmp").mkdir()
    rundir.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    assert json.load(open(tmp_path / "best" / rundir.BEST_JSON))["step"] == 4


@pytest.mark.parametrize("content, expected", [
    (None, ": file not found"),
    ('{"src": "a", "tgt": "b"}\n{"src": "a" "tgt"}\n', ":2: malformed JSON"),
    ('{"tgt": "b"}\n', ':1: missing "src"'),
    ('{"src": "a cat"}\n', ':1: expected "tgt" (or "refs")'),
    ('{"src": "a cat", "refs": []}\n', ':1: "refs" must be a non-empty list'),
    ('{"src": "a", "tgt": "b"}\n{"src": "\\u200b", "tgt": "b"}\n', ':2: "src" tokenises to nothing'),
    ('', ": empty file"),
])
def test_bad_eval_file_stops_at_start_up(tiny_bert, train_file, tmp_path, capsys, content,
                                         expected):
    dev = tmp_path / "dev.jsonl"
    if content is not None:
        dev.write_text(content)
    out = tmp_path / "out"
    code = train.main(eval_args(tiny_bert, train_file, str(dev), out, "--num_training_steps", "2"))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and f"{dev}{expected}" in errors[0], errors
    assert not os.path.exists(out / "train_log.jsonl") and not os.path.exists(out / "ckpt-2")


@pytest.mark.parametrize("extra, expected", [
    (("--eval_metrics", "rouge,cider"), "--eval_metrics rouge,cider: choose from rouge,bleu,meteor"),
    (("--eval_steps", "0"), "--eval_steps must be >= 1"),
    (("--eval_max_examples", "-1"), "--eval_max_examples must be >= 0"),
    (("--objective", "mass"), "--eval_file scores generated targets"),
    (("--eval_max_tgt_length", "100"), "the checkpoint has 64 (lower --eval_max_tgt_length)"),
])
def test_bad_eval_flags(tiny_bert, train_file, dev_file, tmp_path, capsys, extra, expected):
    assert train.main(eval_args(tiny_bert, train_file, dev_file, tmp_path, *extra)) == 2
    assert expected in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "train_log.jsonl")  # refused before the first training step


def test_eval_metric_family_is_always_computed(tiny_bert, train_file, dev_file, tmp_path):
    parsed = train.build_parser().parse_args(eval_args(tiny_bert, train_file, dev_file, tmp_path,
                                                          "--eval_metrics", "rouge", "--eval_metric", "bleu4_tok"))
    args = train.resolve_args(parsed)
    assert args.eval_metrics == "rouge,bleu" and args.eval_steps == args.save_steps
    assert args.eval_max_tgt_length == args.max_target_seq_length


def test_plot_command_regenerates_the_png(evaluated_run, tmp_path, capsys):
    target = tmp_path / "again.png"
    assert plot_cli.main([str(evaluated_run), "--out", str(target)]) == 0
    assert is_png(target)
    (tmp_path / "empty").mkdir()
    assert plot_cli.main([str(tmp_path / "empty")]) == 2
    assert "no train_log.jsonl or eval_log.jsonl records" in capsys.readouterr().err


def test_without_matplotlib_training_warns_once_and_succeeds(tiny_bert, train_file, tmp_path, monkeypatch,
                                                             caplog, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="s2s_ft"):
        assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "2")) == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "matplotlib" in r.getMessage()]
    assert len(warnings) == 1 and not os.path.exists(out / plotting.PLOT_NAME)
    assert os.path.isdir(out / "ckpt-2")
    assert plot_cli.main([str(out)]) == 2
    assert "plotting needs matplotlib" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_rank_zero_evaluates(tiny_bert, train_file, dev_file, tmp_path):
    """Under torchrun rank 0 evaluates while rank 1 waits; the weights are those of the same run without --eval_file."""
    common = ("--num_training_steps", "4", "--save_steps", "4", "--per_device_train_batch_size", "2")
    plain, evaluated = tmp_path / "plain", tmp_path / "evaluated"
    torchrun(train_args(tiny_bert, train_file, plain, "--label_smoothing", "0", *common))
    torchrun(eval_args(tiny_bert, train_file, dev_file, evaluated, *common, "--eval_steps", "2"))
    assert [r["step"] for r in records(evaluated / rundir.EVAL_LOG)] == [2, 4]  # written once, by rank 0
    assert os.path.isfile(evaluated / "best" / rundir.BEST_JSON)
    assert same_weights(plain / "ckpt-4", evaluated / "ckpt-4")
