"""What the command-line tools (s2s_ft.train, s2s_ft.decode, s2s_ft.evaluate) share: the flags that mean the same
thing in every tool, logging setup, and turning user errors into one line and exit status 2.

Library modules never import this one (nor the tools): they raise the errors of s2s_ft/errors.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from .checkpoint import CheckpointError
from .data import DataError
from .detokenize import DETOKENIZERS
from .errors import TrainingStopped, UsageError  # noqa: F401  (re-exported: older code imports them from here)
from .precision import PRECISIONS

# Errors caused by the user's input: reported as one line, never as a traceback.
USER_ERRORS = (UsageError, DataError, CheckpointError)


def add_precision_flags(add: Callable) -> None:
    add("--precision", default=None, choices=PRECISIONS, help="torch.autocast mixed precision (default fp32)")
    add("--fp16", action="store_true", help="alias of --precision fp16 (apex is not used)")


def add_detokenize_flag(add: Callable, help_text: str) -> None:
    add("--detokenize", default="text", choices=DETOKENIZERS, help=help_text)


def add_log_level_flag(add: Callable) -> None:
    add("--log_level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def run_cli(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], object],
            argv: Optional[Sequence[str]] = None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=getattr(logging, args.log_level.upper(), logging.INFO))
    try:
        action(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except OSError as error:  # unwritable output dir, disk full, permission denied: the file and the reason
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
