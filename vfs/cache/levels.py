"""The cache tiers behind one interface, as mountpoint-s3's ``DataCache`` and ``MultilevelDataCache``.

A fetch looks in the local store, then in each tier below it (the cluster's shared tier, when one is
configured), and only then goes to the origin, the Hub. A hit below backfills the tiers above it; bytes
from the origin are published to every tier, to the ones below the local store in the background. The
sources of bytes (``vfs.sources.opener``) talk to ``MultilevelCache`` alone, so the order of the tiers,
and whether there are any below the local store, is decided here and at wiring, nowhere else.

The local store is not a ``DataCache`` like the others: members are served from an fd on its entry, so
every other tier copies *into* it. Rules and the crash-safety argument: docs/design.md, "The two caches".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from vfs.cache.store import CacheFull

if TYPE_CHECKING:
    from vfs.cache.store import CacheStore
    from vfs.cache.tier import SharedStats
    from vfs.refs import HubFileRef, MemberRef


class DataCache(Protocol):
    """A tier below the local store. Each call is bounded in time, verifies what it returns, and turns
    the tier's own failures into misses: a tier is an optimisation, never a reader's error."""

    name: str

    @property
    def stats(self) -> SharedStats: ...

    @property
    def pending_publishes(self) -> int: ...

    async def get_block(self, ref: HubFileRef, block_size: int, index: int) -> bytes | None: ...

    def put_block_soon(self, key: str, data: bytes) -> None: ...

    async def get_member(self, ref: MemberRef, into: CacheStore) -> bool: ...

    def put_member_soon(self, ref: MemberRef, source: CacheStore) -> None: ...

    async def get_shard_index(self, shard_sha256: str, dest: Path) -> bool: ...

    async def drain(self, timeout_s: float = 60.0) -> int: ...


class MultilevelCache:
    """The local store over the tiers ``lower`` (first is nearest). Trio thread; the local store's
    blocking calls run in worker threads behind ``disk_limiter``."""

    def __init__(
        self,
        local: CacheStore,
        lower: Sequence[DataCache],
        *,
        disk_limiter: trio.CapacityLimiter,
        on_no_room: Callable[[int, str], None] = lambda size, why: None,
    ) -> None:
        self.local = local
        self.lower = tuple(lower)
        self._disk = disk_limiter
        # A verified block the local store has no room for is still returned; this hears of it.
        self._on_no_room = on_no_room

    def tier(self, name: str) -> DataCache | None:
        """The lower tier called ``name`` (for its stats), or None when it is not configured."""
        return next((tier for tier in self.lower if tier.name == name), None)

    # -- Hub-file blocks ------------------------------------------------------------------------------

    async def block(self, ref: HubFileRef, block_size: int, index: int) -> bytes | None:
        """The block from the local store, or None."""
        return await trio.to_thread.run_sync(
            _read_block, self.local, ref, block_size, index, limiter=self._disk
        )

    async def block_below(self, ref: HubFileRef, block_size: int, index: int) -> tuple[bytes, str] | None:
        """The block from the first lower tier that has it, and that tier's name; it is backfilled into
        the local store and the lower tiers above the one that had it."""
        key = ref.block_key(block_size, index)
        for depth, tier in enumerate(self.lower):
            data = await tier.get_block(ref, block_size, index)
            if data is not None:
                for above in self.lower[:depth]:
                    above.put_block_soon(key, data)
                await self._publish_local(key, data)
                return data, tier.name
        return None

    async def put_block(self, ref: HubFileRef, block_size: int, index: int, data: bytes) -> None:
        """Publish a verified block from the origin: to the local store now, to the lower tiers soon."""
        key = ref.block_key(block_size, index)
        for tier in self.lower:
            tier.put_block_soon(key, data)
        await self._publish_local(key, data)

    async def _publish_local(self, key: str, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(self.local.publish, key, data, limiter=self._disk)
        except CacheFull as exc:
            self._on_no_room(len(data), str(exc))

    # -- shard members --------------------------------------------------------------------------------

    async def member_fd(self, ref: MemberRef) -> int | None:
        """An fd on the member's verified entry in the local store, or None."""
        return await trio.to_thread.run_sync(
            lambda: self.local.lookup(ref.cache_key, size=ref.size, sha256=ref.sha256), limiter=self._disk
        )

    async def member_below(self, ref: MemberRef) -> str | None:
        """Copy the member into the local store from the first lower tier that has it, backfilling the
        tiers above that one; the tier's name, or None when no lower tier has it."""
        for depth, tier in enumerate(self.lower):
            if await tier.get_member(ref, into=self.local):
                for above in self.lower[:depth]:
                    above.put_member_soon(ref, self.local)
                return tier.name
        return None

    def member_fetched(self, ref: MemberRef) -> None:
        """The member came from the origin into the local store: publish it to the lower tiers soon."""
        for tier in self.lower:
            tier.put_member_soon(ref, self.local)

    # -- shard indexes --------------------------------------------------------------------------------

    async def shard_index(self, shard_sha256: str, dest: Path) -> bool:
        """Copy the shard's index to ``dest`` from the first lower tier that has it. Indexes are published
        by ``index``, not here: a daemon only reads them."""
        for tier in self.lower:
            if await tier.get_shard_index(shard_sha256, dest):
                return True
        return False

    async def drain(self, timeout_s: float = 60.0) -> int:
        """Give queued publishes to the lower tiers up to ``timeout_s`` each; how many were abandoned."""
        return sum([await tier.drain(timeout_s) for tier in self.lower])


def _read_block(local: CacheStore, ref: HubFileRef, block_size: int, index: int) -> bytes | None:
    """Blocking: the block from the local store, or None. Runs in a worker thread."""
    length = min(block_size, ref.size - index * block_size)
    fd = local.lookup(ref.block_key(block_size, index), size=length)
    if fd is None:
        return None
    try:
        data = os.pread(fd, length, 0)
    finally:
        os.close(fd)
    return data if len(data) == length else None
