"""bf16 autocast on CPU: a few training steps of the tiny model track fp32.

Tolerance: over 8 optimizer steps (pseudo_masked, lr 3e-3, batch 3) every logged bf16 loss is within 0.5 %
(relative) of the fp32 loss of the same step (measured: at most 0.03 %), and the loss falls in both runs. bf16 keeps
8 mantissa bits (relative rounding ~0.4 % per operation); master weights and the optimizer stay fp32, so the runs
diverge only slowly.
"""
from __future__ import annotations

import json

from conftest import train_args

from s2s_ft.cli import train

RELATIVE_TOLERANCE = 0.005


def losses(tiny_bert, train_file, out, precision):
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "8", "--save_steps", "8",
                                 "--precision", precision)) == 0
    return [json.loads(line)["loss"] for line in open(out / "train_log.jsonl")]


def test_bf16_loss_tracks_fp32(tiny_bert, train_file, tmp_path):
    fp32, bf16 = losses(tiny_bert, train_file, tmp_path / "fp32", "fp32"), losses(tiny_bert, train_file,
                                                                                  tmp_path / "bf16", "bf16")
    assert len(fp32) == len(bf16) == 8
    worst = max(abs(b - f) / f for f, b in zip(fp32, bf16))
    assert worst < RELATIVE_TOLERANCE, (worst, fp32, bf16)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]
