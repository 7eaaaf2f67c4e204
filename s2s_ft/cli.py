"""What both command-line tools share: logging setup and turning user errors into one line and exit status 2."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from .checkpoint import CheckpointError
from .data import DataError


class UsageError(ValueError):
    """Contradictory or impossible flags."""


# Errors caused by the user's input: reported as one line, never as a traceback.
USER_ERRORS = (UsageError, DataError, CheckpointError)


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
    return 0
