"""``Sources``: turns a ref into an open ``Handle``; owns the fetch machinery the sources share. A fetch
goes through the cache tiers (``vfs.cache.levels.MultilevelCache``), then to the Hub.

Concurrency: blocking work runs in threads behind named limiters -- ``disk_limiter`` for cache file I/O,
``cpu_limiter`` for inflating and hashing -- so a stalled network (whose concurrency the Hub client
limits on its own) never takes the slots that cache hits need. Fetches are single-flight per cache key
and run in the daemon's service nursery.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from cachetools import LRUCache

from vfs.access import Caller
from vfs.cache.levels import MultilevelCache
from vfs.cache.store import CacheFull
from vfs.config import DEFAULT_UNCACHED_MAX_BYTES
from vfs.errors import FetchError, VfsError
from vfs.layout import index_path
from vfs.refs import HubFileRef, LocalFileRef, MemberRef, Ref, UpstreamRef, VirtualRef
from vfs.sources.base import BytesHandle, FdCache, FdHandle, Handle
from vfs.sources.hubfile import HubFileHandle, fetch_block
from vfs.sources.member import fetch_member
from vfs.sources.singleflight import SingleFlight
from vfs.sources.timings import FetchTimings
from vfs.sources.uncached import UncachedMembers
from vfs.sources.upstream import open_local, open_upstream
from vfs.targz.shard_index import ShardIndex

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vfs.cache.levels import DataCache
    from vfs.cache.store import CacheStore
    from vfs.hub.client import HubClient

log = logging.getLogger(__name__)


class Sources:
    def __init__(
        self,
        *,
        commit: str,
        cache: CacheStore,
        index_dir: Path,
        block_size: int,
        nursery: trio.Nursery,
        client: HubClient | None,
        disk_threads: int = 16,
        cpu_threads: int = 2,
        index_cache_entries: int = 64,
        lower_tiers: Sequence[DataCache] = (),
        uncached_max_bytes: int = DEFAULT_UNCACHED_MAX_BYTES,
    ) -> None:
        self.commit = commit
        self.timings = FetchTimings()
        self.open_fds = FdCache()  # re-opens of hot members skip the worker thread
        cache.add_evict_listener(self.open_fds.forget_entry)
        self.cache = cache
        self.index_dir = index_dir
        self.block_size = block_size
        self.client = client
        self.disk_limiter = trio.CapacityLimiter(disk_threads)
        self.cpu_limiter = trio.CapacityLimiter(cpu_threads)
        # Members served from memory while the cache has no room (a full disk): vfs.sources.uncached.
        self.uncached = UncachedMembers(uncached_max_bytes)
        # The local store, then the tiers below it (the cluster's shared tier), then the Hub.
        self.tiers = MultilevelCache(
            cache, lower_tiers, disk_limiter=self.disk_limiter, on_no_room=self.uncached.note_block
        )
        self._flights: SingleFlight[object] = SingleFlight(nursery)
        self._nursery = nursery
        self._indexes: LRUCache[str, ShardIndex] = LRUCache(maxsize=index_cache_entries)

    @property
    def fetches_in_flight(self) -> int:
        return self._flights.in_flight

    def require_client(self, what: str) -> HubClient:
        if self.client is None:
            raise FetchError(f"{what}: not in the cache and the Hub is offline")
        return self.client

    async def open(self, ref: Ref | None, caller: Caller | None = None) -> Handle:
        """A handle on ``ref``'s bytes. ``caller`` (an ``allow_other`` mount) is checked against an
        upstream file's real path; everything else the kernel has already checked (``vfs.access``)."""
        if isinstance(ref, MemberRef):
            try:
                fd = await self.member_fd(ref)
            except CacheFull as exc:  # nothing left to evict: serve it from memory, never fail the open
                return await self.uncached.open(
                    ref.cache_key, ref.size, functools.partial(self._fetch_member_uncached, ref), str(exc)
                )
            return FdHandle(fd, ref.size, self.disk_limiter)
        if isinstance(ref, HubFileRef):
            return HubFileHandle(self, ref)
        if isinstance(ref, VirtualRef):
            data = ref.render()
            return BytesHandle(data, keep_cache=not ref.dynamic, direct_io=ref.dynamic)
        if isinstance(ref, UpstreamRef):
            return await open_upstream(ref, self.disk_limiter, caller)
        if isinstance(ref, LocalFileRef):
            return await open_local(ref, self.disk_limiter)
        raise TypeError(f"unknown ref {ref!r}")

    def is_cached(self, ref: Ref | None) -> bool:
        """Blocking (a stat): whether opening the file would need no download."""
        if isinstance(ref, MemberRef):
            return self.cache.contains(ref.cache_key)
        if isinstance(ref, HubFileRef):
            blocks = ref.block_count(self.block_size)
            return all(self.cache.contains(ref.block_key(self.block_size, i)) for i in range(blocks))
        return True

    async def hub_block(self, ref: HubFileRef, index: int) -> bytes:
        data = await self.tiers.block(ref, self.block_size, index)
        if data is not None:
            return data
        result = await self._flights.run(
            ref.block_key(self.block_size, index), lambda: self._fetch_block(ref, index)
        )
        assert isinstance(result, bytes)
        return result

    def read_ahead(self, ref: HubFileRef, indexes: range) -> None:
        """Fetch, in the background, the blocks a sequential reader of ``ref`` will ask for next: several
        ranged GETs in flight instead of one at a time (a CDN paces each connection). Trio thread only."""
        with contextlib.suppress(RuntimeError):  # the nursery is closed: shutting down
            self._nursery.start_soon(self._read_ahead, ref, indexes)

    async def _read_ahead(self, ref: HubFileRef, indexes: range) -> None:
        for index in indexes:
            if self.client is None and not self.tiers.lower:
                return
            key = ref.block_key(self.block_size, index)  # the cache key, and the key its flight runs under
            if await trio.to_thread.run_sync(self.cache.contains, key, limiter=self.disk_limiter):
                continue
            self._flights.start(key, functools.partial(self._fetch_ahead, ref, index))

    async def _fetch_ahead(self, ref: HubFileRef, index: int) -> bytes:
        try:
            return await self._fetch_block(ref, index)
        except VfsError as exc:  # nobody may be waiting: the reader fetches the block itself and sees it then
            log.debug("read-ahead of %s block %d: %s", ref.path, index, exc)
            raise

    async def _fetch_block(self, ref: HubFileRef, index: int) -> bytes:
        # Another flight (a read-ahead, another reader) may have published the block between the caller's
        # cache miss and this flight's start: look again, inside the flight, so it is never fetched twice.
        cached = await self.tiers.block(ref, self.block_size, index)
        if cached is not None:
            return cached
        started_s = trio.current_time()
        below = await self.tiers.block_below(ref, self.block_size, index)
        if below is not None:
            data, tier = below
            self.timings.observe("block", tier, trio.current_time() - started_s)
            return data
        data = await fetch_block(self, ref, index)
        await self.tiers.put_block(ref, self.block_size, index, data)
        self.timings.observe("block", "hub", trio.current_time() - started_s)
        return data

    async def member_fd(self, ref: MemberRef) -> int:
        """An fd on the verified cached member, fetching it first if needed (single-flight)."""
        fd = self.open_fds.dup(ref.cache_key)
        if fd is not None:
            return fd
        fd = await self._lookup_member(ref)
        if fd is not None:
            self.open_fds.keep(ref.cache_key, fd)
            return fd
        await self._flights.run(ref.cache_key, lambda: self._fetch_member_and_keep(ref))
        # The fetch kept an fd on the entry it published for the readers that waited on it. Under a cache
        # too small for what is read at once, concurrent publishes may evict the entry (and close that fd)
        # before this reader gets here: then it is served uncached, like any member the cache has no room
        # for.
        fd = self.open_fds.dup(ref.cache_key)
        if fd is None:
            fd = await self._lookup_member(ref)
        if fd is None:
            raise CacheFull(f"cache {self.cache.root} evicted {ref.member_path} before it could be opened")
        return fd

    async def _fetch_member_and_keep(self, ref: MemberRef) -> None:
        await self._fetch_member(ref)
        fd = await self._lookup_member(ref)  # at once, inside the flight: before the waiters wake up
        if fd is not None:
            self.open_fds.keep(ref.cache_key, fd)
            os.close(fd)

    async def _lookup_member(self, ref: MemberRef) -> int | None:
        return await self.tiers.member_fd(ref)

    async def _fetch_member(self, ref: MemberRef) -> None:
        started_s = trio.current_time()
        tier = await self.tiers.member_below(ref)
        if tier is not None:
            self.timings.observe("member", tier, trio.current_time() - started_s)
            return
        index = await self.shard_index(ref.shard_sha256, ref.shard_path)
        await fetch_member(self, ref, index)
        self.timings.observe("member", "hub", trio.current_time() - started_s)
        self.tiers.member_fetched(ref)

    async def _fetch_member_uncached(self, ref: MemberRef) -> bytearray:
        started_s = trio.current_time()
        index = await self.shard_index(ref.shard_sha256, ref.shard_path)
        data = await fetch_member(self, ref, index, into_memory=True)
        assert data is not None
        self.timings.observe("member", "hub", trio.current_time() - started_s)
        return data

    async def shard_index(self, shard_sha256: str, shard_path: str) -> ShardIndex:
        index = self._indexes.get(shard_sha256)
        if index is not None:
            return index
        path = index_path(self.index_dir, shard_sha256)
        if self.tiers.lower and not await trio.to_thread.run_sync(path.exists):
            await self.tiers.shard_index(shard_sha256, path)

        def load() -> ShardIndex:
            try:
                # the key is the LFS sha256, or the git blob id of a shard stored without LFS
                expected = shard_sha256 if len(shard_sha256) == 64 else None
                return ShardIndex.load(path, expected_sha256=expected)
            except FileNotFoundError:
                raise FetchError(f"{shard_path}: no shard index at {path}; run `llava-vfs index`") from None

        result = await self._flights.run(("idx", shard_sha256), lambda: trio.to_thread.run_sync(load))
        assert isinstance(result, ShardIndex)
        self._indexes[shard_sha256] = result
        return result
