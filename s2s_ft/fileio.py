"""Crash-safe file writing shared by every tool: a file or directory is either its old self or completely new,
never half, and the old version is kept until the new one is in place."""
from __future__ import annotations

import hashlib
import os
import shutil
from typing import Callable, Optional, Sequence, Union

# Suffixes of a directory replacement in progress (see replace_dir): the new version being written, the complete
# new version waiting to be renamed in, the previous version moved aside.
WRITING, READY, PREVIOUS = ".tmp", ".new.tmp", ".old.tmp"


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


def fsync_parent(path: str) -> None:
    fsync_path(os.path.dirname(os.path.abspath(path)))


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
    fsync_parent(path)


def write_lines_atomic(path: str, lines: Sequence[str]) -> None:
    """``lines``, each ended by a newline, written with ``write_atomic``."""
    write_atomic(path, "".join(line + "\n" for line in lines))


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_tree(directory: str) -> None:
    """fsync every file under ``directory``, then the directory itself."""
    for root, _, files in os.walk(directory):
        for name in files:
            fsync_path(os.path.join(root, name))
    fsync_path(directory)


def replace_dir(written: str, path: str) -> None:
    """Put the complete directory ``written`` (``path + WRITING``, fsynced) in place of ``path``, keeping the
    previous version until the new one is in place:

    1. ``path.tmp`` -> ``path.new.tmp`` (from now on the new version counts as complete);
    2. ``path`` -> ``path.old.tmp`` (if there is a previous version);
    3. ``path.new.tmp`` -> ``path``;
    4. delete ``path.old.tmp``.

    After a crash at any point, :func:`recover_dir` finds a complete ``path`` (the old or the new one)."""
    ready, previous = path + READY, path + PREVIOUS
    shutil.rmtree(ready, ignore_errors=True)  # stale leftovers of an earlier crash (recover_dir clears them too)
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(written, ready)
    fsync_parent(path)
    if os.path.isdir(path):
        os.replace(path, previous)
    os.replace(ready, path)
    fsync_parent(path)
    shutil.rmtree(previous, ignore_errors=True)


def recover_dir(path: str, complete: Optional[Callable[[str], bool]] = None) -> Optional[str]:
    """Finish or undo a :func:`replace_dir` of ``path`` that a crash interrupted; returns what was done (for a log
    line) or None. A complete new version (``path.new.tmp``) is renamed in; a previous version (``path.old.tmp``)
    is deleted once ``path`` exists, or put back when nothing replaced it (only if ``complete(it)`` holds, for
    leftovers of older code that deleted it before renaming the new one in); ``path.tmp`` (a version still being
    written) is deleted."""
    ready, previous, written = path + READY, path + PREVIOUS, path + WRITING
    done = None
    if os.path.isdir(ready):
        if os.path.isdir(path):  # crashed before step 2
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
        os.replace(ready, path)
        done = f"completed the replacement of {path}"
    if os.path.isdir(previous):
        if not os.path.isdir(path) and (complete is None or complete(previous)):
            os.replace(previous, path)
            done = f"restored the previous {path}"
        else:
            shutil.rmtree(previous, ignore_errors=True)
    if os.path.isdir(written):
        shutil.rmtree(written, ignore_errors=True)
        done = done or f"removed {written}, left by a save that did not finish"
    if done:
        fsync_parent(path)
    return done
