"""Resumable decoding (``--resume``): the output is written in durable chunks, and a re-run continues after the last
one. ``OUTPUT.partial`` holds the finished lines (each chunk appended and fsynced), ``OUTPUT.partial.json`` records
how many lines and bytes of it are durable and what they depend on (``resume_identity``); when complete the partial
file is renamed to ``OUTPUT``. Under torchrun rank 0 alone reads and writes these files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Optional

from s2s_ft.data.reading import DataError
from s2s_ft.distributed import World
from s2s_ft.errors import UsageError
from s2s_ft.fileio import fsync_path, sha256_file, write_lines_atomic

log = logging.getLogger("s2s_ft")


def resume_identity(input_file: str, checkpoint_path: str, settings: dict) -> dict:
    """What a partial output depends on: the input's content, the checkpoint's weight files and every setting that
    changes the decoded lines (``settings``: the decoding flags, without the output path)."""
    weights = [os.path.join(checkpoint_path, name) for name in sorted(os.listdir(checkpoint_path))
               if name.startswith("model.") or name.startswith("pytorch_model")]
    settings = dict(settings)
    settings["checkpoint"] = os.path.abspath(checkpoint_path)
    settings["weights"] = [(os.path.basename(w), os.path.getsize(w), os.stat(w).st_mtime_ns) for w in weights]
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    return {"input": os.path.abspath(input_file), "input_size": os.path.getsize(input_file),
            "input_sha256": sha256_file(input_file), "settings_sha256": hashlib.sha256(encoded).hexdigest()}


def resume_point(output: str, total: int, identity: dict) -> tuple[int, int]:
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


def decode_resumable(output: str, total: int, chunk: int, decode_range: Callable[[int, int], Optional[list]],
                     identity: dict, world: Optional[World] = None) -> int:
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
            start = resume_point(output, total, identity)
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
