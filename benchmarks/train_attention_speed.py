"""Training attention on CPU: SDPA's fused kernel against the unfused computation the model now trains with, side by
side in one run of the answer-aware SQuAD-QG recipe's training (``experiments/squad_qg_answer_recipe.sh``: bf16 where
native, copy mechanism, 2,400-token batches, span+segment answers).

    python benchmarks/train_attention_speed.py --train_file ../shared/data/squad_qg_du_answer/train.jsonl

One run, one model: blocks of ``--steps`` optimizer steps take turns (fused, unfused, fused, ...) over successive
batches, as the training loop draws them (so shapes change every step, as in a real run), the first block of each a
warm-up that is not counted. ``--dropout on`` times the recipe's steps after ``--dropout_from_step``, ``off`` the
steps before it. Prints one JSON line per setting: seconds per step of each path and the ratio. Machine noise hits
both alike; the CPU's model name is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ctranslate2_speed import cpu_summary  # noqa: E402  (the CPU's model name and flags, one place)
from train_profile import recipe_args  # noqa: E402  (the recipe's training flags, one place)

# the answer-aware recipe's additions to the SQuAD-QG recipe's flags (experiments/squad_qg_answer_recipe.sh)
ANSWER_RECIPE = ["--answer_encoding", "span+segment", "--num_training_steps", "3600"]


def fused_when_no_dropout(unfused):
    """The path a CPU training step took before: SDPA whenever there is no dropout, else ``unfused``."""
    import torch.nn.functional as F

    def attention(q, k, v, mask, dropout_p):
        if dropout_p == 0:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return unfused(q, k, v, mask, dropout_p)
    return attention


def main(argv=None) -> None:
    import torch

    from s2s_ft.distributed import init_world
    from s2s_ft.model import transformer
    from s2s_ft.training import loop

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", required=True, help="squad_qg_du_answer/train.jsonl")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per block")
    parser.add_argument("--rounds", type=int, default=2, help="timed blocks per path and setting")
    parser.add_argument("--dropout", choices=["off", "on", "both"], default="both")
    args = parser.parse_args(argv)
    unfused = transformer.attention
    paths = {"fused (SDPA)": fused_when_no_dropout(transformer.unfused_attention), "unfused (the model's)": unfused}
    cpu = cpu_summary()["model_name"]
    with tempfile.TemporaryDirectory() as work:
        config = recipe_args(args.train_file, os.path.join(work, "out"), True, ANSWER_RECIPE)
        run = loop.start_run(config, init_world(False))

        def block(path) -> float:
            transformer.attention = path  # SelfAttention looks the function up in the module at each call
            window, start = loop.LogWindow(), time.perf_counter()
            for _ in range(args.steps):
                loop.train_step(run, window)
                run.step += 1
            return (time.perf_counter() - start) / args.steps

        try:
            for setting in (["off", "on"] if args.dropout == "both" else [args.dropout]):
                run.model.set_dropout(setting == "on")
                times = {name: [] for name in paths}
                for turn in range(args.rounds + 1):
                    for name, path in paths.items():
                        seconds = block(path)
                        if turn:  # the first block of each path warms up
                            times[name].append(seconds)
                mean = {name: sum(t) / len(t) for name, t in times.items()}
                fused_s, unfused_s = mean.values()
                print(json.dumps({"dropout": setting, "s_per_step": {n: round(s, 3) for n, s in mean.items()},
                                  "unfused_speedup": round(fused_s / unfused_s, 2), "steps": args.steps * args.rounds,
                                  "cpu": cpu, "threads": torch.get_num_threads(),
                                  "torch": torch.__version__}), flush=True)
        finally:
            transformer.attention = unfused


if __name__ == "__main__":
    main()
