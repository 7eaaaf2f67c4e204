"""The training command line: ``s2s-ft-train``, ``python -m s2s_ft.cli.train``, ``run_seq2seq.py``.

    s2s-ft-train --model_type bert --model_name_or_path DIR --train_file train.jsonl --output_dir out \
        --fine_tune pseudo_masked

The flag table and the checks that turn the flags into one consistent setting (``resolve_args``: aliases folded,
contradictions refused with one line); the loop itself is s2s_ft/training/loop.py. s2s-ft's flag names are accepted as
aliases (``--mask_way``, ``--per_gpu_train_batch_size``, ``--fp16``, ``--cache_dir``), and so is the name the other
tools use for the same thing (``--max_tgt_length``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

import torch

from s2s_ft.cli.common import (
    add_detokenize_flag,
    add_log_level_flag,
    add_precision_flags,
    run_cli,
)
from s2s_ft.data.answers import ANSWER_ENCODINGS, DEFAULT_ANSWER_ENCODING
from s2s_ft.data.methods import METHODS
from s2s_ft.data.reading import first_row_has_answer
from s2s_ft.decoding.detokenize import DETOKENIZE_HELP
from s2s_ft.distributed import init_world
from s2s_ft.errors import UsageError
from s2s_ft.evaluation.metrics import METRIC_KEYS, METRICS, metric_family
from s2s_ft.model import checkpoint
from s2s_ft.model.checkpoint import CheckpointError
from s2s_ft.model.precision import resolve_precision
from s2s_ft.training import loop as training
from s2s_ft.training.config import DEFAULTS, TrainingConfig
from s2s_ft.training.mass_spans import SPAN_POSITIONS, MassConfig, parse_mask_keep_rand
from s2s_ft.training.objectives import OBJECTIVES

log = logging.getLogger("s2s_ft")

MASK_WAY_ALIASES = {"v0": "causal", "v1": "masked", "v2": "pseudo_masked"}  # s2s-ft's --mask_way names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune a bidirectional Transformer as a seq2seq model (s2s-ft style).")
    add = p.add_argument
    # model and data
    add("--model_type", required=True, choices=checkpoint.MODEL_TYPES)
    add("--model_name_or_path", default=None, help="local HF checkpoint directory to start from")
    add("--config_name", default=None, help="HF config.json (or its dir): random init when no weights are given")
    add("--fresh_head_init", default=DEFAULTS.fresh_head_init, choices=checkpoint.HEAD_INITS,
        help="how an MLM head the checkpoint lacks starts: random (BERT init) or identity (transform = I, "
             "LayerNorm copied from the last layer: the tied decoder scores words by similarity from step 0)")
    add("--dropout", type=float, default=None,
        help="hidden and attention dropout probability (default: the checkpoint config's); 0 also saves drawing the "
             "dropout masks, a measurable share of a small model's step on a CPU")
    add("--dropout_from_step", type=int, default=DEFAULTS.dropout_from_step,
        help="late dropout (Liu et al. 2023): no dropout before this optimizer step, the configured rate from it on; "
             "the first steps learn faster and cheaper, the later ones are still regularised (default 0: always on)")
    add("--copy_mechanism", action="store_true",
        help="add a copy attention over the source: the next token's distribution becomes a learned mixture of the "
             "vocabulary head's and a copy distribution over the source's word pieces (opt-in; a checkpoint that has "
             "one keeps it, and decoding needs no flag)")
    add("--lora_rank", type=int, default=DEFAULTS.lora_rank,
        help="LoRA through peft: adapters of this rank in every linear layer of the body, pretrained weights "
             "frozen, the head's transform and the copy attention trained in full (default 0: full fine-tuning; "
             "checkpoints hold the merged model plus adapter/ in peft's format)")
    add("--lora_alpha", type=float, default=None, help="LoRA scaling alpha (default: 2 x --lora_rank)")
    add("--lora_dropout", type=float, default=DEFAULTS.lora_dropout, help="dropout on the adapters' input")
    add("--tokenizer_name", default=None, help="tokenizer directory (default: the model directory)")
    add("--train_file", required=True,
        help="seq2seq: JSONL, one {\"src\": ..., \"tgt\": ...} a line; mass: one sentence a line (plain text, "
             "or *.jsonl with a \"text\" field)")
    add("--output_dir", required=True)
    add("--fine_tune", default=None, choices=METHODS, help="fine-tuning method (default pseudo_masked)")
    add("--mask_way", default=None, choices=sorted(MASK_WAY_ALIASES),
        help="s2s-ft alias: v0 causal (position shift), v1 masked, v2 pseudo_masked")
    add("--max_source_seq_length", type=int, default=DEFAULTS.max_source_seq_length, help="source length incl. [CLS] and [SEP]")
    add("--max_target_seq_length", "--max_tgt_length", dest="max_target_seq_length", type=int, default=DEFAULTS.max_target_seq_length,
        help="target length incl. the closing [SEP] (--max_tgt_length: the name decoding uses)")
    add("--answer_encoding", default=None, choices=ANSWER_ENCODINGS,
        help="rows with an \"answer\" (answer-aware generation, e.g. question generation about a given answer): how "
             "the model sees it: segment ([CLS] source [SEP] answer [SEP]), span (the answer's pieces inside the "
             f"source get a token type of their own) or both (default, when the rows have answers: "
             f"{DEFAULT_ANSWER_ENCODING}; docs/training.md)")
    add("--skip_bad_lines", action="store_true", help="skip (and count) malformed training lines")
    add("--features_cache_dir", "--cache_dir", dest="cache_dir", default=None,
        help="where tokenised training examples are cached (default: <output_dir>/cache); --cache_dir is the "
             "s2s-ft name (not HF's model download cache)")
    # objective
    add("--objective", default=DEFAULTS.objective, choices=OBJECTIVES,
        help="seq2seq: fine-tune on (src, tgt) pairs; mass: MASS pre-training on monolingual sentences")
    add("--mass_ratio", type=float, default=DEFAULTS.mass_ratio, help="mass: fragment length k = round(ratio * m), at least 1")
    add("--mass_mask_keep_rand", default=",".join(map(str, DEFAULTS.mass_mask_keep_rand)),
        help="mass: fragment tokens in the source become [MASK] / stay / become random, with these probabilities "
             "(the MASS code's --word_mask_keep_rand order)")
    add("--mass_span_position", default=DEFAULTS.mass_span_position, choices=SPAN_POSITIONS,
        help="mass: fragment start uniform over valid starts, or the MASS code's scheme (20%% pinned at the start, "
             "20%% at the end, else uniform)")
    add("--mass_full_target", action="store_true",
        help="mass: feed all sentence positions to the target part ([MASK] outside the fragment, loss on the "
             "fragment only) like the MASS paper's decoder; slower, for comparison (default: fragment only)")
    # optimisation
    add("--per_device_train_batch_size", "--per_gpu_train_batch_size", dest="per_device_train_batch_size",
        type=int, default=DEFAULTS.per_device_train_batch_size)
    add("--gradient_accumulation_steps", type=int, default=DEFAULTS.gradient_accumulation_steps)
    add("--max_tokens_per_batch", type=int, default=None,
        help="token-budget batching: micro-batches of similar-length examples, rows x longest packed length <= N "
             "(replaces --per_device_train_batch_size)")
    add("--learning_rate", type=float, default=DEFAULTS.learning_rate)
    add("--weight_decay", type=float, default=DEFAULTS.weight_decay, help="not applied to biases and LayerNorm weights")
    add("--adam_epsilon", type=float, default=DEFAULTS.adam_epsilon)
    add("--max_grad_norm", type=float, default=DEFAULTS.max_grad_norm,
        help="clip the gradient norm to this; <= 0: no clipping (as in HF and s2s-ft)")
    add("--num_training_steps", type=int, default=DEFAULTS.num_training_steps, help="optimizer steps (takes priority over epochs)")
    add("--num_training_epochs", type=float, default=DEFAULTS.num_training_epochs)
    add("--num_warmup_steps", type=int, default=DEFAULTS.num_warmup_steps, help="linear warmup, then linear decay to 0")
    add("--max_train_minutes", type=float, default=DEFAULTS.max_train_minutes,
        help="end the run within this many minutes of training (steps, saves, evaluations; not the start-up): the "
             "run measures its speed and moves the linear decay's end there; --num_training_steps (or epochs) "
             "stays the upper bound; 0: off")
    add("--label_smoothing", type=float, default=DEFAULTS.label_smoothing)
    add("--target_mask_prob", type=float, default=DEFAULTS.target_mask_prob,
        help="masked: ratio of target tokens predicted; pseudo_masked: word-drop probability of real targets")
    add("--random_prob", type=float, default=DEFAULTS.random_prob, help="corrupted token -> random token")
    add("--keep_prob", type=float, default=DEFAULTS.keep_prob, help="corrupted token -> kept unchanged")
    # bookkeeping
    add("--save_steps", type=int, default=DEFAULTS.save_steps)
    add("--save_total_limit", type=int, default=None,
        help="keep only the newest N complete ckpt-* dirs (older ones are deleted after each successful save)")
    add("--allow_changed_flags", action="store_true",
        help="on resume, accept new values of the flags that may change within a run (--num_training_steps, "
             "--num_warmup_steps, --max_train_minutes, --save_steps, --save_total_limit, --logging_steps, "
             "--max_bad_steps, --eval_*); "
             "without it a restart with any changed setting is refused (README: What a restart does)")
    add("--max_bad_steps", type=int, default=DEFAULTS.max_bad_steps,
        help="stop after this many consecutive steps with a non-finite loss or gradient (each is skipped)")
    add("--logging_steps", type=int, default=DEFAULTS.logging_steps)
    # evaluation during training
    add("--eval_file", default=None,
        help="JSONL dev file ({\"src\": ..., \"tgt\": ...}, optionally \"refs\": [all references]): decode a "
             "fixed sample of it every --eval_steps, log the scores to eval_log.jsonl, keep the best model in best/")
    add("--eval_steps", type=int, default=None, help="evaluate every N optimizer steps and at the end "
                                                      "(default: --save_steps)")
    add("--eval_max_examples", type=int, default=DEFAULTS.eval_max_examples, help="the first N records of --eval_file (0: all)")
    add("--eval_metric", default=DEFAULTS.eval_metric, choices=METRIC_KEYS,
        help="the score (higher is better) that picks the best checkpoint")
    add("--eval_metrics", default=DEFAULTS.eval_metrics,
        help="metric families computed and logged (of rouge,bleu,meteor; --eval_metric's is always added). "
             "METEOR is slow and needs WordNet")
    add("--eval_beam_size", type=int, default=DEFAULTS.eval_beam_size)
    add("--eval_max_tgt_length", type=int, default=None, help="default: --max_target_seq_length")
    add("--eval_batch_size", type=int, default=DEFAULTS.eval_batch_size, help="sources per decoding batch")
    add_detokenize_flag(add, "--eval_file " + DETOKENIZE_HELP)
    add("--seed", type=int, default=DEFAULTS.seed)
    add_precision_flags(add)
    add("--fp16_opt_level", default=None, help="accepted for s2s-ft compatibility and ignored (no apex)")
    add("--gradient_checkpointing", action="store_true",
        help="recompute each layer's activations in the backward pass: less memory for long sources, ~30%% slower")
    add("--torch_compile", action="store_true",
        help="run the training forward through torch.compile (compiles on the first batches; lengths vary, so "
             "shapes are dynamic); decoding and checkpoints use the uncompiled model")
    add("--no_cuda", action="store_true")
    add_log_level_flag(add)
    return p


def resolve_args(args: argparse.Namespace) -> TrainingConfig:
    """The run's TrainingConfig from the flags: aliases folded, defaults resolved, contradictions refused with one
    clear line. ``args`` itself is left as parsed."""
    args = argparse.Namespace(**vars(args))  # the resolved values go into a copy, then into the config
    _fold_aliases(args)
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    args.device = torch.device("cuda" if use_cuda else "cpu")
    args.precision = resolve_precision(args.precision, device=args.device)
    if args.model_name_or_path is None and args.config_name is None:
        raise UsageError("give --model_name_or_path (weights) or --config_name (random init)")
    if args.model_name_or_path is not None and not os.path.isdir(args.model_name_or_path):
        raise CheckpointError(f"{args.model_name_or_path}: checkpoint directory not found (--model_name_or_path)")
    if not 0 <= args.random_prob + args.keep_prob <= 1:
        raise UsageError("--random_prob + --keep_prob must lie in [0, 1]")
    args.eval_steps = args.save_steps if args.eval_steps is None else args.eval_steps
    args.eval_max_tgt_length = args.max_target_seq_length if args.eval_max_tgt_length is None \
        else args.eval_max_tgt_length
    _check_counts(args)
    if args.lora_rank < 0 or (args.lora_alpha is not None and args.lora_rank == 0):
        raise UsageError(f"--lora_rank must be >= 1 for LoRA (0: full fine-tuning), got {args.lora_rank}"
                         + (" with --lora_alpha" if args.lora_rank == 0 else ""))
    if args.lora_rank and not 0 <= args.lora_dropout < 1:
        raise UsageError(f"--lora_dropout must lie in [0, 1), got {args.lora_dropout}")
    if args.lora_rank and args.lora_alpha is None:
        args.lora_alpha = 2.0 * args.lora_rank
    _check_eval(args)
    _check_optimisation(args)
    if args.objective == "seq2seq" and args.answer_encoding is None and first_row_has_answer(args.train_file):
        args.answer_encoding = DEFAULT_ANSWER_ENCODING
        log.info("%s has answers: --answer_encoding %s", args.train_file, args.answer_encoding)
    if args.answer_encoding and args.objective != "seq2seq":
        raise UsageError("--answer_encoding needs --objective seq2seq (MASS sentences have no answers)")
    if args.objective == "mass":
        try:
            args.mass_mask_keep_rand = tuple(parse_mask_keep_rand(str(args.mass_mask_keep_rand)))
            MassConfig(args.mass_ratio, args.mass_mask_keep_rand, args.mass_span_position, args.mass_full_target)
        except ValueError as error:
            raise UsageError(f"--mass_*: {error}") from None
    else:  # not read without --objective mass
        args.mass_mask_keep_rand = DEFAULTS.mass_mask_keep_rand
    args.tokenizer_name = args.tokenizer_name or args.model_name_or_path or (
        args.config_name if os.path.isdir(args.config_name) else os.path.dirname(args.config_name))
    return TrainingConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainingConfig)})


def _fold_aliases(args: argparse.Namespace) -> None:
    """--mask_way into --fine_tune, --fp16 into --precision (s2s-ft's names)."""
    if args.mask_way and args.fine_tune and MASK_WAY_ALIASES[args.mask_way] != args.fine_tune:
        raise UsageError(f"--mask_way {args.mask_way} means {MASK_WAY_ALIASES[args.mask_way]}, "
                         f"but --fine_tune {args.fine_tune} was given")
    args.fine_tune = args.fine_tune or MASK_WAY_ALIASES.get(args.mask_way or "", DEFAULTS.fine_tune)
    if args.fp16:
        args.precision = resolve_precision(args.precision, fp16=True)
        log.info("--fp16 maps to torch.amp fp16 autocast with a GradScaler (apex is not used)")


def _check_counts(args: argparse.Namespace) -> None:
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps",
                 "max_bad_steps", "eval_steps", "eval_beam_size", "eval_max_tgt_length", "eval_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_tokens_per_batch is not None and args.max_tokens_per_batch < 1:
        raise UsageError(f"--max_tokens_per_batch must be >= 1, got {args.max_tokens_per_batch}")
    if args.eval_max_examples < 0:
        raise UsageError(f"--eval_max_examples must be >= 0 (0: all), got {args.eval_max_examples}")


def _check_eval(args: argparse.Namespace) -> None:
    if args.eval_file is not None and args.objective != "seq2seq":
        raise UsageError("--eval_file scores generated targets; it needs --objective seq2seq")
    families = {m.strip().lower() for m in args.eval_metrics.split(",") if m.strip()}
    if not families <= set(METRICS):
        raise UsageError(f"--eval_metrics {args.eval_metrics}: choose from {','.join(METRICS)}")
    families.add(metric_family(args.eval_metric))
    args.eval_metrics = ",".join(m for m in METRICS if m in families)


def _check_optimisation(args: argparse.Namespace) -> None:
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise UsageError(f"--save_total_limit must be >= 1, got {args.save_total_limit}")
    if args.num_training_steps == 0 or (args.num_training_steps < 0 and args.num_training_epochs <= 0):
        raise UsageError("nothing to train: give --num_training_steps > 0 or --num_training_epochs > 0")
    for name in ("learning_rate", "adam_epsilon", "weight_decay", "num_warmup_steps", "dropout_from_step",
                 "max_train_minutes"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.label_smoothing < 1 or not 0 <= args.target_mask_prob <= 1:
        raise UsageError("--label_smoothing must lie in [0, 1) and --target_mask_prob in [0, 1]")
    if args.max_source_seq_length < 3 or args.max_target_seq_length < 2:
        raise UsageError("--max_source_seq_length must be >= 3 and --max_target_seq_length >= 2")


def train(args: argparse.Namespace) -> str:
    """Resolve the flags and run (or resume) fine-tuning; returns the last checkpoint directory. Under torchrun
    (WORLD_SIZE > 1) every rank runs this; see s2s_ft/distributed.py for how the work is shared."""
    config = resolve_args(args)
    world = init_world(config.device.type == "cuda")
    try:
        return training.train(config, world)
    finally:
        world.close()


def main(argv=None) -> int:
    return run_cli(build_parser(), train, argv)


if __name__ == "__main__":
    sys.exit(main())
