"""Where a decoding call's time goes: torch.profiler over our cached decoder at one batch size and beam (default the
CTranslate2 comparison's batch 16, beam 5, 32 forced tokens), every operator's self time put in one of a few kinds,
and what is left of the wall time (Python, the interpreter between kernels, the profiler's own cost) shown as such.

    python benchmarks/decode_profile.py --data ../shared/data/squad_qg_du/dev.jsonl [--model_path CKPT]
        [--batch 16 --beam 5 --tokens 32 --precision fp32|bf16 --quantize none|int8 --threads 2] [--top 15]

Kinds: matmul (linear layers and the vocabulary projection, fp32 or int8), attention (SDPA and its parts), mask
(building the attention mask: the rank rule, the beams' visible columns), cache (writing and reordering the
key/value cache), search (top-k, scores, the n-gram and length constraints, moving small tables to the host),
other operators, and the rest of the wall time. Timings of this machine only: name the CPU beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

KINDS = {  # operator name prefixes, first match wins
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul", "quantized::linear",
               "aten::_weight_int8pack_mm", "aten::_int_mm", "mkldnn", "onednn"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_flash_attention",
                  "aten::_efficient_attention", "aten::softmax", "aten::_softmax", "aten::baddbmm"),
    "mask": ("aten::le", "aten::eq", "aten::bitwise_or", "aten::__or__", "aten::logical_or", "aten::bitwise_and",
             "aten::__and__", "aten::logical_and", "aten::scatter", "aten::arange", "aten::repeat", "aten::all"),
    "cache": ("aten::index_select", "aten::copy_", "aten::index_put", "aten::slice_scatter"),
    "search": ("aten::topk", "aten::_local_scalar_dense", "aten::item", "aten::isin", "aten::unfold",
               "aten::log_softmax", "aten::_log_softmax", "aten::masked_fill", "aten::index", "aten::gather",
               "aten::div", "aten::remainder", "aten::floor_divide", "aten::add_", "aten::tolist"),
}


def kind_of(name: str) -> str:
    return next((kind for kind, prefixes in KINDS.items() if name.startswith(prefixes)), "other operators")


def main(argv=None) -> None:
    import torch
    from decode_speed import load_ours, ours_runner, read_sources, source_ids
    from torch.profiler import ProfilerActivity, profile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model_path", default=None, help="a fine-tuned checkpoint (default: the base MiniLM)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--quantize", default="none", choices=("none", "int8"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="operators listed by self time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fp32, int8, tokenizer = load_ours(args.model_path, None, 128 + args.tokens, torch.device("cpu"))
    decoder = int8 if args.quantize == "int8" else fp32
    if args.precision == "bf16":
        decoder.autocast_dtype = torch.bfloat16
    batch = source_ids(tokenizer, read_sources(args.data, args.batch, distinct=True), 128)
    run = ours_runner(decoder, args.tokens, args.beam)
    run(batch, None)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        run(batch, None)
        wall_ms = (time.perf_counter() - start) * 1e3
    spent: dict[str, float] = {}
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in events:
        spent[kind_of(event.key)] = spent.get(kind_of(event.key), 0.0) + event.self_cpu_time_total / 1e3
    spent["Python and the rest"] = wall_ms - sum(spent.values())
    print(f"batch {args.batch}, beam {args.beam}, {args.tokens} tokens, {args.precision}, quantize {args.quantize}, "
          f"{args.threads} threads: {wall_ms:.0f} ms profiled ({wall_ms / args.tokens:.1f} ms per step)")
    for kind, ms in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {kind:22s} {ms:8.1f} ms  {100 * ms / wall_ms:5.1f} %")
    print(f"top {args.top} operators by self time:")
    for event in events[:args.top]:
        print(f"  {event.key:45s} {event.self_cpu_time_total / 1e3:8.1f} ms  {event.count:6d} calls  "
              f"[{kind_of(event.key)}]")


if __name__ == "__main__":
    main()
