"""Decoding a file with a fine-tuned checkpoint: the code behind ``decode_seq2seq.py``.

Python use (load once, decode many)::

    from s2s_ft.inference import load_decoder
    decoder = load_decoder("out/ckpt-1000")
    print(decoder.decode_texts(["the source sentence"], beam_size=5))
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .cli import UsageError, run_cli
from .data import DataError, iter_jsonl, load_tokenizer, tokenize_sides
from .decoding import Hypothesis, SearchConfig, Seq2SeqDecoder
from .detokenize import DETOKENIZE_HELP, DETOKENIZERS, detokenize
from .distributed import World, init_world
from .fileio import fsync_path, sha256_file, write_atomic
from .packing import SpecialIds

log = logging.getLogger("s2s_ft")

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LoadedDecoder:
    """A checkpoint's model, tokenizer and settings with text-in / text-out helpers."""

    def __init__(self, decoder: Seq2SeqDecoder, tokenizer, settings: dict, detokenize: str = "text"):
        if detokenize not in DETOKENIZERS:
            raise UsageError(f"--detokenize {detokenize}: choose from {', '.join(DETOKENIZERS)}")
        self.decoder, self.tokenizer, self.settings = decoder, tokenizer, settings
        self.detokenize = detokenize  # see s2s_ft/detokenize.py

    @property
    def max_source_length(self) -> int:
        return int(self.settings["max_source_seq_length"])

    def source_ids(self, sources: Sequence, max_source_length: Optional[int] = None) -> tuple[list[list[int]], int]:
        """Token ids (no specials), truncated to fit ``[CLS] src [SEP]``; returns (ids, number truncated)."""
        limit = (max_source_length or self.max_source_length) - 2
        ids = tokenize_sides(self.tokenizer, sources)
        truncated = sum(len(x) > limit for x in ids)
        return [x[:limit] for x in ids], truncated

    def text(self, tokens: Sequence[int]) -> str:
        """Detokenised text in the ``detokenize`` style (the tokenizer's decoder, or spaced / PTB tokens)."""
        return detokenize(self.tokenizer, tokens, self.detokenize)

    def check_position_budget(self, sources: Sequence[Sequence[int]], max_tgt_length: int,
                              remedy: str = "lower --max_tgt_length or --max_seq_length") -> None:
        """UsageError unless the longest source plus ``max_tgt_length`` generated tokens fit the position table
        (checked here: the model checks positions only on CPU, where it costs no sync)."""
        model_config = self.decoder.model.config
        usable = model_config.max_position_embeddings - model_config.position_offset
        needed = max(map(len, sources), default=0) + 2 + max_tgt_length  # [CLS] src [SEP] + generated
        if needed > usable:
            raise UsageError(f"the longest source ({needed - 2 - max_tgt_length} tokens) plus {max_tgt_length} "
                             f"target tokens needs {needed} positions; the checkpoint has {usable} ({remedy})")

    def decode_ids(self, sources: Sequence[Sequence[int]], config: SearchConfig, batch_size: int = 32,
                   progress: bool = False, shard: tuple[int, int] = (0, 1)) -> list[Optional[list[Hypothesis]]]:
        """Hypotheses per source in input order; batches are formed from length-sorted sources.

        ``shard=(rank, world)`` decodes only batches rank, rank + world, ... (the other entries stay None). The
        batches are cut before sharding, so every batch is exactly what a single process decodes: the ranks'
        results together are a single process's results, bit for bit.
        """
        self.check_position_budget(sources, config.max_tgt_length)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        mine = batches[shard[0]::shard[1]]
        results: list[Optional[list[Hypothesis]]] = [None] * len(sources)
        bar = tqdm(total=sum(map(len, mine)), desc="decode", disable=not progress or None)
        for chunk in mine:
            for index, hyps in zip(chunk, self.decoder.generate([sources[i] for i in chunk], config)):
                results[index] = hyps
            bar.update(len(chunk))
        bar.close()
        empty = sum(hyps == [] for hyps in results)
        if empty:  # not a silent blank line: say how many, and why it happens
            log.warning("%d of %d sentences ended with no hypothesis (every candidate was banned: min_len, n-gram "
                        "blocking or the length limit); their outputs are empty", empty, len(sources))
        return results

    def decode_texts(self, sources: Sequence, batch_size: int = 32, **search) -> list[str]:
        ids, _ = self.source_ids(sources)
        config = SearchConfig(max_tgt_length=search.pop("max_tgt_length", self.settings["max_target_seq_length"]),
                              **search)
        return [self.text(hyps[0].tokens) if hyps else "" for hyps in self.decode_ids(ids, config, batch_size)]


