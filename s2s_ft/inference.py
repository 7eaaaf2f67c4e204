"""Decoding a file with a fine-tuned checkpoint: the code behind ``decode_seq2seq.py``.

Python use (load once, decode many)::

    from s2s_ft.inference import load_decoder
    decoder = load_decoder("out/ckpt-1000")
    print(decoder.decode_texts(["the source sentence"], beam_size=5))
"""
from __future__ import annotations

import argparse
import glob
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
from .packing import SpecialIds

log = logging.getLogger("s2s_ft")

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LoadedDecoder:
    """A checkpoint's model, tokenizer and settings with text-in / text-out helpers."""

    def __init__(self, decoder: Seq2SeqDecoder, tokenizer, settings: dict):
        self.decoder, self.tokenizer, self.settings = decoder, tokenizer, settings

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
        """Detokenised text: WordPiece ## pieces merged, BPE / SentencePiece through the tokenizer's decoder."""
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False).strip()

    def decode_ids(self, sources: Sequence[Sequence[int]], config: SearchConfig,
                   batch_size: int = 32, progress: bool = False) -> list[list[Hypothesis]]:
        """Hypotheses per source in input order; batches are formed from length-sorted sources."""
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
        results: list[Optional[list[Hypothesis]]] = [None] * len(sources)
        bar = tqdm(total=len(sources), desc="decode", disable=not progress or None)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for index, hyps in zip(chunk, self.decoder.generate([sources[i] for i in chunk], config)):
                results[index] = hyps
            bar.update(len(chunk))
        bar.close()
        return results

    def decode_texts(self, sources: Sequence, batch_size: int = 32, **search) -> list[str]:
        ids, _ = self.source_ids(sources)
        config = SearchConfig(max_tgt_length=search.pop("max_tgt_length", self.settings["max_target_seq_length"]),
                              **search)
        return [self.text(hyps[0].tokens) if hyps else "" for hyps in self.decode_ids(ids, config, batch_size)]


def load_decoder(path: str, device: Optional[str] = None, precision: str = "fp32") -> LoadedDecoder:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    model, settings = checkpoint.load_finetuned(path)
    tokenizer = load_tokenizer(path)
    special = SpecialIds(**settings["special_ids"])
    decoder = Seq2SeqDecoder(model, special, settings["fine_tune"], device, AUTOCAST_DTYPES[precision])
    return LoadedDecoder(decoder, tokenizer, settings)


def write_atomic(path: str, lines: Sequence[str]) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Decode with a fine-tuned checkpoint (s2s-ft compatible flags).")
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
    add("--device", default=None)
    add("--log_level", default="INFO")
    return p


def decode_file(args: argparse.Namespace) -> list[str]:
    paths = sorted(glob.glob(args.model_path)) if any(c in args.model_path for c in "*?[") else [args.model_path]
    if not paths:
        raise DataError(f"{args.model_path}: no checkpoint matches")
    if args.nbest > max(1, args.beam_size):
        raise UsageError(f"--nbest {args.nbest} exceeds --beam_size {args.beam_size}")
    if args.nbest > 1 and args.output_format != "jsonl":
        raise UsageError("--nbest > 1 needs --output_format jsonl")
    sources = []
    for number, record in iter_jsonl(args.input_file):
        value = record.get("src")
        if not (isinstance(value, str) and value.strip()) and not (
                isinstance(value, list) and value and all(isinstance(x, str) for x in value)):
            raise DataError(f"{args.input_file}:{number}: \"src\" must be a non-empty string or word-piece list")
        sources.append(value)
    written = []
    for path in paths:
        loaded = load_decoder(path, args.device, "fp16" if args.fp16 else args.precision)
        max_tgt = args.max_tgt_length or int(loaded.settings["max_target_seq_length"])
        max_source = (args.max_seq_length - max_tgt) if args.max_seq_length else loaded.max_source_length
        ids, truncated = loaded.source_ids(sources, max_source)
        if truncated:
            log.warning("%d of %d sources truncated to %d tokens", truncated, len(ids), max_source)
        ignore = [] if not args.forbid_ignore_word else loaded.tokenizer.convert_tokens_to_ids(
            [w for w in args.forbid_ignore_word.split("|") if w])
        config = SearchConfig(beam_size=args.beam_size, max_tgt_length=max_tgt, min_len=args.min_len,
                              length_penalty=args.length_penalty, forbid_duplicate_ngrams=args.forbid_duplicate_ngrams,
                              ngram_size=args.ngram_size, forbid_ignore_ids=ignore, nbest=args.nbest,
                              use_cache=not args.no_cache)
        results = loaded.decode_ids(ids, config, args.batch_size, progress=True)
        if args.output_format == "text":
            lines = [loaded.text(hyps[0].tokens) if hyps else "" for hyps in results]
        else:
            lines = [json.dumps({"hyps": [{"text": loaded.text(h.tokens), "score": h.score, "log_prob": h.log_prob,
                                           "finished": h.finished} for h in hyps]}, ensure_ascii=False)
                     for hyps in results]
        output = args.output_file if len(paths) == 1 else f"{args.output_file}.{os.path.basename(path.rstrip('/'))}"
        write_atomic(output, lines)
        log.info("wrote %d lines to %s", len(lines), output)
        written.append(output)
    return written


def main(argv=None) -> int:
    return run_cli(build_parser(), decode_file, argv)
