"""Keep a CPU training process's resident memory bounded (glibc malloc; elsewhere nothing happens).

Why: PyTorch's CPU allocator is plain malloc. A training step allocates and frees hundreds of MB of activations whose
sizes change with every token-budget batch. glibc serves large blocks from mmap (returned to the system on free) only
above a *dynamic* threshold that it raises, up to 32 MB, each time such a block is freed; after the first steps most
activations therefore come from the heap, where freed blocks of ever-changing sizes fragment and stay resident.
Measured on the SQuAD-QG recipe with the copy mechanism (2-core Zen 4, bf16; experiments/results/train_memory/):
the process held 3.06 GB at step 110 and grew ~15 MB a step (the issue that reported it saw 10.8 GB at step 2,000).

What is done about it, and what was tried:
* every ``TRIM_EVERY`` optimizer steps, ``malloc_trim(0)`` hands the heap's free pages back to the system: over the
  first 90 steps the resident set fell back to 1.2-2.5 GB at each trim, at no measured cost in step time. It does not
  bound the whole run: the recipe still peaked at 5.6 GB late in training (experiments/results/squad_qg_du_copy/),
  so something beyond freed heap pages grows too (not found yet);
* a fixed 1 MB mmap threshold (``mallopt(M_MMAP_THRESHOLD)``; large blocks always mapped and unmapped) slowed the
  growth too (2.0 GB at step 110) but made steps ~10 % slower: every step faults its large activations in anew;
* fewer arenas (``M_ARENA_MAX`` 2) alone changed little (2.45 GB at step 60 against 2.72).
``S2S_FT_TRIM_EVERY=0`` turns the trimming off (for measuring it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

TRIM_EVERY = 10

_libc = None


def _glibc():
    """glibc as a ctypes library, or None (another libc, another system)."""
    global _libc
    if _libc is None:
        _libc = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                _libc = False
    return _libc or None


def trim_period() -> int:
    """Optimizer steps between two ``release_free_memory`` calls of the training loop (0: never)."""
    return int(os.environ.get("S2S_FT_TRIM_EVERY", TRIM_EVERY)) if _glibc() else 0


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where there is no glibc to ask."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
