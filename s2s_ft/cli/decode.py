"""The decoding command line: ``s2s-ft-decode``, ``python -m s2s_ft.cli.decode``, ``decode_seq2seq.py``.

    s2s-ft-decode --model_path out/ckpt-1000 --input_file dev.jsonl --output_file dev.pred --beam_size 5

Flags are listed by --help and in README.md. The Python API it is built on is s2s_ft/decoding/inference.py (load_decoder),
the search itself s2s_ft/decoding/search.py, ``--resume`` s2s_ft/decoding/resumable.py. Under torchrun the length-sorted batches are
shared round-robin between the processes and rank 0 gathers the lines and writes the one output file.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from typing import Optional

import torch

from s2s_ft.cli.common import (
    add_detokenize_flag,
    add_device_flags,
    add_log_level_flag,
    add_precision_flags,
    add_quantize_flag,
    add_search_flags,
    check_device,
    check_quantize_flag,
    check_search_args,
    run_cli,
)
from s2s_ft.data.answers import AnswerSource
from s2s_ft.data.reading import DataError, check_answer_encoding, read_sources, report_skipped
from s2s_ft.decoding.detokenize import DETOKENIZE_HELP
from s2s_ft.decoding.inference import LoadedDecoder, forbid_ignore_ids, load_decoder
from s2s_ft.decoding.resumable import decode_resumable, resume_identity
from s2s_ft.decoding.search import search_config
from s2s_ft.distributed import World, init_world
from s2s_ft.errors import UsageError
from s2s_ft.fileio import write_lines_atomic
from s2s_ft.model.precision import resolve_precision

log = logging.getLogger("s2s_ft")
# Flags that do not change the decoded lines (left out of --resume's record of the settings).
NOT_OUTPUT_SETTINGS = ("output_file", "resume", "log_level", "model_path")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Decode with a fine-tuned checkpoint (s2s-ft compatible flags). Under torchrun "
                    "(--nproc_per_node N) the length-sorted batches are shared round-robin between the N "
                    "processes, rank 0 gathers the lines and writes the one output file; it is identical to a "
                    "single process's. --device cuda uses cuda:LOCAL_RANK.")
    add = p.add_argument
    add("--model_path", required=True, help="checkpoint dir, or a glob of them (each is decoded)")
    add("--input_file", required=True, help="JSONL with a \"src\" field (string or word-piece list)")
    add("--output_file", required=True,
        help="one line per input, in input order; with several checkpoints, '.<ckpt name>' is appended")
    add("--batch_size", type=int, default=32)
    add_search_flags(add, " (> 1 needs --output_format jsonl)")
    add("--max_seq_length", type=int, default=None, help="source + target budget (s2s-ft); source gets the rest")
    add_precision_flags(add)
    add_quantize_flag(add)
    add("--no_cache", action="store_true", help="reference path: recompute the whole sequence every step")
    add("--output_format", default="text", choices=("text", "jsonl"))
    add_detokenize_flag(add, DETOKENIZE_HELP)
    add_device_flags(add)
    add("--skip_bad_lines", action="store_true",
        help="a malformed input line is counted and gets an empty output line (output stays aligned with input)")
    add("--resume", action="store_true",
        help="decode in chunks, appending finished lines to OUTPUT.partial (fsynced, progress in "
             "OUTPUT.partial.json); re-running with --resume continues where a killed run stopped, also with "
             "another number of torchrun processes (the output does not depend on it)")
    add("--resume_chunk", type=int, default=1000, help="with --resume: input lines per durable chunk")
    add_log_level_flag(add)
    return p


def check_decode_args(args: argparse.Namespace) -> None:
    """Contradictory or impossible flags, each as one line."""
    for name in ("batch_size", "resume_chunk"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    check_search_args(args)
    if args.nbest > 1 and args.output_format != "jsonl":
        raise UsageError("--nbest > 1 needs --output_format jsonl")
    if args.num_return_sequences > 1 and args.output_format != "jsonl":
        raise UsageError("--num_return_sequences > 1 needs --output_format jsonl")
    args.precision = resolve_precision(args.precision, args.fp16)
    check_device(args.device)
    check_quantize_flag(args)
    directory = os.path.dirname(os.path.abspath(args.output_file))
    if not os.path.isdir(directory):
        raise UsageError(f"--output_file {args.output_file}: directory {directory} does not exist")
    if os.path.abspath(args.output_file) == os.path.abspath(args.input_file):
        raise UsageError("--output_file is the --input_file; refusing to overwrite the input")


def decode_file(args: argparse.Namespace) -> list[str]:
    """Decode ``args.input_file`` with each checkpoint of ``args.model_path``; returns the output paths. Under
    torchrun (WORLD_SIZE > 1) every rank runs this and decodes its share of the batches; rank 0 writes."""
    check_decode_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = init_world(device.type == "cuda")
    try:
        if world.active and device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
        if not world.is_main:  # only rank 0 logs progress
            log.setLevel(logging.WARNING)
        return _decode_file(args, device, world)
    finally:
        world.close()


def _decode_file(args: argparse.Namespace, device: torch.device, world: World) -> list[str]:
    paths = sorted(glob.glob(args.model_path)) if any(c in args.model_path for c in "*?[") else [args.model_path]
    if not paths:
        raise DataError(f"{args.model_path}: no checkpoint matches")
    sources, numbers = read_sources(args.input_file, args.skip_bad_lines)
    written = []
    for path in paths:
        output = args.output_file if len(paths) == 1 else f"{args.output_file}.{os.path.basename(path.rstrip('/'))}"
        decode_checkpoint(args, path, sources, numbers, output, device, world)
        written.append(output)
    return written


def decode_checkpoint(args: argparse.Namespace, path: str, sources: list, numbers: list[int], output: str,
                      device: torch.device, world: World) -> None:
    """Decode ``sources`` with the checkpoint ``path`` into ``output`` (rank 0 writes it)."""
    loaded = load_decoder(path, str(device), args.precision, args.detokenize, args.quantize)
    check_answer_encoding(args.input_file, any(isinstance(source, AnswerSource) for source in sources),
                          loaded.answer_encoding, checkpoint=path)
    max_tgt = args.max_tgt_length or int(loaded.settings["max_target_seq_length"])
    if args.min_len > max_tgt:
        raise UsageError(f"--min_len {args.min_len} exceeds the target length {max_tgt}")
    ids = source_ids(args, loaded, sources, numbers, max_tgt)
    ignore = forbid_ignore_ids(loaded.tokenizer, args.forbid_ignore_word, path)
    config = search_config(vars(args), max_tgt, ignore)

    def render(hyps) -> str:
        if args.output_format == "text":
            return loaded.text(hyps[0].tokens) if hyps else ""
        return json.dumps({"hyps": [{"text": loaded.text(h.tokens), "score": h.score, "log_prob": h.log_prob,
                                     "finished": h.finished} for h in hyps or []]}, ensure_ascii=False)

    def decode_range(start: int, end: int) -> Optional[list[str]]:
        """Output lines start..end-1 in input order (on rank 0; None on the others); a skipped line's output is
        empty ("" / no hyps)."""
        chosen = [i for i in range(start, end) if ids[i] is not None]
        hyps = loaded.decode_ids([ids[i] for i in chosen], config, args.batch_size,
                                 progress=world.is_main and not args.resume, shard=(world.rank, world.size),
                                 keys=chosen)  # input line positions: samples do not depend on --resume chunks
        # Each rank renders its own lines (detokenising is work too) and sends only those to rank 0.
        shares = world.gather_to_main({i: render(h) for i, h in zip(chosen, hyps) if h is not None})
        if not world.is_main:
            return None
        lines = {i: line for share in shares for i, line in share.items()}
        return [lines.get(i, render(None)) for i in range(start, end)]

    if args.resume:
        settings = {k: v for k, v in vars(args).items() if k not in NOT_OUTPUT_SETTINGS}
        if settings["quantize"] == "none":  # an fp32 run keeps its record from before --quantize existed
            del settings["quantize"]
        decode_resumable(output, len(sources), args.resume_chunk, decode_range,
                         resume_identity(args.input_file, path, settings), world)
    else:
        lines = decode_range(0, len(sources))
        if world.is_main:
            write_lines_atomic(output, lines)
    log.info("wrote %d lines to %s", len(sources), output)


def source_ids(args: argparse.Namespace, loaded: LoadedDecoder, sources: list, numbers: list[int],
               max_tgt: int) -> list[Optional[list[int]]]:
    """Token ids of every source (None for a skipped bad line), truncated to the source budget."""
    max_source = (args.max_seq_length - max_tgt) if args.max_seq_length else loaded.max_source_length
    if max_source < 3:
        raise UsageError(f"--max_seq_length {args.max_seq_length} leaves {max_source} source positions after "
                         f"{max_tgt} target tokens; need at least 3")
    valid = [i for i, source in enumerate(sources) if source is not None]
    valid_ids, truncated = loaded.source_ids([sources[i] for i in valid], max_source)
    ids: list[Optional[list[int]]] = [None] * len(sources)
    bad = []
    for i, ids_i in zip(valid, valid_ids):
        if ids_i:
            ids[i] = ids_i
            continue
        message = f"{args.input_file}:{numbers[i]}: \"src\" tokenises to nothing"
        if not args.skip_bad_lines:
            raise DataError(message)
        bad.append(message)
    report_skipped(args.input_file, bad, " (each gets an empty output line)")
    if truncated:
        log.warning("%d of %d sources truncated to %d tokens", truncated, len(valid), max_source)
    return ids


def main(argv=None) -> int:
    return run_cli(build_parser(), decode_file, argv)


if __name__ == "__main__":
    sys.exit(main())
