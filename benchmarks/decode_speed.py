"""Decoding throughput, measured side by side in one run on one machine.

Same checkpoint (all-MiniLM-L6-v2 init), same sources (the first N of SQuAD-QG dev), a fixed number of generated
tokens (min length = max length, so every system does equal work), batch 16:

* ours with the key/value cache,
* ours with --no_cache (recompute the whole sequence every step, as s2s-ft's decoder effectively does),
* HF EncoderDecoderModel (bert2bert warm-started from the same checkpoint) with ``generate``,

at greedy and beam 5. Also reports whether time per step stays flat in generated length (our cached decoder,
step 128 vs step 8). The weights are untrained for the seq2seq task: this measures speed, not quality.

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
from s2s_ft.datasets.minilm import minilm_dir
from s2s_ft.decoding import SearchConfig, Seq2SeqDecoder


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours(decoder, batches, tokens, beam, use_cache, device):
    config = SearchConfig(beam_size=beam, max_tgt_length=tokens, min_len=tokens, use_cache=use_cache)
    decoder.generate(batches[0][:2], config)  # warm-up
    sync(device)
    start = time.perf_counter()
    produced = 0
    for batch in batches:
        for hyps in decoder.generate(batch, config):
            assert len(hyps[0].tokens) == tokens  # equal work: every hypothesis runs to the fixed length
            produced += 1
    sync(device)
    return produced / (time.perf_counter() - start)


def time_hf(model, tokenizer, texts, batch_size, tokens, beam, device, max_source):
    encoded = [tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                         max_length=max_source).to(device) for i in range(0, len(texts), batch_size)]
    kwargs = dict(num_beams=beam, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                  early_stopping=True, decoder_start_token_id=tokenizer.cls_token_id,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    with torch.inference_mode():
        model.generate(**{k: v[:2] for k, v in encoded[0].items()}, **kwargs)  # warm-up
        sync(device)
        start = time.perf_counter()
        for batch in encoded:
            output = model.generate(**batch, **kwargs)
            assert output.shape[1] >= tokens
        sync(device)
    return len(texts) / (time.perf_counter() - start)


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

    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "sentences": len(texts), "tokens": args.tokens, "batch_size": args.batch_size}
    for beam in (1, 5):
        row = {"ours_cached": time_ours(decoder, batches, args.tokens, beam, True, device)}
        if not (beam > 1 and args.skip_no_cache_beam):
            row["ours_no_cache"] = time_ours(decoder, batches, args.tokens, beam, False, device)
        row["hf_bert2bert"] = time_hf(hf, tokenizer, texts, args.batch_size, args.tokens, beam, device,
                                      args.max_source)
        row["cached_over_hf"] = row["ours_cached"] / row["hf_bert2bert"]
        if "ours_no_cache" in row:
            row["cached_over_no_cache"] = row["ours_cached"] / row["ours_no_cache"]
        results[f"beam{beam}"] = row
        print(f"beam {beam}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)

    times = step_times(decoder, batches[0], 136, device)
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
