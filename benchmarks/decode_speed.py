"""Decoding speed, measured side by side in one run on one machine; one run prints every figure.

Same sources (the first N of SQuAD-QG dev), a fixed number of generated tokens (min length = max length, so every
system does equal work), the systems taking turns batch by batch (sentence by sentence at batch 1), at greedy and
beam 5:

* ours fp32 with the key/value cache (``ours_fp32``),
* ours with ``--quantize int8`` (``ours_int8``: dynamic int8 linear layers, s2s_ft/model/quantize.py; CPU only),
* ours with --no_cache (recompute the whole sequence every step, as s2s-ft's decoder effectively does),
* HF EncoderDecoderModel (bert2bert warm-started from ``--model_dir``) with ``generate``, fp32.

Three measurements:

1. **Throughput** at ``--batch_size`` (16): sentences/s of each system and the ratios.
2. **Batch-1 latency** (the interactive case): ``--latency_sentences`` sentences decoded one at a time, p50 and p95
   milliseconds per sentence and the p50 time per decoding step (sentence time / generated tokens), for ours fp32,
   ours int8 and HF.
3. **Time per step vs generated length**: our cached decoder (fp32 and int8), step ~8 vs the last steps of a
   ``--step_time_tokens`` decode (default 136: step 128).

Ours decodes ``--model_path`` (a fine-tuned checkpoint, e.g. one that really generates, for the int8 figures) or,
without it, the base ``--model_dir`` (default all-MiniLM-L6-v2) as a pseudo-masked model. HF's bert2bert is always
warm-started from ``--model_dir``: its speed does not depend on fine-tuned weights, only on the architecture, which
must be the checkpoint's (MiniLM-L6-H384 for this project's recipe).

Next to the throughput, the roofline (``roofline.py``), for ours fp32 and HF (the FLOP counter does not see int8
kernels): the FLOPs each system executes per sentence (counted on the first batch), the FLOP/s that makes and the
matmul peak measured in the same run; and two upper bounds on our fp32 speed over HF on this machine:
``ceiling_at_peak`` (our FLOPs at the fp32 matmul peak vs HF's measured speed) and ``ceiling_without_overhead`` (our
measured ratio divided by the profiled share of our time in matmul and attention kernels: what is left if
everything else took no time). int8 is outside these bounds: it changes the arithmetic, not its efficiency.

    python benchmarks/decode_speed.py --data ../shared/data/squad_qg/dev.jsonl --model_path runs/recipe1/model/ckpt-2800
    python benchmarks/decode_speed.py --data ... --sentences 8 --tokens 8 --latency_sentences 4 \
        --step_time_tokens 24 --skip_no_cache          # a smoke run
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from roofline import ceiling, counted_flops, dense_time_share, matmul_peak, sync

from s2s_ft.data.packing import SpecialIds
from s2s_ft.data.reading import iter_jsonl, load_tokenizer, special_ids
from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder
from s2s_ft.model import checkpoint
from s2s_ft.model.minilm import minilm_dir
from s2s_ft.model.quantize import quantize_int8


def search_config(tokens, beam, use_cache=True):
    return SearchConfig(beam_size=beam, max_tgt_length=tokens, min_len=tokens, use_cache=use_cache)


def ours_runner(decoder, tokens, beam, use_cache=True):
    config = search_config(tokens, beam, use_cache)

    def run(batch, _encoded):
        for hyps in decoder.generate(batch, config):
            assert len(hyps[0].tokens) == tokens  # equal work: every hypothesis runs to the fixed length
    return run


def hf_generate_kwargs(tokenizer, tokens, beam):
    return dict(num_beams=beam, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                early_stopping=True, decoder_start_token_id=tokenizer.cls_token_id,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)


def hf_runner(model, kwargs, tokens):
    def run(_batch, encoded):
        with torch.inference_mode():
            assert model.generate(**encoded, **kwargs).shape[1] >= tokens
    return run


def timed_turns(runners, batches, encoded, rounds, device) -> dict[str, list[float]]:
    """Seconds of each system on each batch; the systems take turns batch by batch (after one warm-up call each),
    so that a slow moment of a noisy machine hits them alike instead of falling on whichever system runs then."""
    seconds = {name: [] for name in runners}
    for run in runners.values():
        run(batches[0][:2], {k: v[:2] for k, v in encoded[0].items()})
    for _ in range(rounds):
        for batch, encoded_batch in zip(batches, encoded):
            for name, run in runners.items():
                sync(device)
                start = time.perf_counter()
                run(batch, encoded_batch)
                sync(device)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def sentences_per_second(runners, batches, encoded, rounds, device) -> dict[str, float]:
    seconds = timed_turns(runners, batches, encoded, rounds, device)
    sentences = rounds * sum(map(len, batches))
    return {name: sentences / sum(spent) for name, spent in seconds.items()}


def percentile(values, q):
    """The q-th percentile (0-100), linear between the sorted values (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def batch1_latency(runners, sentences, encoded_one, tokens, device) -> dict[str, dict[str, float]]:
    """p50 / p95 milliseconds per sentence decoded alone, and the p50 per decoding step, per system; the systems
    take turns sentence by sentence."""
    seconds = timed_turns(runners, [[s] for s in sentences], encoded_one, 1, device)
    return {name: {"p50_ms": percentile(spent, 50) * 1e3, "p95_ms": percentile(spent, 95) * 1e3,
                   "step_ms": percentile(spent, 50) * 1e3 / tokens} for name, spent in seconds.items()}


def roofline(decoder, hf, batch, encoded_batch, hf_kwargs, tokens, beam, row, peak, device):
    """FLOPs per sentence of one batch (ours fp32, HF), the FLOP/s the measured speeds make, two ceilings over HF."""
    def run_ours():
        decoder.generate(batch, search_config(tokens, beam))

    ours = counted_flops(run_ours) / len(batch)
    with torch.inference_mode():
        theirs = counted_flops(lambda: hf.generate(**encoded_batch, **hf_kwargs)) / len(batch)
    dense_share = dense_time_share(run_ours, device)
    return {"ours_gflop_per_sentence": ours / 1e9, "hf_gflop_per_sentence": theirs / 1e9,
            "ours_fraction_of_peak": ours * row["ours_fp32"] / peak,
            "hf_fraction_of_peak": theirs * row["hf_bert2bert"] / peak,
            "ours_dense_time_share": dense_share,
            "ceiling_at_peak": ceiling(ours, peak, row["hf_bert2bert"]),
            "ceiling_without_overhead": row["fp32_over_hf"] / dense_share}


def step_times(decoder, sources, steps, device):
    """Wall time of each decoding step (the time between consecutive model calls)."""
    stamps = []

    def stamp(*_):
        sync(device)
        stamps.append(time.perf_counter())

    handle = decoder.model.register_forward_pre_hook(stamp)
    try:
        decoder.generate(sources, SearchConfig(beam_size=1, max_tgt_length=steps, min_len=steps))
    finally:
        handle.remove()
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]  # stamps[0] is the source encoding


