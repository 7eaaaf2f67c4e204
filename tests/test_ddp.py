"""torchrun with 2 gloo ranks at per-device batch 2 trains the same weights as 1 process at batch 4, and a 2-rank run
resumed from an earlier checkpoint ends where the uninterrupted one did (s2s_ft/distributed.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import WORDS, torchrun, train_args, write_tiny_bert
from safetensors.torch import load_file

from s2s_ft.cli import train
from s2s_ft.training import rundir

pytestmark = pytest.mark.slow  # torchrun subprocesses


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory):
    # dropout draws differ between ranks and a single process; without dropout the runs must agree
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), WORDS, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


def weights(ckpt):
    return load_file(str(Path(ckpt) / "model.safetensors"))


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_ranks_match_one_process_and_resume(tiny_bert_no_dropout, train_file, tmp_path):
    common = ["--num_training_steps", "3", "--save_steps", "2", "--fine_tune", "pseudo_masked"]
    single = tmp_path / "single"
    args = train_args(tiny_bert_no_dropout, train_file, single, *common)
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    assert train.main(args) == 0

    ddp = tmp_path / "ddp"
    args = train_args(tiny_bert_no_dropout, train_file, ddp, *common)
    args[args.index("--per_device_train_batch_size") + 1] = "2"
    done = torchrun(args)
    assert "effective batch: 4 = 2 per device x 2 device(s) x 1 accumulation" in done.stderr
    # 7 examples in batches of 4: step 3 is a partial batch of 3 (rank 0 gets 2 rows, rank 1 one)
    assert max_diff(weights(single / "ckpt-3"), weights(ddp / "ckpt-3")) < 1e-6
    log_single = [json.loads(line) for line in open(single / "train_log.jsonl")]
    log_ddp = [json.loads(line) for line in open(ddp / "train_log.jsonl")]  # rank 0 alone writes it
    assert [r["step"] for r in log_ddp] == [1, 2, 3]
    for a, b in zip(log_single, log_ddp):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["padding"] == b["padding"], (a, b)
    state = torch.load(ddp / "ckpt-3" / rundir.TRAINING_STATE, weights_only=False)
    assert sorted(state["rng"]["per_rank"]) == [0, 1]

    # resume under 2 ranks after losing the last checkpoint
    straight = weights(ddp / "ckpt-3")
    shutil.move(ddp / "ckpt-3", tmp_path / "ckpt-3-straight")
    torchrun(args)
    assert max_diff(straight, weights(ddp / "ckpt-3")) < 1e-6
    assert [json.loads(line)["step"] for line in open(ddp / "train_log.jsonl")] == [1, 2, 3]
