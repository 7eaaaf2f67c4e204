"""--quantize int8 (s2s_ft/model/quantize.py), against an independent reference: the same quantised weights dequantised
and the inputs quantised-then-dequantised by the documented rule (per-tensor uint8, zero point in range), computed
in fp32. The int8 kernel must match it to fp32 rounding; fp32 itself is two to four orders of magnitude further
away (the quantisation error), so a broken quantiser cannot pass."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ROOT, one_error_line, trained_checkpoint
from test_decoding import SOURCES, VARIANTS, make, reference_log_probs, special

from s2s_ft.cli import decode
from s2s_ft.decoding import inference
from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder
from s2s_ft.errors import UsageError
from s2s_ft.model import quantize
from s2s_ft.model.quantize import Int8Linear, check_quantize, quantize_int8


# -- the independent reference ----------------------------------------------------------------------------------
def fake_quant_input(x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """x quantised to uint8 (7 bits with ``reduce_range``) with one scale / zero point for the whole tensor, the
    range widened to include 0, and dequantised."""
    qmax = 127 if reduce_range else 255
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / qmax
    zero = min(max(round(-low / scale), 0), qmax)
    return (torch.clamp(torch.round(x / scale) + zero, 0, qmax) - zero) * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per output row, symmetric: round(w / s) * s with s = max |row| / 127."""
    scale = w.abs().amax(1, keepdim=True) / 127
    return torch.round(w / scale) * scale


class ReferenceLinear(nn.Module):
    def __init__(self, weight, bias, reduce_range):
        super().__init__()
        self.weight, self.bias, self.reduce_range = fake_quant_weight(weight.detach()), bias, reduce_range

    def forward(self, x):
        return F.linear(fake_quant_input(x, self.reduce_range), self.weight, self.bias)


# -- the layer and the model --------------------------------------------------------------------------------------
def input_step_and_ties(x: torch.Tensor, reduce_range: bool) -> tuple[float, torch.Tensor]:
    """The input's quantisation step, and where x lies within 1e-4 of a step of a rounding boundary (there the
    kernel's float arithmetic, x * (1 / scale) rather than x / scale, may round the other way)."""
    qmax = 127 if reduce_range else 255
    scale = (max(x.max().item(), 0.0) - min(x.min().item(), 0.0)) / qmax
    fraction = torch.frac(x.double() / scale).abs()
    return scale, (fraction - 0.5).abs() < 1e-4


class LayerCheck:
    """Checks every call of every ``Int8Linear`` of a model against the reference on the same input, in place (a
    whole-model comparison cannot be tight: a rounding tie broken the other way changes an output by a step, and
    later layers carry that on). An input at a tie may round either way: it may move the output by one input step
    times the weight, nothing more."""

    def __init__(self, model):
        self.calls, self.worst, self.ties, self.inputs = 0, 0.0, 0, 0
        self.handles = [m.register_forward_hook(self.check) for m in model.modules() if isinstance(m, Int8Linear)]
        assert self.handles

    def check(self, layer, args, out):
        x = args[0]
        packed, reduce_range = layer.kernel_for(x.reshape(-1, x.shape[-1]).shape[0])  # the call's own packing
        weight, bias = torch.ops.quantized.linear_unpack(packed)  # the int8 weights, as the kernel has them
        weight = weight.dequantize()
        want = ReferenceLinear(weight, bias, reduce_range)(x)
        step, ties = input_step_and_ties(x, reduce_range)
        allowed = step * F.linear(ties.float(), weight.abs())  # each tie: one step times its weight
        excess = ((out - want).abs() - allowed).max() / want.abs().max()
        self.calls, self.worst = self.calls + 1, max(self.worst, float(excess))
        self.ties, self.inputs = self.ties + int(ties.sum()), self.inputs + x.numel()