def step_time_flatness(decoder, sources, steps, device) -> dict[str, float]:
    """Median step time around step 8 and over the last 8 steps; the fastest of three decodes at each step, so that
    a noisy moment falls on one repeat, not on one window."""
    times = [min(repeats) for repeats in zip(*(step_times(decoder, sources, steps, device) for _ in range(3)))]
    early, late = statistics.median(times[4:12]), statistics.median(times[-8:])
    return {"around_step_8": early * 1e3, f"around_step_{steps - 8}": late * 1e3, "ratio_late_over_8": late / early}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data", required=True)
    add("--model_dir", default=None, help="base checkpoint of HF bert2bert (and of ours without --model_path); "
                                          "default: the packaged all-MiniLM-L6-v2")
    add("--model_path", default=None, help="a fine-tuned checkpoint for ours (default: the base, pseudo-masked)")
    add("--sentences", type=int, default=64, help="throughput: sources decoded per round")
    add("--tokens", type=int, default=32, help="generated tokens per sentence (forced)")
    add("--batch_size", type=int, default=16)
    add("--latency_sentences", type=int, default=32, help="batch-1 latency: sentences (0 skips it)")
    add("--step_time_tokens", type=int, default=136, help="length of the step-time decodes (>= 20; 0 skips it)")
    add("--max_source", type=int, default=128)
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--rounds", type=int, default=1, help="throughput: passes over the sentences (default %(default)s)")
    add("--skip_no_cache_beam", action="store_true", help="the slowest cell; skip it on CPU")
    add("--skip_no_cache", action="store_true", help="no --no_cache column at all (smoke runs)")
    add("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if 0 < args.step_time_tokens < 20:
        parser.error("--step_time_tokens must be >= 20 (step 8 and the last 8 steps) or 0")
    return args


def load_ours(model_path, model_dir, min_positions, device, method="pseudo_masked"):
    """(fp32 decoder, int8 decoder or None on a GPU, tokenizer) of ``model_path`` (fine-tuned) or, without it, the
    base checkpoint ``model_dir`` (default all-MiniLM-L6-v2) decoded as ``method`` would (a pseudo-masked or masked
    step feeds two tokens per hypothesis, a causal step one) with at least ``min_positions`` positions."""
    if model_path:
        model, settings = checkpoint.load_finetuned(model_path)
        tokenizer = load_tokenizer(model_path)
        special, method = SpecialIds(**settings["special_ids"]), settings["fine_tune"]
    else:
        model_dir = model_dir or minilm_dir()
        model, info = checkpoint.load_pretrained("bert", model_dir, min_positions=min_positions)
        tokenizer = load_tokenizer(model_dir)
        special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
    int8 = None
    if device.type == "cpu":  # int8 kernels are CPU-only; the copy keeps the fp32 model intact
        int8 = Seq2SeqDecoder(quantize_int8(copy.deepcopy(model)), special, method, device)
    return Seq2SeqDecoder(model, special, method, device), int8, tokenizer


def read_sources(path, count, distinct=False) -> list[str]:
    """The first ``count`` sources (``src``) of a JSONL file; ``distinct``: the first ``count`` different ones."""
    texts, seen = [], set()
    for _, record in iter_jsonl(path):
        if len(texts) == count:
            break
        if not (distinct and record["src"] in seen):
            texts.append(record["src"])
            seen.add(record["src"])
    return texts


def source_ids(tokenizer, texts, max_source) -> list[list[int]]:
    """Each source's word-piece ids without special tokens, cut to fit [CLS] source [SEP] in ``max_source``."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"][:max_source - 2] for t in texts]


def load_hf_bert2bert(model_dir, device, vocab_size):
    """HF EncoderDecoderModel warm-started from ``model_dir`` twice (bert2bert), in eval mode on ``device``."""
    from transformers import EncoderDecoderModel
    from transformers import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf = EncoderDecoderModel.from_encoder_decoder_pretrained(model_dir, model_dir).to(device).eval()
    if hf.config.encoder.vocab_size != vocab_size:  # one tokenizer feeds both systems
        raise SystemExit(f"--model_dir {model_dir} has another vocabulary than the decoded checkpoint")
    return hf


def throughput(args, ours, int8, hf, tokenizer, batches, encoded, peak, device) -> dict:
    results = {}
    for beam in (1, 5):
        hf_kwargs = hf_generate_kwargs(tokenizer, args.tokens, beam)
        runners = {"ours_fp32": ours_runner(ours, args.tokens, beam)}
        if int8 is not None:
            runners["ours_int8"] = ours_runner(int8, args.tokens, beam)
        if not (args.skip_no_cache or (beam > 1 and args.skip_no_cache_beam)):
            runners["ours_no_cache"] = ours_runner(ours, args.tokens, beam, use_cache=False)
        runners["hf_bert2bert"] = hf_runner(hf, hf_kwargs, args.tokens)
        row = sentences_per_second(runners, batches, encoded, args.rounds, device)
        row["fp32_over_hf"] = row["ours_fp32"] / row["hf_bert2bert"]
        if "ours_int8" in row:
            row["int8_over_hf"] = row["ours_int8"] / row["hf_bert2bert"]
            row["int8_over_fp32"] = row["ours_int8"] / row["ours_fp32"]
        if "ours_no_cache" in row:
            row["fp32_over_no_cache"] = row["ours_fp32"] / row["ours_no_cache"]
        row.update(roofline(ours, hf, batches[0], encoded[0], hf_kwargs, args.tokens, beam, row, peak, device))
        results[f"beam{beam}"] = row
        print(f"throughput, batch {args.batch_size}, beam {beam} (sentences/s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return results


def latency(args, ours, int8, hf, tokenizer, ids, texts, device) -> dict:
    results = {}
    sentences = ids[:args.latency_sentences]
    encoded_one = [tokenizer([t], return_tensors="pt", truncation=True, max_length=args.max_source).to(device)
                   for t in texts[:args.latency_sentences]]
    for beam in (1, 5):
        runners = {"ours_fp32": ours_runner(ours, args.tokens, beam)}
        if int8 is not None:
            runners["ours_int8"] = ours_runner(int8, args.tokens, beam)
        runners["hf_bert2bert"] = hf_runner(hf, hf_generate_kwargs(tokenizer, args.tokens, beam), args.tokens)
        row = batch1_latency(runners, sentences, encoded_one, args.tokens, device)
        results[f"beam{beam}"] = row
        print(f"latency, batch 1, beam {beam}, {len(sentences)} sentences: " + "; ".join(
            f"{name} p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, {r['step_ms']:.2f} ms/step"
            for name, r in row.items()), flush=True)
    return results


def main():
    args = parse_args()
    device = torch.device(args.device)
    model_dir = args.model_dir or minilm_dir()
    needed = args.max_source + max(args.tokens, args.step_time_tokens) + 32
    ours, int8, tokenizer = load_ours(args.model_path, args.model_dir, needed, device)
    texts = read_sources(args.data, max(args.sentences, args.latency_sentences))
    ids = source_ids(tokenizer, texts, args.max_source)
    count = min(args.sentences, len(ids))
    batches = [ids[i:i + args.batch_size] for i in range(0, count, args.batch_size)]

    hf = load_hf_bert2bert(model_dir, device, ours.model.config.vocab_size)
    encoded = [tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True, truncation=True,
                         max_length=args.max_source).to(device) for i in range(0, count, args.batch_size)]

    peak = matmul_peak(device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "model": args.model_path or model_dir, "sentences": count,
               "tokens": args.tokens, "batch_size": args.batch_size, "matmul_peak_tflops": peak / 1e12}
    print(f"ours: {results['model']}; HF bert2bert from {model_dir}; matmul peak (fp32) {peak / 1e12:.3f} TFLOP/s",
          flush=True)
    results["throughput"] = throughput(args, ours, int8, hf, tokenizer, batches, encoded, peak, device)
    if args.latency_sentences:
        results["latency_batch1"] = latency(args, ours, int8, hf, tokenizer, ids, texts, device)
    if args.step_time_tokens:
        results["step_time_ms"] = {}
        for name, decoder in (("ours_fp32", ours), ("ours_int8", int8)):
            if decoder is not None:
                row = step_time_flatness(decoder, batches[0], args.step_time_tokens, device)
                results["step_time_ms"][name] = row
                print(f"step time, {name}, greedy batch {len(batches[0])}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
