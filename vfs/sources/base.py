"""The one small interface every source of bytes implements, and the handles that serve reads.

A *ref* (a small frozen dataclass stored in each namespace node) names where a file's bytes come from;
``Sources.open(ref)`` (``vfs.sources.opener``) turns it into a ``Handle`` when a file is opened. Handles
serve ``read(offset, size)`` and never return bytes that were not verified.

Blocking calls (``os.pread`` on cache files) run in worker threads behind the shared disk limiter so that
the trio thread never blocks; the network never runs on the trio thread either.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import trio

from vfs.cache.entry import entry_name

if TYPE_CHECKING:
    from vfs.cache.store import CacheStore
    from vfs.hub.client import HubClient
    from vfs.refs import HubFileRef


class Handle(Protocol):
    """An open file. ``keep_cache`` tells the kernel it may keep the page cache across opens."""

    keep_cache: bool
    direct_io: bool

    async def read(self, offset: int, size: int) -> bytes: ...

    async def close(self) -> None: ...


class FetchContext(Protocol):
    """What a fetch may use of ``Sources`` (``vfs.sources.member``, ``vfs.sources.hubfile``): the pinned
    commit, the local cache, the limiters and the Hub client, and nothing else of it."""

    commit: str
    cache: CacheStore
    block_size: int
    disk_limiter: trio.CapacityLimiter
    cpu_limiter: trio.CapacityLimiter

    def require_client(self, what: str) -> HubClient: ...


class BlockSource(FetchContext, Protocol):
    """What a Hub file's handle asks of ``Sources``: a block through the cache tiers (single-flight), and
    blocks fetched ahead of a reader going in order."""

    async def hub_block(self, ref: HubFileRef, index: int) -> bytes: ...

    def read_ahead(self, ref: HubFileRef, indexes: range) -> None: ...


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
        self._prefetched = False

    async def read(self, offset: int, size: int) -> bytes:
        if offset >= self._size:
            return b""
        size = min(size, self._size - offset)
        data = _pread_if_in_memory(self._fd, size, offset)
        if data is not None:
            return data
        if not self._prefetched:
            # The first read that misses the page cache asks the kernel to read the whole file ahead: videos
            # are read whole (decord), and one large readahead beats a chain of 1 MiB synchronous preads.
            self._prefetched = True
            prefetch = self._prefetch_and_pread
            return await trio.to_thread.run_sync(prefetch, size, offset, limiter=self._limiter)
        return await trio.to_thread.run_sync(os.pread, self._fd, size, offset, limiter=self._limiter)

    def _prefetch_and_pread(self, size: int, offset: int) -> bytes:
        with contextlib.suppress(OSError):  # only a hint
            os.posix_fadvise(self._fd, offset, self._size - offset, os.POSIX_FADV_WILLNEED)
        return os.pread(self._fd, size, offset)

    async def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _pread_if_in_memory(fd: int, size: int, offset: int) -> bytes | None:
    """The bytes if they are all in the page cache, read inline; else None (the caller uses a thread).

    ``preadv2(RWF_NOWAIT)`` never blocks on the disk: it returns EAGAIN, or a short count, when a page is
    not in memory. A thread hop costs more than a page-cache copy of a 1 MiB request (bench/RESULTS.md), so
    hot reads skip it, and the trio thread still never waits for the disk.
    """
    if not _RWF_NOWAIT:
        return None
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
    except (BlockingIOError, OSError):
        return None
    if n != size:
        return None
    return buf  # type: ignore[return-value]  # pyfuse3 replies from any buffer: no copy to bytes


class FdCache:
    """Recently opened verified cache entries, by cache key: a re-open gets ``os.dup`` of a kept fd.

    An open of a hot video then needs no worker thread (a dup never waits for the disk), which is most of
    the cost of opening a cached file through FUSE. Entries expire after ``ttl_s`` so the cache store still
    sees regular lookups (recency, eviction). The store tells it of every eviction (``forget_entry``, from
    a worker thread), and the kept fd is closed at once: it would otherwise hold the blocks of an entry
    evicted to keep ``[cache] min_free`` free. Thread-safe; every call is short and never waits for a disk.
    """

    def __init__(self, *, max_entries: int = 256, ttl_s: float = 30.0) -> None:
        self._entries: OrderedDict[str, tuple[int, float, str]] = OrderedDict()  # key -> fd, expiry, name
        self._keys: dict[str, str] = {}  # entry file name -> cache key, for forget_entry
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._lock = threading.Lock()

    def dup(self, key: str) -> int | None:
        """A new fd on ``key``'s entry (the caller owns it), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            fd, expires, _ = entry
            if time.monotonic() > expires:
                self._drop_locked(key)
                return None
            self._entries.move_to_end(key)
            return os.dup(fd)

    def keep(self, key: str, fd: int) -> None:
        """Remember a dup of ``fd`` (the caller keeps its own fd)."""
        with self._lock:
            if self._max_entries <= 0 or key in self._entries:
                return
            name = entry_name(key)
            self._entries[key] = (os.dup(fd), time.monotonic() + self._ttl_s, name)
            self._keys[name] = key
            while len(self._entries) > self._max_entries:
                self._drop_locked(next(iter(self._entries)))

    def forget_entry(self, name: str) -> None:
        """The store evicted the entry file ``name``: close its kept fd, if any."""
        with self._lock:
            key = self._keys.get(name)
            if key is not None:
                self._drop_locked(key)

    def _drop_locked(self, key: str) -> None:
        fd, _, name = self._entries.pop(key)
        del self._keys[name]
        os.close(fd)

    def close(self) -> None:
        with self._lock:
            while self._entries:
                self._drop_locked(next(iter(self._entries)))
