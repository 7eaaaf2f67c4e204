"""What the command-line tools (s2s_ft.cli.train, s2s_ft.cli.decode, s2s_ft.cli.evaluate, s2s_ft.cli.serve) share: the flags that
mean the same thing in every tool, the search flags and their checks (decode's flags, the server's defaults and the
options of a request), logging setup, and turning user errors into one line and exit status 2.

Library modules never import this one (nor the tools): they raise the errors of s2s_ft/errors.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

import torch

from s2s_ft.data.reading import DataError
from s2s_ft.decoding.detokenize import DETOKENIZERS
from s2s_ft.decoding.search import SEARCH_OPTIONS, check_search_options
from s2s_ft.errors import TrainingStopped, UsageError  # noqa: F401  (re-exported: older code imports them from here)
from s2s_ft.model.checkpoint import CheckpointError
from s2s_ft.model.precision import PRECISIONS
from s2s_ft.model.quantize import QUANTIZE_CHOICES, check_quantize

# Errors caused by the user's input: reported as one line, never as a traceback.
USER_ERRORS = (UsageError, DataError, CheckpointError)


def add_precision_flags(add: Callable) -> None:
    add("--precision", default=None, choices=PRECISIONS, help="torch.autocast mixed precision (default fp32)")
    add("--fp16", action="store_true", help="alias of --precision fp16 (apex is not used)")


def add_quantize_flag(add: Callable) -> None:
    add("--quantize", default="none", choices=QUANTIZE_CHOICES,
        help="int8: dynamic int8 linear layers (CPU, fp32; weights per channel, inputs per call), for speed; the "
             "checkpoint is not changed")


def check_quantize_flag(args: argparse.Namespace) -> None:
    """UsageError unless ``--quantize`` goes with ``--device`` (None: the default) and the resolved precision."""
    check_quantize(args.quantize, args.device or ("cuda" if torch.cuda.is_available() else "cpu"), args.precision)


def add_detokenize_flag(add: Callable, help_text: str) -> None:
    add("--detokenize", default="text", choices=DETOKENIZERS, help=help_text)


def add_search_flags(add: Callable, samples_help: str = "") -> None:
    """The search settings as flags: decode's, and the server's defaults for its requests. Every destination is a
    search option (``decoding.search.SEARCH_OPTIONS``) that ``search_config`` turns into a SearchConfig and
    ``check_search_options`` checks."""
    add("--beam_size", type=int, default=1)
    add("--length_penalty", type=float, default=0.0, help="GNMT alpha: score / ((5 + len) / 6) ** alpha")
    add("--min_len", type=int, default=1)
    add("--max_tgt_length", "--max_target_seq_length", dest="max_tgt_length", type=int, default=None,
        help="generated tokens incl. the closing [SEP] (default: the checkpoint's max_target_seq_length)")
    add("--forbid_duplicate_ngrams", action="store_true")
    add("--ngram_size", type=int, default=3)
    add("--forbid_ignore_word", default=None, help="'|'-separated words whose n-grams are never blocked")
    add("--nbest", type=int, default=1)
    add("--do_sample", action="store_true", help="sample instead of searching (needs --beam_size 1)")
    add("--top_k", type=int, default=0, help="with --do_sample: sample among the k most likely tokens (0: all)")
    add("--top_p", type=float, default=1.0, help="with --do_sample: nucleus, smallest set with probability >= p")
    add("--temperature", type=float, default=1.0, help="with --do_sample: divides the log-probs (> 0)")
    add("--num_return_sequences", type=int, default=1, help="with --do_sample: samples per input" + samples_help)
    add("--seed", type=int, default=0,
        help="with --do_sample: samples are seeded from (seed, input position, sample index), independent of the "
             "batch size and process count")
    add("--source_words_only", action="store_true",
        help="a word written with several word pieces must be a word of the source (no half-remembered rare words; "
             "WordPiece vocabularies)")


SEARCH_FLAGS = SEARCH_OPTIONS  # the destinations of add_search_flags, in order


def check_search_args(args: argparse.Namespace) -> None:
    check_search_options(vars(args))


def add_device_flags(add: Callable) -> None:
    add("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is a GPU)")
    add("--no_cuda", dest="device", action="store_const", const="cpu", help="alias of --device cpu (as in training)")


def check_device(name: Optional[str]) -> None:
    """UsageError unless ``--device`` (None: the default) names a device that is there."""
    if name is None:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no GPU is available; use --device cpu")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str) -> str:
    """A --log_level value, upper-cased; an unknown one is a usage error (not a KeyError deep in uvicorn)."""
    if value.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {value!r}; choose from {', '.join(LOG_LEVELS)}")
    return value.upper()


def add_log_level_flag(add: Callable) -> None:
    add("--log_level", default="INFO", type=log_level, help="DEBUG, INFO, WARNING, ERROR or CRITICAL")


def run_cli(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], object],
            argv: Optional[Sequence[str]] = None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=getattr(logging, args.log_level))
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
