"""One training run's settings, typed and resolved: what the training library takes instead of command-line flags.

``s2s_ft/cli/train.py`` builds it from the flags once (aliases folded, defaults filled in, contradictions refused,
derived values such as the tokenizer directory and the device computed); the flags' defaults are this class's
defaults, so the two cannot drift. From Python, build one directly::

    TrainingConfig(model_type="bert", model_name_or_path=DIR, tokenizer_name=DIR, train_file="train.jsonl",
                   output_dir="out", fine_tune="pseudo_masked", num_training_steps=1000)

(the command line's checks are ``s2s_ft.cli.train.resolve_args``). Values that follow from the data, such as the
number of steps a given number of epochs makes, are not written back here: the loop derives them into a new config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class TrainingConfig:
    # the model
    model_type: str = "bert"
    model_name_or_path: Optional[str] = None  # a local HF checkpoint directory
    config_name: Optional[str] = None  # an HF config.json (or its dir): random init when no weights are given
    tokenizer_name: Optional[str] = None  # resolved by the CLI to the model directory when not given
    fresh_head_init: str = "random"
    dropout: Optional[float] = None  # None: the checkpoint config's
    dropout_from_step: int = 0
    copy_mechanism: bool = False
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: Optional[float] = None  # None: 2 x rank
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    # the data and what is trained on it
    train_file: Optional[str] = None
    skip_bad_lines: bool = False
    cache_dir: Optional[str] = None  # tokenised examples (None: <output_dir>/cache)
    objective: str = "seq2seq"
    fine_tune: str = "pseudo_masked"
    max_source_seq_length: int = 464
    max_target_seq_length: int = 48
    answer_encoding: Optional[str] = None  # rows with an "answer": how the model sees it (s2s_ft/data/answers.py)
    mass_ratio: float = 0.5
    mass_mask_keep_rand: tuple = (0.8, 0.1, 0.1)
    mass_span_position: str = "uniform"
    mass_full_target: bool = False
    target_mask_prob: float = 0.5
    random_prob: float = 0.1
    keep_prob: float = 0.1
    # batches and optimisation
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_tokens_per_batch: Optional[int] = None
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_training_steps: int = -1  # <= 0: from num_training_epochs, once the data is read
    num_training_epochs: float = 10
    num_warmup_steps: int = 0
    max_train_minutes: float = 0.0  # > 0: the schedule ends within this much training time (time_budget.py)
    label_smoothing: float = 0.1
    max_bad_steps: int = 10
    seed: int = 42
    precision: str = "fp32"
    device: torch.device = torch.device("cpu")
    # the run directory
    output_dir: Optional[str] = None
    save_steps: int = 1500
    save_total_limit: Optional[int] = None
    logging_steps: int = 50
    allow_changed_flags: bool = False
    # evaluation during training
    eval_file: Optional[str] = None
    eval_steps: Optional[int] = None  # None: save_steps
    eval_max_examples: int = 200
    eval_metric: str = "rougeL"
    eval_metrics: str = "rouge,bleu"
    eval_beam_size: int = 1
    eval_max_tgt_length: Optional[int] = None  # None: max_target_seq_length
    eval_batch_size: int = 32
    detokenize: str = "text"

    def replace(self, **changes) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)

    def values(self) -> dict:
        """Field -> value as JSON records it in a run directory (the device as its name, tuples as lists)."""
        return {f.name: _recorded(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _recorded(value):
    return str(value) if isinstance(value, torch.device) else list(value) if isinstance(value, tuple) else value


DEFAULTS = TrainingConfig()
