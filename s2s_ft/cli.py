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


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite losses); reported as one line, exit status 3."""


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
