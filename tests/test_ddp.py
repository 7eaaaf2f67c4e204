"""torchrun with 2 gloo ranks at per-device batch 2 trains the same weights as 1 process at batch 4, and a 2-rank run
resumed from an earlier checkpoint ends where the uninterrupted one did (s2s_ft/distributed.py)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_bert
from s2s_ft import training
from test_cli import WORDS, train_args, train_file  # noqa: F401  (train_file is a fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory):
    # dropout draws differ between ranks and a single process; without dropout the runs must agree
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), WORDS, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, args, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node NPROC ROOT/SCRIPT ARGS`` on CPU (gloo), one thread per
    rank; asserts success."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def torchrun(args, nproc: int = 2) -> subprocess.CompletedProcess:
    return launch("run_seq2seq.py", ["--no_cuda", *args], nproc)


def weights(ckpt):
    return load_file(str(Path(ckpt) / "model.safetensors"))


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_ranks_match_one_process_and_resume(tiny_bert_no_dropout, train_file, tmp_path):  # noqa: F811
    common = ["--num_training_steps", "3", "--save_steps", "2", "--fine_tune", "pseudo_masked"]
    single = tmp_path / "single"
    args = train_args(tiny_bert_no_dropout, train_file, single, *common)
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    assert training.main(args) == 0

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
    state = torch.load(ddp / "ckpt-3" / training.TRAINING_STATE, weights_only=False)
    assert sorted(state["rng"]["per_rank"]) == [0, 1]

    # resume under 2 ranks after losing the last checkpoint
    straight = weights(ddp / "ckpt-3")
    shutil.move(ddp / "ckpt-3", tmp_path / "ckpt-3-straight")
    torchrun(args)
    assert max_diff(straight, weights(ddp / "ckpt-3")) < 1e-6
    assert [json.loads(line)["step"] for line in open(ddp / "train_log.jsonl")] == [1, 2, 3]
