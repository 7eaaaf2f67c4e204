"""MASS's low-resource claim at small scale, plus the fragment-only target's throughput saving.

A small unified model (4 layers, hidden 256, 4 heads, a cased WordPiece vocabulary trained here on the monolingual
sides) is

  1. MASS-pre-trained on the monolingual sides of Multi30k (train.en.txt + train.de.txt, mixed),
  2. fine-tuned on the first N en->de pairs of train.en-de.jsonl (default 2,000),

against the same model fine-tuned from random init with the same fine-tuning budget; both decode the 1,000-sentence
test set (test2016) with beam search and are scored with sacreBLEU. Separately, MASS pre-training throughput is
measured side by side with the fragment-only target (ours, the default) and the paper's full-length decoder input
(``--mass_full_target``: [MASK] at every non-fragment position, the same predicted tokens).

How en and de are mixed: one stream of sentences from both languages, shuffled together by the trainer; no
language embedding. The decoder learns which language to write from the fine-tuning pairs (the source is always
English, the target always German); MASS itself only ever reconstructs a sentence in its own language.

Every stage is resumable: a finished stage (its final checkpoint, predictions or scores exist) is skipped, and an
interrupted training run resumes from its last checkpoint. All outputs live under --work_dir (outside the repo
in the git-ignored runs/ by default); the data are only read.

    python benchmarks/mass_low_resource.py --data ../shared/data/multi30k --work_dir runs/mass_low_resource
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from s2s_ft.fileio import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the multi30k folder (train.en.txt, train.de.txt, *.en-de.jsonl)")
    p.add_argument("--work_dir", default=os.path.join("runs", "mass_low_resource"),
                   help="all outputs (default %(default)s, relative to the current directory; /runs/ is git-ignored)")
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--fine_tune", default="causal", choices=("causal", "pseudo_masked"),
                   help="target packing for both MASS pre-training and fine-tuning")
    p.add_argument("--pretrain_steps", type=int, default=6000)
    p.add_argument("--pretrain_batch", type=int, default=64)
    p.add_argument("--pretrain_lr", type=float, default=5e-4)
    p.add_argument("--pairs", type=int, default=2000, help="fine-tuning pairs (the first N of train.en-de.jsonl)")
    p.add_argument("--finetune_steps", type=int, default=2000)
    p.add_argument("--finetune_batch", type=int, default=32)
    p.add_argument("--finetune_lr", type=float, default=3e-4)
    p.add_argument("--beam_size", type=int, default=5)
    p.add_argument("--throughput_steps", type=int, default=40, help="0 skips the throughput comparison")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def build_model_dir(args, path: str) -> None:
    """A cased WordPiece vocabulary trained on both monolingual sides, saved with a BERT config: the random-init
    starting point (``--config_name``) of both arms."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    trainer.train([os.path.join(args.data, "train.en.txt"), os.path.join(args.data, "train.de.txt")],
                  vocab_size=args.vocab_size, min_frequency=2)
    trainer.save_model(path)
    tokenizer = BertTokenizerFast(os.path.join(path, "vocab.txt"), do_lower_case=False, strip_accents=False)
    tokenizer.save_pretrained(path)
    BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
               num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
               max_position_embeddings=128).save_pretrained(path)


def write_once(path: str, lines) -> None:
    if not os.path.isfile(path):
        write_atomic(path, "".join(lines))


def save_json(path: str, value: dict) -> None:
    write_atomic(path, json.dumps(value, indent=2))


def mixed_monolingual(args, path: str) -> None:
    """en and de sentences interleaved into one file (the trainer shuffles them together)."""
    with open(os.path.join(args.data, "train.en.txt"), encoding="utf-8") as en, \
            open(os.path.join(args.data, "train.de.txt"), encoding="utf-8") as de:
        write_once(path, (line for pair in zip(en, de) for line in pair))


def train_command(args, output_dir: str, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "run_seq2seq.py", "--model_type", "bert", "--output_dir", output_dir,
            "--fine_tune", args.fine_tune, "--num_training_steps", str(steps), "--seed", str(args.seed),
            "--max_source_seq_length", "64", "--max_target_seq_length", "64", "--label_smoothing", "0.1",
            "--logging_steps", "50",
            # a resumed experiment may continue a stage with another step count (and so warmup): README, What a
            # restart does
            "--allow_changed_flags", *extra]


def pretrain_command(args, output_dir: str, steps: int, mono: str, model_dir: str, *extra: str) -> list[str]:
    return train_command(args, output_dir, steps, "--objective", "mass", "--train_file", mono,
                         "--config_name", model_dir, "--tokenizer_name", model_dir,
                         "--per_device_train_batch_size", str(args.pretrain_batch),
                         "--learning_rate", str(args.pretrain_lr), *extra)


