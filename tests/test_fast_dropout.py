"""The CPU dropout paths (``model.Dropout``, ``model.attention`` with dropout) against brute-force references: the
same computation written out with the same uniform draws, and the statistics a dropout must have."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s2s_ft.model.transformer import Dropout, attention


def reference_attention(q, k, v, mask, p, seed):
    """Attention with dropout written out element by element's rule: softmax over allowed keys, each probability
    kept where the seed's uniform draw is >= p and then scaled by 1 / (1 - p)."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    probs = torch.softmax(scores, -1)
    keep = torch.rand(probs.shape, generator=torch.Generator().manual_seed(seed)) >= p
    return torch.einsum("bhqk,bhkd->bhqd", probs * keep / (1 - p), v.double())


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_with_dropout_matches_the_written_out_rule(mask_kind):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    allowed = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    allowed |= torch.eye(5, dtype=torch.bool)  # every query sees at least itself
    mask = {"none": None, "bool": allowed,
            "additive": torch.randn(2, 3, 5, 5, generator=g).masked_fill(~allowed, float("-inf"))}[mask_kind]
    torch.manual_seed(11)
    got = attention(q, k, v, mask, 0.3)
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, mask, 0.3, seed=11), rtol=1e-5, atol=1e-6)


def test_attention_without_dropout_equals_sdpa_in_values_and_gradients():
    """A CPU training step (gradients on) takes the unfused path, decoding (no_grad) SDPA's: same values, and the
    unfused path's gradients equal SDPA's."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = (torch.rand(2, 1, 5, 5, generator=g) > 0.3) | torch.eye(5, dtype=torch.bool)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q, k, v, mask, 0.0)
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, mask, 0.0, seed=0), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v, mask, 0.0), expected.detach())
    upstream = torch.randn(got.shape, generator=g)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), upstream), torch.autograd.grad(expected, (q, k, v), upstream)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_attention_dropout_is_unbiased_and_has_gradients():
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(1, 2, 4, 8, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 4, 8, generator=g, requires_grad=True)
    torch.manual_seed(0)
    mean = torch.stack([attention(q, k, v, None, 0.2) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0.05)
    mean.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


def test_dropout_keeps_the_expected_share_and_scales():
    layer = Dropout(0.25).train()
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = layer(x)
    kept = (y != 0).double().mean().item()
    assert abs(kept - 0.75) < 0.005  # ~6 standard deviations
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.75)))
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_replays_with_the_default_generator():
    """Resuming and activation checkpointing restore the default generator's state to replay dropout exactly."""
    layer, x = Dropout(0.1).train(), torch.randn(64, 32, dtype=torch.bfloat16)
    state = torch.get_rng_state()
    first = layer(x)
    torch.set_rng_state(state)
    assert torch.equal(layer(x), first)
    assert first.dtype == torch.bfloat16
