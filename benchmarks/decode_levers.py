"""What each decoding lever is worth, measured side by side in one run: the same sources decoded with a lever on and
off, the variants taking turns batch by batch (``decode_speed.timed_turns``), at one batch size and beam (default
batch 16, beam 5, 32 forced tokens: the CTranslate2 comparison's setting).

    python benchmarks/decode_levers.py --data ../shared/data/squad_qg_du/dev.jsonl [--model_path CKPT]
        [--batch 16 --beam 5 --tokens 32 --sentences 64 --rounds 3 --threads 2] [--levers mask,int8_engine]

Levers (each a pair of variants, the first the baseline):

* ``mask``: the attention mask handed to SDPA as a boolean (converted to an additive mask inside every layer) vs
  additive, made once per forward (the model's way on a CPU);
* ``int8_engine``: ``--quantize int8`` on fbgemm's kernels vs oneDNN's (torch's "onednn" quantized engine; on CPUs
  with AMX it multiplies int8 on the tile unit) vs the default (fbgemm, and oneDNN for calls of 32 rows or more
  where the CPU has AMX int8: s2s_ft/model/quantize.py);
* ``attention``: SDPA's fused kernel (the model's way when decoding) vs the same attention unfused (the way a CPU
  training step computes it, faster there: benchmarks/train_attention_speed.py);
* ``bf16``: fp32 vs bf16 autocast (native on CPUs with avx512_bf16 / AMX; another precision: reported beside fp32,
  never instead of it).

Reported: sentences/s of each variant and the ratio. Name the CPU (lscpu) beside any figure you publish.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def boolean_mask(model):
    """The model with its attention mask handed over as a boolean, as before (every SDPA call converts it)."""
    from s2s_ft.model.transformer import attention_allowed

    original = model._attention_mask

    def as_boolean(key_rank, query_rank, key_positions, query_positions, query_offset, dtype, visible=None):
        mask = original(key_rank, query_rank, key_positions, query_positions, query_offset, dtype, visible)
        if mask is None or model.rel_pos_bias is not None:
            return mask
        allowed = attention_allowed(key_rank, query_rank, query_offset)
        return allowed & visible[:, None] if visible is not None else allowed

    model._attention_mask = as_boolean
    return model


class UnfusedAttention:
    """A decoder whose model computes attention unfused (``transformer.unfused_attention``) during its calls."""

    def __init__(self, decoder):
        self.decoder = decoder

    def generate(self, *args, **kwargs):
        from s2s_ft.model import transformer

        fused, transformer.attention = transformer.attention, transformer.unfused_attention
        try:
            return list(self.decoder.generate(*args, **kwargs))
        finally:
            transformer.attention = fused


@contextlib.contextmanager
def quantized_engine(name: str):
    """int8 layers packed for engine ``name`` (``S2S_FT_INT8_ENGINE``; the packed weights carry their kernel)."""
    from s2s_ft.model.quantize import ENGINE_ENV

    before = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENGINE_ENV)
        else:
            os.environ[ENGINE_ENV] = before


def variants(lever: str, fp32, special, method):
    """(name, decoder) pairs of one lever, the baseline first."""
    import torch

    from s2s_ft.decoding.search import Seq2SeqDecoder
    from s2s_ft.model.quantize import quantize_int8

    def decoder(model, dtype=None):
        return Seq2SeqDecoder(model, special, method, "cpu", dtype)

    if lever == "mask":
        return [("mask: boolean in every layer", decoder(boolean_mask(copy.deepcopy(fp32)))),
                ("mask: additive once", decoder(fp32))]
    if lever == "int8_engine":
        made = []
        for engine in ("fbgemm", "onednn"):
            with quantized_engine(engine):  # weights are packed for the engine they run on
                made.append((f"int8 on {engine}", decoder(quantize_int8(copy.deepcopy(fp32)))))
        # the default: fbgemm, and oneDNN for calls of ONEDNN_MIN_ROWS rows or more where the CPU has AMX int8
        made.append(("int8, the default", decoder(quantize_int8(copy.deepcopy(fp32)))))
        return made
    if lever == "bf16":
        return [("fp32", decoder(fp32)), ("bf16 autocast", decoder(fp32, torch.bfloat16))]
    if lever == "attention":
        return [("attention: SDPA", decoder(fp32)), ("attention: unfused", UnfusedAttention(decoder(fp32))),
                ("bf16, attention: SDPA", decoder(fp32, torch.bfloat16)),
                ("bf16, attention: unfused", UnfusedAttention(decoder(fp32, torch.bfloat16)))]
    raise SystemExit(f"unknown lever {lever!r}")


def main(argv=None) -> None:
    import torch
    from decode_speed import load_ours, read_sources, search_config, source_ids, timed_turns

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--data", required=True)
    add("--model_path", default=None, help="a fine-tuned checkpoint (default: the base MiniLM, pseudo-masked)")
    add("--batch", type=int, default=16)
    add("--beam", type=int, default=5)
    add("--tokens", type=int, default=32)
    add("--sentences", type=int, default=64)
    add("--rounds", type=int, default=3)
    add("--threads", type=int, default=2)
    add("--levers", default="mask,int8_engine,bf16")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fp32, _, tokenizer = load_ours(args.model_path, None, 128 + args.tokens, torch.device("cpu"))
    special, method = fp32.special, fp32.method
    sources = source_ids(tokenizer, read_sources(args.data, args.sentences, distinct=True), 128)
    batches = [sources[i:i + args.batch] for i in range(0, len(sources), args.batch)]
    config = search_config(args.tokens, args.beam)
    print(f"batch {args.batch}, beam {args.beam}, {args.tokens} forced tokens, {len(sources)} sentences, "
          f"{args.rounds} rounds, {args.threads} threads")
    for lever in args.levers.split(","):
        pairs = variants(lever, fp32.model, special, method)

        def runner(decoder):
            def run(batch, _encoded):
                for hyps in decoder.generate(batch, config):
                    assert len(hyps[0].tokens) == args.tokens
            return run

        runners = {name: runner(decoder) for name, decoder in pairs}
        seconds = timed_turns(runners, batches, [{}] * len(batches), args.rounds, torch.device("cpu"))
        speeds = {name: args.rounds * len(sources) / sum(spent) for name, spent in seconds.items()}
        base = next(iter(speeds.values()))
        for name, speed in speeds.items():
            print(f"  {lever:12s} {name:32s} {speed:8.2f} sentences/s  {speed / base:5.2f}x")


if __name__ == "__main__":
    main()
