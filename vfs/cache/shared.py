"""The shared tier as the daemon and ``prefetch`` use it (``SharedCache``): every call bounded by a timeout
and a circuit breaker, run in worker threads, so a slow or hung share costs one timeout, then the Hub. The
format and the rules that make it safe: ``vfs.cache.tier`` and docs/design.md, "The shared tier"."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from vfs.cache.tier import SharedStats, SharedTier, verify_shard_index
from vfs.errors import FetchError, IntegrityError

if TYPE_CHECKING:
    from vfs.cache.store import CacheStore
    from vfs.config import Config
    from vfs.refs import HubFileRef, MemberRef

log = logging.getLogger("vfs.cache.shared")


class SharedCache:
    """Bounded, time-limited calls into a ``SharedTier`` from trio, and background publishes: the shared
    tier as a ``vfs.cache.levels.DataCache``.

    Reads run in worker threads behind their own limiter, each within a deadline (``open_timeout_s`` plus
    the size at ``min_rate_bytes_per_s``); a call that misses it is abandoned (its thread finishes on its
    own; anything it completes is verified and harmless) and counts as a failure of the share. Publishes
    run in the background in ``nursery`` so readers never wait for the share; at most
    ``max_pending_publishes`` are queued (more are skipped: the share is an optimisation) and ``drain``
    gives the queue a bounded time at shutdown.

    ``_pending`` and ``_idle`` are only touched on the trio thread, never across an await.
    """

    name = "shared"  # in metrics, timings and stats.json

    def __init__(
        self,
        tier: SharedTier,
        nursery: trio.Nursery,
        *,
        read_threads: int = 8,
        publish_threads: int = 2,
        max_pending_publishes: int = 256,
        open_timeout_s: float = 10.0,
        min_rate_bytes_per_s: float = 8 * 2**20,
    ) -> None:
        self.tier = tier
        self._nursery = nursery
        self._read_limiter = trio.CapacityLimiter(read_threads)
        self._publish_limiter = trio.CapacityLimiter(publish_threads)
        self._max_pending = max_pending_publishes
        self._open_timeout_s = open_timeout_s
        self._min_rate = min_rate_bytes_per_s
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()

    @property
    def stats(self) -> SharedStats:
        return self.tier.stats

    @property
    def pending_publishes(self) -> int:
        return self._pending

    def _deadline_s(self, size: int) -> float:
        return self._open_timeout_s + size / self._min_rate

    async def _call(self, what: str, size: int, fn: Callable[[], object], *, write: bool = False) -> object:
        """``fn()`` in a worker thread within its deadline; None on a timeout or an unexpected error.

        ``FetchError`` (the *local* cache out of space) propagates: the Hub path would meet it too. Any
        other surprise from the share is a WARNING and a miss, never a reader's error or a dead daemon.
        """
        timeout_s = self._deadline_s(size)
        limiter = self._publish_limiter if write else self._read_limiter
        try:
            with trio.move_on_after(timeout_s):
                return await trio.to_thread.run_sync(fn, limiter=limiter, abandon_on_cancel=True)
        except FetchError:
            raise
        except Exception as exc:
            log.warning(
                "shared cache %s: %s failed: %r; going on without the share", self.tier.root, what, exc
            )
            return None
        self.tier.note_timeout(what, timeout_s, write=write)
        return None

    async def get_member(self, ref: MemberRef, into: CacheStore) -> bool:
        """Copy a member from the share into the local cache, verified; False if it is not usable there."""
        if not self.tier.readable():
            return False
        copied = await self._call(
            f"copying {ref.member_path}",
            ref.size,
            lambda: self.tier.copy_into(into, ref.cache_key, ref.size, ref.sha256),
        )
        return copied is True

    async def get_block(self, ref: HubFileRef, block_size: int, index: int) -> bytes | None:
        """A Hub-file block from the share (verified), or None."""
        if not self.tier.readable():
            return None
        length = min(block_size, ref.size - index * block_size)
        data = await self._call(
            f"reading {ref.path} block {index}",
            length,
            lambda: self.tier.read_entry(ref.block_key(block_size, index), length),
        )
        if not isinstance(data, bytes):
            return None
        if index == 0 and length == ref.size:
            try:
                await trio.to_thread.run_sync(ref.check_whole, data)
            except IntegrityError as exc:
                self.tier.report_corrupt(self.tier.entry_path(ref.block_key(block_size, index)), str(exc))
                return None
        return data

    async def get_shard_index(self, shard_sha256: str, dest: Path) -> bool:
        """Copy a shard index from the share to ``dest`` (verified by loading it)."""
        if not self.tier.readable():
            return False
        copied = await self._call(
            f"copying the index of shard {shard_sha256[:12]}",
            0,
            lambda: self.tier.fetch_file(
                self.tier.index_path(shard_sha256), dest, lambda p: verify_shard_index(p, shard_sha256)
            ),
        )
        return copied is True

    def put_member_soon(self, ref: MemberRef, source: CacheStore) -> None:
        self._publish_soon(
            f"publishing {ref.member_path}",
            ref.size,
            lambda: self.tier.publish_from_cache(source, ref.cache_key, ref.size, ref.sha256),
        )

    def put_block_soon(self, key: str, data: bytes) -> None:
        self._publish_soon(f"publishing {key}", len(data), lambda: self.tier.publish_bytes(key, data))

    def _publish_soon(self, what: str, size: int, fn: Callable[[], object]) -> None:
        if not self.tier.writable() or self._pending >= self._max_pending:
            self.tier.note_skipped()
            return
        if self._pending == 0:
            self._idle = trio.Event()
        self._pending += 1
        self._nursery.start_soon(self._publish, what, size, fn)

    async def _publish(self, what: str, size: int, fn: Callable[[], object]) -> None:
        try:
            await self._call(what, size, fn, write=True)
        except FetchError as exc:  # runs in the daemon's nursery: nothing may escape
            log.warning("shared cache %s: %s failed: %s", self.tier.root, what, exc)
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def drain(self, timeout_s: float = 60.0) -> int:
        """Wait (shielded, at most ``timeout_s``) for queued publishes; return how many were left."""
        if self._pending:
            log.info("waiting up to %.0fs for %d publishes to the shared cache", timeout_s, self._pending)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout_s):
            await self._idle.wait()
        if self._pending:
            log.warning("shared cache: %d publishes abandoned at shutdown", self._pending)
        return self._pending


def open_tier(config: Config) -> SharedTier | None:
    """The configured shared tier (prepared), or None when ``[cache] shared_dir`` is unset. Blocking."""
    if config.cache.shared_dir is None:
        return None
    tier = SharedTier(config.cache.shared_dir)
    tier.prepare()
    return tier


START_TIMEOUT_S = 30.0


async def open_shared_cache(config: Config, nursery: trio.Nursery) -> SharedCache | None:
    """The daemon's (or prefetch's) shared tier facade, or None when none is configured.

    A share that does not answer within ``START_TIMEOUT_S`` does not hold up the start: the tier starts
    as unavailable and is tried again after its pause.
    """
    if config.cache.shared_dir is None:
        return None
    tier = SharedTier(config.cache.shared_dir)
    with trio.move_on_after(START_TIMEOUT_S):
        await trio.to_thread.run_sync(tier.prepare, abandon_on_cancel=True)
        return SharedCache(tier, nursery)
    tier.note_timeout("start", START_TIMEOUT_S)
    tier.note_timeout("start", START_TIMEOUT_S, write=True)
    return SharedCache(tier, nursery)
