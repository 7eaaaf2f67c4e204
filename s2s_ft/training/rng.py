"""Every random-number generator state of this process, to put back after a dev evaluation and to resume from.

A checkpoint stores them per rank (``{"per_rank": {RANK: state}}``): under torchrun rank 0 gathers every rank's
entry, and on resume each rank restores its own.
"""
from __future__ import annotations

import logging
import os
import random

import torch

log = logging.getLogger("s2s_ft")


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
