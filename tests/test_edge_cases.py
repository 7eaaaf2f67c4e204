"""Flag values and inputs at the edges: --max_grad_norm <= 0 means no clipping, --fine_tune masked on MASS
full-target pairs always has a label, an out-of-vocabulary --forbid_ignore_word is refused, the decoder asks only
for "src", and the torch minimum is checked at import."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from s2s_ft import training
from test_cli import tiny_bert, train_args, train_file  # noqa: F401  (fixtures)


def weights(out, step):
    return load_file(os.path.join(out, f"ckpt-{step}", "model.safetensors"))


def test_max_grad_norm_zero_or_negative_means_no_clipping(tiny_bert, train_file, tmp_path):  # noqa: F811
    def run(value):
        out = tmp_path / value
        assert training.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "2",
                                        "--max_grad_norm", value)) == 0
        log = [json.loads(line) for line in open(out / "train_log.jsonl")]
        assert all(r["grad_norm"] > 0 for r in log)  # measured (and logged) even without clipping
        return weights(out, 2)

    unclipped = run("1e9")  # a bound the gradient norm never reaches: no clipping
    for value in ("0", "-1"):
        trained = run(value)
        assert all(torch.equal(trained[k], unclipped[k]) for k in unclipped), value
