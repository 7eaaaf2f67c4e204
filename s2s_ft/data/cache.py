"""Tokenised-feature cache (``--cache_dir``, default ``<output_dir>/cache``).

A run that has tokenised its training file saves the result as ``<cache_dir>/<key>.pt`` (flat int32 tensors plus
offsets, read with ``torch.load(weights_only=True)``), so the next run with the same data and settings starts
without tokenising. The key hashes everything the tokenised examples depend on: the data file (absolute path, size,
mtime), the content of the tokenizer's files, the maximum lengths, the objective and ``--skip_bad_lines``. The
file is written to a temporary name and renamed; one that cannot be read or does not match its key is ignored with
a warning and rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Callable, Sequence

import torch

from s2s_ft.fileio import write_atomic

log = logging.getLogger("s2s_ft")

FORMAT_VERSION = 2  # 2: a third column, the answer spans
# Files whose content decides how text is tokenised (whichever of them the tokenizer directory holds).
TOKENIZER_CONTENT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                           "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                           "tokenizer.model")


def tokenizer_fingerprint(tokenizer_dir: str) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_CONTENT_FILES:
        path = os.path.join(tokenizer_dir, name)
        if os.path.isfile(path):
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def cache_key(data_file: str, tokenizer_dir: str, **settings) -> dict:
    """The description whose hash names the cache file (stored inside it too, and compared on load)."""
    stat = os.stat(data_file)
    return {"version": FORMAT_VERSION, "data_file": os.path.abspath(data_file), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "tokenizer": tokenizer_fingerprint(tokenizer_dir), **settings}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _encode(columns: Sequence[Sequence[Sequence[int]]]) -> dict:
    encoded = {}
    for c, column in enumerate(columns):
        lengths = torch.tensor([len(seq) for seq in column], dtype=torch.int64)
        encoded[f"offsets{c}"] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        encoded[f"ids{c}"] = torch.tensor([t for seq in column for t in seq], dtype=torch.int32)
    return encoded


def _decode(encoded: dict, num_columns: int) -> list[list[list[int]]]:
    columns = []
    for c in range(num_columns):
        ids, offsets = encoded[f"ids{c}"].tolist(), encoded[f"offsets{c}"].tolist()
        columns.append([ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)])
    if len({len(column) for column in columns}) > 1:
        raise ValueError("columns of different lengths")
    return columns


def cached_columns(cache_dir: str, key: dict, num_columns: int,
                   build: Callable[[], list[list[list[int]]]]) -> list[list[list[int]]]:
    """``build()``'s columns (lists of token-id lists), from ``cache_dir`` when a matching cache file exists."""
    path = os.path.join(cache_dir, f"features-{key_hash(key)}.pt")
    if os.path.isfile(path):
        try:
            stored = torch.load(path, weights_only=True)
            if json.loads(stored["key"]) != key:
                raise ValueError("its key does not match")
            columns = _decode(stored, num_columns)
            log.info("read %d tokenised examples from %s", len(columns[0]), path)
            return columns
        except Exception as error:  # truncated, corrupted, or from another format version
            log.warning("ignoring tokenised-feature cache %s (%s); rebuilding it",
                        path, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    columns = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"key": json.dumps(key, sort_keys=True), **_encode(columns)}, buffer)
        write_atomic(path, buffer.getvalue())
        log.info("saved %d tokenised examples to %s", len(columns[0]), path)
    except OSError as error:  # a cache that cannot be written only costs the next run its tokenisation
        log.warning("could not write the tokenised-feature cache %s (%s)", path, error)
    return columns
