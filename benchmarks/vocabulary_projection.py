"""The vocabulary projection of a decoding step, F.linear against ``s2s_ft.model.transformer.vocabulary_logits`` (the transposed
product for a few rows, vocabulary panels for more), at the row counts decoding meets: 1 (greedy, batch 1), 5 (beam
5, batch 1), 16 (greedy, batch 16), 80 (beam 5, batch 16), 400. Prints ms per call of each, their ratio and the
largest difference between the two results (0 when each logit is computed the same way).

    PYTHONPATH=. python benchmarks/vocabulary_projection.py                  # all-MiniLM-L6-v2's shape: 30,522 x 384
    PYTHONPATH=. python benchmarks/vocabulary_projection.py --vocab 50265 --hidden 768 --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from s2s_ft.model.transformer import vocabulary_logits


def ms_per_call(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):  # best of three rounds: the least disturbed by other work on the machine
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--rows", default="1,5,16,80,400")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weight, bias = torch.randn(args.vocab, args.hidden) * 0.05, torch.randn(args.vocab) * 0.1
    print(f"vocab {args.vocab} x hidden {args.hidden}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with torch.inference_mode():
        for rows in map(int, args.rows.split(",")):
            x = torch.randn(rows, args.hidden)
            plain = ms_per_call(lambda: F.linear(x, weight, bias), args.repeats)
            ours = ms_per_call(lambda: vocabulary_logits(x, weight, bias), args.repeats)
            diff = float((vocabulary_logits(x, weight, bias) - F.linear(x, weight, bias)).abs().max())
            print(f"rows {rows:4d}: F.linear {plain:8.2f} ms, vocabulary_logits {ours:8.2f} ms, "
                  f"speed-up {plain / ours:.2f}x, max |difference| {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
