"""Training throughput, measured side by side in one run: target tokens/s of our three fine-tuning methods and of
HF ``EncoderDecoderModel`` (bert2bert warm-started from the same checkpoint), same data, same batch, plus our
achieved FLOP/s against a matmul peak measured in the same run.

The systems take turns (round-robin, ``--rounds`` rounds of ``--steps`` optimizer steps each) so that machine noise
hits all of them alike; the first round is a warm-up and is not counted.

    python benchmarks/train_speed.py --data ../shared/data/squad_qg/train.jsonl [--precision bf16]

Model FLOPs (ours) per optimizer step = 3 x forward, forward = 2 x (matmul MACs): per layer and real-or-padded token
4H^2 (q, k, v, out) + 2HI (FFN), attention 2 x H x Lq x Lk per sequence (scores and values), and the MLM head
H x E + E x V on predicted tokens only.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from s2s_ft import checkpoint
from s2s_ft.data import load_tokenizer, read_pairs, special_ids
from s2s_ft.datasets.minilm import minilm_dir
from s2s_ft.loss import seq2seq_loss
from s2s_ft.packing import Packer

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device, dtype, size=2048, repeats=10):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def our_flops(config, batch) -> float:
    """Forward + backward FLOPs of one packed batch (see the module docstring)."""
    h, i, e, v = config.hidden_size, config.intermediate_size, config.word_embedding_size, config.vocab_size
    b, length = batch.input_ids.shape
    per_token = config.num_hidden_layers * (4 * h * h + 2 * h * i)
    attention = config.num_hidden_layers * 2 * h * length * length * b
    head = batch.num_predicted * (h * e + e * v)
    return 3 * 2 * (b * length * per_token + attention + head)


class Ours:
    def __init__(self, method, model_dir, pairs, args, device):
        self.model, info = checkpoint.load_pretrained("bert", model_dir, min_positions=512)
        self.model.to(device).train()
        tokenizer = load_tokenizer(model_dir)
        special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
        self.packer = Packer(method, special, target_mask_prob=0.5)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.pairs, self.args, self.device, self.name = pairs, args, device, f"ours_{method}"
        self.counter, self.flops = 0, 0.0

    def step(self):
        size = self.args.batch_size
        examples = [self.pairs[(self.counter * size + j) % len(self.pairs)] for j in range(size)]
        batch = self.packer(examples, torch.Generator().manual_seed(self.counter)).to(self.device)
        self.counter += 1
        dtype = AUTOCAST[self.args.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loss = seq2seq_loss(self.model, self.model(**batch.model_inputs()), batch.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.flops += our_flops(self.model.config, batch)
        return sum(len(p.target) + 1 for p in examples)


class HFBert2Bert:
    name = "hf_bert2bert"

    def __init__(self, model_dir, pairs, args, device, tokenizer):
        from transformers import EncoderDecoderModel, logging as hf_logging
        hf_logging.set_verbosity_error()
        self.model = EncoderDecoderModel.from_encoder_decoder_pretrained(model_dir, model_dir).to(device).train()
        self.model.config.decoder_start_token_id = tokenizer.cls_token_id
        self.model.config.pad_token_id = tokenizer.pad_token_id
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.pairs, self.args, self.device, self.tokenizer = pairs, args, device, tokenizer
        self.counter, self.flops = 0, 0.0

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
    args = parser.parse_args()
    device = torch.device(args.device)
    model_dir = args.model_dir or minilm_dir()
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = read_pairs(args.data, tokenizer, args.max_source, args.max_target)
    pairs = pairs[:args.examples]

    systems = [Ours(m, model_dir, pairs, args, device) for m in ("causal", "masked", "pseudo_masked")]
    systems.append(HFBert2Bert(model_dir, pairs, args, device, tokenizer))
    totals = {s.name: [0, 0.0] for s in systems}  # target tokens, seconds
    flops_counted = {s.name: 0.0 for s in systems}
    for round_index in range(args.rounds):
        for system in systems:
            flops_before = system.flops
            sync(device)
            start = time.perf_counter()
            tokens = sum(system.step() for _ in range(args.steps))
            sync(device)
            if round_index:  # round 0 warms up
                totals[system.name][0] += tokens
                totals[system.name][1] += time.perf_counter() - start
                flops_counted[system.name] += system.flops - flops_before
    peak = matmul_peak(device, AUTOCAST[args.precision] or torch.float32)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "precision": args.precision, "batch_size": args.batch_size, "matmul_peak_tflops": peak / 1e12}
    hf_rate = totals["hf_bert2bert"][0] / totals["hf_bert2bert"][1]
    for name, (tokens, seconds) in totals.items():
        row = {"target_tokens_per_s": tokens / seconds, "over_hf": tokens / seconds / hf_rate}
        if flops_counted[name]:
            row["tflops"] = flops_counted[name] / seconds / 1e12
            row["fraction_of_peak"] = flops_counted[name] / seconds / peak
        results[name] = row
        print(f"{name:20s} " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print(f"matmul peak {peak / 1e12:.3f} TFLOP/s ({args.precision})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
