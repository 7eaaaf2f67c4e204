"""What a restart does (README): resuming in an existing --output_dir refuses changed run-defining flags, and
every directory replacement (best/, a re-saved ckpt-STEP) keeps the previous complete version until the new one is
in place, whatever step a crash interrupts."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import one_error_line, train_args
from safetensors.torch import load_file

from s2s_ft.cli import train
from s2s_ft.data.reading import load_tokenizer
from s2s_ft.model import checkpoint
from s2s_ft.training import rundir


# ------------------------------------------------------------------------------------- what a restart compares
def restart(out, tiny_bert, data, *extra):
    return train.main(train_args(tiny_bert, data, out, "--num_training_steps", "2", "--save_steps", "1", *extra))


@pytest.fixture(scope="module")
def finished(tiny_bert, train_file, tmp_path_factory):
    """A finished 2-step run (ckpt-1, ckpt-2) that the restarts below are compared against."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert restart(out, tiny_bert, train_file) == 0
    return out


def snapshot(out) -> dict:
    return {name: os.path.getmtime(out / name) for name in sorted(os.listdir(out)) if name != "cache"}


def other_tokenizer(tiny_bert, tmp_path):
    """The same vocabulary and weights, another tokenizer setting (so other tokenizer files)."""
    copy = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_bert, copy)
    config = json.load(open(copy / "tokenizer_config.json"))
    json.dump({**config, "model_max_length": 77}, open(copy / "tokenizer_config.json", "w"))
    return ["--tokenizer_name", str(copy)]


def other_train_file(tmp_path, train_file):
    changed = tmp_path / "train.jsonl"
    changed.write_text(open(train_file).read().replace("cat", "dog"))
    return str(changed)


REFUSED = [  # (flags added to the same command, what the error line must say), each on its own
    (["--seed", "7"], "--seed 42 → 7"),
    (["--fine_tune", "causal"], "--fine_tune pseudo_masked → causal"),
    (["--mask_way", "v0"], "--fine_tune pseudo_masked → causal"),
    (["--per_device_train_batch_size", "2"], "--per_device_train_batch_size 3 → 2"),
    (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps 1 → 2"),
    (["--max_tokens_per_batch", "40"], "--max_tokens_per_batch (none) → 40"),
    (["--max_target_seq_length", "7"], "--max_target_seq_length 8 → 7"),
    (["--learning_rate", "1e-3"], "--learning_rate 0.003 → 0.001"),
    (["--label_smoothing", "0"], "--label_smoothing 0.1 → 0.0"),
    (["--max_grad_norm", "0"], "--max_grad_norm 1.0 → 0.0"),
    (["--precision", "bf16"], "--precision fp32 → bf16"),
    (["--fresh_head_init", "identity"], "--fresh_head_init random → identity"),
    (["--dropout", "0"], "--dropout (none) → 0.0"),
    (["--skip_bad_lines"], "--skip_bad_lines off → on"),
    (["--model_type", "minilm"], "--model_type bert → minilm"),
    ("other-train-file", "--train_file content changed"),
    ("other-tokenizer", "--tokenizer_name files changed"),
    (["--seed", "7", "--save_steps", "2", "--allow_changed_flags"],  # which covers --save_steps only
     "--seed 42 → 7, --save_steps 1 → 2; --seed cannot change within a run"),
]


@pytest.mark.parametrize("extra, expected", REFUSED, ids=[" ".join(c[0]) if isinstance(c[0], list) else c[0]
                                                          for c in REFUSED])
def test_restart_with_a_changed_run_flag_is_refused(finished, tiny_bert, train_file, tmp_path, capsys, extra,
                                                    expected):
    data = train_file
    if extra == "other-train-file":
        extra, data = [], other_train_file(tmp_path, train_file)
    elif extra == "other-tokenizer":
        extra = other_tokenizer(tiny_bert, tmp_path)
    before = snapshot(finished)
    capsys.readouterr()
    args = train_args(tiny_bert, data, finished, "--num_training_steps", "2", "--save_steps", "1", *extra)
    if "--model_type" in extra:
        args[args.index("--model_type") + 1] = extra[extra.index("--model_type") + 1]
    assert train.main(args) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {finished / 'ckpt-2'} was trained with other settings: ") and expected in line
    assert "use a new --output_dir" in line, line
    assert snapshot(finished) == before  # nothing written: no log, no checkpoint, no invocation record


def test_paths_may_change_when_the_content_does_not(finished, tiny_bert, train_file, tmp_path, caplog):
    """Another path to the same training file and tokenizer files, another --cache_dir and --log_level: resumes."""
    data = tmp_path / "copy.jsonl"
    shutil.copy(train_file, data)
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(tiny_bert, tokenizer)
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "ckpt-2")
    assert restart(out, tiny_bert, str(data), "--tokenizer_name", str(tokenizer), "--cache_dir",
                   str(tmp_path / "cache"), "--log_level", "WARNING") == 0
    assert sorted(n for n in os.listdir(out) if n.startswith("ckpt-")) == ["ckpt-1", "ckpt-2"]
    assert [json.loads(line)["step"] for line in open(out / "train_log.jsonl")] == [1, 2]


