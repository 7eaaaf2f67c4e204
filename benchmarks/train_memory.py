"""Resident memory of a training run under different malloc settings, side by side in one run.

Each variant runs the SQuAD-QG recipe's training command (``run_seq2seq.py``: pseudo-masked, 2,400-token batches,
bf16 where the CPU has it, ``--copy_mechanism``) for ``--steps`` steps in a subprocess with its own environment; the
parent samples the child's resident set (VmRSS) every ``--interval`` seconds and reads its step times from
train_log.jsonl. Variants (environment of the child):

* ``trim``: the project's default (``malloc_trim`` after a step when the resident set grew by more than a margin
  since the last trim, s2s_ft/training/memory.py);
* ``default``: glibc as it comes (``S2S_FT_TRIM_EVERY=0``);
* ``mmap1m``: a fixed 1 MB mmap threshold (``MALLOC_MMAP_THRESHOLD_``), large blocks always unmapped on free;
* ``arena2``: at most two malloc arenas (``MALLOC_ARENA_MAX``);
* ``trim1`` / ``trim10``: ``malloc_trim`` after every optimizer step / every 10th;
* ``mmap1m_thp``: the fixed 1 MB threshold with glibc's transparent-huge-page tunable (``glibc.malloc.hugetlb=1``:
  mapped blocks are advised as huge pages, so faulting them in anew costs 512x fewer faults).

    python benchmarks/train_memory.py --data ../shared/data/squad_qg_du/train.jsonl [--steps 120] [--variants trim,default]

Prints one table (peak and last resident MB, mean seconds per step after the first 30 steps) and writes --json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = {
    "trim": {},
    "default": {"S2S_FT_TRIM_EVERY": "0"},
    "mmap1m": {"S2S_FT_TRIM_EVERY": "0", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
    "arena2": {"S2S_FT_TRIM_EVERY": "0", "MALLOC_ARENA_MAX": "2"},
    "trim1": {"S2S_FT_TRIM_EVERY": "1"},
    "trim10": {"S2S_FT_TRIM_EVERY": "10"},
    "mmap1m_thp": {"S2S_FT_TRIM_EVERY": "0", "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
                   "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}


def resident_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) // 1024
    except (OSError, StopIteration):
        return 0


def run_variant(name: str, args, work: str) -> dict:
    from s2s_ft.model.minilm import minilm_dir

    out = os.path.join(work, name)
    bf16 = any(flag in open("/proc/cpuinfo").read() for flag in ("avx512_bf16", "amx_bf16"))
    command = [sys.executable, os.path.join(ROOT, "run_seq2seq.py"), "--model_type", "bert",
               "--model_name_or_path", args.model_dir or minilm_dir(), "--fresh_head_init", "identity",
               "--train_file", args.data, "--output_dir", out, "--fine_tune", "pseudo_masked",
               "--max_source_seq_length", "96", "--max_target_seq_length", "32", "--max_tokens_per_batch", "2400",
               "--learning_rate", "5e-4", "--num_warmup_steps", "200", "--num_training_steps", str(args.steps),
               "--precision", "bf16" if bf16 else "fp32", "--seed", "1", "--dropout_from_step", "800",
               "--logging_steps", "10", "--save_steps", "100000", "--copy_mechanism",
               "--features_cache_dir", os.path.join(work, "cache"), "--log_level", "warning"]
    child = subprocess.Popen(command, env={**os.environ, **VARIANTS[name]}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    samples = []
    while child.poll() is None:
        samples.append(resident_mb(child.pid))
        time.sleep(args.interval)
    if child.returncode:
        raise SystemExit(f"variant {name} failed ({child.returncode}): {child.stderr.read()[-2000:]}")
    with open(os.path.join(out, "train_log.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    later = [r for r in records if r["step"] > 30]
    return {"peak_mb": max(samples, default=0), "last_mb": samples[-1] if samples else 0,
            "s_per_step": round(sum(r["seconds"] for r in later) / (10 * len(later)), 3) if later else None,
            "samples_mb": samples}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a training JSONL (the recipe's: squad_qg_du/train.jsonl)")
    parser.add_argument("--model_dir", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between resident-memory samples")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            results[name] = run_variant(name, args, work)
    print(f"{'variant':10s} {'peak MB':>8s} {'last MB':>8s} {'s/step':>7s}   ({args.steps} steps)")
    for name, row in results.items():
        print(f"{name:10s} {row['peak_mb']:8d} {row['last_mb']:8d} {row['s_per_step'] or 0:7.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"steps": args.steps, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
