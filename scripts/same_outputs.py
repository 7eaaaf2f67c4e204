#!/usr/bin/env python
"""Do two checkouts train and decode identically? A fixed-seed run of each checkout's own scripts, compared.

    python scripts/same_outputs.py BEFORE_REPO AFTER_REPO [--work_dir DIR]

For each checkout (its ``run_seq2seq.py`` and ``decode_seq2seq.py``, with PYTHONPATH set to it): fine-tune a tiny
2-layer BERT (built here with a fixed seed, dropout on) for a few steps with each fine-tuning method, one of them
with dev evaluation (best/) and token-budget batching with accumulation, one MASS pre-training run, and a resume
(a run stopped after its first checkpoint and re-run); then decode a file greedily, with beam search and as n-best
JSONL. Compared: the SHA-256 of every saved model.safetensors, every decoded line, and the train/eval logs without
their timing fields. Prints one line per comparison; exit status 0 when everything is identical, 1 otherwise.
One thread per process, so the arithmetic is the same in both runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

WORDS = ("the a cat dog sat ran on mat big small red blue who what where is was did ? . "
         "house tree bird fish").split()
PAIRS = [("the cat sat on the mat", "who sat on the mat ?"), ("a dog ran", "what ran ?"),
         ("the big red bird", "what is red ?"), ("a small fish", "what is small ?"),
         ("the tree is blue", "what is blue ?"), ("a house", "where is the house ?"),
         ("the dog sat on the tree", "where did the dog sit ?")]
SOURCES = ["the cat sat on the big red mat", "a dog", "the tree is blue and the bird is red", "fish", "who ran ?"]
TIMING = ("seconds", "tokens_per_s", "target_tokens_per_s")
COMMON = ["--model_type", "bert", "--max_source_seq_length", "16", "--max_target_seq_length", "8",
          "--per_device_train_batch_size", "3", "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "7"]
RUNS = {  # name: extra training flags
    "causal": ["--fine_tune", "causal", "--num_training_steps", "8", "--save_steps", "4"],
    "masked": ["--fine_tune", "masked", "--num_training_steps", "8", "--save_steps", "8"],
    "pseudo_masked": ["--fine_tune", "pseudo_masked", "--num_training_steps", "8", "--save_steps", "4",
                      "--eval_file", "{dev}", "--eval_steps", "4", "--eval_beam_size", "2"],
    "budget": ["--fine_tune", "pseudo_masked", "--num_training_steps", "6", "--save_steps", "6",
               "--max_tokens_per_batch", "60", "--gradient_accumulation_steps", "2", "--precision", "bf16"],
    "mass": ["--objective", "mass", "--fine_tune", "causal", "--num_training_steps", "6", "--save_steps", "6"],
}
DECODES = {  # name: (checkpoint, extra decoding flags)
    "greedy": ("pseudo_masked/ckpt-8", ["--beam_size", "1"]),
    "beam": ("causal/ckpt-8", ["--beam_size", "3", "--length_penalty", "0.6"]),
    "nbest": ("masked/ckpt-8", ["--beam_size", "3", "--nbest", "3", "--output_format", "jsonl",
                                "--forbid_duplicate_ngrams", "--ngram_size", "2"]),
    "best": ("pseudo_masked/best", ["--beam_size", "2"]),
}


def make_inputs(directory: str) -> dict:
    """The tiny BERT checkpoint (seeded) and the data files, shared by both checkouts."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    model_dir = os.path.join(directory, "tiny-bert")
    os.makedirs(model_dir, exist_ok=True)
    vocab = os.path.join(model_dir, "vocab.txt")
    with open(vocab, "w") as handle:
        handle.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(model_dir)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(model_dir)
    files = {"model": model_dir}
    for name, records in (("train", [{"src": s, "tgt": t} for s, t in PAIRS]),
                          ("dev", [{"src": s, "tgt": t} for s, t in PAIRS[:4]]),
                          ("input", [{"src": s} for s in SOURCES])):
        files[name] = os.path.join(directory, f"{name}.jsonl")
        with open(files[name], "w") as handle:
            handle.write("".join(json.dumps(record) + "\n" for record in records))
    files["mono"] = os.path.join(directory, "mono.txt")
    with open(files["mono"], "w") as handle:
        handle.write("".join(f"{s} {t}\n" for s, t in PAIRS))
    return files


def run(repo: str, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, *argv], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{repo}: {' '.join(argv[:1])} failed:\n{done.stderr[-3000:]}")


def outputs(repo: str, files: dict, work: str) -> dict:
    """Everything the comparison looks at, from one checkout."""
    result = {}
    for name, extra in RUNS.items():
        out = os.path.join(work, name)
        data = files["mono"] if "mass" in extra else files["train"]
        flags = [flag.format(dev=files["dev"]) for flag in extra]
        argv = ["run_seq2seq.py", *COMMON, "--model_name_or_path", files["model"], "--train_file", data,
                "--output_dir", out, *flags]
        run(repo, argv)
        if name == "causal":  # resume: drop the last checkpoint and run the same command again
            os.rename(os.path.join(out, "ckpt-8"), os.path.join(work, "causal-ckpt-8-straight"))
            run(repo, argv)
            result["causal/resumed-vs-straight"] = sha256(os.path.join(out, "ckpt-8", "model.safetensors")) == \
                sha256(os.path.join(work, "causal-ckpt-8-straight", "model.safetensors"))
        for entry in sorted(os.listdir(out)):
            weights = os.path.join(out, entry, "model.safetensors")
            if os.path.isfile(weights):
                result[f"{name}/{entry}/model.safetensors"] = sha256(weights)
        for log in ("train_log.jsonl", "eval_log.jsonl"):
            if os.path.isfile(os.path.join(out, log)):
                result[f"{name}/{log}"] = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                                           for line in open(os.path.join(out, log))]
    for name, (checkpoint, extra) in DECODES.items():
        output = os.path.join(work, f"{name}.out")
        run(repo, ["decode_seq2seq.py", "--model_path", os.path.join(work, checkpoint), "--input_file",
                   files["input"], "--output_file", output, "--max_tgt_length", "6", *extra])
        with open(output, encoding="utf-8") as handle:
            result[f"decode/{name}"] = handle.read().split("\n")
    return result


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="a checkout (its run_seq2seq.py, decode_seq2seq.py and s2s_ft/)")
    parser.add_argument("after", help="another checkout")
    parser.add_argument("--work_dir", default=None, help="where to run (default: a temporary directory)")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="same_outputs-")
    files = make_inputs(os.path.join(work, "inputs"))
    results = [outputs(os.path.abspath(repo), files, os.path.join(work, label))
               for label, repo in (("before", args.before), ("after", args.after))]
    same = True
    for key in sorted(set(results[0]) | set(results[1])):
        a, b = results[0].get(key), results[1].get(key)
        equal = a == b and a is not None and a is not False
        same &= equal
        shown = a[:16] if isinstance(a, str) else f"{len(a)} lines/records" if isinstance(a, list) else a
        print(f"{'same' if equal else 'DIFFERENT':9s} {key}: {shown}")
    print("identical" if same else "DIFFERENCES FOUND", f"(work dir {work})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
