"""Training throughput, measured side by side in one run: target tokens/s of our three fine-tuning methods and of
HF ``EncoderDecoderModel`` (bert2bert warm-started from the same checkpoint), same data, same batch (pseudo-masked
also with ``--copy_mechanism``), plus each
system's achieved FLOP/s against a matmul peak measured in the same run.

The systems take turns (round-robin, ``--rounds`` rounds of ``--steps`` optimizer steps each) so that machine noise
hits all of them alike; the first round is a warm-up and is not counted.

    python benchmarks/train_speed.py --data ../shared/data/squad_qg/train.jsonl [--precision bf16]

FLOPs are counted, not modelled (``roofline.py``): after the timed rounds every system runs ``--steps`` more steps
under torch's FLOP counter (forward and backward matmuls and attention, padding included), which gives its FLOPs per
target token; times its measured tokens/s that is its achieved FLOP/s. ``ceiling_at_peak`` is the most a system's
computation could beat HF by on this machine: its FLOPs per target token at the matmul peak vs HF's measured speed.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from roofline import ceiling, counted_flops, matmul_peak, sync

from s2s_ft.data.packing import Packer
from s2s_ft.data.reading import load_tokenizer, read_pairs, special_ids
from s2s_ft.model import checkpoint
from s2s_ft.model.minilm import minilm_dir
from s2s_ft.training.loss import seq2seq_loss

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Ours:
    def __init__(self, method, model_dir, pairs, args, device, copy_mechanism=False):
        self.model, info = checkpoint.load_pretrained("bert", model_dir, min_positions=512,
                                                      copy_mechanism=copy_mechanism)
        self.model.to(device).train()
        tokenizer = load_tokenizer(model_dir)
        special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
        self.packer = Packer(method, special, target_mask_prob=0.5)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.pairs, self.args, self.device = pairs, args, device
        self.name = f"ours_{method}" + ("_copy" if copy_mechanism else "")
        self.counter = 0

    def step(self):
        size = self.args.batch_size
        examples = [self.pairs[(self.counter * size + j) % len(self.pairs)] for j in range(size)]
        batch = self.packer(examples, torch.Generator().manual_seed(self.counter)).to(self.device)
        self.counter += 1
        dtype = AUTOCAST[self.args.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loss = seq2seq_loss(self.model, self.model(**batch.model_inputs()), batch.labels,
                                input_ids=batch.input_ids, copyable=batch.copyable)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(len(p.target) + 1 for p in examples)


class HFBert2Bert:
    name = "hf_bert2bert"

    def __init__(self, model_dir, pairs, args, device, tokenizer):
        from transformers import EncoderDecoderModel
        from transformers import logging as hf_logging
        hf_logging.set_verbosity_error()
        self.model = EncoderDecoderModel.from_encoder_decoder_pretrained(model_dir, model_dir).to(device).train()
        self.model.config.decoder_start_token_id = tokenizer.cls_token_id
        self.model.config.pad_token_id = tokenizer.pad_token_id
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.pairs, self.args, self.device, self.tokenizer = pairs, args, device, tokenizer
        self.counter = 0

    def step(self):
        size, pad = self.args.batch_size, self.tokenizer.pad_token_id
        examples = [self.pairs[(self.counter * size + j) % len(self.pairs)] for j in range(size)]
        self.counter += 1
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        sources = [[cls, *p.source, sep] for p in examples]
        targets = [[*p.target, sep] for p in examples]

        def pad_to(rows, fill):
            width = max(map(len, rows))
            return torch.tensor([r + [fill] * (width - len(r)) for r in rows], device=self.device)

        input_ids = pad_to(sources, pad)
        labels = pad_to(targets, -100)
        dtype = AUTOCAST[self.args.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loss = self.model(input_ids=input_ids, attention_mask=(input_ids != pad).long(), labels=labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(len(t) for t in targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model_dir", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_source", type=int, default=128)
    parser.add_argument("--max_target", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per system per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--precision", default="fp32", choices=tuple(AUTOCAST))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("--max_rss_mb", type=int, default=6000,
                        help="exit with an error when the process's peak resident memory exceeds this")
    args = parser.parse_args()
    device = torch.device(args.device)
    model_dir = args.model_dir or minilm_dir()
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = read_pairs(args.data, tokenizer, args.max_source, args.max_target)
    pairs = pairs[:args.examples]

    systems = [Ours(m, model_dir, pairs, args, device) for m in ("causal", "masked", "pseudo_masked")]
    systems.append(Ours("pseudo_masked", model_dir, pairs, args, device, copy_mechanism=True))
    systems.append(HFBert2Bert(model_dir, pairs, args, device, tokenizer))
    totals = {s.name: [0, 0.0] for s in systems}  # target tokens, seconds
    for round_index in range(args.rounds):
        for system in systems:
            sync(device)
            start = time.perf_counter()
            tokens = sum(system.step() for _ in range(args.steps))
            sync(device)
            if round_index:  # round 0 warms up
                totals[system.name][0] += tokens
                totals[system.name][1] += time.perf_counter() - start
    flops_per_token = {}
    for system in systems:  # untimed: the counter slows every operation down
        tokens = []
        flops = counted_flops(lambda: tokens.extend(system.step() for _ in range(args.steps)))
        flops_per_token[system.name] = flops / sum(tokens)
    peak = matmul_peak(device, AUTOCAST[args.precision] or torch.float32)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "precision": args.precision, "batch_size": args.batch_size, "matmul_peak_tflops": peak / 1e12}
    hf_rate = totals["hf_bert2bert"][0] / totals["hf_bert2bert"][1]
    for name, (tokens, seconds) in totals.items():
        rate = tokens / seconds
        row = {"target_tokens_per_s": rate, "over_hf": rate / hf_rate,
               "gflop_per_target_token": flops_per_token[name] / 1e9,
               "tflops": flops_per_token[name] * rate / 1e12,
               "fraction_of_peak": flops_per_token[name] * rate / peak,
               "ceiling_at_peak": ceiling(flops_per_token[name], peak, hf_rate)}
        results[name] = row
        print(f"{name:20s} " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print(f"matmul peak {peak / 1e12:.3f} TFLOP/s ({args.precision})")
    # the whole process (all systems, the FLOP counting included): what a machine must hold to run this benchmark
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"peak resident memory {results['peak_rss_mb']} MB (bound {args.max_rss_mb} MB)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if results["peak_rss_mb"] > args.max_rss_mb:
        raise SystemExit(f"error: peak resident memory {results['peak_rss_mb']} MB is over --max_rss_mb "
                         f"{args.max_rss_mb}")


if __name__ == "__main__":
    main()
