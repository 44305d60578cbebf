"""Durable publication of local files, in the one order every writer here uses.

A file is written under a temp name, fsynced, renamed over its final name, and then its directory is
fsynced, so a crash at any point leaves the old file or the new one in place, never a torn one, and the
rename itself survives a power loss. Every local writer publishes through here, except two that keep
the same order with a reason of their own: the cache store (``vfs.cache.store``), whose renames happen under
its lock to keep its index equal to the disk, and the shared tier (``vfs.cache.shared``), which tolerates a
network filesystem that refuses a directory fsync.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


def publish(tmp: Path, final: Path, *, synced: bool = False) -> None:
    """Make the finished temp file ``tmp`` the file at ``final``: fsync (unless the writer already did,
    ``synced``), rename, fsync the directory. A failed rename removes ``tmp``."""
    if not synced:
        fsync_file(tmp)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


@contextlib.contextmanager
def replacing(final: Path) -> Iterator[Path]:
    """A temp path beside ``final`` for the block to write: published over ``final`` when the block ends
    (``publish``), removed when it raises, so a failed write (a full disk) leaves nothing half-written.
    A leftover of an earlier crash under the same name is removed first."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, final)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` as the whole new content of ``path`` (private directory created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with replacing(path) as tmp:
        tmp.write_bytes(data)
