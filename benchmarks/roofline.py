"""What the machine can do, for the speed benchmarks: a measured matmul peak and counted model FLOPs.

A speed ratio between two systems is only meaningful next to what the hardware allows. When both systems are
compute-bound (a small CPU), the best any implementation of a computation can do is its FLOPs divided by the
machine's matmul peak; ``ceiling`` turns that into the largest speed-up over a measured baseline that the
computation admits on this machine. FLOPs are counted by ``torch.utils.flop_counter`` from the operations that
actually ran (matmuls and attention, forward and backward), not from a formula of ours.

Small-batch decoding multiplies a few rows by every weight matrix each step, so it runs far below the peak of a
large square matmul (memory-bound); for it the tighter bound is ``dense_time_share``: the profiled share of the
time spent in matmul and attention kernels, the work no implementation of the same model can skip. Removing all
other time (Python, search bookkeeping, element-wise ops) would speed it up by 1 / share at most.
"""
from __future__ import annotations

import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype=torch.float32, size=2048, repeats=25) -> float:
    """FLOP/s of a large square matmul, the fastest of ``repeats``: the most this device does in ``dtype`` (the
    fastest rather than the mean, so that a noisy moment does not lower the bar)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def counted_flops(run) -> float:
    """Matmul and attention FLOPs of ``run()``, as executed.

    The counter has no formula for the fused CPU attention kernel (it counts it as 0 FLOPs), so attention runs on
    the math backend here, whose two batched matmuls it does count: the same arithmetic, counted.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


DENSE_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")


def dense_time_share(run, device) -> float:
    """The share of ``run()``'s wall time spent in matmul and attention kernels (device time on a GPU): their
    profiled time over the wall time of the same profiled run, so that Python between the kernels counts as
    overhead and the profiler's own cost weighs on both sides."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    dense_us = 0.0
    for event in profiler.key_averages():
        if event.key.startswith(DENSE_OPS):
            dense_us += event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
    return dense_us / wall_us


def ceiling(flops_per_item: float, peak: float, baseline_items_per_s: float) -> float:
    """The largest speed-up over the baseline that a computation of ``flops_per_item`` can reach at ``peak``."""
    return peak / flops_per_item / baseline_items_per_s