def throughput(args, mono: str, model_dir: str) -> dict:
    """Pre-training speed, fragment-only target vs the paper's full-length target, run back to back (the same
    sentences and spans: both arms draw from the same (seed, step) generators)."""
    result = {}
    for name, extra in (("fragment", []), ("full_target", ["--mass_full_target"])):
        out = os.path.join(args.work_dir, f"throughput-{name}")
        if os.path.isdir(out):
            subprocess.run(["rm", "-rf", out], check=True)
        run(pretrain_command(args, out, args.throughput_steps, mono, model_dir, "--logging_steps", "10",
                             "--save_steps", str(10 * args.throughput_steps), "--cache_dir",
                             os.path.join(args.work_dir, "cache"), *extra))
        records = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))][1:]  # skip warm-up
        result[name] = {"predicted_tokens_per_s": statistics.median(r["target_tokens_per_s"] for r in records),
                        "laid_out_tokens_per_s": statistics.median(r["tokens_per_s"] for r in records)}
        # sentences/s = predicted tokens/s / mean fragment length: the same divisor for both arms
    result["speedup"] = (result["fragment"]["predicted_tokens_per_s"]
                         / result["full_target"]["predicted_tokens_per_s"])
    return result


def log_summary(path: str) -> dict:
    """Steps, first/last logged loss and median tokens/s of a training run (from its train_log.jsonl)."""
    records = [json.loads(line) for line in open(path)]
    return {"steps": records[-1]["step"], "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in records)}


def bleu(args, model: str, name: str, test: str) -> float:
    prediction = os.path.join(args.work_dir, f"{name}.test.pred.txt")
    scores = os.path.join(args.work_dir, f"{name}.test.scores.json")
    if not os.path.isfile(scores):
        run([sys.executable, "decode_seq2seq.py", "--model_path", model, "--input_file", test,
             "--output_file", prediction, "--beam_size", str(args.beam_size), "--max_tgt_length", "64",
             "--batch_size", "64", "--resume"])
        run([sys.executable, "-m", "s2s_ft.cli.evaluate", "--hyp", prediction, "--ref", test, "--metrics", "bleu",
             "--json", scores])
    return json.load(open(scores))["bleu"]


def main() -> None:
    args = parse_args()
    # the stages run with the repository as their working directory: absolute paths from here on
    args.data, args.work_dir = os.path.abspath(args.data), os.path.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    model_dir = os.path.join(args.work_dir, "init")
    mono = os.path.join(args.work_dir, "mono.en-de.txt")
    pairs = os.path.join(args.work_dir, f"train.first{args.pairs}.jsonl")
    test = os.path.join(args.data, "test.en-de.jsonl")
    build_model_dir(args, model_dir)
    mixed_monolingual(args, mono)
    with open(os.path.join(args.data, "train.en-de.jsonl"), encoding="utf-8") as handle:
        write_once(pairs, [line for _, line in zip(range(args.pairs), handle)])

    report_path = os.path.join(args.work_dir, "report.json")
    report = json.load(open(report_path)) if os.path.isfile(report_path) else {}
    # every invocation is recorded: a resumed experiment may have been continued with other stage settings
    command = " ".join([os.path.basename(sys.executable)] + sys.argv)
    report["commands"] = [c for c in report.get("commands", []) if c != command] + [command]
    if args.throughput_steps and "throughput" not in report:
        report["throughput"] = throughput(args, mono, model_dir)
        save_json(report_path, report)

    pretrained = os.path.join(args.work_dir, "mass")
    run(pretrain_command(args, pretrained, args.pretrain_steps, mono, model_dir,
                         "--num_warmup_steps", str(args.pretrain_steps // 20), "--save_steps", "1000",
                         "--save_total_limit", "1", "--cache_dir", os.path.join(args.work_dir, "cache")))
    report["pretrain"] = log_summary(os.path.join(pretrained, "train_log.jsonl"))

    finetune = ["--train_file", pairs, "--per_device_train_batch_size", str(args.finetune_batch),
                "--learning_rate", str(args.finetune_lr), "--num_warmup_steps", str(args.finetune_steps // 10),
                "--save_steps", str(args.finetune_steps), "--save_total_limit", "1"]
    arms = {"mass": ["--model_name_or_path", os.path.join(pretrained, f"ckpt-{args.pretrain_steps}")],
            "random_init": ["--config_name", model_dir, "--tokenizer_name", model_dir]}
    for name, init in arms.items():
        out = os.path.join(args.work_dir, f"finetune-{name}")
        run(train_command(args, out, args.finetune_steps, *init, *finetune))
        report[f"finetune_{name}"] = log_summary(os.path.join(out, "train_log.jsonl"))
        report[f"bleu_{name}"] = bleu(args, os.path.join(out, f"ckpt-{args.finetune_steps}"), name, test)
    report["bleu_gain"] = round(report["bleu_mass"] - report["bleu_random_init"], 2)
    save_json(report_path, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
