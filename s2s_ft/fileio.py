"""Crash-safe file writing shared by every tool: a file is either its old self or completely new, never half."""
from __future__ import annotations

import os
from typing import Union


def fsync_path(path: str) -> None:
    """Flush a file's or a directory's data and metadata to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` (text is UTF-8) to a temporary file next to ``path``, fsync it, rename it over ``path``."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
