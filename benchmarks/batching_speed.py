"""Fixed-size batches vs token-budget batches (``--max_tokens_per_batch``), trained side by side in one run:
padding ratio and real (non-padding) tokens/s of each.

    python benchmarks/batching_speed.py --data ../shared/data/scitldr/train.jsonl

Both systems fine-tune their own copy of the same checkpoint with the training loop's batch order: fixed batches are
``batching.random_batches`` (the same permutation as ``batching.micro_batch``), token-budget batches come from
``batching.TokenBudgetSampler``. Without ``--max_tokens`` the budget is calibrated so that the token-budget epoch has
the fixed batch's mean number of rows, i.e. the same examples per optimizer step on average. The systems take turns
step by step so that machine noise hits both alike; each one's first step is a warm-up and is not counted. A step is
timed as the training loop times it: packing, forward, backward and the optimizer.

With few steps the measured figures depend on which batches were drawn, so the padding of the whole first epoch
(from the packed lengths, no training) is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from s2s_ft.data.batching import (
    TokenBudgetSampler,
    epoch_batches,
    packed_length,
    padding_ratio,
    random_batches,
)
from s2s_ft.data.packing import Packer
from s2s_ft.data.reading import load_tokenizer, read_pairs, special_ids
from s2s_ft.model import checkpoint
from s2s_ft.model.minilm import minilm_dir
from s2s_ft.training.loss import seq2seq_loss


def calibrated_budget(lengths, rows: float, seed: int) -> int:
    """Smallest token budget whose epoch-0 batches hold at least ``rows`` examples on average (bisection: the mean
    grows with the budget)."""
    low, high = max(lengths), max(lengths) * int(rows) * 4
    while low < high:
        middle = (low + high) // 2
        batches = epoch_batches(lengths, middle, seed, 0)
        if len(lengths) / len(batches) >= rows:
            high = middle
        else:
            low = middle + 1
    return low


class System:
    """One model in training, fed the batches of one batching scheme."""

    def __init__(self, name, batches, pairs, model_dir, method, seed):
        torch.manual_seed(seed)  # the fresh MLM head starts the same in both systems
        self.model, info = checkpoint.load_pretrained("bert", model_dir, min_positions=512 + 64)
        self.model.train()
        special = special_ids(load_tokenizer(model_dir), *checkpoint.default_segment_ids("bert", info["hf_config"]))
        self.packer = Packer(method, special)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5)
        self.name, self.batches, self.pairs, self.seed = name, batches, pairs, seed
        self.totals = {"rows": 0, "real": 0, "padded": 0, "target": 0, "seconds": 0.0}

    def step(self, counter: int, counted: bool) -> None:
        start = time.perf_counter()
        examples = [self.pairs[i] for i in self.batches(counter)]
        batch = self.packer(examples, torch.Generator().manual_seed(self.seed * 1_000_003 + counter))
        loss = seq2seq_loss(self.model, self.model(**batch.model_inputs()), batch.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if counted:
            totals = self.totals
            totals["seconds"] += time.perf_counter() - start
            totals["rows"] += len(examples)
            totals["real"] += batch.num_real_tokens
            totals["padded"] += batch.input_ids.numel()
            totals["target"] += sum(pair.num_target_tokens for pair in examples)

    def report(self, steps: int) -> dict:
        t = self.totals
        return {"rows_per_step": t["rows"] / steps, "padding": 1 - t["real"] / t["padded"],
                "real_tokens_per_s": t["real"] / t["seconds"], "padded_tokens_per_s": t["padded"] / t["seconds"],
                "target_tokens_per_s": t["target"] / t["seconds"], "seconds_per_step": t["seconds"] / steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="JSONL with src/tgt (read only)")
    parser.add_argument("--model_dir", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--method", default="pseudo_masked", choices=("causal", "masked", "pseudo_masked"))
    parser.add_argument("--max_source", type=int, default=512)
    parser.add_argument("--max_target", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="the fixed-size system's examples per step")
    parser.add_argument("--max_tokens", type=int, default=None,
                        help="the token-budget system's budget; default: calibrated to the same mean rows")
    parser.add_argument("--steps", type=int, default=3, help="counted optimizer steps per system (plus one warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    model_dir = args.model_dir or minilm_dir()
    pairs, _ = read_pairs(args.data, load_tokenizer(model_dir), args.max_source, args.max_target)
    lengths = [packed_length(pair, args.method) for pair in pairs]
    fixed = random_batches(len(pairs), args.batch_size, args.seed, 0)
    budget = args.max_tokens or calibrated_budget(lengths, len(pairs) / len(fixed), args.seed)
    sampler = TokenBudgetSampler(lengths, budget, args.seed)
    budget_epoch = sampler.epoch(0)
    if args.steps + 1 > len(fixed):
        parser.error(f"--steps {args.steps} + 1 warm-up exceeds the {len(fixed)} fixed batches of one epoch")

    systems = [System(f"fixed batch {args.batch_size}", lambda c: fixed[c], pairs, model_dir, args.method, args.seed),
               System(f"token budget {budget}", lambda c: sampler(c)[0], pairs, model_dir, args.method, args.seed)]
    for counter in range(args.steps + 1):  # turn by turn, step 0 warms up
        for system in systems:
            system.step(counter, counted=counter > 0)

    epoch = {systems[0].name: (fixed, padding_ratio(fixed, lengths)),
             systems[1].name: (budget_epoch, padding_ratio(budget_epoch, lengths))}
    results = {"data": args.data, "examples": len(pairs), "method": args.method, "max_source": args.max_source,
               "max_target": args.max_target, "steps": args.steps, "threads": torch.get_num_threads(),
               "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)], "systems": {}}
    print(f"{len(pairs)} examples, {args.method}, lengths {args.max_source}/{args.max_target}; {args.steps} counted "
          f"steps each on {torch.get_num_threads()} threads (load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after)")
    print(f"{'':22s} {'rows/step':>9s} {'padding':>8s} {'real tok/s':>10s} {'padded tok/s':>12s} "
          f"{'target tok/s':>12s} {'s/step':>7s} | epoch 0: {'batches':>7s} {'rows/batch':>10s} {'padding':>8s}")
    for system in systems:
        row = system.report(args.steps)
        batches, epoch_padding = epoch[system.name]
        row.update(epoch_batches=len(batches), epoch_rows_per_batch=len(pairs) / len(batches),
                   epoch_padding=epoch_padding)
        results["systems"][system.name] = row
        print(f"{system.name:22s} {row['rows_per_step']:9.2f} {row['padding']:8.1%} {row['real_tokens_per_s']:10.0f} "
              f"{row['padded_tokens_per_s']:12.0f} {row['target_tokens_per_s']:12.1f} {row['seconds_per_step']:7.2f}"
              f" | {'':9s}{len(batches):7d} {row['epoch_rows_per_batch']:10.2f} {epoch_padding:8.1%}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
