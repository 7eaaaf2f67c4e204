"""The decoding-time vocabulary projection (s2s_ft.model.transformer.vocabulary_logits) against F.linear, on both of its CPU
layouts (transposed product for a few rows, vocabulary panels for more) and the paths that keep F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s2s_ft.model import transformer as model_module
from s2s_ft.model.transformer import vocabulary_logits


@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (16, 48), (17, 48), (3, 30, 48)],
                         ids=["1-row", "5-rows", "16-rows", "17-rows", "3-d"])
def test_equals_f_linear(shape, monkeypatch):
    monkeypatch.setattr(model_module, "VOCABULARY_PANEL", 64)  # 1000 words: 15 full panels and a partial one
    torch.manual_seed(0)
    weight, bias, x = torch.randn(1000, 48), torch.randn(1000), torch.randn(*shape)
    with torch.inference_mode():
        got = vocabulary_logits(x, weight, bias)
    assert got.shape == (*shape[:-1], 1000) and got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_training_keeps_f_linear_and_its_gradients(monkeypatch):
    calls = []
    monkeypatch.setattr(model_module.torch, "addmm", lambda *a, **k: calls.append(a))  # must not be reached
    weight = torch.randn(100, 8, requires_grad=True)
    x = torch.randn(5, 8)  # few rows: without gradients this would be the transposed addmm
    vocabulary_logits(x, weight, torch.zeros(100)).sum().backward()
    assert weight.grad is not None and not calls
