"""Redraw a run's training curves from its logs (s2s_ft/training/plotting.py), e.g. while the run is going::

    python -m s2s_ft.cli.plot OUTPUT_DIR [--out FILE.png]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from s2s_ft.cli.common import add_log_level_flag, run_cli
from s2s_ft.data.reading import DataError
from s2s_ft.errors import UsageError
from s2s_ft.training.plotting import PLOT_NAME, plot_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s2s_ft.cli.plot",
                                     description="Plot training loss and dev scores from a run's logs.")
    parser.add_argument("output_dir", help="run_seq2seq.py's --output_dir (train_log.jsonl, eval_log.jsonl)")
    parser.add_argument("--out", default=None, help=f"PNG to write (default: OUTPUT_DIR/{PLOT_NAME})")
    add_log_level_flag(parser.add_argument)
    return parser


def run(args: argparse.Namespace) -> str:
    if not os.path.isdir(args.output_dir):
        raise DataError(f"{args.output_dir}: directory not found")
    try:
        path = plot_run(args.output_dir, args.out)
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install matplotlib (or pip install -e '.[eval]')") from None
    print(path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