ENGINES = [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rows", [1, 7, 100])
def test_int8_linear_matches_the_dequantised_reference(rows, engine, monkeypatch):
    monkeypatch.setenv(quantize.ENGINE_ENV, engine)  # both x86 engines follow the documented rule
    torch.manual_seed(rows)
    weight, bias, x = torch.randn(48, 32), torch.randn(48), torch.randn(rows, 3, 32) * 3
    x[0, 0, 0] = 40.0  # an outlier sets the tensor's scale, as BERT's outlier dimensions do
    layer = Int8Linear(weight, bias).eval()
    assert layer.engine == engine
    check = LayerCheck(layer)
    got = layer(x)
    assert got.shape == (rows, 3, 48) and check.calls == 1
    assert check.worst < 1e-5  # measured ~2e-7: fp32 rounding
    exact = F.linear(x, weight, bias)
    assert (got - exact).abs().max() > 1e-3 * exact.abs().max()  # the quantisation error is there (teeth)


def test_large_calls_go_to_onednn_only_on_amx_cpus_unless_an_engine_is_chosen(monkeypatch):
    monkeypatch.delenv(quantize.ENGINE_ENV, raising=False)
    has_onednn = "onednn" in torch.backends.quantized.supported_engines
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni", "amx_int8"}))
    assert quantize.int8_engines() == ("fbgemm", "onednn" if has_onednn else None)
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert quantize.int8_engines() == ("fbgemm", None)
    monkeypatch.setenv(quantize.ENGINE_ENV, "fbgemm")
    assert quantize.int8_engines() == ("fbgemm", None)
    monkeypatch.setenv(quantize.ENGINE_ENV, "qnnpack-of-dreams")
    with pytest.raises(UsageError, match=r"S2S_FT_INT8_ENGINE=qnnpack-of-dreams: this torch has the quantized "):
        quantize.int8_engines()


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="no oneDNN engine")
@pytest.mark.parametrize("rows", [quantize.ONEDNN_MIN_ROWS - 1, quantize.ONEDNN_MIN_ROWS])
def test_small_and_large_calls_both_follow_the_reference(rows, monkeypatch):
    """On an AMX CPU a layer holds two packings; either path computes the documented arithmetic."""
    monkeypatch.delenv(quantize.ENGINE_ENV, raising=False)
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"amx_int8"}))
    torch.manual_seed(rows)
    weight, bias, x = torch.randn(40, 32), torch.randn(40), torch.randn(rows, 32)
    layer = Int8Linear(weight, bias).eval()
    assert layer.large_engine == "onednn"
    calls = []
    real = torch.ops.quantized.linear_dynamic
    monkeypatch.setattr(torch.ops.quantized, "linear_dynamic",
                        lambda i, packed, r: calls.append(packed) or real(i, packed, r))
    check = LayerCheck(layer)
    layer(x)
    assert calls == [layer.packed_large if rows >= quantize.ONEDNN_MIN_ROWS else layer.packed]
    assert check.calls == 1 and check.worst < 1e-5


def test_reference_weights_are_the_packed_weights():
    """``LayerCheck`` rebuilds the reference from the packed weight and bias: they are the original's, the weight
    rounded per row."""
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32), torch.randn(48)
    unpacked, unpacked_bias = torch.ops.quantized.linear_unpack(Int8Linear(weight, bias).packed)
    assert torch.allclose(unpacked.dequantize(), fake_quant_weight(weight), rtol=0, atol=1e-6)
    assert torch.equal(unpacked_bias, bias)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", ["causal", "pseudo_masked"])
def test_every_int8_layer_matches_the_reference_and_log_probs_stay_near_fp32(variant, method):
    model = make(**VARIANTS[variant])
    sp = special(target_type=int(model.config.type_vocab_size > 1))
    quantized = quantize_int8(copy.deepcopy(model))
    check = LayerCheck(quantized)
    errors = []
    for source, prefix in ((SOURCES[0], [7, 8]), (SOURCES[1], []), (SOURCES[2], [9])):
        got = reference_log_probs(quantized, method, source, prefix, sp)
        exact = reference_log_probs(model, method, source, prefix, sp)
        finite = exact.isfinite()
        errors.append(float((got[finite] - exact[finite]).abs().max()))
    assert check.calls >= 3 * 10 and check.worst < 1e-5, (check.calls, check.worst)  # measured < 1e-6
    assert check.ties < 1e-3 * check.inputs  # ties are rare: the bound is not what makes the test pass
    # Quantised (the error is there), but the same distribution: log-probs span ~10 nats here; measured 0.02-0.2.
    assert 1e-3 < max(errors) < 0.5, errors


def test_int8_beam_search_runs_every_step_through_the_reference_arithmetic():
    model, sp = make(), special()
    quantized = quantize_int8(copy.deepcopy(model))
    check = LayerCheck(quantized)
    config = SearchConfig(beam_size=3, max_tgt_length=6, nbest=3)
    got = Seq2SeqDecoder(quantized, sp, "pseudo_masked").generate(SOURCES, config)
    assert check.calls > 6 * 10 and check.worst < 1e-5, (check.calls, check.worst)
    assert check.ties < 1e-3 * check.inputs
    assert all(len(hyps) == 3 for hyps in got)
    want = Seq2SeqDecoder(model, sp, "pseudo_masked").generate(SOURCES, config)
    same = sum(g[0].tokens == w[0].tokens for g, w in zip(got, want))
    assert same >= len(SOURCES) - 1, same  # a near-tie may flip in a random tiny model, not most sentences


def test_the_vocabulary_projection_can_stay_fp32():
    model, sp = make(), special()
    quantized = quantize_int8(copy.deepcopy(model), vocabulary=False)
    assert quantized.head.decoder is None and isinstance(quantized.head.transform, Int8Linear)
    with torch.no_grad():
        hidden = torch.randn(5, 32)
        normed = quantized.head.norm(quantized.head.act(quantized.head.transform(hidden)))
        assert torch.equal(quantized.head(hidden), F.linear(normed, model.embeddings.word.weight, model.head.bias))


