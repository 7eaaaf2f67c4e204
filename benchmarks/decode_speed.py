"""Decoding throughput, measured side by side in one run on one machine.

Same checkpoint (all-MiniLM-L6-v2 init), same sources (the first N of SQuAD-QG dev), a fixed number of generated
tokens (min length = max length, so every system does equal work), batch 16, the systems taking turns batch by
batch:

* ours with the key/value cache,
* ours with --no_cache (recompute the whole sequence every step, as s2s-ft's decoder effectively does),
* HF EncoderDecoderModel (bert2bert warm-started from the same checkpoint) with ``generate``,

at greedy and beam 5. Also reports whether time per step stays flat in generated length (our cached decoder,
step 128 vs step 8). The weights are untrained for the seq2seq task: this measures speed, not quality.

Next to the speeds, the roofline (``roofline.py``): the FLOPs each system executes per sentence (counted on the
first batch), the FLOP/s that makes and the matmul peak measured in the same run; and two upper bounds on our
speed over HF on this machine: ``ceiling_at_peak`` (our FLOPs at the matmul peak vs HF's measured speed) and
``ceiling_without_overhead`` (our measured ratio divided by the profiled share of our time in matmul and attention
kernels: what is left if everything else took no time). Where a bound is below a goal, the goal needs hardware on
which HF is not bound by the same dense work (a GPU, where its per-step overhead dominates), not a faster
implementation.

    python benchmarks/decode_speed.py --data ../shared/data/squad_qg/dev.jsonl [--sentences 64] [--tokens 32]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from s2s_ft import checkpoint
from s2s_ft.data import iter_jsonl, load_tokenizer, special_ids
from s2s_ft.minilm import minilm_dir
from s2s_ft.decoding import SearchConfig, Seq2SeqDecoder

from roofline import ceiling, counted_flops, dense_time_share, matmul_peak, sync


def search_config(tokens, beam, use_cache):
    return SearchConfig(beam_size=beam, max_tgt_length=tokens, min_len=tokens, use_cache=use_cache)


def ours_runner(decoder, tokens, beam, use_cache):
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


def sentences_per_second(runners, batches, encoded, rounds, device):
    """Each system decodes every batch; the systems take turns batch by batch (after one warm-up batch each), so
    that a slow moment of a noisy machine hits them alike instead of falling on whichever system runs then."""
    seconds = dict.fromkeys(runners, 0.0)
    for run in runners.values():
        run(batches[0][:2], {k: v[:2] for k, v in encoded[0].items()})
    for _ in range(rounds):
        for batch, encoded_batch in zip(batches, encoded):
            for name, run in runners.items():
                sync(device)
                start = time.perf_counter()
                run(batch, encoded_batch)
                sync(device)
                seconds[name] += time.perf_counter() - start
    sentences = rounds * sum(map(len, batches))
    return {name: sentences / spent for name, spent in seconds.items()}


def roofline(decoder, hf, batch, encoded_batch, hf_kwargs, tokens, beam, row, peak, device):
    """FLOPs per sentence of one batch, the FLOP/s the measured speeds make, and two ceilings over HF."""
    def run_ours():
        decoder.generate(batch, search_config(tokens, beam, True))

    ours = counted_flops(run_ours) / len(batch)
    with torch.inference_mode():
        theirs = counted_flops(lambda: hf.generate(**encoded_batch, **hf_kwargs)) / len(batch)
    dense_share = dense_time_share(run_ours, device)
    return {"ours_gflop_per_sentence": ours / 1e9, "hf_gflop_per_sentence": theirs / 1e9,
            "ours_fraction_of_peak": ours * row["ours_cached"] / peak,
            "hf_fraction_of_peak": theirs * row["hf_bert2bert"] / peak,
            "ours_dense_time_share": dense_share,
            "ceiling_at_peak": ceiling(ours, peak, row["hf_bert2bert"]),
            "ceiling_without_overhead": row["cached_over_hf"] / dense_share}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model_dir", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_source", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the sentences (default %(default)s)")
    parser.add_argument("--skip_no_cache_beam", action="store_true", help="the slowest cell; skip it on CPU")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    model_dir = args.model_dir or minilm_dir()

    texts = [record["src"] for _, record in iter_jsonl(args.data)][:args.sentences]
    tokenizer = load_tokenizer(model_dir)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:args.max_source - 2] for t in texts]
    batches = [ids[i:i + args.batch_size] for i in range(0, len(ids), args.batch_size)]

    ours, info = checkpoint.load_pretrained("bert", model_dir, min_positions=args.max_source + 160)
    special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
    decoder = Seq2SeqDecoder(ours, special, "pseudo_masked", device)

    from transformers import EncoderDecoderModel, logging as hf_logging
    hf_logging.set_verbosity_error()
    hf = EncoderDecoderModel.from_encoder_decoder_pretrained(model_dir, model_dir).to(device).eval()
    encoded = [tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True, truncation=True,
                         max_length=args.max_source).to(device) for i in range(0, len(texts), args.batch_size)]

    peak = matmul_peak(device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "sentences": len(texts), "tokens": args.tokens, "batch_size": args.batch_size,
               "matmul_peak_tflops": peak / 1e12}
    print(f"matmul peak (fp32) {peak / 1e12:.3f} TFLOP/s", flush=True)
    for beam in (1, 5):
        hf_kwargs = hf_generate_kwargs(tokenizer, args.tokens, beam)
        runners = {"ours_cached": ours_runner(decoder, args.tokens, beam, True)}
        if not (beam > 1 and args.skip_no_cache_beam):
            runners["ours_no_cache"] = ours_runner(decoder, args.tokens, beam, False)
        runners["hf_bert2bert"] = hf_runner(hf, hf_kwargs, args.tokens)
        row = sentences_per_second(runners, batches, encoded, args.rounds, device)
        row["cached_over_hf"] = row["ours_cached"] / row["hf_bert2bert"]
        if "ours_no_cache" in row:
            row["cached_over_no_cache"] = row["ours_cached"] / row["ours_no_cache"]
        row.update(roofline(decoder, hf, batches[0], encoded[0], hf_kwargs, args.tokens, beam, row, peak, device))
        results[f"beam{beam}"] = row
        print(f"beam {beam}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)

    # The fastest of three decodes at each step: a noisy moment then falls on one repeat, not on one window.
    times = [min(repeats) for repeats in zip(*(step_times(decoder, batches[0], 136, device) for _ in range(3)))]
    early, late = statistics.median(times[4:12]), statistics.median(times[124:132])
    results["step_time_ms"] = {"around_step_8": early * 1e3, "around_step_128": late * 1e3,
                               "ratio_128_over_8": late / early}
    print(f"step time: step 8 {early * 1e3:.2f} ms, step 128 {late * 1e3:.2f} ms, ratio {late / early:.2f}")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
