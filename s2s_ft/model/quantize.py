"""``--quantize int8``: dynamic int8 linear layers for decoding on CPU.

Every linear layer of the Transformer (fused q/k/v, attention output, both feed-forward layers, ELECTRA's
embedding projection) and of the MLM head (its transform and, by default, the vocabulary projection tied to the
word embeddings) is replaced by an ``Int8Linear``: the weight is quantised once, per output channel, symmetric
(scale = max |w| / 127, zero point 0), and packed for fbgemm; at run time each call quantises its input to uint8
with one scale and zero point for the whole input tensor (the batch's rows together: "dynamic" quantisation),
multiplies in int8 with int32 accumulation and rescales to fp32, bias added. Embedding tables, LayerNorms,
attention (softmax(QK^T)V, the key/value cache) and the search stay fp32.

The kernel is ``torch.ops.quantized.linear_dynamic`` on weights packed by ``torch.ops.quantized.linear_prepack``
for fbgemm (x86 CPUs with AVX2 or newer). Where the CPU has AMX int8 tiles (``amx_int8`` in /proc/cpuinfo) and
torch has oneDNN's engine, each layer is packed for oneDNN too and a call with ``ONEDNN_MIN_ROWS`` rows or more runs
there: measured side by side on such a Xeon (benchmarks/decode_levers.py, docs/speed.md), oneDNN decodes 1.15x
(batch 16, beam 5: 160 rows a layer) to 1.19x (batch 64, beam 5) fbgemm's speed and 1.03x at batch 16 greedy (32
rows), but 0.70-0.76x at batch 1 (2-10 rows). ``S2S_FT_INT8_ENGINE=fbgemm|onednn`` puts every call on one engine.
The engine matters when the weights are packed: the packed weights carry their kernel.
Measured on this project's (AMD) CPU (AVX-512 VNNI), one thread,
fp32 ``F.linear`` = 1: MiniLM's 384 x 1536 layer at 10 / 160 rows (a beam-5 step at batch 1 / 16) 0.23 / 0.28
of the time, the 384 x 30522 vocabulary projection 0.08 / 0.23. The alternatives in torch 2.13: ``torch._int_mm``
(int8 x int8 -> int32, the input quantised in Python) took 1.2-1.9x linear_dynamic's time at the row counts of a
decoding step and 4.3x on the vocabulary projection at 10 rows (its weight is not prepacked), and
``aten._weight_int8pack_mm`` (int8 weights, fp32 arithmetic) 10-40x *fp32's* time on this CPU.
``torch.ao.quantization.quantize_dynamic`` reaches the same kernel but is deprecated (its warning in 2.13
announces removal), swaps only ``nn.Linear`` modules (not the tied vocabulary projection, an ``F.linear`` on the
embedding table) and defaults to per-tensor weight scales. The quantised-tensor constructor that prepacking needs
(``torch.quantize_per_channel``) warns of deprecation too: when it goes, ``check_quantize`` refuses int8 in one
line rather than failing later.

Without VNNI (AVX2, AVX-512 without VNNI) fbgemm multiplies uint8 by int8 pairwise into int16 with saturation, so
a full-range (8-bit) input can overflow; there the input is quantised to 7 bits (``reduce_range``, what torch's
own dynamic modules always do). Which one this CPU needs is measured once, on an input made to saturate
(``activation_reduce_range``), rather than guessed from CPU flags (fbgemm's ``FBGEMM_ENABLE_INSTRUCTIONS`` can
lower its instruction set below what the CPU has).

Consequences: a sentence's int8 output can depend on the other sentences of its batch (they share the input
scale), so it changes with ``--batch_size`` (and ``--resume_chunk``), while fp32 changes only in the last bits.
Quantisation works on the loaded model in memory; the checkpoint on disk is never touched. Training never uses it
(``Int8Linear`` refuses to run in training mode), and it is refused on a GPU and with ``--precision`` other than
fp32 (the kernels take fp32 inputs).
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from s2s_ft.errors import UsageError
from s2s_ft.model.transformer import MLMHead, UnifiedTransformer

QUANTIZE_CHOICES = ("none", "int8")


def check_quantize(quantize: str, device, precision: str = "fp32") -> None:
    """UsageError (one line) unless ``quantize`` can run on ``device`` in ``precision``."""
    if quantize not in QUANTIZE_CHOICES:
        raise UsageError(f"--quantize {quantize}: choose from {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "none":
        return
    if torch.device(device).type != "cpu":
        raise UsageError(f"--quantize {quantize} runs on CPU only (fbgemm kernels); use --device cpu, or "
                         f"--precision bf16 / fp16 on the GPU")
    if precision != "fp32":
        raise UsageError(f"--quantize {quantize} takes fp32 activations; it cannot be combined with --precision "
                         f"{precision}")
    activation_reduce_range()  # refuses, in one line, a CPU or torch without a usable int8 kernel


ENGINE_ENV = "S2S_FT_INT8_ENGINE"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none); read once, not once per layer."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


ONEDNN_MIN_ROWS = 32  # from this many rows a call, oneDNN's AMX kernel beats fbgemm's (measured: docs/speed.md)


def int8_engines() -> tuple[str, Optional[str]]:
    """(the engine of small calls, the engine of calls with ``ONEDNN_MIN_ROWS`` rows or more, or None when it is the
    same): ``$S2S_FT_INT8_ENGINE`` for both if set, else fbgemm and, where the CPU has AMX int8 tiles and torch has
    the engine, oneDNN for the large calls."""
    supported = torch.backends.quantized.supported_engines
    chosen = os.environ.get(ENGINE_ENV, "").strip()
    if chosen:
        if chosen not in supported:
            raise UsageError(f"{ENGINE_ENV}={chosen}: this torch has the quantized engines {', '.join(supported)}")
        return chosen, None
    return "fbgemm", ("onednn" if "amx_int8" in cpu_flags() and "onednn" in supported else None)


@contextlib.contextmanager
def _packing_for(engine: str):
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _pack(weight: torch.Tensor, bias: Optional[torch.Tensor], engine: str):
    """Per-channel symmetric int8 weights (scale = max |row| / 127, zero point 0) packed for ``engine``."""
    weight = weight.detach().float().contiguous()
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings(), _packing_for(engine):  # torch 2.13 flags quantized-tensor constructors as
        warnings.simplefilter("ignore")  # deprecated; prepack needs one
        qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


@functools.lru_cache(maxsize=None)
def activation_reduce_range(engine: Optional[str] = None) -> bool:
    """Whether inputs must be quantised to 7 bits on this CPU: False when a full-range input that saturates an
    int16 pairwise product (all inputs near the top of uint8, all weights positive and at full scale) still comes
    out exact, i.e. the kernel accumulates in int32 (VNNI). UsageError if neither setting is exact."""
    weight = torch.full((8, 64), 1.0)
    inputs = torch.full((4, 64), 1.0)
    inputs[:, 0] = -0.01  # a zero point of ~1: every other input quantises to ~255
    engine = engine or int8_engines()[0]
    try:
        packed = _pack(weight, None, engine)
        for reduce_range in (False, True):
            got = torch.ops.quantized.linear_dynamic(inputs, packed, reduce_range)
            if torch.allclose(got, F.linear(inputs, weight), rtol=1e-2, atol=1e-2):
                return reduce_range
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        raise UsageError(f"--quantize int8: this torch / CPU has no usable int8 linear kernel (engine "
                         f"{engine}): {str(error).splitlines()[0]}") from None
    raise UsageError(f"--quantize int8: the int8 linear kernel (engine {engine}) gives wrong results on this CPU")


class Int8Linear(nn.Module):
    """``F.linear(x, weight, bias)`` with per-channel int8 weights and dynamically quantised inputs (decoding
    only; no parameters, no gradient)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.engine, self.large_engine = int8_engines()
        self.packed = _pack(weight, bias, self.engine)
        self.reduce_range = activation_reduce_range(self.engine)
        if self.large_engine is not None:
            self.packed_large = _pack(weight, bias, self.large_engine)
            self.large_reduce_range = activation_reduce_range(self.large_engine)

    def kernel_for(self, rows: int):
        """(packed weights, reduce_range) of a call with ``rows`` input rows."""
        if self.large_engine is not None and rows >= ONEDNN_MIN_ROWS:
            return self.packed_large, self.large_reduce_range
        return self.packed, self.reduce_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("Int8Linear is for decoding only; training is never quantised")
        rows = x.float().reshape(-1, self.in_features)  # the kernel takes a 2-D input
        out = torch.ops.quantized.linear_dynamic(rows, *self.kernel_for(rows.shape[0]))
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        large = f", {self.large_engine} from {ONEDNN_MIN_ROWS} rows" if self.large_engine else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}{large}, "
                f"reduce_range={self.reduce_range}")


