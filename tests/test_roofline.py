"""The benchmarks' FLOP accounting (benchmarks/roofline.py) against hand-derived counts: the speed ceilings in the
README are only as good as these numbers."""
import importlib.util
import os

import torch
import torch.nn.functional as F

from conftest import make_model

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "roofline.py")
_spec = importlib.util.spec_from_file_location("roofline", _PATH)
roofline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roofline)


def test_attention_flops_are_counted_on_cpu():
    # torch's counter alone reports 0 for the fused CPU attention kernel; both matmuls must be counted.
    b, h, lq, lk, d = 2, 3, 5, 7, 8
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    mask = torch.rand(b, 1, lq, lk) > 0.3
    flops = roofline.counted_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert flops == 2 * (2 * b * h * lq * lk * d)  # scores and weighted values


def test_model_forward_flops_match_the_hand_count():
    model = make_model()
    config = model.config
    batch, length = 3, 11
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    ids = torch.randint(5, config.vocab_size, (batch, length))
    positions = torch.arange(length).expand(batch, length)
    ranks = torch.zeros(batch, length, dtype=torch.long)  # everyone sees everyone: a full attention matrix
    with torch.no_grad():
        flops = roofline.counted_flops(lambda: model(ids, positions, torch.zeros_like(ids), ranks, ranks))
    tokens = batch * length
    projections = tokens * 2 * (4 * hidden * hidden + 2 * hidden * inner)  # q, k, v, out; FFN in and out
    attention = 2 * (2 * batch * length * length * hidden)  # over all heads: scores and weighted values
    assert flops == layers * (projections + attention)


def test_ceiling_and_dense_share():
    # 1e9 FLOPs per item at a 1e12 FLOP/s peak is 1,000 items/s: 10x a baseline doing 100 items/s.
    assert roofline.ceiling(1e9, 1e12, 100.0) == 10.0
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work():
        for _ in range(5):
            torch.relu(a @ b)
    share = roofline.dense_time_share(work, torch.device("cpu"))
    assert 0.0 < share < 1.0  # the matmuls count as dense, the ReLUs do not
