"""Fine-tuning loop behind ``run_seq2seq.py``.

Data order and corruption are pure functions of (seed, micro-batch counter): the batch order of epoch e is a
permutation seeded by (seed, e) and the packing of micro-batch c draws from a generator seeded by (seed, c). With
``--objective mass`` the examples are monolingual sentences that become (masked sentence, fragment) pairs just
before packing, drawing from that same generator (see mass_objective/).
A resumed run therefore needs only the step counter, the optimizer/scheduler state and the dropout RNG to continue
exactly where it stopped. Under ``torchrun`` every rank packs the same global micro-batch and trains on its own rows
(s2s_ft/distributed.py), so N ranks at per-device batch b follow 1 process at batch N*b.

With ``--eval_file`` the live model decodes a fixed dev sample every ``--eval_steps`` (``DevEvaluator``); the scores
go to eval_log.jsonl and the best model so far to ``output_dir/best/``. Evaluation puts every RNG state back, so
it does not change what is trained. At the end, the logs are plotted to training_curves.png (s2s_ft/plotting.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import asdict
from typing import Optional

import torch
from tqdm.auto import tqdm

from mass_objective import (SPAN_POSITIONS, MassConfig, fragment_length, mass_pairs, parse_mask_keep_rand,
                            read_sentences)

from . import checkpoint, evaluate, plotting
from .batching import TokenBudgetSampler, packed_length
from .cache import cache_key, cached_columns, tokenizer_fingerprint
from .checkpoint import CheckpointError
from .cli import TrainingStopped, UsageError, run_cli
from .data import DataError, load_tokenizer, read_pairs, special_ids
from .decoding import Seq2SeqDecoder
from .detokenize import DETOKENIZE_HELP, DETOKENIZERS
from .distributed import World, init_world
from .fileio import WRITING, fsync_tree, recover_dir, replace_dir, sha256_file, write_atomic
from .inference import AUTOCAST_DTYPES, LoadedDecoder
from .loss import seq2seq_loss
from .packing import METHODS, Packer, Pair

log = logging.getLogger("s2s_ft")

OBJECTIVES = ("seq2seq", "mass")
MASK_WAY_ALIASES = {"v0": "causal", "v1": "masked", "v2": "pseudo_masked"}  # s2s-ft's --mask_way names
TRAINING_STATE = "training_state.pt"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)$")
BEST_DIR, BEST_JSON, EVAL_LOG = "best", "best.json", "eval_log.jsonl"
TEMPORARY_PATTERN = re.compile(r"^(ckpt-\d+|best)\..*tmp$")  # group 1: the directory it belongs to
# Test hooks (tests/test_crash_resume.py) that widen the windows in which a SIGKILL lands: seconds to sleep between
# writing ckpt-STEP.tmp and renaming it ("SECONDS" for every save, "SECONDS@STEP" for one), and after every step.
SAVE_DELAY_ENV, STEP_DELAY_ENV = "S2S_FT_TEST_SAVE_DELAY", "S2S_FT_TEST_STEP_DELAY"
INVOCATIONS = "invocations.jsonl"

# What a restart compares (README "What a restart does"); every checkpoint records these values ("run" in
# training_state.pt). RUN_FLAGS define the updates themselves: a run resumes only with the values it was started
# with. RESTART_FLAGS decide how long the run goes on and what is saved, logged and evaluated, not the updates made
# so far: they may change on resume with --allow_changed_flags (--num_training_steps and --num_warmup_steps re-shape
# the learning-rate schedule from the resumed step on). Other flags (paths whose content is compared instead,
# --cache_dir, --gradient_checkpointing, --torch_compile, --no_cuda, --log_level) may always change.
RUN_FLAGS = ("model_type", "model_name_or_path", "config_name", "fresh_head_init", "tokenizer_name", "train_file",
             "skip_bad_lines", "objective", "fine_tune", "max_source_seq_length", "max_target_seq_length",
             "mass_ratio", "mass_mask_keep_rand", "mass_span_position", "mass_full_target",
             "per_device_train_batch_size", "world_size", "gradient_accumulation_steps", "max_tokens_per_batch",
             "learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm", "label_smoothing", "target_mask_prob",
             "random_prob", "keep_prob", "seed", "precision")
RESTART_FLAGS = ("num_training_steps", "num_warmup_steps", "save_steps", "save_total_limit", "logging_steps",
                 "max_bad_steps", "eval_file", "eval_steps", "eval_max_examples", "eval_metric", "eval_metrics",
                 "eval_beam_size", "eval_max_tgt_length", "eval_batch_size", "detokenize")
CONTENT_FLAGS = {"train_file": "content", "tokenizer_name": "files"}  # recorded as a hash of what they name


def _test_delay(name: str, step: Optional[int] = None) -> None:
    value = os.environ.get(name)
    if not value:
        return
    seconds, _, only = value.partition("@")
    if not only or (step is not None and int(only) == step):
        time.sleep(float(seconds))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune a bidirectional Transformer as a seq2seq model (s2s-ft style).")
    add = p.add_argument
    # model and data
    add("--model_type", required=True, choices=checkpoint.MODEL_TYPES)
    add("--model_name_or_path", default=None, help="local HF checkpoint directory to start from")
    add("--config_name", default=None, help="HF config.json (or its dir): random init when no weights are given")
    add("--fresh_head_init", default="random", choices=checkpoint.HEAD_INITS,
        help="how an MLM head the checkpoint lacks starts: random (BERT init) or identity (transform = I, "
             "LayerNorm copied from the last layer: the tied decoder scores words by similarity from step 0)")
    add("--tokenizer_name", default=None, help="tokenizer directory (default: the model directory)")
    add("--train_file", required=True,
        help="seq2seq: JSONL, one {\"src\": ..., \"tgt\": ...} a line; mass: one sentence a line (plain text, "
             "or *.jsonl with a \"text\" field)")
    add("--output_dir", required=True)
    add("--fine_tune", default=None, choices=METHODS, help="fine-tuning method (default pseudo_masked)")
    add("--mask_way", default=None, choices=sorted(MASK_WAY_ALIASES),
        help="s2s-ft alias: v0 causal (position shift), v1 masked, v2 pseudo_masked")
    add("--max_source_seq_length", type=int, default=464, help="source length incl. [CLS] and [SEP]")
    add("--max_target_seq_length", type=int, default=48, help="target length incl. the closing [SEP]")
    add("--skip_bad_lines", action="store_true", help="skip (and count) malformed training lines")
    add("--cache_dir", default=None,
        help="where tokenised training examples are cached (default: <output_dir>/cache)")
    # objective
    add("--objective", default="seq2seq", choices=OBJECTIVES,
        help="seq2seq: fine-tune on (src, tgt) pairs; mass: MASS pre-training on monolingual sentences")
    add("--mass_ratio", type=float, default=0.5, help="mass: fragment length k = round(ratio * m), at least 1")
    add("--mass_mask_keep_rand", default="0.8,0.1,0.1",
        help="mass: fragment tokens in the source become [MASK] / stay / become random, with these probabilities "
             "(the MASS code's --word_mask_keep_rand order)")
    add("--mass_span_position", default="uniform", choices=SPAN_POSITIONS,
        help="mass: fragment start uniform over valid starts, or the MASS code's scheme (20%% pinned at the start, "
             "20%% at the end, else uniform)")
    add("--mass_full_target", action="store_true",
        help="mass: feed all sentence positions to the target part ([MASK] outside the fragment, loss on the "
             "fragment only) like the MASS paper's decoder; slower, for comparison (default: fragment only)")
    # optimisation
    add("--per_device_train_batch_size", "--per_gpu_train_batch_size", dest="per_device_train_batch_size",
        type=int, default=8)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--max_tokens_per_batch", type=int, default=None,
        help="token-budget batching: micro-batches of similar-length examples, rows x longest packed length <= N "
             "(replaces --per_device_train_batch_size)")
    add("--learning_rate", type=float, default=5e-5)
    add("--weight_decay", type=float, default=0.01, help="not applied to biases and LayerNorm weights")
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0,
        help="clip the gradient norm to this; <= 0: no clipping (as in HF and s2s-ft)")
    add("--num_training_steps", type=int, default=-1, help="optimizer steps (takes priority over epochs)")
    add("--num_training_epochs", type=float, default=10)
    add("--num_warmup_steps", type=int, default=0, help="linear warmup, then linear decay to 0")
    add("--label_smoothing", type=float, default=0.1)
    add("--target_mask_prob", type=float, default=0.5,
        help="masked: ratio of target tokens predicted; pseudo_masked: word-drop probability of real targets")
    add("--random_prob", type=float, default=0.1, help="corrupted token -> random token")
    add("--keep_prob", type=float, default=0.1, help="corrupted token -> kept unchanged")
    # bookkeeping
    add("--save_steps", type=int, default=1500)
    add("--save_total_limit", type=int, default=None,
        help="keep only the newest N complete ckpt-* dirs (older ones are deleted after each successful save)")
    add("--allow_changed_flags", action="store_true",
        help="on resume, accept new values of the flags that may change within a run (--num_training_steps, "
             "--num_warmup_steps, --save_steps, --save_total_limit, --logging_steps, --max_bad_steps, --eval_*); "
             "without it a restart with any changed setting is refused (README: What a restart does)")
    add("--max_bad_steps", type=int, default=10,
        help="stop after this many consecutive steps with a non-finite loss or gradient (each is skipped)")
    add("--logging_steps", type=int, default=50)
    # evaluation during training
    add("--eval_file", default=None,
        help="JSONL dev file ({\"src\": ..., \"tgt\": ...}, optionally \"refs\": [all references]): decode a "
             "fixed sample of it every --eval_steps, log the scores to eval_log.jsonl, keep the best model in best/")
    add("--eval_steps", type=int, default=None, help="evaluate every N optimizer steps and at the end "
                                                      "(default: --save_steps)")
    add("--eval_max_examples", type=int, default=200, help="the first N records of --eval_file (0: all)")
    add("--eval_metric", default="rougeL", choices=evaluate.METRIC_KEYS,
        help="the score (higher is better) that picks the best checkpoint")
    add("--eval_metrics", default="rouge,bleu",
        help="metric families computed and logged (of rouge,bleu,meteor; --eval_metric's is always added). "
             "METEOR is slow and needs WordNet")
    add("--eval_beam_size", type=int, default=1)
    add("--eval_max_tgt_length", type=int, default=None, help="default: --max_target_seq_length")
    add("--eval_batch_size", type=int, default=32, help="sources per decoding batch")
    add("--detokenize", default="text", choices=DETOKENIZERS, help="--eval_file " + DETOKENIZE_HELP)
    add("--seed", type=int, default=42)
    add("--precision", default=None, choices=("fp32", "bf16", "fp16"), help="torch.autocast mixed precision")
    add("--fp16", action="store_true", help="alias of --precision fp16 (apex is not used)")
    add("--fp16_opt_level", default=None, help="accepted for s2s-ft compatibility and ignored (no apex)")
    add("--gradient_checkpointing", action="store_true",
        help="recompute each layer's activations in the backward pass: less memory for long sources, ~30%% slower")
    add("--torch_compile", action="store_true",
        help="run the training forward through torch.compile (compiles on the first batches; lengths vary, so "
             "shapes are dynamic); decoding and checkpoints use the uncompiled model")
    add("--no_cuda", action="store_true")
    add("--log_level", default="INFO")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fold aliases into canonical flags and reject contradictions with one clear line."""
    if args.mask_way and args.fine_tune and MASK_WAY_ALIASES[args.mask_way] != args.fine_tune:
        raise UsageError(f"--mask_way {args.mask_way} means {MASK_WAY_ALIASES[args.mask_way]}, "
                         f"but --fine_tune {args.fine_tune} was given")
    args.fine_tune = args.fine_tune or MASK_WAY_ALIASES.get(args.mask_way or "", "pseudo_masked")
    if args.fp16:
        if args.precision not in (None, "fp16"):
            raise UsageError(f"--fp16 contradicts --precision {args.precision}")
        args.precision = "fp16"
        log.info("--fp16 maps to torch.amp fp16 autocast with a GradScaler (apex is not used)")
    args.precision = args.precision or "fp32"
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    args.device = torch.device("cuda" if use_cuda else "cpu")
    if args.precision == "fp16" and not use_cuda:
        raise UsageError("--precision fp16 needs a GPU; on CPU use --precision bf16 or fp32")
    if args.model_name_or_path is None and args.config_name is None:
        raise UsageError("give --model_name_or_path (weights) or --config_name (random init)")
    if args.model_name_or_path is not None and not os.path.isdir(args.model_name_or_path):
        raise CheckpointError(f"{args.model_name_or_path}: checkpoint directory not found (--model_name_or_path)")
    if not 0 <= args.random_prob + args.keep_prob <= 1:
        raise UsageError("--random_prob + --keep_prob must lie in [0, 1]")
    args.eval_steps = args.save_steps if args.eval_steps is None else args.eval_steps
    args.eval_max_tgt_length = args.max_target_seq_length if args.eval_max_tgt_length is None \
        else args.eval_max_tgt_length
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps",
                 "max_bad_steps", "eval_steps", "eval_beam_size", "eval_max_tgt_length", "eval_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_tokens_per_batch is not None and args.max_tokens_per_batch < 1:
        raise UsageError(f"--max_tokens_per_batch must be >= 1, got {args.max_tokens_per_batch}")
    if args.eval_max_examples < 0:
        raise UsageError(f"--eval_max_examples must be >= 0 (0: all), got {args.eval_max_examples}")
    if args.eval_file is not None and args.objective != "seq2seq":
        raise UsageError("--eval_file scores generated targets; it needs --objective seq2seq")
    families = {m.strip().lower() for m in args.eval_metrics.split(",") if m.strip()}
    if not families <= set(evaluate.METRICS):
        raise UsageError(f"--eval_metrics {args.eval_metrics}: choose from {','.join(evaluate.METRICS)}")
    families.add(evaluate.metric_family(args.eval_metric))
    args.eval_metrics = ",".join(m for m in evaluate.METRICS if m in families)
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise UsageError(f"--save_total_limit must be >= 1, got {args.save_total_limit}")
    if args.num_training_steps == 0 or (args.num_training_steps < 0 and args.num_training_epochs <= 0):
        raise UsageError("nothing to train: give --num_training_steps > 0 or --num_training_epochs > 0")
    for name in ("learning_rate", "adam_epsilon", "weight_decay", "num_warmup_steps"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.label_smoothing < 1 or not 0 <= args.target_mask_prob <= 1:
        raise UsageError("--label_smoothing must lie in [0, 1) and --target_mask_prob in [0, 1]")
    if args.max_source_seq_length < 3 or args.max_target_seq_length < 2:
        raise UsageError("--max_source_seq_length must be >= 3 and --max_target_seq_length >= 2")
    if args.objective == "mass":
        try:
            args.mass_mask_keep_rand = list(parse_mask_keep_rand(str(args.mass_mask_keep_rand)))
            MassConfig(args.mass_ratio, tuple(args.mass_mask_keep_rand), args.mass_span_position,
                       args.mass_full_target)
        except ValueError as error:
            raise UsageError(f"--mass_*: {error}") from None
    args.tokenizer_name = args.tokenizer_name or args.model_name_or_path or (
        args.config_name if os.path.isdir(args.config_name) else os.path.dirname(args.config_name))
    return args


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: output_dir/ckpt-STEP/ = an HF model dir + training_state.pt, written to a temporary name and renamed.
# ----------------------------------------------------------------------------------------------------------------
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


def rng_state() -> dict:
    """This process's RNG states, as ``{"per_rank": {RANK: ...}}`` (rank 0 without torchrun); a multi-process run
    gathers every rank's entry into the checkpoint and each rank restores its own."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:  # numpy is not used by this package; its state is kept in case a tokenizer or user hook draws from it
        import numpy
        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    return {"per_rank": {current_rank(): state}}


def restore_rng(saved: dict) -> None:
    if "per_rank" in saved and current_rank() not in saved["per_rank"]:  # resumed with more ranks than saved
        log.warning("no RNG state saved for rank %d; its dropout RNG starts afresh", current_rank())
        return
    state = saved["per_rank"][current_rank()] if "per_rank" in saved else saved  # older checkpoints: one state
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy
        numpy.random.set_state(state["numpy"])


def current_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def save_training_checkpoint(path: str, model, args, hf_config, tokenizer, settings,
                             training_state: Optional[dict] = None, extra_files: Optional[dict] = None) -> None:
    """Write ``path + '.tmp'``, fsync every file and the directory, then put it in place of ``path`` with
    ``fileio.replace_dir``: after a crash at any point, start-up (``remove_stale_temporaries``) finds ``path``
    complete, old or new (or absent if there was none); a directory still being written is never resumed from.
    ``training_state`` (what resume needs) goes to training_state.pt; ``extra_files`` maps names to text."""
    temporary = path + WRITING
    shutil.rmtree(temporary, ignore_errors=True)
    checkpoint.save_checkpoint(model, temporary, args.model_type, hf_config, tokenizer=tokenizer, settings=settings)
    if training_state is not None:
        torch.save(training_state, os.path.join(temporary, TRAINING_STATE))
    for name, text in (extra_files or {}).items():
        with open(os.path.join(temporary, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    fsync_tree(temporary)
    _test_delay(SAVE_DELAY_ENV, (training_state or {}).get("step"))
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


def append_record(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Restart: every checkpoint records what defines its run; resuming with other values is refused (README).
# ----------------------------------------------------------------------------------------------------------------
def run_identity(args: argparse.Namespace, world_size: int) -> dict:
    """This run's RUN_FLAGS and RESTART_FLAGS values as a checkpoint records them: the training file and tokenizer
    as hashes of their content (their paths may change), other paths absolute, --mass_* only with --objective mass,
    the other --eval_* only with --eval_file, --num_training_steps as resolved (from --num_training_epochs if it was
    not given)."""
    values = {**vars(args), "world_size": world_size}
    identity = {}
    for name in RUN_FLAGS + RESTART_FLAGS:
        if (name.startswith("mass_") and args.objective != "mass") or (
                name.startswith("eval_") and name != "eval_file" and args.eval_file is None):
            continue
        value = values.get(name)
        if name == "train_file":
            value = "sha256:" + sha256_file(value)
        elif name == "tokenizer_name":
            value = "sha256:" + tokenizer_fingerprint(value)
        elif name in ("model_name_or_path", "config_name", "eval_file") and value is not None:
            value = os.path.abspath(value)
        identity[name] = value
    return identity


def legacy_identity(settings: dict) -> dict:
    """What a checkpoint written before runs were recorded tells about its run: its s2s_ft_settings.json."""
    recorded = {name: settings[name] for name in ("model_type", "fine_tune", "max_source_seq_length",
                                                  "max_target_seq_length", "target_mask_prob", "label_smoothing")
                if name in settings}
    recorded["objective"] = settings.get("objective", "seq2seq")
    return recorded


def _flag(name: str) -> str:
    return "the number of processes" if name == "world_size" else f"--{name}"


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "(none)" if value is None else str(value)


def describe_change(name: str, old, new) -> str:
    if name in CONTENT_FLAGS:
        return f"--{name} {CONTENT_FLAGS[name]} changed"
    return f"{_flag(name)} {_shown(old)} → {_shown(new)}"


def check_restart(resume_from: str, recorded: dict, identity: dict, allow_changed: bool) -> None:
    """UsageError naming every setting that differs from what ``resume_from`` recorded (old → new) and the way out,
    unless only RESTART_FLAGS differ and ``allow_changed``. Settings the checkpoint did not record are not compared."""
    changed = [name for name in identity if name in recorded and recorded[name] != identity[name]]
    if not changed:
        return
    described = ", ".join(describe_change(name, recorded[name], identity[name]) for name in changed)
    fixed = [_flag(name) for name in changed if name not in RESTART_FLAGS]
    if fixed:
        raise UsageError(f"{resume_from} was trained with other settings: {described}; {', '.join(fixed)} cannot "
                         f"change within a run: restore the old value to resume, or use a new --output_dir "
                         f"(--model_name_or_path {resume_from} starts from its weights)")
    if not allow_changed:
        raise UsageError(f"{resume_from} was trained with other settings: {described}; to resume with the new "
                         f"values add --allow_changed_flags (README: What a restart does), or use a new --output_dir")
    log.warning("resuming %s with changed settings (--allow_changed_flags): %s", resume_from, described)


def resume_training(resume_from: str, args, identity: dict, model, optimizer, scheduler, scaler) -> dict:
    """Check that ``resume_from`` belongs to this run (check_restart), then load its weights and the optimizer,
    scheduler, scaler and RNG states into this process; returns its training state."""
    def cannot_resume(error: Exception) -> CheckpointError:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return CheckpointError(f"{resume_from}: cannot resume from it ({first}); move it out of "
                               f"{args.output_dir} to resume from an earlier checkpoint")

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
    check_restart(resume_from, recorded, identity, args.allow_changed_flags)
    try:
        model.load_state_dict(resumed.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        log.info("resuming from %s at step %d", resume_from, state["step"])
    except Exception as error:  # e.g. a checkpoint of another model size
        raise cannot_resume(error) from None
    return state


def record_invocation(args, resume_from: Optional[str], step: int) -> None:
    """train_args.json: this start's flags; invocations.jsonl: one line per start, never overwritten."""
    flags = {k: str(v) if isinstance(v, torch.device) else v for k, v in vars(args).items()}
    write_atomic(os.path.join(args.output_dir, "train_args.json"), json.dumps(flags, indent=2))
    append_record(os.path.join(args.output_dir, INVOCATIONS), {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from": resume_from, "step": step, "args": flags})


# ----------------------------------------------------------------------------------------------------------------
# Evaluation during training: the live model decodes a fixed dev sample; the best-scoring model is kept in best/.
# ----------------------------------------------------------------------------------------------------------------
class DevEvaluator:
    """Decodes the first ``--eval_max_examples`` records of ``--eval_file`` with the model being trained (no copy,
    no reload from disk), scores them with s2s_ft.evaluate, appends a record to eval_log.jsonl, and saves the model
    to ``output_dir/best/`` (with best.json: step, metric, score) whenever ``--eval_metric`` beats the best so far.

    Evaluating leaves the training trajectory alone: decoding runs in eval mode (no dropout) under inference_mode
    (no gradients, no autograd state) and every RNG state is put back afterwards, so a run with evaluation trains
    the same weights, bit for bit, as one without."""

    def __init__(self, args, model, tokenizer, special, settings, save_best):
        # read and check the dev sample now: a bad line should stop the run at start-up, not after hours
        self.sources, self.refs, numbers = evaluate.read_dev_examples(args.eval_file, args.eval_max_examples or None)
        decoder = Seq2SeqDecoder(model, special, args.fine_tune, args.device, AUTOCAST_DTYPES[args.precision])
        self.decoder = LoadedDecoder(decoder, tokenizer, settings, args.detokenize)
        ids, truncated = self.decoder.source_ids(self.sources)
        for source_ids, number in zip(ids, numbers):
            if not source_ids:
                raise DataError(f"{args.eval_file}:{number}: \"src\" tokenises to nothing")
        if truncated:
            log.warning("%d of %d dev sources truncated to %d tokens", truncated, len(ids), args.max_source_seq_length)
        # at start-up, not at the first evaluation
        self.decoder.check_position_budget(ids, args.eval_max_tgt_length, "lower --eval_max_tgt_length")
        self.metrics, self.metric = args.eval_metrics.split(","), args.eval_metric
        try:  # a missing scorer package (or WordNet for METEOR) also shows up now, not at the first evaluation
            evaluate.score(["a"], [["a"]], self.metrics)
        except ImportError as error:
            raise UsageError(f"--eval_file: scoring needs the Python package {error.name} (pip install -e "
                             f"'.[eval]')") from None
        self.search = {"beam_size": args.eval_beam_size, "max_tgt_length": args.eval_max_tgt_length}
        self.batch_size, self.output_dir, self.save_best = args.eval_batch_size, args.output_dir, save_best
        # best.json records these; a best found under other settings has a score that cannot be compared
        self.settings = {"eval_file": os.path.abspath(args.eval_file), "eval_max_examples": len(self.sources),
                         "detokenize": args.detokenize,
                         "eval_metric": self.metric, **{f"eval_{k}": v for k, v in self.search.items()}}
        self.best: Optional[dict] = None
        log.info("evaluating on %d examples of %s every %d steps (%s, beam %d); best model by %s in %s",
                 len(self.sources), args.eval_file, args.eval_steps, args.eval_metrics, args.eval_beam_size,
                 self.metric, os.path.join(args.output_dir, BEST_DIR))

    def resume(self) -> None:
        """Know the best score so far (from best/best.json), so that a worse later score does not replace it. A
        best found after the checkpoint resumed from stays: the resumed run retraces the same weights."""
        path = os.path.join(self.output_dir, BEST_DIR, BEST_JSON)
        if not os.path.isfile(path):
            return
        try:
            with open(path, encoding="utf-8") as handle:
                best = json.load(handle)
            float(best["score"]), int(best["step"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; the next evaluation replaces best/", path)
            return
        if best.get("eval") != self.settings:
            log.warning("%s was chosen with other evaluation settings (%s); the next evaluation replaces it", path,
                        best.get("eval"))
            return
        self.best = best
        log.info("best so far: %s %.4f at step %d", best["metric"], best["score"], best["step"])

    def scores(self) -> dict:
        model = self.decoder.decoder.model
        rng = rng_state()
        model.eval()
        try:
            hyps = self.decoder.decode_texts(self.sources, self.batch_size, **self.search)
        finally:
            model.train()
            restore_rng(rng)
        return evaluate.score(hyps, self.refs, self.metrics)

    def __call__(self, step: int) -> dict:
        start = time.perf_counter()
        scores = {name: value if name == "n" else round(value, 4) for name, value in self.scores().items()}
        value = scores[self.metric]
        if self.best is None or value > self.best["score"]:
            self.best = {"step": step, "metric": self.metric, "score": value, "scores": scores,
                         "eval": self.settings}
            self.save_best(os.path.join(self.output_dir, BEST_DIR), {BEST_JSON: json.dumps(self.best, indent=2)})
        # a resumed run re-evaluates the best step itself (same weights, same score): still the best
        record = {"step": step, **scores, "metric": self.metric, "best": step == self.best["step"],
                  "seconds": round(time.perf_counter() - start, 2)}
        append_record(os.path.join(self.output_dir, EVAL_LOG), record)
        log.info("step %d: eval %s %.2f (best %.2f at step %d); %s", step, self.metric, value, self.best["score"],
                 self.best["step"], ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "n"))
        return record


def write_curves(output_dir: str) -> None:
    """Plot the logs to training_curves.png; without matplotlib (or on any plotting problem) warn, never fail."""
    try:
        log.info("wrote %s", plotting.plot_run(output_dir))
    except ImportError:
        log.warning("matplotlib is not installed, so no %s (pip install matplotlib, then python -m s2s_ft.plotting "
                    "%s)", plotting.PLOT_NAME, output_dir)
    except Exception as error:  # a picture is not worth a finished training run
        log.warning("could not plot the training curves: %s", error)


# ----------------------------------------------------------------------------------------------------------------
def make_optimizer(model, args):
    # Biases and LayerNorm weights (the 1-D parameters) get no weight decay, as in BERT.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate, eps=args.adam_epsilon)
    warmup, total = args.num_warmup_steps, args.num_training_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # step 0 already trains (HF's schedule would give lr 0 there)
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def micro_batch(pairs, counter: int, batch_size: int, seed: int):
    """Examples of micro-batch ``counter``: epoch-wise permutations, each seeded by (seed, epoch)."""
    per_epoch = math.ceil(len(pairs) / batch_size)
    epoch, index = divmod(counter, per_epoch)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [pairs[i] for i in order[index * batch_size:(index + 1) * batch_size].tolist()], epoch


def training_examples(args, tokenizer, special):
    """(examples, to_pairs, lengths): ``micro_batch`` draws from ``examples``; ``to_pairs(examples, generator)`` turns
    one micro-batch into packer Pairs; ``lengths[i]`` is example i's packed length. seq2seq: the pairs themselves,
    nothing drawn. mass: monolingual sentences (chunks of at most max_source_seq_length - 2 pieces) that become MASS
    pairs with the micro-batch's generator. Tokenised examples are cached in --cache_dir."""
    if not os.path.isfile(args.train_file):
        raise DataError(f"{args.train_file}: file not found")
    key = cache_key(args.train_file, args.tokenizer_name, objective=args.objective,
                    max_source_seq_length=args.max_source_seq_length,
                    max_target_seq_length=args.max_target_seq_length, skip_bad_lines=args.skip_bad_lines)
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "cache")
    if args.objective == "seq2seq":
        def build():
            pairs, _ = read_pairs(args.train_file, tokenizer, args.max_source_seq_length,
                                  args.max_target_seq_length, skip_bad_lines=args.skip_bad_lines)
            return [[pair.source for pair in pairs], [pair.target for pair in pairs]]

        sources, targets = cached_columns(cache_dir, key, 2, build)
        pairs = [Pair(source, target) for source, target in zip(sources, targets)]
        lengths = [packed_length(pair, args.fine_tune) for pair in pairs]
        return pairs, lambda examples, generator: examples, lengths
    (sentences,) = cached_columns(cache_dir, key, 1, lambda: [read_sentences(
        args.train_file, tokenizer, args.max_source_seq_length - 2, skip_bad_lines=args.skip_bad_lines)[0]])
    config = MassConfig(args.mass_ratio, tuple(args.mass_mask_keep_rand), args.mass_span_position,
                        args.mass_full_target)
    # a MASS pair: the sentence (same length) as the source, a fragment of fragment_length tokens (or the whole
    # sentence with --mass_full_target) as the target, no closing [SEP]
    lengths = [packed_length(Pair([0] * len(s), [0] * (len(s) if config.full_target else
                                                       fragment_length(len(s), config.ratio)), close_target=False),
                             args.fine_tune) for s in sentences]
    return sentences, lambda examples, generator: mass_pairs(examples, special, config, generator), lengths


def train(args: argparse.Namespace) -> str:
    """Run (or resume) fine-tuning; returns the final checkpoint directory. Under torchrun (WORLD_SIZE > 1) every
    rank runs this; see s2s_ft/distributed.py for how the work is shared."""
    args = resolve_args(args)
    world = init_world(args.device.type == "cuda")
    try:
        return _train(args, world)
    finally:
        world.close()


def _train(args: argparse.Namespace, world: World) -> str:
    if world.active and args.device.type == "cuda":
        args.device = torch.device("cuda", world.local_rank)
    if not world.is_main:  # only rank 0 logs
        log.setLevel(logging.WARNING)
    os.makedirs(args.output_dir, exist_ok=True)
    if world.is_main:
        remove_stale_temporaries(args.output_dir)
    world.barrier()
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer = load_tokenizer(args.tokenizer_name)
    model, info = checkpoint.load_pretrained(
        args.model_type, args.model_name_or_path, config_name=args.config_name,
        min_positions=args.max_source_seq_length + args.max_target_seq_length, log=log,
        head_init=args.fresh_head_init)
    hf_config = info["hf_config"]
    source_type, target_type = checkpoint.default_segment_ids(args.model_type, hf_config)
    special = special_ids(tokenizer, source_type, target_type)
    if special.vocab_size > model.config.vocab_size:
        raise UsageError(f"tokenizer {args.tokenizer_name} has {special.vocab_size} tokens but the model's "
                         f"vocabulary has {model.config.vocab_size}")
    special = type(special)(**{**asdict(special), "vocab_size": model.config.vocab_size})

    if not world.is_main:
        world.barrier()  # rank 0 tokenises (and writes the cache) first
    examples_all, to_pairs, lengths = training_examples(args, tokenizer, special)
    if world.is_main:
        world.barrier()
    mask_prob = 1.0 - args.random_prob - args.keep_prob
    packer = Packer(args.fine_tune, special, args.target_mask_prob,
                    corruption=(mask_prob, args.random_prob, args.keep_prob))
    global_batch = args.per_device_train_batch_size * world.size  # examples of one micro-batch, all ranks together
    per_step = global_batch * args.gradient_accumulation_steps
    sampler = None
    if args.max_tokens_per_batch:
        sampler = TokenBudgetSampler(lengths, args.max_tokens_per_batch, args.seed)
        if sampler.over_budget:
            log.warning("%d examples are longer than --max_tokens_per_batch %d packed; each is a batch of its own",
                        sampler.over_budget, args.max_tokens_per_batch)
        batches_per_epoch = len(sampler.epoch(0))
        per_step = len(examples_all) / batches_per_epoch * args.gradient_accumulation_steps  # on average
        if args.num_training_steps <= 0:
            args.num_training_steps = max(1, math.ceil(
                args.num_training_epochs * batches_per_epoch / args.gradient_accumulation_steps))
    if args.num_training_steps <= 0:
        args.num_training_steps = max(1, math.ceil(args.num_training_epochs * len(examples_all) / per_step))
    settings = {
        "model_type": args.model_type, "objective": args.objective, "fine_tune": args.fine_tune,
        "max_source_seq_length": args.max_source_seq_length, "max_target_seq_length": args.max_target_seq_length,
        "special_ids": asdict(special), "target_mask_prob": args.target_mask_prob,
        "label_smoothing": args.label_smoothing,
    }
    if args.objective == "mass":
        settings["mass"] = {"ratio": args.mass_ratio, "mask_keep_rand": list(args.mass_mask_keep_rand),
                            "span_position": args.mass_span_position, "full_target": args.mass_full_target}

    model.to(args.device)
    world.broadcast_model(model)  # same seed, same weights already; this makes sure of it
    evaluator = None
    if args.eval_file:
        rng = rng_state()  # building it (tokenising, a trial scoring) must not move the dropout RNG
        evaluator = DevEvaluator(args, model, tokenizer, special, settings, save_best=lambda path, files:
                                 save_training_checkpoint(path, model, args, hf_config, tokenizer, settings,
                                                          extra_files=files))
        restore_rng(rng)
    if world.active:  # dropout: one stream per rank (a resumed run restores each rank's own state below)
        random.seed(args.seed + world.rank)
        torch.manual_seed(args.seed + world.rank)
    optimizer, scheduler = make_optimizer(model, args)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    identity = run_identity(args, world.size)
    resume_from = latest_checkpoint(args.output_dir)
    state = resume_training(resume_from, args, identity, model, optimizer, scheduler, scaler) if resume_from else {}
    step = state.get("step", 0)
    if resume_from and evaluator:
        evaluator.resume()
    if world.is_main:
        for name in ("train_log.jsonl", EVAL_LOG):
            drop_log_records_after(os.path.join(args.output_dir, name), step)

    log.info("%d %s examples from %s; method %s; %d optimizer steps of %s examples (%s x %d accumulation); "
             "precision %s on %s; %.1fM parameters", len(examples_all), args.objective, args.train_file,
             args.fine_tune, args.num_training_steps, f"{per_step:.4g}" if sampler else per_step,
             f"<= {args.max_tokens_per_batch} tokens" if sampler else args.per_device_train_batch_size,
             args.gradient_accumulation_steps, args.precision, args.device, model.num_parameters() / 1e6)
    if sampler:
        log.info("effective batch: one token-budget micro-batch (<= %d tokens, ~%.4g examples) shared by %d "
                 "device(s) x %d accumulation", args.max_tokens_per_batch, per_step / args.gradient_accumulation_steps,
                 world.size, args.gradient_accumulation_steps)
    else:
        log.info("effective batch: %d = %d per device x %d device(s) x %d accumulation", per_step,
                 args.per_device_train_batch_size, world.size, args.gradient_accumulation_steps)
    if world.is_main:
        record_invocation(args, resume_from, step)

    autocast_dtype = AUTOCAST_DTYPES[args.precision]
    # <= 0 means no clipping (HF, s2s-ft); the norm is still measured for the log and the non-finite check
    max_grad_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
    log_path = os.path.join(args.output_dir, "train_log.jsonl")
    model.gradient_checkpointing = args.gradient_checkpointing
    # Only the forward is compiled, through a separate handle: the optimizer, loss head, gradient all-reduce,
    # checkpoints (whose key names a compiled wrapper would prefix) and the dev decoder keep the plain module.
    forward = torch.compile(model, dynamic=True) if args.torch_compile else model
    model.train()
    progress = tqdm(total=args.num_training_steps, initial=step, desc="train",
                    disable=None if world.is_main else True)
    new_window = lambda: {"loss": 0.0, "micro": 0, "tokens": 0, "padded_tokens": 0, "target_tokens": 0,
                          "skipped": 0, "start": time.perf_counter()}
    window = new_window()
    last_saved = resume_from
    # Non-finite losses: fp16 keeps the GradScaler's path (backward, the scaler sees inf/NaN gradients and skips the
    # update, lowering its scale); other precisions skip the optimizer step themselves. Either way the step counter
    # and the LR schedule advance, so data order stays a function of (seed, step); bad_streak counts consecutive
    # steps with a non-finite loss (or, outside fp16, gradient norm) and stops the run at --max_bad_steps.
    bad_streak = state.get("bad_streak", 0)
    while step < args.num_training_steps:
        bad_loss = False
        for micro in range(args.gradient_accumulation_steps):
            counter = step * args.gradient_accumulation_steps + micro
            if sampler is None:
                examples, epoch = micro_batch(examples_all, counter, global_batch, args.seed)
            else:
                indices, epoch = sampler(counter)
                examples = [examples_all[i] for i in indices]
            generator = torch.Generator().manual_seed(args.seed * 1_000_003 + counter)
            pairs: list[Pair] = to_pairs(examples, generator)
            full = packer(pairs, generator)  # every rank packs the whole global micro-batch (same draws) ...
            # ... and keeps its own rows rank::world
            batch, weight = world.shard(full)
            batch = batch.to(args.device)
            with torch.autocast(args.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                hidden = forward(**batch.model_inputs())
                if world.active:  # sum over this rank's tokens / global count; the gradients are summed over ranks
                    loss = seq2seq_loss(model, hidden, batch.labels, args.label_smoothing,
                                        normalizer=float(full.num_predicted)) * weight
                else:
                    loss = seq2seq_loss(model, hidden, batch.labels, args.label_smoothing)
            reported = world.sum_scalar(loss.detach())  # the global mean, on every rank
            finite = bool(torch.isfinite(reported))
            if finite:
                window["loss"] += reported.item()
                window["micro"] += 1
            bad_loss |= not finite
            if finite or scaler.is_enabled():
                scaler.scale(loss / args.gradient_accumulation_steps).backward()
            window["tokens"] += full.num_real_tokens
            window["padded_tokens"] += full.input_ids.numel()
            window["target_tokens"] += sum(pair.num_predicted_targets for pair in pairs)
        world.sum_gradients(model.parameters())  # once per optimizer step, after accumulation
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        bad = bad_loss or (not scaler.is_enabled() and not bool(torch.isfinite(grad_norm)))
        if scaler.is_enabled() or not bad:  # otherwise skipped: the model and the optimizer state stay as they were
            scaler.step(optimizer)  # fp16: skips the update itself when the gradients hold inf/NaN
            scaler.update()
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        _test_delay(STEP_DELAY_ENV)
        if bad:
            bad_streak += 1
            window["skipped"] += 1
            log.warning("step %d: non-finite %s; optimizer step skipped (%d in a row, --max_bad_steps %d)", step,
                        "loss" if bad_loss else "gradient norm", bad_streak, args.max_bad_steps)
            if bad_streak >= args.max_bad_steps:
                raise TrainingStopped(
                    f"{bad_streak} consecutive steps (up to step {step}) had a non-finite loss or gradient; "
                    f"stopped without saving. Last good checkpoint: {last_saved or 'none'} (try a lower "
                    f"--learning_rate, --precision fp32, or look for bad examples)")
        else:
            bad_streak = 0

        if step % args.logging_steps == 0 or step == args.num_training_steps:
            elapsed = time.perf_counter() - window["start"]
            norm = float(grad_norm)
            record = {"step": step, "epoch": epoch,
                      "loss": round(window["loss"] / window["micro"], 5) if window["micro"] else None,
                      "lr": scheduler.get_last_lr()[0], "grad_norm": round(norm, 4) if math.isfinite(norm) else None,
                      "tokens_per_s": round(window["tokens"] / elapsed, 1),
                      "target_tokens_per_s": round(window["target_tokens"] / elapsed, 1),
                      "padding": round(1 - window["tokens"] / max(1, window["padded_tokens"]), 4),
                      "seconds": round(elapsed, 3)}  # wall time of the window (a dev evaluation in it included)
            if window["skipped"]:
                record["skipped_steps"] = window["skipped"]
            if world.is_main:
                append_record(log_path, record)
            progress.set_postfix(loss=record["loss"], lr=f"{record['lr']:.2e}")
            log.info("step %d: loss %s, lr %.3e, %.0f tokens/s (%.0f target tokens/s)", step,
                     "n/a" if record["loss"] is None else f"{record['loss']:.4f}", record["lr"],
                     record["tokens_per_s"], record["target_tokens_per_s"])
            window = new_window()

        save_due = step % args.save_steps == 0 or step == args.num_training_steps
        eval_due = evaluator is not None and (step % args.eval_steps == 0 or step == args.num_training_steps)
        if save_due or eval_due:
            poisoned = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
            if poisoned:  # never write a checkpoint (or best/) that resume would pick over the last good one
                raise TrainingStopped(f"step {step}: parameter {poisoned[0]} is not finite; not saved. Last good "
                                      f"checkpoint: {last_saved or 'none'}")
        if eval_due:  # before the save: a run killed in between evaluates this step again when it resumes
            if world.is_main:  # rank 0 decodes the dev sample alone; the others wait at the barrier
                evaluator(step)
            world.barrier()
        if save_due:
            last_saved = os.path.join(args.output_dir, f"ckpt-{step}")
            rng = {"per_rank": {r: s for states in world.gather_objects(rng_state()["per_rank"])
                                for r, s in states.items()}}  # every rank's RNG state, written by rank 0
            world.barrier()
            if world.is_main:
                save_training_checkpoint(last_saved, model, args, hf_config, tokenizer, settings, {
                    "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng, "bad_streak": bad_streak, "run": identity})
                log.info("saved %s", last_saved)
                prune_checkpoints(args.output_dir, args.save_total_limit, keep=last_saved)
            world.barrier()
    progress.close()
    if world.is_main:
        write_curves(args.output_dir)
    return last_saved


def main(argv=None) -> int:
    return run_cli(build_parser(), train, argv)