def test_restart_flags_may_change_with_allow_changed_flags(finished, tiny_bert, train_file, tmp_path, capsys,
                                                            caplog):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    longer = ["--num_training_steps", "4", "--save_steps", "2", "--logging_steps", "2"]
    capsys.readouterr()
    assert train.main(train_args(tiny_bert, train_file, out, *longer)) == 2
    line = one_error_line(capsys)
    assert (f"error: {out / 'ckpt-2'} was trained with other settings: --num_training_steps 2 → 4, --save_steps 1 "
            "→ 2, --logging_steps 1 → 2; to resume with the new values add --allow_changed_flags") in line, line
    with caplog.at_level("WARNING", logger="s2s_ft"):
        assert train.main(train_args(tiny_bert, train_file, out, *longer, "--allow_changed_flags")) == 0
    assert "resuming" in caplog.text and "--num_training_steps 2 → 4" in caplog.text
    assert [json.loads(line)["step"] for line in open(out / "train_log.jsonl")] == [1, 2, 4]
    state = torch.load(out / "ckpt-4" / rundir.TRAINING_STATE, weights_only=False)
    assert state["run"]["num_training_steps"] == 4 and state["run"]["save_steps"] == 2  # the new values from now on
    invocations = [json.loads(line) for line in open(out / rundir.INVOCATIONS)]
    assert [(r["resumed_from"], r["step"], r["args"]["num_training_steps"]) for r in invocations] == [
        (None, 0, 2), (str(out / "ckpt-2"), 2, 4)]  # the refused start is not a run
    assert json.load(open(out / "train_args.json"))["num_training_steps"] == 4  # the latest start


