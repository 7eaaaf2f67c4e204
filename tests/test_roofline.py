"""The benchmarks' FLOP accounting (benchmarks/roofline.py) against hand-derived counts: the speed ceilings in the
README are only as good as these numbers."""
import torch
import torch.nn.functional as F

from conftest import load_script, make_model

roofline = load_script("benchmarks", "roofline")


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
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    big = torch.randn(4_000_000)

    def matmuls():
        for _ in range(20):
            a @ b

    def matmuls_and_elementwise():
        matmuls()
        for _ in range(10):
            torch.exp(big)  # not dense: counts as overhead

    cpu = torch.device("cpu")
    matmuls()  # warm-up
    only_dense = roofline.dense_time_share(matmuls, cpu)
    mixed = roofline.dense_time_share(matmuls_and_elementwise, cpu)
    assert 0.8 < only_dense <= 1.0 + 1e-3  # all of it, up to Python between the calls
    assert mixed < 0.75 * only_dense
