"""Token-budget batching (--max_tokens_per_batch): budget, coverage, determinism, padding, exact resume."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import PAIRS, SPECIAL, train_args
from safetensors.torch import load_file

from s2s_ft.cli import train
from s2s_ft.data.batching import (
    TokenBudgetSampler,
    epoch_batches,
    packed_length,
    padding_ratio,
    random_batches,
)
from s2s_ft.data.packing import METHODS, Packer, Pair


def skewed_lengths(n=3000, seed=0):
    """Log-normal lengths (many short, a long tail), clipped to 8..512."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.exp(torch.randn(n, generator=generator) * 0.8 + 3.5)
    return [int(v) for v in values.clamp(8, 512)]


@pytest.mark.parametrize("method", METHODS)
def test_packed_length_matches_the_packer(method):
    packer = Packer(method, SPECIAL)
    pairs = PAIRS + [Pair([5] * 7, [6] * 3, target_positions=[1, 2, 3], close_target=False)]
    for pair in pairs:
        assert len(packer.pack_example(pair, torch.Generator().manual_seed(0)).ids) == packed_length(pair, method)


def test_budget_coverage_determinism_and_epochs():
    lengths = skewed_lengths()
    budget = 2048
    sampler = TokenBudgetSampler(lengths, budget, seed=3, chunk_size=1000)
    for epoch in range(3):
        batches = sampler.epoch(epoch)
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))  # each exactly once
        assert all(len(batch) * max(lengths[i] for i in batch) <= budget for batch in batches)
    assert sampler.epoch(0) == epoch_batches(lengths, budget, 3, 0, chunk_size=1000)  # pure function of (seed, e)
    assert sampler.epoch(0) != sampler.epoch(1)
    assert epoch_batches(lengths, budget, 4, 0, chunk_size=1000) != sampler.epoch(0)
    # counter -> (epoch, index) walks epoch 0, then epoch 1, ...; a fresh sampler agrees at any counter (resume)
    n0, n1 = len(sampler.epoch(0)), len(sampler.epoch(1))
    assert sampler(0) == (sampler.epoch(0)[0], 0) and sampler(n0 - 1) == (sampler.epoch(0)[-1], 0)
    assert sampler(n0) == (sampler.epoch(1)[0], 1) and sampler(n0 + n1) == (sampler.epoch(2)[0], 2)
    assert TokenBudgetSampler(lengths, budget, seed=3, chunk_size=1000)(n0 + 5) == sampler(n0 + 5)


def test_over_long_example_is_a_batch_of_one():
    batches = epoch_batches([10, 300, 20, 30], 100, seed=0, epoch=0)
    assert [1] in batches and sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_padding_lower_than_random_batching():
    lengths = skewed_lengths()
    budget = 4096
    bucketed = epoch_batches(lengths, budget, seed=0, epoch=0)
    rows = round(len(lengths) / len(bucketed))  # random batches of the same average size
    random = random_batches(len(lengths), rows, seed=0, epoch=0)
    assert padding_ratio(bucketed, lengths) < 0.1 < 0.5 < padding_ratio(random, lengths)


def test_cli_token_budget_logs_padding_and_resumes_exactly(tiny_bert, train_file, tmp_path):
    out = tmp_path / "run"
    base = train_args(tiny_bert, train_file, out, "--num_training_steps", "6", "--save_steps", "3",
                      "--max_tokens_per_batch", "60", "--gradient_accumulation_steps", "2")
    assert train.main(base) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert all(0 <= r["padding"] < 1 for r in log) and log[-1]["epoch"] >= 1
    straight = load_file(str(out / "ckpt-6" / "model.safetensors"))
    os.rename(out / "ckpt-6", tmp_path / "ckpt-6-straight")
    assert train.main(base) == 0  # resumes from ckpt-3
    resumed = load_file(str(out / "ckpt-6" / "model.safetensors"))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
