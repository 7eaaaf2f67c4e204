"""Multi-process data parallelism under ``torchrun`` (gloo on CPU, NCCL on GPU).

Every rank draws and packs the WHOLE global micro-batch (per-device batch x world examples, or one token-budget
batch) with the same (seed, counter) generator, so corruption draws are those of a single process, and keeps its
rows ``rank::world`` (padding columns stay: padding is invisible to real tokens). Each rank's loss is the SUM of
its token losses divided by the GLOBAL number of predicted tokens; gradients are summed over ranks once per
optimizer step (after accumulation), so they equal the single-process gradient of the global micro-batches.

Decoding (``s2s_ft/cli/decode.py``) cuts the length-sorted batches exactly as one process would, decodes batches
``rank::world`` on each rank and gathers the rendered lines to rank 0, which writes the output file.

Without ``WORLD_SIZE`` > 1 nothing here does anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from s2s_ft.data.packing import PackedBatch


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, batch: PackedBatch) -> tuple[PackedBatch, float]:
        """This rank's rows of the packed global micro-batch and its loss weight (see ``shard_rows``)."""
        return shard_rows(batch, self.rank, self.size) if self.active else (batch, 1.0)

    def sum_scalar(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a scalar over ranks (the same float on every rank)."""
        if not self.active:
            return value
        total = value.detach().float().reshape(1).clone()
        dist.all_reduce(total)
        return total[0]

    def sum_gradients(self, parameters) -> None:
        """Sum every existing .grad over ranks, in one flattened all-reduce."""
        if not self.active:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_model(self, model) -> None:
        if not self.active:
            return
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)

    def gather_objects(self, obj) -> list:
        if not self.active:
            return [obj]
        gathered = [None] * self.size
        dist.all_gather_object(gathered, obj)
        return gathered

    def gather_to_main(self, obj) -> Optional[list]:
        """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
        if not self.active:
            return [obj]
        gathered = [None] * self.size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def init_world(use_cuda: bool) -> World:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); init the process group only when WORLD_SIZE > 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    if world.active and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world


def shard_rows(batch: PackedBatch, rank: int, world: int) -> tuple[PackedBatch, float]:
    """Rows ``rank::world`` of the packed global batch, and the loss weight (0.0 when this rank has no row: it then
    runs row 0 with weight 0 so that every rank takes part in the same collectives)."""
    rows = list(range(rank, batch.input_ids.shape[0], world))
    weight = 1.0
    if not rows:
        rows, weight = [0], 0.0
    return batch.select_rows(torch.tensor(rows, dtype=torch.long)), weight
