"""The copy loss's vocabulary part (the MLM head's projection, the log-softmax at the target and source columns, the
row mean that label smoothing needs; forward + backward), as autograd composes it (log_softmax, gather, mean) and as
``s2s_ft.training.loss.LogSoftmaxPicks`` computes it (closed-form backward). Both take turns in one run; prints ms per
call of each (median of the rounds) and their ratio.

    PYTHONPATH=. python benchmarks/copy_loss_speed.py                # the SQuAD-QG recipe's shape: ~420 predicted
    PYTHONPATH=. python benchmarks/copy_loss_speed.py --rows 1000 --precision fp32     # rows, 97 columns, 30,522 x 384
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from s2s_ft.training.loss import LogSoftmaxPicks


def composed(logits, columns):
    log_probs = torch.log_softmax(logits.float(), -1)
    return log_probs.gather(1, columns), log_probs.mean(-1)


def closed_form(logits, columns):
    return LogSoftmaxPicks.apply(logits, columns)


def step(picks, states, weight, columns, dtype):
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = states @ weight.t()
    picked, mean = picks(logits, columns)
    (picked.sum() - 0.1 * mean.sum()).backward()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=420, help="predicted tokens per batch")
    parser.add_argument("--columns", type=int, default=97, help="the target + the source's word pieces")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    states = torch.randn(args.rows, args.hidden, requires_grad=True)
    weight = (torch.randn(args.vocab, args.hidden) * 0.05).requires_grad_()
    columns = torch.randint(0, args.vocab, (args.rows, args.columns))
    systems = {"autograd composition": composed, "closed form": closed_form}
    times = {name: [] for name in systems}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, picks in systems.items():
            start = time.perf_counter()
            for _ in range(args.repeats):
                step(picks, states, weight, columns, dtype)
            if round_:
                times[name].append((time.perf_counter() - start) / args.repeats * 1e3)
    print(f"rows {args.rows}, columns {args.columns}, vocabulary {args.vocab} x {args.hidden}, {args.precision}, "
          f"{torch.get_num_threads()} threads")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:>22}: {ms:8.2f} ms per forward + backward")
    print(f"{'ratio':>22}: {medians['autograd composition'] / medians['closed form']:.2f}x")


if __name__ == "__main__":
    main()
