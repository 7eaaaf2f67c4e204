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


def test_ceiling():
    # 1e9 FLOPs per item at a 1e12 FLOP/s peak is 1,000 items/s: 10x a baseline doing 100 items/s.
    assert roofline.ceiling(1e9, 1e12, 100.0) == 10.0


class _Event:
    def __init__(self, key, cpu_us, device_us=0.0):
        self.key, self.self_cpu_time_total, self.self_device_time_total = key, cpu_us, device_us


def test_dense_time_share_counts_matmul_and_attention_kernels_over_wall_time(monkeypatch):
    """The accounting, on a scripted profile and clock (no timing: what the machine measures is not asserted)."""
    import torch.profiler

    events = [_Event("aten::mm", 4000.0), _Event("aten::addmm", 1500.0),
              _Event("aten::_scaled_dot_product_attention", 500.0), _Event("aten::exp", 3000.0),
              _Event("aten::softmax", 900.0)]

    class Profile:
        def __init__(self, activities):
            self.activities = activities

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def key_averages(self):
            return events

    ran = []
    clock = iter([0.0, 0.010])  # the run takes 10 ms of wall time
    monkeypatch.setattr(torch.profiler, "profile", Profile)
    monkeypatch.setattr(roofline.time, "perf_counter", lambda: next(clock, 0.010))
    share = roofline.dense_time_share(lambda: ran.append(1), torch.device("cpu"))
    assert ran == [1] and share == (4000 + 1500 + 500) / 10_000  # exp and softmax are overhead


def test_dense_time_share_on_a_real_profile_counts_matmuls_and_only_them():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    matmuls = roofline.dense_time_share(lambda: [a @ b for _ in range(5)], torch.device("cpu"))
    assert 0 < matmuls <= 1.0  # a share of the wall time, which also holds the Python between the kernels
    elementwise = roofline.dense_time_share(lambda: [torch.exp(a) + b for _ in range(5)], torch.device("cpu"))
    assert elementwise == 0.0  # exp and add are overhead, not matmul or attention kernels
