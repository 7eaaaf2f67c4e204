"""What a restart does (README): resuming in an existing --output_dir refuses changed run-defining flags, and
every directory replacement (best/, a re-saved ckpt-STEP) keeps the previous complete version until the new one is
in place, whatever step a crash interrupts."""
from __future__ import annotations

import json
import os
import shutil
import types

import pytest
import torch
from safetensors.torch import load_file

from s2s_ft import checkpoint, training
from s2s_ft.data import load_tokenizer
from test_cli import tiny_bert  # noqa: F401  (fixture)


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
def saver(tiny_bert):  # noqa: F811
    """save(path, version, state): writes the tiny model with its weights shifted by ``version`` (1, 2, ...)."""
    model, info = checkpoint.load_pretrained("bert", tiny_bert)
    tokenizer = load_tokenizer(tiny_bert)
    args = types.SimpleNamespace(model_type="bert")
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def save(path, version, with_state):
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value.copy_(original[name] + version)
        state = {"step": version} if with_state else None
        extra = None if with_state else {training.BEST_JSON: json.dumps({"step": version})}
        training.save_training_checkpoint(str(path), model, args, info["hf_config"], tokenizer, {}, state, extra)

    return save


WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def version_of(path, with_state, tiny_bert) -> int:  # noqa: F811
    """The version a saved directory holds, after checking that it is complete and self-consistent."""
    if with_state:
        step = torch.load(os.path.join(path, training.TRAINING_STATE), weights_only=False)["step"]
    else:
        step = json.load(open(os.path.join(path, training.BEST_JSON)))["step"]
    checkpoint.load_finetuned(str(path))  # every file there and loadable
    shift = load_file(os.path.join(path, "model.safetensors"))[WORD_EMBEDDINGS] \
        - load_file(os.path.join(tiny_bert, "model.safetensors"))[WORD_EMBEDDINGS]
    assert torch.allclose(shift, torch.full_like(shift, step), atol=1e-5)  # the weights of that same version
    return step


@pytest.mark.parametrize("name, with_state", [("best", False), ("ckpt-3", True)])
@pytest.mark.parametrize("previous", [True, False], ids=["replacing", "first-save"])
def test_a_crash_at_any_step_of_a_save_leaves_a_complete_version(saver, tiny_bert, tmp_path, monkeypatch,  # noqa: F811
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
        training.remove_stale_temporaries(str(out))
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
    (tmp_path / "best.old.tmp" / training.BEST_JSON).write_text('{"step": 4}')
    (tmp_path / "best.tmp").mkdir()
    (tmp_path / "ckpt-9.deleting.tmp").mkdir()
    training.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    shutil.rmtree(tmp_path / "best")
    (tmp_path / "best.old.tmp").mkdir()
    training.remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == []
