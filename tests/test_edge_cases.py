"""Flag values and inputs at the edges: --max_grad_norm <= 0 means no clipping, --fine_tune masked on MASS
full-target pairs always has a label, an out-of-vocabulary --forbid_ignore_word is refused, the decoder asks only
for "src", and the torch minimum is checked at import."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
from conftest import train_args
from safetensors.torch import load_file

from s2s_ft.cli import train


def weights(out, step):
    return load_file(os.path.join(out, f"ckpt-{step}", "model.safetensors"))


def test_max_grad_norm_zero_or_negative_means_no_clipping(tiny_bert, train_file, tmp_path):
    def run(value):
        out = tmp_path / value
        assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "2",
                                     "--max_grad_norm", value)) == 0
        log = [json.loads(line) for line in open(out / "train_log.jsonl")]
        assert all(r["grad_norm"] > 0 for r in log)  # measured (and logged) even without clipping
        return weights(out, 2)

    unclipped = run("1e9")  # a bound the gradient norm never reaches: no clipping
    for value in ("0", "-1"):
        trained = run(value)
        assert all(torch.equal(trained[k], unclipped[k]) for k in unclipped), value


# ---------------------------------------------------------------------------------------------- masked on MASS
def test_masked_chooses_only_predicted_target_tokens():
    """--fine_tune masked on MASS full-target pairs: the corrupted (labelled) tokens are drawn among the predicted
    ones (the fragment), so every example has a label; without flags the draws are those of plain pairs."""
    from conftest import SPECIAL

    from mass_objective import MassConfig, mass_pairs
    from s2s_ft.data.packing import IGNORE_INDEX, Packer, Pair

    packer = Packer("masked", SPECIAL, target_mask_prob=0.1)
    sentences = [list(range(10, 10 + m)) for m in (2, 5, 9, 14)]
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        pairs = mass_pairs(sentences, SPECIAL, MassConfig(full_target=True), generator)
        batch = packer(pairs, generator)
        for row, pair in enumerate(pairs):
            labels = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
            assert labels, (seed, pair)
            fragment = [t for t, p in zip(pair.target, pair.predicted) if p]
            assert set(labels) <= set(fragment)
    plain = [Pair([10, 11], [20, 21, 22, 23]), Pair([12], [24, 25, 26])]
    flagged = [Pair(p.source, p.target, predicted=[True] * p.num_target_tokens) for p in plain]
    a, b = (Packer("masked", SPECIAL, 0.5)(pairs, torch.Generator().manual_seed(3)) for pairs in (plain, flagged))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="no target token is predicted"):
        packer([Pair([10], [20, 21], close_target=False, predicted=[False, False])])


def test_masked_mass_full_target_training_has_no_nan_step(tmp_path):
    from conftest import write_tiny_bert
    from test_mass import WORDS, mass_args

    (tmp_path / "model").mkdir()
    model_dir = write_tiny_bert(tmp_path / "model", WORDS, weights=False)
    mono = tmp_path / "mono.txt"
    mono.write_text("the cat sat on the mat\na big dog ran on the mat\nthe small red cat sat\n")
    out = tmp_path / "out"
    assert train.main(mass_args(model_dir, str(mono), out, "--fine_tune", "masked", "--mass_full_target",
                                "--target_mask_prob", "0.1", "--per_device_train_batch_size", "1",
                                "--num_training_steps", "12", "--max_bad_steps", "12")) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert len(log) == 12 and all(r["loss"] is not None and "skipped_steps" not in r for r in log), log


# ---------------------------------------------------------------------------------------------- torch minimum
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_requires_the_torch_minimum_the_code_checks(monkeypatch):
    import runpy

    import setuptools

    import s2s_ft

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"))
    assert f"torch>={s2s_ft.MIN_TORCH}" in captured["install_requires"]
    # the newest torch APIs the package uses (s2s_ft/model/transformer.py) exist in the installed torch
    assert torch.get_autocast_dtype("cpu") is not None and torch.is_autocast_enabled("cpu") in (True, False)
    # installed, the tools are commands; no generic top-level modules (run_seq2seq.py stays a checkout script)
    assert "py_modules" not in captured
    assert sorted(captured["entry_points"]["console_scripts"]) == [
        "s2s-ft-decode = s2s_ft.cli.decode:main", "s2s-ft-eval = s2s_ft.cli.evaluate:main",
        "s2s-ft-serve = s2s_ft.cli.serve:main", "s2s-ft-train = s2s_ft.cli.train:main"]
    # the server's packages are an extra (scripts/setup.sh installs it with the test extra)
    assert {"fastapi", "uvicorn"} <= set(captured["extras_require"]["serve"])
    assert "httpx" in captured["extras_require"]["test"]


@pytest.mark.parametrize("version, ok", [("2.3.1", False), ("1.13.0+cu117", False), ("2.4.0", True),
                                         ("2.4.0a0+git1234", True), ("2.13.0+cpu", True), ("3.0", True)])
def test_torch_version_check(version, ok):
    import s2s_ft

    if ok:
        s2s_ft.check_torch_version(version)
    else:
        with pytest.raises(ImportError, match=f"needs torch>={s2s_ft.MIN_TORCH}.*found torch {re.escape(version)}"):
            s2s_ft.check_torch_version(version)


@pytest.mark.slow
def test_importing_with_an_older_torch_fails_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "2.3.1"\n')
    result = subprocess.run([sys.executable, "-c", "import s2s_ft"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, timeout=60)
    assert result.returncode != 0
    assert "ImportError: s2s_ft needs torch>=2.4" in result.stderr and "found torch 2.3.1" in result.stderr, \
        result.stderr