def load_decoder(path: str, device: Optional[str] = None, precision: str = "fp32",
                 detokenize: str = "text") -> LoadedDecoder:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    model, settings = checkpoint.load_finetuned(path)
    tokenizer = load_tokenizer(path)
    special = SpecialIds(**settings["special_ids"])
    decoder = Seq2SeqDecoder(model, special, settings["fine_tune"], device, AUTOCAST_DTYPES[precision])
    return LoadedDecoder(decoder, tokenizer, settings, detokenize)


def write_lines_atomic(path: str, lines: Sequence[str]) -> None:
    write_atomic(path, "".join(line + "\n" for line in lines))


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
    add("--beam_size", type=int, default=1)
    add("--length_penalty", type=float, default=0.0, help="GNMT alpha: score / ((5 + len) / 6) ** alpha")
    add("--min_len", type=int, default=1)
    add("--max_tgt_length", type=int, default=None, help="default: the checkpoint's max_target_seq_length")
    add("--max_seq_length", type=int, default=None, help="source + target budget (s2s-ft); source gets the rest")
    add("--forbid_duplicate_ngrams", action="store_true")
    add("--ngram_size", type=int, default=3)
    add("--forbid_ignore_word", default=None, help="'|'-separated words whose n-grams are never blocked")
    add("--precision", default="fp32", choices=tuple(AUTOCAST_DTYPES))
    add("--fp16", action="store_true", help="alias of --precision fp16 (apex is not used)")
    add("--no_cache", action="store_true", help="reference path: recompute the whole sequence every step")
    add("--nbest", type=int, default=1)
    add("--output_format", default="text", choices=("text", "jsonl"))
    add("--detokenize", default="text", choices=DETOKENIZERS, help=DETOKENIZE_HELP)
    add("--device", default=None)
    add("--skip_bad_lines", action="store_true",
        help="a malformed input line is counted and gets an empty output line (output stays aligned with input)")
    add("--resume", action="store_true",
        help="decode in chunks, appending finished lines to OUTPUT.partial (fsynced, progress in "
             "OUTPUT.partial.json); re-running with --resume continues where a killed run stopped, also with "
             "another number of torchrun processes (the output does not depend on it)")
    add("--resume_chunk", type=int, default=1000, help="with --resume: input lines per durable chunk")
    add("--log_level", default="INFO")
    return p


