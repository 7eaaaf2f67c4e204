"""The fine-tuning methods: one object per method, holding everything that differs between them.

Every token carries two integers, a key rank (from when it is visible) and a query rank (how far it sees), read with
``model.attention_allowed``'s rule: query q may attend key k iff ``key_rank[k] <= query_rank[q]`` or k is q. The
token roles and their ranks:

* source token: 0 / 0 (bidirectional among the source, blind to the target);
* real target token i (0-based): i+1 / i+1 (sees the source and real targets <= i);
* pseudo / prediction [MASK] for target i: never visible / i (sees the source, real targets < i and itself);
* padding: never visible / -1 (sees only itself, so its softmax row stays finite; nobody sees it).

A method answers three questions, and the packer, the decoder and the batcher ask it instead of switching on a name:

* ``pack_target``: how a pair's target is laid out for training (inputs, positions, ranks, labels);
* ``step_feed``: which tokens a decoding step feeds (and how many of them stay in the key/value cache);
* ``target_columns``: how many packed columns a target of m tokens takes (token-budget batching).

A new method is a new subclass registered in ``METHODS_BY_NAME``; nothing else changes.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from s2s_ft.model.transformer import NEVER_VISIBLE

IGNORE_INDEX = -100  # the label of a column that predicts nothing

# Rank pairs (key_rank, query_rank) of the token roles.
SOURCE_RANKS = (0, 0)
PADDING_RANKS = (NEVER_VISIBLE, -1)


def real_target_ranks(step: int) -> tuple[int, int]:
    """Target token ``step`` (0-based): visible from step+1 on, sees real targets up to itself."""
    return step + 1, step + 1


def pseudo_ranks(step: int) -> tuple[int, int]:
    """Pseudo / prediction [MASK] for target ``step``: visible to nobody, sees real targets before it."""
    return NEVER_VISIBLE, step


# What a decoding step feeds, per column: which token ("previous": the last generated one, "start": the decoder
# start token, "mask": [MASK]), the target index it stands at (position n_src + index) and its ranks.
FeedColumn = tuple  # (kind, target_index, (key_rank, query_rank))


class PackingContext(Protocol):
    """What a method asks of the packer that calls it (s2s_ft/data/packing.py's ``Packer``): the special ids, the
    masked ratio / word-drop probability, and its corruption of one token."""

    special: "SpecialIds"  # noqa: F821  (packing's SpecialIds; a name only, so that this module imports no packer)
    target_mask_prob: float

    def corrupt(self, token: int, generator: torch.Generator) -> int: ...

    def chance(self, probability: float, generator: torch.Generator) -> bool: ...


class Row:
    """Column-wise builder of one packed example."""

    def __init__(self):
        self.ids, self.positions, self.types, self.key_rank, self.query_rank, self.labels = ([] for _ in range(6))

    def add(self, token, position, segment, ranks, label=IGNORE_INDEX):
        self.ids.append(token)
        self.positions.append(position)
        self.types.append(segment)
        self.key_rank.append(ranks[0])
        self.query_rank.append(ranks[1])
        self.labels.append(label)

    def columns(self):
        return self.ids, self.positions, self.types, self.key_rank, self.query_rank, self.labels


class FineTuningMethod:
    """Base class; see the module docstring for what a method decides."""

    name = ""

    def pack_target(self, row: Row, target: Sequence[int], positions: Sequence[int], labels: Sequence[int],
                    packer: PackingContext, generator: torch.Generator) -> None:
        """Append the target part of one packed example to ``row``. ``target``: the packed target tokens (closing
        [SEP] included when there is one), ``positions`` their positions, ``labels`` what each predicts
        (IGNORE_INDEX for fillers that are fed but not predicted)."""
        raise NotImplementedError

    def step_feed(self, step: int) -> tuple[list[FeedColumn], int]:
        """(columns fed at decoding step ``step``, how many of them stay in the cache); the last column predicts."""
        raise NotImplementedError

    def target_columns(self, num_target_tokens: int) -> int:
        """Packed columns of a target of ``num_target_tokens`` tokens."""
        return num_target_tokens

    def __repr__(self) -> str:
        return f"<fine-tuning method {self.name}>"


class Causal(FineTuningMethod):
    """The target input is shifted right behind a start token: position n_src + i holds target i-1 and predicts
    target i. Real-target ranks give the causal mask."""

    name = "causal"

    def pack_target(self, row, target, positions, labels, packer, generator) -> None:
        inputs = [packer.special.start, *target[:-1]]
        for i, token in enumerate(inputs):
            row.add(token, positions[i], packer.special.target_type, real_target_ranks(i), labels[i])

    def step_feed(self, step: int) -> tuple[list[FeedColumn], int]:
        return [("previous" if step else "start", step, real_target_ranks(step))], 1


class _PredictsAtMask(FineTuningMethod):
    """Decoding for methods that predict at a [MASK]: the previous token as a real target token (kept in the cache)
    plus a [MASK] at the next position with pseudo ranks (used to predict, never kept)."""

    def step_feed(self, step: int) -> tuple[list[FeedColumn], int]:
        columns = [("previous", step - 1, real_target_ranks(step - 1))] if step else []
        return columns + [("mask", step, pseudo_ranks(step))], 1 if step else 0


class Masked(_PredictsAtMask):
    """round(ratio * m) target tokens (at least one; drawn among the predicted ones) are corrupted 80/10/10 and
    predicted in place; the s2s mask is the same rank rule."""

    name = "masked"

    def pack_target(self, row, target, positions, labels, packer, generator) -> None:
        # drawn among the predicted tokens only: a pair whose flags mark fillers (MASS full target) still gets
        # round(ratio * fragment) >= 1 labels (with all tokens predicted, the same draws as without flags)
        candidates = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        count = min(len(candidates), max(1, round(len(candidates) * packer.target_mask_prob)))
        chosen = {candidates[j] for j in torch.randperm(len(candidates), generator=generator)[:count].tolist()}
        segment = packer.special.target_type
        for i, token in enumerate(target):
            if i in chosen:
                row.add(packer.corrupt(token, generator), positions[i], segment, real_target_ranks(i), token)
            else:
                row.add(token, positions[i], segment, real_target_ranks(i))


class PseudoMasked(_PredictsAtMask):
    """A pseudo token per target token, at the same position, corrupted 80/10/10 and predicting that token; each
    real target token is also corrupted with probability ``target_mask_prob`` ("word drop")."""

    name = "pseudo_masked"

    def pack_target(self, row, target, positions, labels, packer, generator) -> None:
        segment = packer.special.target_type
        for i, token in enumerate(target):
            dropped = packer.chance(packer.target_mask_prob, generator)
            row.add(packer.corrupt(token, generator) if dropped else token, positions[i], segment,
                    real_target_ranks(i))
        for i, token in enumerate(target):
            row.add(packer.corrupt(token, generator), positions[i], segment, pseudo_ranks(i), labels[i])

    def target_columns(self, num_target_tokens: int) -> int:
        return 2 * num_target_tokens


METHODS_BY_NAME = {method.name: method for method in (Causal(), Masked(), PseudoMasked())}
METHODS = tuple(METHODS_BY_NAME)  # the names, as --fine_tune and s2s_ft_settings.json spell them


def get_method(method) -> FineTuningMethod:
    """The method object for a name (or the object itself)."""
    if isinstance(method, FineTuningMethod):
        return method
    if method not in METHODS_BY_NAME:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS_BY_NAME[method]