class Int8MLMHead(nn.Module):
    """``MLMHead`` with an int8 transform and, if ``vocabulary``, an int8 copy of the tied vocabulary projection
    (the embedding table itself stays fp32 for the lookups)."""

    def __init__(self, head: MLMHead, vocabulary: bool = True):
        super().__init__()
        self.transform = Int8Linear(head.transform.weight, head.transform.bias)
        self.act, self.norm = head.act, head.norm
        self.word_embeddings, self.bias = head.word_embeddings, head.bias
        self.decoder = Int8Linear(head.word_embeddings.weight, head.bias) if vocabulary else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.act(self.transform(hidden)))
        if self.decoder is not None:
            return self.decoder(hidden)
        return F.linear(hidden, self.word_embeddings.weight, self.bias)


def quantize_int8(model: UnifiedTransformer, vocabulary: bool = True) -> UnifiedTransformer:
    """Swap ``model``'s linear layers for ``Int8Linear`` in place (the model must not be trained afterwards; the
    checkpoint it came from is not touched) and put it in eval mode; returns it. ``vocabulary``: also quantise the
    tied vocabulary projection of the MLM head. Kept on (the CLI has no switch) because it measured better on
    both counts: the SQuAD-QG recipe checkpoint's 340-sentence dev sample, beam 5, batch 64, the decoders taking
    turns batch by batch: fp32 76.3 s, int8 without the projection 50.5 s (1.51x), with it 39.3 s (1.94x);
    BLEU-4 9.19 / 9.22 / 9.41."""
    model.eval()
    for layer in model.layers:
        for owner, name in ((layer.attention, "qkv"), (layer.attention, "out"), (layer, "ffn_in"), (layer, "ffn_out")):
            linear = getattr(owner, name)
            setattr(owner, name, Int8Linear(linear.weight, linear.bias))
    if model.embeddings.project is not None:
        model.embeddings.project = Int8Linear(model.embeddings.project.weight, model.embeddings.project.bias)
    model.head = Int8MLMHead(model.head, vocabulary)
    return model.eval()
