"""The one small interface every source of bytes implements, and the handles that serve reads.

A *ref* (a small frozen dataclass stored in each namespace node) names where a file's bytes come from;
``Sources.open(ref)`` (``vfs.sources.opener``) turns it into a ``Handle`` when a file is opened. Handles
serve ``read(offset, size)`` and never return bytes that were not verified.

Blocking calls (``os.pread`` on cache files) run in worker threads behind the shared disk limiter so that
the trio thread never blocks; the network never runs on the trio thread either.
"""

from __future__ import annotations

import os
from typing import Protocol

import trio


class Handle(Protocol):
    """An open file. ``keep_cache`` tells the kernel it may keep the page cache across opens."""

    keep_cache: bool
    direct_io: bool

    async def read(self, offset: int, size: int) -> bytes: ...

    async def close(self) -> None: ...


class BytesHandle:
    """A file whose bytes are in memory (``.vfs/`` files)."""

    def __init__(self, data: bytes, *, keep_cache: bool = True, direct_io: bool = False) -> None:
        self._data = data
        self.keep_cache = keep_cache
        self.direct_io = direct_io

    async def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    async def close(self) -> None:
        return None


class FdHandle:
    """A verified local file (a cache entry or an upstream file) read with ``pread`` in a thread.

    The fd is owned by the handle: eviction may unlink the cache entry, but an open fd keeps reading the
    same bytes (POSIX), so an evicted entry never fails a reader that already holds it.
    """

    def __init__(self, fd: int, size: int, limiter: trio.CapacityLimiter, *, keep_cache: bool = True) -> None:
        self._fd = fd
        self._size = size
        self._limiter = limiter
        self.keep_cache = keep_cache
        self.direct_io = False

    async def read(self, offset: int, size: int) -> bytes:
        if offset >= self._size:
            return b""
        size = min(size, self._size - offset)
        return await trio.to_thread.run_sync(os.pread, self._fd, size, offset, limiter=self._limiter)

    async def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
