"""Crash safety of training: run_seq2seq.py in a subprocess, SIGKILLed at several points (after a logged step,
and in the middle of a checkpoint save), re-run with the same command until it finishes; the final
model.safetensors must equal, byte for byte, the one of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import train_args

pytestmark = pytest.mark.slow  # subprocesses, killed and restarted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, SAVE_STEPS = 8, 2


def command(model_dir, data, out):
    return [sys.executable, "run_seq2seq.py",
            *train_args(model_dir, data, out, "--num_training_steps", str(STEPS), "--save_steps", str(SAVE_STEPS),
                        "--save_total_limit", "2")]


def environment(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": ROOT}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_to_end(cmd, **env):
    result = subprocess.run(cmd, cwd=ROOT, env=environment(**env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def logged_steps(out) -> list[int]:
    path = os.path.join(out, "train_log.jsonl")
    if not os.path.isfile(path):
        return []
    steps = []
    with open(path) as handle:
        for line in handle:
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:
                pass  # a line being written
    return steps


def run_and_kill(cmd, until, **env) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``until()`` holds (it must not finish first)."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=environment(**env), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 90
    try:
        while not until():
            assert process.poll() is None, f"finished before the kill point: {process.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "kill point never reached"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def tmp_ckpt(out, step):
    return lambda: os.path.isfile(os.path.join(out, f"ckpt-{step}.tmp", "training_state.pt"))


def final_weights(out) -> bytes:
    with open(os.path.join(out, f"ckpt-{STEPS}", "model.safetensors"), "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def reference(tiny_bert, train_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    run_to_end(command(tiny_bert, train_file, out))
    return final_weights(out), logged_steps(out)


def check_same_as_reference(out, reference):
    weights, steps = reference
    assert final_weights(out) == weights  # bit for bit
    assert logged_steps(out) == steps == list(range(1, STEPS + 1))
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.endswith(".tmp")], names
    assert [n for n in names if n.startswith("ckpt-")] == [f"ckpt-{STEPS - SAVE_STEPS}", f"ckpt-{STEPS}"]


def test_killed_after_a_step_and_again_mid_save(tiny_bert, train_file, tmp_path, reference):
    out = str(tmp_path / "run")
    cmd = command(tiny_bert, train_file, out)
    # 1: killed right after step 3 is logged (ckpt-2 exists; step 3 is lost and redone)
    run_and_kill(cmd, lambda: 3 in logged_steps(out), S2S_FT_TEST_STEP_DELAY=0.3)
    assert os.path.isdir(os.path.join(out, "ckpt-2"))
    # 2: the resumed run is killed while ckpt-6 is written (complete .tmp dir, not yet renamed)
    run_and_kill(cmd, tmp_ckpt(out, 6), S2S_FT_TEST_SAVE_DELAY="60@6")
    assert not os.path.exists(os.path.join(out, "ckpt-6"))
    # 3: runs to the end from ckpt-4, removing the stale ckpt-6.tmp
    run_to_end(cmd)
    check_same_as_reference(out, reference)


def test_killed_during_the_first_save(tiny_bert, train_file, tmp_path, reference):
    out = str(tmp_path / "run")
    cmd = command(tiny_bert, train_file, out)
    run_and_kill(cmd, tmp_ckpt(out, 2), S2S_FT_TEST_SAVE_DELAY="60@2")  # no complete checkpoint at all
    assert logged_steps(out) == [1, 2]
    run_to_end(cmd)  # starts over from step 0
    check_same_as_reference(out, reference)
