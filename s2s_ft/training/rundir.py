"""The run directory (``--output_dir``): what a training run writes and what a restart reads back.

    output_dir/ckpt-STEP/      an HF model dir + training_state.pt (what resume needs), written to a temporary name
                               and put in place with fileio.replace_dir, so a crash leaves a complete old or new one
    output_dir/best/           the best model by the dev metric (best.json: step, metric, score, eval settings)
    output_dir/train_log.jsonl, eval_log.jsonl   one record per logging window / dev evaluation
    output_dir/train_args.json, invocations.jsonl   the latest start's flags / one line per start
    output_dir/training_curves.png

Start-up finishes or removes what a crash left (``remove_stale_temporaries``), resumes from the latest complete
checkpoint after checking that it belongs to this run (``resume_training``, s2s_ft/training/restart.py), and drops log records
written after it (``drop_log_records_after``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from typing import Callable, Optional

import torch

from s2s_ft.fileio import WRITING, fsync_tree, recover_dir, replace_dir, write_atomic
from s2s_ft.model import checkpoint
from s2s_ft.model.checkpoint import CheckpointError
from s2s_ft.training import plotting
from s2s_ft.training.plotting import EVAL_LOG, TRAIN_LOG  # noqa: F401  (the log names the plots read; re-exported)
from s2s_ft.training.restart import check_restart, legacy_identity
from s2s_ft.training.rng import restore_rng

log = logging.getLogger("s2s_ft")

TRAINING_STATE = "training_state.pt"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)$")
BEST_DIR, BEST_JSON = "best", "best.json"
INVOCATIONS = "invocations.jsonl"
TEMPORARY_PATTERN = re.compile(r"^(ckpt-\d+|best)\..*tmp$")  # group 1: the directory it belongs to
# Test hooks (tests/test_crash_resume.py) that widen the windows in which a SIGKILL lands: seconds to sleep between
# writing ckpt-STEP.tmp and renaming it ("SECONDS" for every save, "SECONDS@STEP" for one), and after every step.
SAVE_DELAY_ENV, STEP_DELAY_ENV = "S2S_FT_TEST_SAVE_DELAY", "S2S_FT_TEST_STEP_DELAY"


def hook_delay(name: str, step: Optional[int] = None) -> None:
    value = os.environ.get(name)
    if not value:
        return
    seconds, _, only = value.partition("@")
    if not only or (step is not None and int(only) == step):
        time.sleep(float(seconds))


def checkpoint_path(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f"ckpt-{step}")


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete ``ckpt-STEP`` dir (one holding training_state.pt), oldest first. A save that
    died before its rename left ``ckpt-STEP.tmp``, which never matches."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (m := CHECKPOINT_PATTERN.match(name))
             and os.path.isfile(os.path.join(output_dir, name, TRAINING_STATE))]
    return sorted(found)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_stale_temporaries(output_dir: str) -> None:
    """Clean up after saves that a crash interrupted (``fileio.replace_dir``): a complete new ``ckpt-STEP`` or
    ``best`` waiting to be renamed in is renamed in, a previous version is deleted once its successor is in place,
    and directories still being written (``*.tmp``) or deleted (``*.deleting.tmp``) are removed; they are never
    resumed from."""
    if not os.path.isdir(output_dir):
        return
    names = {m.group(1) for name in os.listdir(output_dir) if (m := TEMPORARY_PATTERN.match(name))}
    for base in sorted(names):
        done = recover_dir(os.path.join(output_dir, base), complete=_complete_save)
        if done:
            log.warning("%s", done)
    for name in os.listdir(output_dir):
        if TEMPORARY_PATTERN.match(name):  # what recover_dir leaves: a checkpoint being deleted by pruning
            log.warning("removing %s, left by a deletion that did not finish", os.path.join(output_dir, name))
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _complete_save(path: str) -> bool:
    marker = BEST_JSON if os.path.basename(path).startswith(BEST_DIR) else TRAINING_STATE
    return os.path.isfile(os.path.join(path, marker))


def prune_checkpoints(output_dir: str, limit: Optional[int], keep: str) -> None:
    """Delete the oldest complete checkpoints beyond ``limit``; ``keep`` (the one just written) always stays."""
    if not limit:
        return
    found = [path for _, path in complete_checkpoints(output_dir)]
    excess = [path for path in found if os.path.abspath(path) != os.path.abspath(keep)]
    for path in excess[:max(0, len(found) - limit)]:
        # rename first, so a kill during rmtree leaves a *.tmp (cleaned at start-up), never a half-deleted ckpt
        doomed = path + ".deleting.tmp"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted %s (--save_total_limit %d)", path, limit)


def save_training_checkpoint(path: str, model, model_type: str, hf_config, tokenizer, settings,
                             training_state: Optional[dict] = None, extra_files: Optional[dict] = None,
                             write_more: Optional[Callable[[str], None]] = None) -> None:
    """Write ``path + '.tmp'``, fsync every file and the directory, then put it in place of ``path`` with
    ``fileio.replace_dir``: after a crash at any point, start-up (``remove_stale_temporaries``) finds ``path``
    complete, old or new (or absent if there was none); a directory still being written is never resumed from.
    ``training_state`` (what resume needs) goes to training_state.pt; ``extra_files`` maps names to text;
    ``write_more`` writes further files into the directory being written (a LoRA run's adapters)."""
    temporary = path + WRITING
    shutil.rmtree(temporary, ignore_errors=True)
    checkpoint.save_checkpoint(model, temporary, model_type, hf_config, tokenizer=tokenizer, settings=settings)
    if training_state is not None:
        torch.save(training_state, os.path.join(temporary, TRAINING_STATE))
    if write_more is not None:
        write_more(temporary)
    for name, text in (extra_files or {}).items():
        with open(os.path.join(temporary, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    fsync_tree(temporary)
    hook_delay(SAVE_DELAY_ENV, (training_state or {}).get("step"))
    replace_dir(temporary, path)  # the previous version (re-saving best/ or a step) stays until this one is in


def drop_log_records_after(path: str, step: int) -> None:
    """A run that died after its last checkpoint logged steps that the resumed run will log again."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                if line.strip() and json.loads(line)["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):  # a record cut short by a kill
                continue
    write_atomic(path, "".join(kept))


def logged_seconds(path: str) -> float:
    """Training time a train_log.jsonl holds: the sum of its windows' ``seconds`` (steps, saves, evaluations)."""
    if not os.path.isfile(path):
        return 0.0
    total = 0.0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                total += float(json.loads(line)["seconds"]) if line.strip() else 0.0
            except (ValueError, KeyError, TypeError):  # a record cut short by a kill
                continue
    return total


def append_record(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def resume_training(resume_from: str, identity: dict, allow_changed_flags: bool, model, optimizer, scheduler,
                    scaler) -> dict:
    """Check that ``resume_from`` belongs to this run (check_restart), then load its weights and the optimizer,
    scheduler, scaler and RNG states into this process; returns its training state."""
    def cannot_resume(error: Exception) -> CheckpointError:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return CheckpointError(f"{resume_from}: cannot resume from it ({first}); move it out of "
                               f"{os.path.dirname(resume_from)} to resume from an earlier checkpoint")

    try:
        state = torch.load(os.path.join(resume_from, TRAINING_STATE), weights_only=False)
        recorded = state.get("run")
    except Exception as error:  # a truncated or corrupted file
        raise cannot_resume(error) from None
    resumed, settings = checkpoint.load_finetuned(resume_from)
    if recorded is None:
        recorded = legacy_identity(settings)
        log.warning("%s was saved before runs were recorded: only %s are compared with this run's flags", resume_from,
                    ", ".join(f"--{name}" for name in recorded))
    check_restart(resume_from, recorded, identity, allow_changed_flags)
    try:
        if "trainable" in state:  # LoRA: the base is as at the start; the adapters and fresh parts come back
            model.load_state_dict(state["trainable"], strict=False)
        else:
            model.load_state_dict(resumed.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        log.info("resuming from %s at step %d", resume_from, state["step"])
    except Exception as error:  # e.g. a checkpoint of another model size
        raise cannot_resume(error) from None
    return state


def record_invocation(config, resume_from: Optional[str], step: int) -> None:
    """train_args.json: this start's settings (a TrainingConfig); invocations.jsonl: one line per start, never
    overwritten."""
    flags = config.values()
    write_atomic(os.path.join(config.output_dir, "train_args.json"), json.dumps(flags, indent=2))
    append_record(os.path.join(config.output_dir, INVOCATIONS), {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from": resume_from, "step": step, "args": flags})


def write_curves(output_dir: str) -> None:
    """Plot the logs to training_curves.png; without matplotlib (or on any plotting problem) warn, never fail."""
    try:
        log.info("wrote %s", plotting.plot_run(output_dir))
    except ImportError:
        log.warning("matplotlib is not installed, so no %s (pip install matplotlib, then python -m s2s_ft.cli.plot "
                    "%s)", plotting.PLOT_NAME, output_dir)
    except Exception as error:  # a picture is not worth a finished training run
        log.warning("could not plot the training curves: %s", error)
