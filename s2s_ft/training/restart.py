"""What a restart compares (README "What a restart does"): every checkpoint records the values of the flags that
define its run ("run" in training_state.pt); a restart with other values is refused, naming each difference.

RUN_FLAGS define the updates themselves: a run resumes only with the values it was started with. RESTART_FLAGS
decide how long the run goes on and what is saved, logged and evaluated, not the updates made so far: they may change
on resume with --allow_changed_flags (--num_training_steps and --num_warmup_steps re-shape the learning-rate schedule
from the resumed step on). Other flags (paths whose content is compared instead, --cache_dir,
--gradient_checkpointing, --torch_compile, --no_cuda, --log_level) may always change.
"""
from __future__ import annotations

import logging
import os

from s2s_ft.data.cache import tokenizer_fingerprint
from s2s_ft.errors import UsageError
from s2s_ft.fileio import sha256_file
from s2s_ft.training.config import TrainingConfig

log = logging.getLogger("s2s_ft")

RUN_FLAGS = ("model_type", "model_name_or_path", "config_name", "fresh_head_init", "dropout", "dropout_from_step",
             "copy_mechanism", "lora_rank", "lora_alpha", "lora_dropout",
             "tokenizer_name", "train_file",
             "skip_bad_lines", "objective", "fine_tune", "max_source_seq_length", "max_target_seq_length",
             "answer_encoding",
             "mass_ratio", "mass_mask_keep_rand", "mass_span_position", "mass_full_target",
             "per_device_train_batch_size", "world_size", "gradient_accumulation_steps", "max_tokens_per_batch",
             "learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm", "label_smoothing", "target_mask_prob",
             "random_prob", "keep_prob", "seed", "precision")
RESTART_FLAGS = ("num_training_steps", "num_warmup_steps", "max_train_minutes", "save_steps", "save_total_limit",
                 "logging_steps", "max_bad_steps", "eval_file", "eval_steps", "eval_max_examples", "eval_metric",
                 "eval_metrics", "eval_beam_size", "eval_max_tgt_length", "eval_batch_size", "detokenize")
CONTENT_FLAGS = {"train_file": "content", "tokenizer_name": "files"}  # recorded as a hash of what they name


def run_identity(config: TrainingConfig, world_size: int) -> dict:
    """This run's RUN_FLAGS and RESTART_FLAGS values as a checkpoint records them: the training file and tokenizer
    as hashes of their content (their paths may change), other paths absolute, --mass_* only with --objective mass,
    the other --eval_* only with --eval_file, --num_training_steps as resolved (from --num_training_epochs if it was
    not given)."""
    values = {**config.values(), "world_size": world_size}
    identity = {}
    for name in RUN_FLAGS + RESTART_FLAGS:
        if (name.startswith("mass_") and config.objective != "mass") or (
                name.startswith("eval_") and name != "eval_file" and config.eval_file is None):
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