def test_an_int8_model_is_never_trained():
    quantized = quantize_int8(make(**VARIANTS["electra"]))
    assert not [name for name, m in quantized.named_modules() if isinstance(m, nn.Linear)]  # all swapped
    quantized.train()
    with pytest.raises(RuntimeError, match="training is never quantised"):
        quantized.layers[0].ffn_in(torch.zeros(1, 32))


@pytest.mark.slow
def test_without_vnni_inputs_are_quantised_to_7_bits():
    """fbgemm's AVX2 kernel saturates int16 pair sums: the probe must choose reduce_range there, and the layer
    must then match the 7-bit reference (FBGEMM_ENABLE_INSTRUCTIONS makes fbgemm use AVX2 on any x86 CPU)."""
    code = ("import torch; from s2s_ft.model.quantize import Int8Linear, activation_reduce_range as r; "
            "from test_quantize import LayerCheck; torch.manual_seed(0); w, x = torch.rand(8, 64), "
            "torch.rand(4, 64) + 1; x[:, 0] = -0.01; layer = Int8Linear(w).eval(); check = LayerCheck(layer); "
            "layer(x); print(layer.reduce_range, r(), check.worst)")
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "1", quantize.ENGINE_ENV: "fbgemm",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    layer_range, probed, error = done.stdout.split()
    assert layer_range == probed == "True" and float(error) < 1e-5


# -- the command line and the API ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_bert, train_file, tmp_path_factory):
    return trained_checkpoint(tiny_bert, train_file, tmp_path_factory, 20)


def digest(directory) -> dict:
    return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(directory))}


def test_int8_decoding_through_the_cli_and_the_api_leaves_the_checkpoint_alone(trained, tmp_path):
    before = digest(trained)
    inputs = ["the cat sat on the big red mat", "a dog", "the tree is blue and the bird is red", "fish", "a house"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"src": s}) + "\n" for s in inputs))
    common = ["--model_path", trained, "--input_file", str(source), "--batch_size", "2", "--max_tgt_length", "5",
              "--beam_size", "2", "--no_cuda"]
    assert decode.main(common + ["--output_file", str(tmp_path / "int8.txt"), "--quantize", "int8"]) == 0
    assert decode.main(common + ["--output_file", str(tmp_path / "fp32.txt")]) == 0
    lines = (tmp_path / "int8.txt").read_text().splitlines()
    assert len(lines) == len(inputs) and all(lines)
    loaded = inference.load_decoder(trained, "cpu", quantize="int8")
    assert isinstance(loaded.decoder.model.layers[0].attention.qkv, Int8Linear)
    assert loaded.decode_texts(inputs, batch_size=2, beam_size=2, max_tgt_length=5) == lines  # the same batches
    fp32 = inference.load_decoder(trained, "cpu")
    assert fp32.decode_texts(inputs, batch_size=2, beam_size=2, max_tgt_length=5) == \
        (tmp_path / "fp32.txt").read_text().splitlines()
    assert digest(trained) == before


@pytest.mark.parametrize("extra, expected", [
    (["--quantize", "int8", "--precision", "bf16"], "--quantize int8 takes fp32 activations"),
    (["--quantize", "int4"], "invalid choice: 'int4'"),
])
def test_the_cli_refuses_what_int8_cannot_do(trained, tmp_path, capsys, extra, expected):
    source = tmp_path / "in.jsonl"
    source.write_text('{"src": "the cat"}\n')
    args = ["--model_path", trained, "--input_file", str(source), "--output_file", str(tmp_path / "out.txt"),
            "--no_cuda", *extra]
    if "int4" in extra:  # argparse's own refusal (exit status 2)
        with pytest.raises(SystemExit):
            decode.main(args)
        assert expected in capsys.readouterr().err
        return
    assert decode.main(args) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "out.txt").exists()


def test_the_api_refuses_a_gpu_and_mixed_precision(trained):
    with pytest.raises(UsageError, match="runs on CPU only"):
        check_quantize("int8", "cuda", "fp32")
    with pytest.raises(UsageError, match="runs on CPU only"):
        inference.load_decoder(trained, "cuda:0", quantize="int8")  # refused before any GPU is touched
    with pytest.raises(UsageError, match="cannot be combined with --precision bf16"):
        inference.load_decoder(trained, "cpu", "bf16", quantize="int8")
    with pytest.raises(UsageError, match="choose from none, int8"):
        inference.load_decoder(trained, "cpu", quantize="int4")
    check_quantize("none", "cuda", "fp16")  # nothing to refuse without quantisation
