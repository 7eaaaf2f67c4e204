"""Recovery in-process: non-finite losses (skipped steps, --max_bad_steps, no poisoned checkpoint),
--save_total_limit and stale *.tmp clean-up, resumable decoding (--resume)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import train_args, trained_checkpoint
from safetensors.torch import load_file

from s2s_ft.cli import decode, train
from s2s_ft.decoding import inference
from s2s_ft.training import loop as training
from s2s_ft.training import rundir


def nan_loss_on(monkeypatch, bad_calls):
    """seq2seq_loss returns NaN on the given (1-based) calls: one call per step without accumulation."""
    real, calls = training.seq2seq_loss, {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if bad_calls(calls["n"]) else value

    monkeypatch.setattr(training, "seq2seq_loss", loss)


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_isolated_nan_steps_are_skipped(tiny_bert, train_file, tmp_path, monkeypatch, caplog):
    nan_loss_on(monkeypatch, lambda n: n in (3, 4))
    out = tmp_path / "run"
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "6", "--save_steps", "1",
                                 "--max_bad_steps", "3")) == 0
    log = {r["step"]: r for r in map(json.loads, open(out / "train_log.jsonl"))}
    assert sorted(log) == [1, 2, 3, 4, 5, 6]
    assert log[3]["loss"] is None and log[3]["skipped_steps"] == 1 and "skipped_steps" not in log[5]
    assert log[3]["lr"] > log[4]["lr"] > log[5]["lr"]  # the schedule advances with the step counter
    assert same_weights(weights(out / "ckpt-2"), weights(out / "ckpt-4"))  # no update on steps 3 and 4
    assert not same_weights(weights(out / "ckpt-4"), weights(out / "ckpt-5"))
    assert "step 3: non-finite loss; optimizer step skipped (1 in a row" in caplog.text


def test_too_many_nan_steps_stop_and_keep_the_last_good_checkpoint(tiny_bert, train_file, tmp_path, monkeypatch,
                                                                   capsys):
    nan_loss_on(monkeypatch, lambda n: n >= 3)
    out = tmp_path / "run"
    code = train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "10", "--save_steps", "2",
                                 "--max_bad_steps", "3"))
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert "error: 3 consecutive steps (up to step 5) had a non-finite loss or gradient; stopped without " \
           f"saving. Last good checkpoint: {out / 'ckpt-4'}" in err
    assert sorted(n for n in os.listdir(out) if n.startswith("ckpt-")) == ["ckpt-2", "ckpt-4"]
    assert same_weights(weights(out / "ckpt-2"), weights(out / "ckpt-4"))  # steps 3, 4 were skipped


@pytest.mark.parametrize("save_steps, expected", [
    ("4", "2 consecutive steps (up to step 2)"),
    ("1", "step 1: parameter"),  # the save at step 1 refuses a model with a NaN weight
])
def test_nan_weight_is_never_saved(tiny_bert, train_file, tmp_path, monkeypatch, capsys, save_steps,
                                   expected):
    real = training.checkpoint.load_pretrained

    def poisoned(*args, **kwargs):
        model, info = real(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")
        return model, info

    monkeypatch.setattr(training.checkpoint, "load_pretrained", poisoned)
    out = tmp_path / "run"
    code = train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "4", "--save_steps",
                                 save_steps, "--max_bad_steps", "2"))
    err = capsys.readouterr().err
    assert code == 3 and expected in err and "Last good checkpoint: none" in err, err
    assert not [n for n in os.listdir(out) if n.startswith("ckpt-")]


def test_save_total_limit_and_stale_temporaries(tiny_bert, train_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt-1.tmp").mkdir()  # left by a killed save
    (out / "ckpt-1.tmp" / "model.safetensors").write_bytes(b"half")
    (out / "ckpt-99").mkdir()  # incomplete (no training_state.pt): never resumed from, never counted
    args = train_args(tiny_bert, train_file, out, "--num_training_steps", "5", "--save_steps", "1",
                      "--save_total_limit", "2")
    assert train.main(args) == 0
    assert sorted(os.listdir(out)) == ["cache", "ckpt-4", "ckpt-5", "ckpt-99", "invocations.jsonl", "train_args.json",
                                       "train_log.jsonl", "training_curves.png"]
    assert [step for step, _ in rundir.complete_checkpoints(str(out))] == [4, 5]


# ---------------------------------------------------------------------------------------------------- decode --resume
@pytest.fixture(scope="module")
def trained(tiny_bert, train_file, tmp_path_factory):
    return trained_checkpoint(tiny_bert, train_file, tmp_path_factory, 20)


SOURCES = ["the cat sat on the mat", "a dog", "the tree is blue and the bird is red", "fish", "who ran ?",
           "the big red house", "a small bird sat on the tree"]


def interrupt_after(monkeypatch, calls_allowed):
    real, calls = inference.LoadedDecoder.decode_ids, {"n": 0}

    def decode_ids(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > calls_allowed:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(inference.LoadedDecoder, "decode_ids", decode_ids)


def test_decode_resume_continues_and_matches(trained, tmp_path, monkeypatch):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"src": s}) + "\n" for s in SOURCES[:3]) + "{bad\n"
                      + "".join(json.dumps({"src": s}) + "\n" for s in SOURCES[3:]))
    common = ["--model_path", trained, "--input_file", str(source), "--max_tgt_length", "5", "--beam_size", "2",
              "--skip_bad_lines"]
    straight, out = tmp_path / "straight.txt", tmp_path / "out.txt"
    assert decode.main(common + ["--output_file", str(straight)]) == 0
    expected = straight.read_text().split("\n")[:-1]
    assert len(expected) == 8 and expected[3] == ""

    resumable = common + ["--output_file", str(out), "--resume", "--resume_chunk", "3", "--batch_size", "2"]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)  # two chunks (6 lines) are durable, then the run dies
        assert decode.main(resumable) == 130
    partial, meta = tmp_path / "out.txt.partial", tmp_path / "out.txt.partial.json"
    assert not out.exists() and json.loads(meta.read_text())["lines_done"] == 6
    assert partial.read_text().split("\n")[:-1] == expected[:6]
    with open(partial, "a") as handle:
        handle.write("a line of a chunk that was never recorded\n")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)  # only the last chunk is left: one decode_ids call
        assert decode.main(resumable) == 0
    assert out.read_text().split("\n")[:-1] == expected
    assert not partial.exists() and not meta.exists()


def test_decode_resume_refuses_changed_input_or_settings(trained, tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"src": s}) + "\n" for s in SOURCES))
    out = tmp_path / "out.txt"
    common = ["--model_path", trained, "--input_file", str(source), "--output_file", str(out), "--max_tgt_length",
              "4", "--resume", "--resume_chunk", "2"]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        assert decode.main(common) == 130
    capsys.readouterr()
    assert decode.main(common + ["--beam_size", "2"]) == 2
    err = capsys.readouterr().err
    assert "the decoding settings changed" in err and "out.txt.partial" in err and "Traceback" not in err
    source.write_text(source.read_text().replace("fish", "bird"))
    assert decode.main(common) == 2
    assert "the input file changed" in capsys.readouterr().err
