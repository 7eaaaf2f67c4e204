"""Which examples form micro-batch c.

Fixed-size batches (``micro_batch``): the examples of epoch e in the order of a permutation seeded by (seed, e), cut
into batches of the global batch size (the last one of an epoch may be smaller).

Token-budget batches (``--max_tokens_per_batch``, ``TokenBudgetSampler``): micro-batches of examples of similar
packed length. Epoch e: a permutation seeded by (seed, e) is cut into chunks of ``chunk_size`` examples; each chunk
is sorted by packed length (stable, so ties keep the random order) and cut greedily into batches whose padded size,
rows x longest packed length, stays within the budget; then the batches of the whole epoch are shuffled with the
same generator. Everything is a pure function of (seed, epoch), so micro-batch counter c maps to (epoch, index) by
counting the batches of the epochs before it, and a resumed run sees exactly the batches it would have seen.
An example longer than the budget on its own forms a batch of one (the caller warns about it).
"""
from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch

from s2s_ft.data.packing import packed_length  # noqa: F401  (the length batches are measured in; re-exported)

DEFAULT_CHUNK = 4096  # examples sorted together: large enough to group lengths, small enough to stay random


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """The generator that orders epoch ``epoch``: seeded by (seed, epoch) alone, so resume needs no state."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + salt)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(num_examples, generator=epoch_generator(seed, epoch)).tolist()


def micro_batch(examples: Sequence, counter: int, batch_size: int, seed: int) -> tuple[list, int]:
    """(examples of fixed-size micro-batch ``counter``, its epoch)."""
    per_epoch = math.ceil(len(examples) / batch_size)
    epoch, index = divmod(counter, per_epoch)
    order = epoch_permutation(len(examples), seed, epoch)
    return [examples[i] for i in order[index * batch_size:(index + 1) * batch_size]], epoch


def padding_ratio(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Padding tokens / all tokens when each batch is padded to its longest example."""
    total = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1.0 - real / total if total else 0.0


def random_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The index batches of ``micro_batch`` for one epoch, for comparisons."""
    order = epoch_permutation(num_examples, seed, epoch)
    return [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]


def epoch_batches(lengths: Sequence[int], max_tokens: int, seed: int, epoch: int,
                  chunk_size: int = DEFAULT_CHUNK) -> list[list[int]]:
    """Index batches of epoch ``epoch``: every example exactly once, each batch's rows x longest <= max_tokens (or a
    single over-long example)."""
    generator = epoch_generator(seed, epoch, salt=7_919)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk_size):
        chunk = sorted(order[start:start + chunk_size], key=lambda i: lengths[i])
        batch: list[int] = []
        longest = 0
        for i in chunk:
            width = max(longest, lengths[i])
            if batch and (len(batch) + 1) * width > max_tokens:
                batches.append(batch)
                batch, width = [], lengths[i]
            batch.append(i)
            longest = width
        if batch:
            batches.append(batch)
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[j] for j in shuffled]


class TokenBudgetSampler:
    """Micro-batch counter -> (example indices, epoch), epochs computed on demand and cached."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int, chunk_size: int = DEFAULT_CHUNK):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.lengths, self.max_tokens, self.seed, self.chunk_size = list(lengths), max_tokens, seed, chunk_size
        self._epochs: dict[int, list[list[int]]] = {}
        self._starts = [0]  # _starts[e]: counter of epoch e's first batch (known for e <= len(_starts) - 1)

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            if len(self._epochs) > 4:  # keep memory bounded on long runs; recomputation is deterministic
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = epoch_batches(self.lengths, self.max_tokens, self.seed, epoch, self.chunk_size)
        return self._epochs[epoch]

    def __call__(self, counter: int) -> tuple[list[int], int]:
        while self._starts[-1] <= counter:
            self._starts.append(self._starts[-1] + len(self.epoch(len(self._starts) - 1)))
        epoch = bisect.bisect_right(self._starts, counter) - 1
        return self.epoch(epoch)[counter - self._starts[epoch]], epoch

    @property
    def over_budget(self) -> int:
        return sum(length > self.max_tokens for length in self.lengths)
