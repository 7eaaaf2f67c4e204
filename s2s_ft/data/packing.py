"""The packing layer: tokenised (source, target) pairs -> the tensors the model reads.

It turns pairs into ids, positions, segments, attention ranks (see ``model.attention_allowed``) and labels. Layout,
as in s2s-ft so checkpoints are interchangeable::

    [CLS] source [SEP] | target ... [SEP] | (pseudo masks, pseudo_masked only) | padding

Source positions are 0..n_src-1; target token i sits at position n_src + i counted from the *real* source length
(or at an explicit position, which MASS uses to keep a fragment's original sentence positions). The target is closed
by a [SEP] that is predicted like any target token, unless the pair says ``close_target=False`` (MASS predicts only
the masked fragment, so there is nothing to close). Each example is contiguous and padding only trails it, so
batches are padded to their longest example.

How the target part is laid out is the fine-tuning method's business (``s2s_ft/data/methods.py``: causal, masked,
pseudo_masked, with the role ranks); this module lays out the source, checks the pair and pads the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from s2s_ft.data.methods import (  # noqa: F401
    IGNORE_INDEX,
    METHODS,
    PADDING_RANKS,
    SOURCE_RANKS,
    FineTuningMethod,
    Row,
    get_method,
    pseudo_ranks,
    real_target_ranks,
)


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the layout needs; the family decides them ([CLS]/[SEP] or <s>/</s>)."""
    cls: int
    sep: int
    mask: int
    pad: int
    vocab_size: int
    source_type: int = 0
    target_type: int = 1
    decoder_start: Optional[int] = None  # causal start token; defaults to ``sep``
    # The token type of an answer's word pieces inside the source (s2s_ft/data/answers.py, the ``span`` encodings);
    # None: the checkpoint has no such type.
    answer_type: Optional[int] = None

    @property
    def start(self) -> int:
        return self.sep if self.decoder_start is None else self.decoder_start


class SourceIds(list):
    """Source word-piece ids (no specials) that may mark an answer inside them: ``answer_span`` is its [start, end)
    among the ids, packed with ``SpecialIds.answer_type`` (s2s_ft/data/answers.py builds these). A list, so that
    every path that sorts, budgets or batches sources by their ids takes it unchanged."""

    def __init__(self, ids=(), answer_span: Optional[tuple[int, int]] = None):
        super().__init__(ids)
        self.answer_span = None if answer_span is None else (int(answer_span[0]), int(answer_span[1]))


def source_segments(source: Sequence[int], special: SpecialIds) -> list[int]:
    """Token types of ``[CLS] source [SEP]``: the source type, and the answer type over a marked answer span."""
    types = [special.source_type] * (len(source) + 2)
    span = getattr(source, "answer_span", None)
    if span is not None:
        if special.answer_type is None:
            raise ValueError("a source marks an answer span, but the checkpoint has no answer token type")
        types[span[0] + 1:span[1] + 1] = [special.answer_type] * (span[1] - span[0])
    return types


