"""Where a training step's time goes: torch.profiler over a few steps of the SQuAD-QG recipe's training, then the
same run's step time with dropout switched off module by module (one process, one after the other).

    python benchmarks/train_profile.py --train_file ../shared/data/squad_qg_du/train.jsonl [--steps 6] [--copy]

Prints the profiler's table (self CPU time, top 25 operators) and one line per dropout setting. The step times are
of different batches of one run, so a few % is noise; read them next to each other, on one machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def recipe_args(train_file: str, output_dir: str, copy: bool, extra=()):
    """The SQuAD-QG recipe's training flags, resolved; ``extra`` flags come last, so they override."""
    from s2s_ft.cli.train import build_parser, resolve_args
    from s2s_ft.model.minilm import minilm_dir

    bf16 = any(flag in open("/proc/cpuinfo").read() for flag in ("avx512_bf16", "amx_bf16"))
    flags = ["--model_type", "bert", "--model_name_or_path", minilm_dir(), "--fresh_head_init", "identity",
             "--train_file", train_file, "--output_dir", output_dir, "--fine_tune", "pseudo_masked",
             "--max_source_seq_length", "96", "--max_target_seq_length", "32", "--max_tokens_per_batch", "2400",
             "--learning_rate", "5e-4", "--num_warmup_steps", "200", "--num_training_steps", "2800",
             "--precision", "bf16" if bf16 else "fp32", "--seed", "1", "--save_steps", "100000",
             "--log_level", "warning"] + (["--copy_mechanism"] if copy else []) + list(extra)
    return resolve_args(build_parser().parse_args(flags))


def main(argv=None) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from s2s_ft.distributed import init_world
    from s2s_ft.training import loop

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", required=True, help="the recipe's training JSONL")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (2 more warm up)")
    parser.add_argument("--copy", action="store_true", help="with --copy_mechanism, as the recipe now trains")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        run = loop.start_run(recipe_args(args.train_file, os.path.join(work, "out"), args.copy), init_world(False))
        window = loop.LogWindow()

        def seconds_per_step(n: int) -> float:
            for _ in range(2):
                loop.train_step(run, window)
            start = time.perf_counter()
            for _ in range(n):
                loop.train_step(run, window)
            return (time.perf_counter() - start) / n

        seconds_per_step(1)
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            for _ in range(3):
                loop.train_step(run, window)
        print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        print(f"{'dropout':40s} s/step   (torch {torch.__version__}, {torch.get_num_threads()} threads)")
        print(f"{'hidden + attention (the recipe)':40s} {seconds_per_step(args.steps):.3f}")
        attention = [layer.attention for layer in run.model.layers]
        for module in attention:
            module.dropout_p = 0.0
        print(f"{'hidden only':40s} {seconds_per_step(args.steps):.3f}")
        hidden = [m for m in run.model.modules() if isinstance(m, torch.nn.Dropout)]
        for module in hidden:
            module.p = 0.0
        print(f"{'none':40s} {seconds_per_step(args.steps):.3f}")


if __name__ == "__main__":
    main()
