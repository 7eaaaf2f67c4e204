"""Keep a CPU training process's resident memory bounded (glibc malloc; elsewhere nothing happens).

Why: PyTorch's CPU allocator is plain malloc. A training step allocates and frees hundreds of MB of activations whose
sizes change with every token-budget batch. glibc serves large blocks from mmap (returned to the system on free) only
above a *dynamic* threshold that it raises, up to 32 MB, each time such a block is freed; after the first steps most
activations therefore come from the heap, where freed blocks of ever-changing sizes fragment and stay resident.
Measured on the SQuAD-QG recipe with the copy mechanism (2-core Zen 4, bf16; experiments/results/train_memory/):
the process held 3.06 GB at step 110 and grew ~15 MB a step (the issue that reported it saw 10.8 GB at step 2,000).

What is done about it, and what was tried (experiments/results/train_memory/):
* ``malloc_trim(0)`` hands the heap's free pages back to the system. Every 10 steps was not enough: between two trims
  the freed-but-resident pages piled up again and the 2,800-step recipe peaked at 5.6 GB. After every step it bounds
  the process (1.9 GB peak over 150 steps) but costs time: each trim is a walk of the heap, and the pages it hands
  back are faulted in again by the next step. So the trim is *triggered by growth*: after each optimizer step the
  resident set is read from /proc (microseconds), and the heap is trimmed only when it has grown by more than
  ``TRIM_MARGIN_MB`` since the last trim. The resident set stays within about that margin of what a step needs;
* a fixed 1 MB mmap threshold (``mallopt(M_MMAP_THRESHOLD)``; large blocks always mapped and unmapped) slowed the
  growth too (2.0 GB at step 110) but made steps ~10 % slower: every step faults its large activations in anew;
* fewer arenas (``M_ARENA_MAX`` 2) alone changed little (2.45 GB at step 60 against 2.72).
* dev evaluation and checkpoint writing allocate shapes no training step does (decoding batches, the optimizer's
  state serialised): the 2,800-step recipe's peak (3.55 GB) came after such phases, on top of up to a margin of free
  pages. The loop therefore also trims right before and after each of them (``trim_now``), and between the dev
  evaluation's decoding batches when the resident set has grown by the margin (``if_grown``): a trim hands the free
  pages back but the heap's free chunks stay, and decoding's ever-new sizes land in them, faulting them in again.
Environment switches, for measuring: ``S2S_FT_TRIM_MARGIN_MB`` (the margin), ``S2S_FT_TRIM_EVERY=N`` (a trim every N
steps instead of the growth trigger; 0 turns trimming off).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

TRIM_MARGIN_MB = 256

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


def resident_mb() -> float:
    """This process's resident set in MB (Linux /proc; 0.0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class HeapTrimmer:
    """Decides after each optimizer step whether to trim the heap (see the module docstring for why and when)."""

    def __init__(self, margin_mb: float = None, every: int = None):
        env_every = os.environ.get("S2S_FT_TRIM_EVERY")
        self.every = every if every is not None else (int(env_every) if env_every is not None else None)
        self.margin_mb = margin_mb if margin_mb is not None else float(
            os.environ.get("S2S_FT_TRIM_MARGIN_MB", TRIM_MARGIN_MB))
        self.enabled = _glibc() is not None and self.every != 0
        self.floor_mb = resident_mb()  # the resident set right after the last trim
        self.trims = 0

    def after_step(self, step: int) -> bool:
        """Trim if due; True when it did."""
        if not self.enabled:
            return False
        if self.every is not None:
            return step % self.every == 0 and self.trim_now()
        return self.if_grown()

    def if_grown(self) -> bool:
        """Trim if the resident set has grown by more than the margin since the last trim (also between the dev
        evaluation's decoding batches); True when it did."""
        return self.enabled and resident_mb() > self.floor_mb + self.margin_mb and self.trim_now()

    def trim_now(self) -> bool:
        """Trim whatever the trigger says: around the rare phases whose allocations differ from a training step's
        (dev evaluation, writing a checkpoint), which would otherwise grow the heap on top of the free pages it
        already holds."""
        if not self.enabled:
            return False
        release_free_memory()
        self.floor_mb = resident_mb()
        self.trims += 1
        return True


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where there is no glibc to ask."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
