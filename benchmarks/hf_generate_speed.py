"""The Hugging Face wrapper's ``generate()`` against the project's own decoder, on one checkpoint, side by side.

Same sources (the first N of ``--data``), the same fixed number of generated tokens (min length = max length, so both
do equal work), batch by batch in turns, fp32, greedy and beam 5; prints sentences/s of each and the ratio. Both run
the same model code (s2s_ft/hf/ wraps ``UnifiedTransformer``); what differs is the search and the cache:
transformers' generation loop with a ``DynamicCache`` that grows by concatenation and keeps one source copy per
beam, against the project's pre-allocated cache that holds a sentence's source once for all its beams.

    python benchmarks/hf_generate_speed.py --model_path WORK/model/ckpt-2800 --data ../shared/data/squad_qg_du/dev.jsonl
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from s2s_ft.data.reading import iter_jsonl
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.decoding.search import SearchConfig
from s2s_ft.hf import S2sFtForConditionalGeneration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--data", required=True, help="JSONL with a src field")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sources = [row["src"] if isinstance(row["src"], str) else " ".join(row["src"])
               for _, (_, row) in zip(range(args.sentences), iter_jsonl(args.data))]
    ours = load_decoder(args.model_path, device="cpu")
    hf = S2sFtForConditionalGeneration.from_pretrained(args.model_path)
    tokenizer = ours.tokenizer
    tokenizer.padding_side = "left"
    results = {}
    for beam in (1, 5):
        times = {"ours": 0.0, "hf": 0.0}
        for start in range(0, len(sources), args.batch_size):
            chunk = sources[start:start + args.batch_size]
            ids, _ = ours.source_ids(chunk)
            config = SearchConfig(beam_size=beam, max_tgt_length=args.tokens, min_len=args.tokens)
            begin = time.perf_counter()
            ours.decoder.generate(ids, config)
            times["ours"] += time.perf_counter() - begin
            batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                              max_length=ours.max_source_length)
            begin = time.perf_counter()
            hf.generate(**batch, num_beams=beam, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
            times["hf"] += time.perf_counter() - begin
        results[f"beam{beam}"] = {"ours_sentences_per_s": round(len(sources) / times["ours"], 2),
                                  "hf_generate_sentences_per_s": round(len(sources) / times["hf"], 2),
                                  "ours_over_hf": round(times["hf"] / times["ours"], 2)}
    print(json.dumps({"sentences": len(sources), "batch_size": args.batch_size, "tokens": args.tokens,
                      "threads": torch.get_num_threads(), **results}, indent=2))


if __name__ == "__main__":
    main()