def check_decode_args(args: argparse.Namespace) -> None:
    """Contradictory or impossible flags, each as one line."""
    for name, low in (("batch_size", 1), ("beam_size", 1), ("nbest", 1), ("ngram_size", 1), ("min_len", 0),
                      ("resume_chunk", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.max_tgt_length is not None and args.max_tgt_length < 1:
        raise UsageError(f"--max_tgt_length must be >= 1, got {args.max_tgt_length}")
    if args.max_tgt_length is not None and args.min_len > args.max_tgt_length:
        raise UsageError(f"--min_len {args.min_len} exceeds --max_tgt_length {args.max_tgt_length}")
    if args.nbest > args.beam_size:
        raise UsageError(f"--nbest {args.nbest} exceeds --beam_size {args.beam_size}")
    if args.nbest > 1 and args.output_format != "jsonl":
        raise UsageError("--nbest > 1 needs --output_format jsonl")
    if args.fp16 and args.precision not in ("fp32", "fp16"):
        raise UsageError(f"--fp16 contradicts --precision {args.precision}")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device}: not a device (expected cpu, cuda or cuda:N)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no GPU is available; use --device cpu")
    directory = os.path.dirname(os.path.abspath(args.output_file))
    if not os.path.isdir(directory):
        raise UsageError(f"--output_file {args.output_file}: directory {directory} does not exist")
    if os.path.abspath(args.output_file) == os.path.abspath(args.input_file):
        raise UsageError("--output_file is the --input_file; refusing to overwrite the input")


def read_sources(path: str, skip_bad_lines: bool) -> tuple[list, list[int]]:
    """``src`` of every non-blank line (None for a skipped bad line) and its line number."""
    sources, numbers, bad = [], [], []
    for number, record in iter_jsonl(path, inline_errors=skip_bad_lines, expected='a "src" field'):
        value = None if isinstance(record, DataError) else record.get("src")
        if isinstance(record, DataError):
            message = str(record)
        elif (isinstance(value, str) and value.strip()) or (
                isinstance(value, list) and value and all(isinstance(x, str) for x in value)):
            message = None
        elif value is None:
            message = f"{path}:{number}: missing \"src\" (expected {{\"src\": ...}})"
        else:
            message = f"{path}:{number}: \"src\" must be a non-empty string or word-piece list"
        if message:
            if not skip_bad_lines:
                raise DataError(message)
            bad.append(message)
            value = None
        sources.append(value)
        numbers.append(number)
    report_skipped(path, bad)
    return sources, numbers


def forbid_ignore_ids(tokenizer, words: Optional[str], checkpoint_path: str) -> list[int]:
    """Ids of the '|'-separated ``--forbid_ignore_word`` tokens; a word the vocabulary lacks is refused (it would
    silently become the unknown token)."""
    words = [w for w in (words or "").split("|") if w]
    ids = tokenizer.convert_tokens_to_ids(words)
    unknown = [w for w, i in zip(words, ids) if i is None or (i == tokenizer.unk_token_id and w != tokenizer.unk_token)]
    if unknown:
        raise UsageError(f"--forbid_ignore_word: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                         f"a token of {checkpoint_path}'s vocabulary (it would match only {tokenizer.unk_token}); "
                         f"give single vocabulary tokens, as the tokenizer writes them")
    return ids


def report_skipped(path: str, bad: list[str]) -> None:
    if bad:
        log.warning("skipped %d bad lines in %s (each gets an empty output line); first: %s", len(bad), path,
                    " | ".join(bad[:3]))


def _resume_identity(args: argparse.Namespace, checkpoint_path: str) -> dict:
    """What a partial output depends on: the input's content and every setting that changes the decoded lines."""
    weights = [os.path.join(checkpoint_path, name) for name in sorted(os.listdir(checkpoint_path))
               if name.startswith("model.") or name.startswith("pytorch_model")]
    settings = {k: v for k, v in vars(args).items() if k not in ("output_file", "resume", "log_level", "model_path")}
    settings["checkpoint"] = os.path.abspath(checkpoint_path)
    settings["weights"] = [(os.path.basename(w), os.path.getsize(w), os.stat(w).st_mtime_ns) for w in weights]
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    return {"input": os.path.abspath(args.input_file), "input_size": os.path.getsize(args.input_file),
            "input_sha256": sha256_file(args.input_file), "settings_sha256": hashlib.sha256(encoded).hexdigest()}


def _resume_point(output: str, total: int, identity: dict) -> tuple[int, int]:
    """(lines, bytes) already durable in ``output.partial``, after checking that they belong to this run; the
    partial file is cut back to the recorded length (or created empty)."""
    partial, meta_path = output + ".partial", output + ".partial.json"
    done, size = 0, 0
    if os.path.isfile(meta_path) and os.path.isfile(partial):
        try:
            with open(meta_path, encoding="utf-8") as handle:
                meta = json.load(handle)
            recorded = {key: meta[key] for key in identity}
            done, size = int(meta["lines_done"]), int(meta["bytes_done"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{meta_path}: unreadable progress file; delete it and {partial} to start over") from None
        changed = [key for key in identity if recorded[key] != identity[key]]
        if changed:
            what = "the input file" if any(key.startswith("input") for key in changed) else "the decoding settings"
            raise UsageError(f"{meta_path}: {what} changed since {partial} was written ({', '.join(changed)} "
                             f"differ); delete {partial} and {meta_path} to start over")
        if os.path.getsize(partial) < size or done > total:
            raise DataError(f"{partial}: shorter than {meta_path} records; delete both to start over")
        log.info("resuming %s at line %d of %d", output, done, total)
    elif os.path.exists(partial) or os.path.exists(meta_path):
        log.warning("%s: incomplete progress files without their partner; starting over", partial)
    with open(partial, "r+b" if done else "wb") as handle:
        handle.truncate(size)  # drop lines appended after the last recorded chunk
    return done, size


def decode_resumable(output: str, total: int, chunk: int, decode_range, identity: dict,
                     world: Optional[World] = None) -> int:
    """Decode lines [0, total) in chunks of ``chunk``; each finished chunk is appended to ``output.partial`` and
    fsynced before ``output.partial.json`` records it. A re-run continues after the last recorded chunk; the
    partial file is renamed to ``output`` when complete. Returns the number of lines decoded by this call.

    Under torchrun every rank calls ``decode_range`` (it returns the lines on rank 0 only) and rank 0 alone reads
    and writes the files."""
    partial, meta_path = output + ".partial", output + ".partial.json"
    world = world or World()
    start = None
    if world.is_main:
        try:
            start = _resume_point(output, total, identity)
        except Exception as error:  # handed to every rank, so that all of them stop with rank 0's error
            start = error
    start = world.broadcast_object(start)
    if isinstance(start, Exception):
        raise start
    done, size = start
    start_done = done
    while done < total:
        end = min(total, done + chunk)
        lines = decode_range(done, end)
        if world.is_main:
            with open(partial, "ab") as handle:
                handle.write("".join(line + "\n" for line in lines).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
                size = handle.tell()
            write_lines_atomic(meta_path, [json.dumps({**identity, "lines_done": end, "bytes_done": size,
                                                 "total": total})])
        done = end
    if world.is_main:
        os.replace(partial, output)
        fsync_path(os.path.dirname(os.path.abspath(output)))
        os.remove(meta_path)
    return total - start_done


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
        loaded = load_decoder(path, str(device), "fp16" if args.fp16 else args.precision, args.detokenize)
        max_tgt = args.max_tgt_length or int(loaded.settings["max_target_seq_length"])
        if args.min_len > max_tgt:
            raise UsageError(f"--min_len {args.min_len} exceeds the target length {max_tgt}")
        max_source = (args.max_seq_length - max_tgt) if args.max_seq_length else loaded.max_source_length
        if max_source < 3:
            raise UsageError(f"--max_seq_length {args.max_seq_length} leaves {max_source} source positions after "
                             f"{max_tgt} target tokens; need at least 3")
        valid = [i for i, source in enumerate(sources) if source is not None]
        valid_ids, truncated = loaded.source_ids([sources[i] for i in valid], max_source)
        ids: list[Optional[list[int]]] = [None] * len(sources)
        bad = []
        for i, source_ids in zip(valid, valid_ids):
            if source_ids:
                ids[i] = source_ids
                continue
            message = f"{args.input_file}:{numbers[i]}: \"src\" tokenises to nothing"
            if not args.skip_bad_lines:
                raise DataError(message)
            bad.append(message)
        report_skipped(args.input_file, bad)
        if truncated:
            log.warning("%d of %d sources truncated to %d tokens", truncated, len(valid), max_source)
        ignore = forbid_ignore_ids(loaded.tokenizer, args.forbid_ignore_word, path)
        config = SearchConfig(beam_size=args.beam_size, max_tgt_length=max_tgt, min_len=args.min_len,
                              length_penalty=args.length_penalty, forbid_duplicate_ngrams=args.forbid_duplicate_ngrams,
                              ngram_size=args.ngram_size, forbid_ignore_ids=ignore, nbest=args.nbest,
                              use_cache=not args.no_cache)

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
                                     progress=world.is_main and not args.resume, shard=(world.rank, world.size))
            # Each rank renders its own lines (detokenising is work too) and sends only those to rank 0.
            mine = {i: render(h) for i, h in zip(chosen, hyps) if h is not None}
            shares = world.gather_to_main(mine)
            if not world.is_main:
                return None
            lines = {i: line for share in shares for i, line in share.items()}
            return [lines.get(i, render(None)) for i in range(start, end)]

        output = args.output_file if len(paths) == 1 else f"{args.output_file}.{os.path.basename(path.rstrip('/'))}"
        if args.resume:
            decode_resumable(output, len(sources), args.resume_chunk, decode_range, _resume_identity(args, path),
                             world)
        else:
            lines = decode_range(0, len(sources))
            if world.is_main:
                write_lines_atomic(output, lines)
        log.info("wrote %d lines to %s", len(sources), output)
        written.append(output)
    return written


def main(argv=None) -> int:
    return run_cli(build_parser(), decode_file, argv)