def test_checkpoint_without_a_run_record_resumes_with_a_warning(finished, tiny_bert, train_file, tmp_path, capsys,
                                                                 caplog):
    """Checkpoints written before runs were recorded: only what s2s_ft_settings.json tells is compared."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    path = out / "ckpt-2" / rundir.TRAINING_STATE
    state = torch.load(path, weights_only=False)
    del state["run"]
    torch.save(state, path)
    assert restart(out, tiny_bert, train_file, "--fine_tune", "causal") == 2
    assert "--fine_tune pseudo_masked → causal" in one_error_line(capsys)
    with caplog.at_level("WARNING", logger="s2s_ft"):
        assert restart(out, tiny_bert, train_file, "--seed", "7", "--num_training_steps", "3") == 0
    assert "was saved before runs were recorded: only --model_type, --fine_tune" in caplog.text
    assert os.path.isdir(out / "ckpt-3")


# ------------------------------------------------------------------------------------- crash-safe replacement
class Crash(BaseException):
    """A simulated SIGKILL: nothing in the code under test may catch it."""


def crash_at(monkeypatch, call: int) -> dict:
    """The ``call``-th os.replace / shutil.rmtree (counted together) crashes: os.replace before renaming, rmtree
    after deleting one file (a kill in the middle of a deletion)."""
    real_replace, real_rmtree, calls = os.replace, shutil.rmtree, {"n": 0, "crashed": False}

    def due() -> bool:
        calls["n"] += 1
        calls["crashed"] = calls["n"] == call
        return calls["crashed"]

    def replace(*args, **kwargs):
        if due():
            raise Crash
        return real_replace(*args, **kwargs)

    def rmtree(path, *args, **kwargs):
        if due():
            for root, _, files in os.walk(path):
                if files:
                    os.remove(os.path.join(root, sorted(files)[0]))
                    break
            raise Crash
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return calls


@pytest.fixture(scope="module")
def saver(tiny_bert):
    """save(path, version, state): writes the tiny model with its weights shifted by ``version`` (1, 2, ...)."""
    model, info = checkpoint.load_pretrained("bert", tiny_bert)
    tokenizer = load_tokenizer(tiny_bert)
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def save(path, version, with_state):
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value.copy_(original[name] + version)
        state = {"step": version} if with_state else None
        extra = None if with_state else {rundir.BEST_JSON: json.dumps({"step": version})}
        rundir.save_training_checkpoint(str(path), model, "bert", info["hf_config"], tokenizer, {}, state, extra)

    return save


WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def version_of(path, with_state, tiny_bert) -> int:
    """The version a saved directory holds, after checking that it is complete and self-consistent."""
    if with_state:
        step = torch.load(os.path.join(path, rundir.TRAINING_STATE), weights_only=False)["step"]
    else:
        step = json.load(open(os.path.join(path, rundir.BEST_JSON)))["step"]
    checkpoint.load_finetuned(str(path))  # every file there and loadable
    shift = load_file(os.path.join(path, "model.safetensors"))[WORD_EMBEDDINGS] \
        - load_file(os.path.join(tiny_bert, "model.safetensors"))[WORD_EMBEDDINGS]
    assert torch.allclose(shift, torch.full_like(shift, step), atol=1e-5)  # the weights of that same version
    return step


@pytest.mark.parametrize("name, with_state", [("best", False), ("ckpt-3", True)])
@pytest.mark.parametrize("previous", [True, False], ids=["replacing", "first-save"])
def test_a_crash_at_any_step_of_a_save_leaves_a_complete_version(saver, tiny_bert, tmp_path, monkeypatch,
                                                                  name, with_state, previous):
    """Kill the save of version 2 at each os.replace / rmtree in turn; start-up clean-up must then find the old
    version 1 (or, with no previous one, nothing) or the complete new version 2, and no leftovers."""
    seen, call = set(), 0
    while True:
        call += 1
        out = tmp_path / f"run{call}"
        out.mkdir()
        if previous:
            saver(out / name, 1, with_state)
        with monkeypatch.context() as patch:
            calls = crash_at(patch, call)
            try:
                saver(out / name, 2, with_state)
            except Crash:
                pass
        rundir.remove_stale_temporaries(str(out))
        left = sorted(os.listdir(out))
        if not left:
            assert not previous, f"crash at call {call}: the previous {name} was lost"
            seen.add(None)
        else:
            assert left == [name], (call, left)
            seen.add(version_of(out / name, with_state, tiny_bert))
        if not calls["crashed"]:  # the save ran to the end: every step has had its crash
            break
    assert seen == ({1, 2} if previous else {None, 2}), seen
    assert call > 2  # the crashes did happen


def test_old_leftovers_of_an_interrupted_best_replacement(tmp_path):
    """Older code moved best/ aside to best.old.tmp before renaming best.tmp in: the complete old one comes back,
    a half-deleted one (no best.json) does not."""
    (tmp_path / "best.old.tmp").mkdir()
    (tmp_path / "best.old.tmp" / rundir.BEST_JSON).write_text('{"step": 4}')
    (tmp_path / "best.tmp").mkdir()
    (tmp_path / "ckpt-9.deleting.tmp").mkdir()
    rundir.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    shutil.rmtree(tmp_path / "best")
    (tmp_path / "best.old.tmp").mkdir()
    rundir.remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == []
