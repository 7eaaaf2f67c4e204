"""What the loop trains on, per ``--objective``: the examples, how a micro-batch of them becomes packer Pairs, and
their packed lengths (for token-budget batching).

* seq2seq: (source, target) pairs read from JSONL; the pairs themselves, nothing drawn.
* mass: monolingual sentences (chunks of at most max_source_seq_length - 2 pieces) that become MASS pairs with the
  micro-batch's generator, just before packing (mass_objective/).

Tokenised examples are cached in --cache_dir (s2s_ft/cache.py).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Callable, NamedTuple

import torch

from mass_objective import MassConfig, fragment_length, mass_pairs, read_sentences

from .cache import cache_key, cached_columns
from .data import DataError, read_pairs
from .packing import Pair, SpecialIds, packed_length

OBJECTIVES = ("seq2seq", "mass")


class TrainingData(NamedTuple):
    examples: list  # what micro-batches draw from: Pairs (seq2seq) or token-id sentences (mass)
    to_pairs: Callable[[list, torch.Generator], list[Pair]]  # one micro-batch of examples -> packer Pairs
    lengths: list[int]  # lengths[i]: example i's packed length


def mass_config(args) -> MassConfig:
    return MassConfig(args.mass_ratio, tuple(args.mass_mask_keep_rand), args.mass_span_position,
                      args.mass_full_target)


def checkpoint_settings(args, special: SpecialIds) -> dict:
    """What s2s_ft_settings.json records in every checkpoint (what decoding and a later fine-tuning need)."""
    settings = {
        "model_type": args.model_type, "objective": args.objective, "fine_tune": args.fine_tune,
        "max_source_seq_length": args.max_source_seq_length, "max_target_seq_length": args.max_target_seq_length,
        "special_ids": asdict(special), "target_mask_prob": args.target_mask_prob,
        "label_smoothing": args.label_smoothing,
    }
    if args.objective == "mass":
        settings["mass"] = {"ratio": args.mass_ratio, "mask_keep_rand": list(args.mass_mask_keep_rand),
                            "span_position": args.mass_span_position, "full_target": args.mass_full_target}
    return settings


def training_examples(args, tokenizer, special: SpecialIds) -> TrainingData:
    """The examples of ``--train_file`` for ``--objective`` (see the module docstring)."""
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
        return TrainingData(pairs, lambda examples, generator: examples, lengths)
    (sentences,) = cached_columns(cache_dir, key, 1, lambda: [read_sentences(
        args.train_file, tokenizer, args.max_source_seq_length - 2, skip_bad_lines=args.skip_bad_lines)[0]])
    config = mass_config(args)
    # a MASS pair: the sentence (same length) as the source, a fragment of fragment_length tokens (or the whole
    # sentence with --mass_full_target) as the target, no closing [SEP]
    lengths = [packed_length(Pair([0] * len(s), [0] * (len(s) if config.full_target else
                                                       fragment_length(len(s), config.ratio)), close_target=False),
                             args.fine_tune) for s in sentences]
    return TrainingData(sentences, lambda examples, generator: mass_pairs(examples, special, config, generator),
                        lengths)