@dataclass
class Pair:
    """One tokenised example: word-piece ids without special tokens (the source a ``SourceIds`` where it marks an
    answer)."""
    source: list[int]
    target: list[int]
    # MASS keeps each fragment token at its original sentence position; None means n_src + i. One entry per packed
    # target token: len(target) + 1 when the closing [SEP] is appended, len(target) otherwise.
    target_positions: Optional[list[int]] = None
    # Append (and predict) the closing [SEP]. MASS pre-training turns it off: only the fragment is predicted.
    close_target: bool = True
    # Which packed target tokens are predicted (one flag per packed target token); None means all. A False token is
    # still fed (and attended to) but carries no label: MASS's full-length decoder feeds [MASK] outside the fragment.
    predicted: Optional[list[bool]] = None

    @property
    def num_target_tokens(self) -> int:
        """Target tokens the packer lays out (and predicts), the closing [SEP] included when there is one."""
        return len(self.target) + int(self.close_target)

    @property
    def num_predicted_targets(self) -> int:
        """Target tokens that are predicted: all of them unless ``predicted`` marks fillers (MASS full target)."""
        return self.num_target_tokens if self.predicted is None else sum(self.predicted)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    token_type_ids: torch.Tensor
    key_rank: torch.Tensor
    query_rank: torch.Tensor
    labels: torch.Tensor
    # Source columns the copy mechanism may point at (word pieces: not [CLS]/[SEP]/[MASK]/padding); the packer sets
    # it, ``copyable_columns`` says how.
    copyable: Optional[torch.Tensor] = None
    num_real_tokens: int = 0  # non-padding tokens, for throughput and padding statistics
    extras: dict = field(default_factory=dict)

    TENSORS = ("input_ids", "position_ids", "token_type_ids", "key_rank", "query_rank", "labels", "copyable")

    def model_inputs(self) -> dict:
        return dict(input_ids=self.input_ids, position_ids=self.position_ids, token_type_ids=self.token_type_ids,
                    key_rank=self.key_rank, query_rank=self.query_rank)

    def _map(self, fn) -> "PackedBatch":
        tensors = {name: None if getattr(self, name) is None else fn(getattr(self, name)) for name in self.TENSORS}
        return PackedBatch(**tensors, num_real_tokens=self.num_real_tokens, extras=self.extras)

    def to(self, device) -> "PackedBatch":
        return self._map(lambda tensor: tensor.to(device))

    def select_rows(self, index: torch.Tensor) -> "PackedBatch":
        """The rows ``index`` (num_real_tokens and extras stay those of the whole batch)."""
        return self._map(lambda tensor: tensor.index_select(0, index))

    @property
    def num_predicted(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def copyable_columns(input_ids: torch.Tensor, key_rank: torch.Tensor, special: SpecialIds) -> torch.Tensor:
    """Boolean [B, L]: source columns (source ranks) holding a word piece the copy mechanism may copy; the layout
    tokens and MASS's [MASK]s in the source are not."""
    layout = torch.tensor(sorted({special.cls, special.sep, special.mask, special.pad}), dtype=input_ids.dtype,
                          device=input_ids.device)
    return (key_rank == SOURCE_RANKS[0]) & ~torch.isin(input_ids, layout)


def corrupt_token(token: int, p_mask: float, p_random: float, special: SpecialIds,
                  generator: torch.Generator) -> int:
    """BERT-style corruption: [MASK] with ``p_mask``, a uniformly random vocabulary id (specials included, as in
    s2s-ft) with ``p_random``, else the token itself. Shared by the fine-tuning methods and MASS."""
    draw = float(torch.rand((), generator=generator))
    if draw < p_mask:
        return special.mask
    if draw < p_mask + p_random:
        return int(torch.randint(special.vocab_size, (), generator=generator))
    return token


class Packer:
    """Packs batches for one fine-tuning method (a name of ``METHODS`` or a ``FineTuningMethod``).

    ``target_mask_prob`` is the masked ratio for ``masked`` and the word-drop probability for ``pseudo_masked``.
    ``corruption`` is the (mask, random, keep) split applied to corrupted tokens.
    """

    def __init__(self, method, special: SpecialIds, target_mask_prob: float = 0.2,
                 corruption: Sequence[float] = (0.8, 0.1, 0.1), corrupt: bool = True):
        self.method: FineTuningMethod = get_method(method)
        if abs(sum(corruption) - 1.0) > 1e-6 or min(corruption) < 0:
            raise ValueError(f"corruption split {tuple(corruption)} must be three non-negative numbers summing to 1")
        self.special, self.target_mask_prob = special, target_mask_prob
        self.corruption = tuple(corruption)
        self.corrupt_enabled = corrupt  # off: tests compare training-time logits with decoding-time logits

    # -- corruption (the methods call these) ---------------------------------------------------------------------
    def corrupt(self, token: int, generator: torch.Generator) -> int:
        if not self.corrupt_enabled:
            return self.special.mask
        p_mask, p_random, _ = self.corruption
        return corrupt_token(token, p_mask, p_random, self.special, generator)

    def chance(self, probability: float, generator: torch.Generator) -> bool:
        return self.corrupt_enabled and float(torch.rand((), generator=generator)) < probability

    # -- one example ---------------------------------------------------------------------------------------------
    def pack_example(self, pair: Pair, generator: torch.Generator) -> Row:
        sp = self.special
        row = Row()
        source = [sp.cls, *pair.source, sp.sep]
        for position, (token, segment) in enumerate(zip(source, source_segments(pair.source, sp))):
            row.add(token, position, segment, SOURCE_RANKS)
        target = [*pair.target, sp.sep] if pair.close_target else list(pair.target)
        if not target:
            raise ValueError("empty target with close_target=False: nothing to predict")
        positions = pair.target_positions or [len(source) + i for i in range(len(target))]
        if len(positions) != len(target):
            raise ValueError(f"{len(positions)} target positions for {len(target)} target tokens")
        predicted = pair.predicted if pair.predicted is not None else [True] * len(target)
        if len(predicted) != len(target):
            raise ValueError(f"{len(predicted)} predicted flags for {len(target)} target tokens")
        if not any(predicted):
            raise ValueError("no target token is predicted: nothing to learn from this pair")
        labels = [token if flag else IGNORE_INDEX for token, flag in zip(target, predicted)]
        self.method.pack_target(row, target, positions, labels, self, generator)
        return row

    # -- a batch -------------------------------------------------------------------------------------------------
    def __call__(self, pairs: Sequence[Pair], generator: Optional[torch.Generator] = None) -> PackedBatch:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        rows = [self.pack_example(pair, generator) for pair in pairs]
        return collate(rows, self.special)


def packed_length(pair: Pair, method) -> int:
    """Columns the packer lays out for ``pair``: ``[CLS] src [SEP]`` + the method's target columns. Must agree with
    ``Packer.pack_example`` (tested)."""
    return len(pair.source) + 2 + get_method(method).target_columns(pair.num_target_tokens)


def collate(rows: Sequence[Row], special: SpecialIds) -> PackedBatch:
    """Right-pad rows to the longest one; padding sees only itself and is seen by nobody. The batch's ``copyable``
    columns are set here, for training and decoding alike."""
    width = max(len(row.ids) for row in rows)
    fills = (special.pad, 0, 0, PADDING_RANKS[0], PADDING_RANKS[1], IGNORE_INDEX)
    tensors = []
    for column, fill in enumerate(fills):
        values = [row.columns()[column] + [fill] * (width - len(row.ids)) for row in rows]
        tensors.append(torch.tensor(values, dtype=torch.long))
    batch = PackedBatch(*tensors, num_real_tokens=sum(len(row.ids) for row in rows))
    batch.copyable = copyable_columns(batch.input_ids, batch.key_rank, special)
    return batch


def decoding_prefix(sources: Sequence[Sequence[int]], special: SpecialIds) -> PackedBatch:
    """The source part alone, right-padded: what a decoder encodes once before generating.

    Used by the decoder and by tests that compare training-time and decoding-time views of the same sequence.
    """
    rows = []
    for source in sources:
        row = Row()
        tokens = [special.cls, *source, special.sep]
        for position, (token, segment) in enumerate(zip(tokens, source_segments(source, special))):
            row.add(token, position, segment, SOURCE_RANKS)
        rows.append(row)
    return collate(rows, special)
