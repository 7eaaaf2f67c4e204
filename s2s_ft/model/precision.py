"""Mixed precision: the ``--precision`` values (and s2s-ft's ``--fp16`` alias) of every tool, in one place."""
from __future__ import annotations

from typing import Optional

import torch

from s2s_ft.errors import UsageError

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # torch.autocast dtype per value
PRECISIONS = tuple(AUTOCAST_DTYPES)


def resolve_precision(precision: Optional[str], fp16: bool = False, device=None) -> str:
    """The precision to use: ``precision`` (None: fp32), or fp16 for the ``--fp16`` alias; UsageError if the two
    contradict each other or if fp16 is asked for on a ``device`` that is not a GPU."""
    if fp16:
        if precision not in (None, "fp16"):
            raise UsageError(f"--fp16 contradicts --precision {precision}")
        precision = "fp16"
    precision = precision or "fp32"
    if precision not in AUTOCAST_DTYPES:
        raise UsageError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    if precision == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; on CPU use --precision bf16 or fp32")
    return precision
