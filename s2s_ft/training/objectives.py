"""What the loop trains on, per ``--objective``: the examples, how a micro-batch of them becomes packer Pairs, and
their packed lengths (for token-budget batching).

* seq2seq: (source, target) pairs read from JSONL; the pairs themselves, nothing drawn.
* mass: monolingual sentences (chunks of at most max_source_seq_length - 2 pieces) that become MASS pairs with the
  micro-batch's generator, just before packing (mass_objective/).

Tokenised examples are cached in --cache_dir (s2s_ft/data/cache.py).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Callable, NamedTuple

import torch

from s2s_ft.data.cache import cache_key, cached_columns
from s2s_ft.data.packing import Pair, SourceIds, SpecialIds, packed_length
from s2s_ft.data.reading import DataError, read_pairs
from s2s_ft.training.config import TrainingConfig
from s2s_ft.training.mass_sentences import read_sentences
from s2s_ft.training.mass_spans import MassConfig, fragment_length, mass_pairs

OBJECTIVES = ("seq2seq", "mass")


class TrainingData(NamedTuple):
    examples: list  # what micro-batches draw from: Pairs (seq2seq) or token-id sentences (mass)
    to_pairs: Callable[[list, torch.Generator], list[Pair]]  # one micro-batch of examples -> packer Pairs
    lengths: list[int]  # lengths[i]: example i's packed length


def mass_config(config: TrainingConfig) -> MassConfig:
    return MassConfig(config.mass_ratio, tuple(config.mass_mask_keep_rand), config.mass_span_position,
                      config.mass_full_target)


def checkpoint_settings(config: TrainingConfig, special: SpecialIds) -> dict:
    """What s2s_ft_settings.json records in every checkpoint (what decoding and a later fine-tuning need)."""
    settings = {
        "model_type": config.model_type, "objective": config.objective, "fine_tune": config.fine_tune,
        "max_source_seq_length": config.max_source_seq_length, "max_target_seq_length": config.max_target_seq_length,
        "special_ids": asdict(special), "target_mask_prob": config.target_mask_prob,
        "label_smoothing": config.label_smoothing, "answer_encoding": config.answer_encoding,
    }
    if config.objective == "mass":
        settings["mass"] = {"ratio": config.mass_ratio, "mask_keep_rand": list(config.mass_mask_keep_rand),
                            "span_position": config.mass_span_position, "full_target": config.mass_full_target}
    return settings


def training_examples(config: TrainingConfig, tokenizer, special: SpecialIds) -> TrainingData:
    """The examples of ``--train_file`` for ``--objective`` (see the module docstring)."""
    if not os.path.isfile(config.train_file):
        raise DataError(f"{config.train_file}: file not found")
    key = cache_key(config.train_file, config.tokenizer_name, objective=config.objective,
                    max_source_seq_length=config.max_source_seq_length,
                    max_target_seq_length=config.max_target_seq_length, skip_bad_lines=config.skip_bad_lines,
                    **({"answer_encoding": config.answer_encoding} if config.answer_encoding else {}))
    cache_dir = config.cache_dir or os.path.join(config.output_dir, "cache")
    if config.objective == "seq2seq":
        def build():
            pairs, _ = read_pairs(config.train_file, tokenizer, config.max_source_seq_length,
                                  config.max_target_seq_length, config.skip_bad_lines, config.answer_encoding)
            # the answer's span among the source ids, where one is marked: [start, end] or []
            return [[pair.source for pair in pairs], [pair.target for pair in pairs],
                    [list(getattr(pair.source, "answer_span", None) or ()) for pair in pairs]]

        sources, targets, spans = cached_columns(cache_dir, key, 3, build)
        pairs = [Pair(SourceIds(source, span or None), target) for source, target, span in zip(sources, targets, spans)]
        lengths = [packed_length(pair, config.fine_tune) for pair in pairs]
        return TrainingData(pairs, lambda examples, generator: examples, lengths)
    (sentences,) = cached_columns(cache_dir, key, 1, lambda: [read_sentences(
        config.train_file, tokenizer, config.max_source_seq_length - 2, skip_bad_lines=config.skip_bad_lines)[0]])
    mass = mass_config(config)
    # a MASS pair: the sentence (same length) as the source, a fragment of fragment_length tokens (or the whole
    # sentence with --mass_full_target) as the target, no closing [SEP]
    lengths = [packed_length(Pair([0] * len(s), [0] * (len(s) if mass.full_target else
                                                       fragment_length(len(s), mass.ratio)), close_target=False),
                             config.fine_tune) for s in sentences]
    return TrainingData(sentences, lambda examples, generator: mass_pairs(examples, special, mass, generator),
                        lengths)
