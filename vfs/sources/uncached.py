"""Members served *uncached*: when the local cache has no room (``max_size`` and ``min_free`` evicted all
they could and the disk is still full, as on a training node whose checkpoints filled it), a member's
verified bytes are held in memory for its open handles only, then dropped, so a full disk never costs a
training sample.

The memory is bounded by ``[cache] uncached_max``. An open that would exceed it waits for handles to close,
up to ``WAIT_S``, rather than failing; a member larger than the whole budget is served once it is the only
one held, so nothing waits forever. Concurrent opens of one member share one fetch and one copy. What was
served this way, and why, is one WARNING a minute. Trio thread only; no await between a check and its
update.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from vfs.errors import FetchError

log = logging.getLogger("vfs.sources")

# How long an open waits for uncached memory before it fails (EIO): longer than a video takes to read,
# shorter than a data loader's timeout.
WAIT_S = 120.0
# One summary WARNING per this many seconds while members are being served uncached.
REPORT_EVERY_S = 60.0


@dataclass
class UncachedStats:
    serves: int = 0  # opens served from memory because the cache had no room
    bytes: int = 0  # bytes of the members fetched for them
    held_bytes: int = 0  # bytes held in memory now
    waits: int = 0  # opens that waited for the budget


@dataclass
class _Held:
    size: int
    users: int = 0  # opens that hold it, or wait for its fetch
    data: bytearray | None = None
    fetching: bool = False  # one open is getting its bytes; the others wait
    charged: bool = False  # its size counts against the budget


class UncachedMembers:
    def __init__(self, budget_bytes: int, *, wait_s: float = WAIT_S) -> None:
        self.budget_bytes = budget_bytes
        self.stats = UncachedStats()
        self._wait_s = wait_s
        self._held: dict[str, _Held] = {}
        self._changed = trio.Event()  # set (and replaced) whenever memory is released
        self._reported_at = -REPORT_EVERY_S
        self._since_report = 0
        self._bytes_since_report = 0

    async def open(
        self, key: str, size: int, fetch: Callable[[], Awaitable[bytearray]], why: str
    ) -> UncachedHandle:
        """A handle on the member ``key`` of ``size`` bytes, fetched with ``fetch`` (verified bytes) unless
        another open holds it already. ``why``: the cache's reason, for the WARNING."""
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(size)
        held.users += 1
        try:
            if held.data is None:
                await self._fetch_once(held, fetch)
        except BaseException:
            self._release(key, held)
            raise
        assert held.data is not None
        self.stats.serves += 1
        self._report(size, why)
        return UncachedHandle(held.data, lambda: self._release(key, held))

    async def _fetch_once(self, held: _Held, fetch: Callable[[], Awaitable[bytearray]]) -> None:
        # The first open fetches; later ones wait for it. A failed fetch leaves data None, and the next
        # waiter tries itself (its error is then its own).
        while held.data is None:
            if held.fetching:  # another open is fetching (or waiting for the budget to): wait for it
                await self._changed.wait()
                continue
            held.fetching = True
            try:
                await self._charge(held)
                try:
                    data = await fetch()
                except BaseException:
                    self._uncharge(held)
                    raise
                held.data = data
                self.stats.bytes += len(data)
            finally:
                held.fetching = False
                self._wake()

    async def _charge(self, held: _Held) -> None:
        if not self._fits(held.size):
            self.stats.waits += 1
            with trio.move_on_after(self._wait_s):
                while not self._fits(held.size):
                    await self._changed.wait()
            if not self._fits(held.size):
                raise FetchError(
                    f"the cache has no room and {self.stats.held_bytes} bytes of videos served uncached "
                    f"fill [cache] uncached_max ({self.budget_bytes}); waited {self._wait_s:.0f}s"
                )
        held.charged = True
        self.stats.held_bytes += held.size

    def _fits(self, size: int) -> bool:
        return self.stats.held_bytes == 0 or self.stats.held_bytes + size <= self.budget_bytes

    def _uncharge(self, held: _Held) -> None:
        if held.charged:
            held.charged = False
            self.stats.held_bytes -= held.size
        self._wake()

    def _release(self, key: str, held: _Held) -> None:
        held.users -= 1
        if held.users == 0:
            if self._held.get(key) is held:
                del self._held[key]
            held.data = None
            self._uncharge(held)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def note_block(self, size: int, why: str) -> None:
        """A Hub-file block was served without being cached (its handle keeps only the last block)."""
        self.stats.serves += 1
        self.stats.bytes += size
        self._report(size, why)

    def _report(self, size: int, why: str) -> None:
        self._since_report += 1
        self._bytes_since_report += size
        now = trio.current_time()
        if now - self._reported_at < REPORT_EVERY_S:
            return
        log.warning(
            "served %d files (%d bytes) uncached in the last minute, from memory while open: %s. Free space "
            "on the cache's disk, or lower [cache] min_free; caching resumes by itself once there is room",
            self._since_report,
            self._bytes_since_report,
            why,
        )
        self._reported_at = now
        self._since_report = self._bytes_since_report = 0


class UncachedHandle:
    """A member's verified bytes in memory, released when the handle closes. Without ``keep_cache`` the
    kernel drops its pages at the next open, which then asks again, and is cached once there is room."""

    keep_cache = False
    direct_io = False

    def __init__(self, data: bytearray, release: Callable[[], None]) -> None:
        self._data = memoryview(data)  # a read copies its range once, not the slice and then again
        self._release: Callable[[], None] | None = release

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(self._data[offset : offset + size])

    async def close(self) -> None:
        release, self._release = self._release, None
        self._data = memoryview(b"")
        if release is not None:
            release()
