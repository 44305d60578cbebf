"""Durable publication of local files, in the one order every writer here uses.

A file is written under a temp name, fsynced, renamed over its final name, and then its directory is
fsynced, so a crash at any point leaves the old file or the new one in place, never a torn one, and the
rename itself survives a power loss. (The shared tier, ``vfs.cache.shared``, follows the same order with
its own variant that tolerates network filesystems refusing a directory fsync.)
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make the finished temp file ``tmp`` the file at ``final``: fsync, rename, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` as the whole new content of ``path`` (private directory created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    publish(tmp, path)
