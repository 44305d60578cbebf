"""Hub files (annotation JSONs, README, anything not in a shard): lazy, block-cached ranged reads.

A file is cut into blocks of ``block_size`` bytes. A block is fetched with one ranged GET, checked for
its exact length, published to the cache under ``blk/<content id>/<block size>/<index>`` (the content id
is the LFS sha256 or the git blob id, so a changed file never reuses an old block), and served from
there. A file that fits in one block is also checked against the checksum the listing promised (sha256
for LFS files, git blob sha1 for regular ones). Concurrent readers of one block share one fetch. A reader
going through a file in order gets the next ``READ_AHEAD_BLOCKS`` blocks fetched in the background
(``Sources.read_ahead``, sharing the same single-flight keys), so several ranged GETs are in flight; a
random reader fetches only the blocks it asks for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from vfs.errors import IntegrityError
from vfs.refs import HubFileRef

if TYPE_CHECKING:
    from vfs.sources.base import BlockSource, FetchContext

log = logging.getLogger(__name__)


# Blocks fetched ahead of a reader that reads a file in order (kernel readahead only ever asks for the next
# few MiB): with several ranged GETs in flight, a CDN's per-connection pace no longer sets the throughput.
READ_AHEAD_BLOCKS = 3


class HubFileHandle:
    keep_cache = True
    direct_io = False

    def __init__(self, sources: BlockSource, ref: HubFileRef) -> None:
        self._sources = sources
        self._ref = ref
        # The kernel reads in 128 KiB-1 MiB requests, several per block: keep the last block so that
        # a sequential reader costs one cache lookup per block, not one per request.
        self._last: tuple[int, bytes] | None = None
        self._next_block = 0  # the block a reader going in order asks for next
        self._ahead_to = 0  # blocks below this were already asked for ahead of the reader

    def _follow(self, first: int, last: int) -> None:
        """Read ahead when this read continues the previous one (its block, or the next); not for random
        reads, which would only fetch blocks nobody asked for."""
        sequential = self._next_block - 1 <= first <= self._next_block
        self._next_block = last + 1
        if not sequential:
            return
        blocks = self._ref.block_count(self._sources.block_size)
        start, stop = max(last + 1, self._ahead_to), min(last + 1 + READ_AHEAD_BLOCKS, blocks)
        if start < stop:
            self._ahead_to = stop
            self._sources.read_ahead(self._ref, range(start, stop))

    async def read(self, offset: int, size: int) -> bytes:
        ref, bs = self._ref, self._sources.block_size
        end = min(offset + size, ref.size)
        if offset >= end:
            return b""
        parts = []
        self._follow(offset // bs, (end - 1) // bs)
        for index in range(offset // bs, (end - 1) // bs + 1):
            if self._last is not None and self._last[0] == index:
                block = self._last[1]
            else:
                block = await self._sources.hub_block(ref, index)
                self._last = (index, block)
            lo = max(offset - index * bs, 0)
            hi = min(end - index * bs, len(block))
            parts.append(block[lo:hi])
        return b"".join(parts)

    async def close(self) -> None:
        return None


# A corrupt answer (a flipped byte passes every transport check) of a file that fits in one block fails
# its checksum; it is fetched again this many times in all before the reader gets EIO.
BLOCK_ATTEMPTS = 3


async def fetch_block(sources: FetchContext, ref: HubFileRef, index: int) -> bytes:
    """Fetch one block from the Hub and verify it; the caller publishes it to the cache tiers."""
    bs = sources.block_size
    start = index * bs
    end = min(start + bs, ref.size)
    client = sources.require_client(ref.path)
    for attempt in range(1, BLOCK_ATTEMPTS + 1):
        data = await client.read_range(sources.commit, ref.path, start, end)
        try:
            if len(data) != end - start:
                raise IntegrityError(
                    f"{ref.path}: block {index} came back with {len(data)} bytes, not {end - start}"
                )
            if start == 0 and end == ref.size:
                await trio.to_thread.run_sync(ref.check_whole, data, limiter=sources.cpu_limiter)
            break
        except IntegrityError as exc:
            if attempt == BLOCK_ATTEMPTS:
                raise
            log.warning("%s; refetching (attempt %d of %d)", exc, attempt + 1, BLOCK_ATTEMPTS)
    log.debug("fetched %s block %d (%d bytes)", ref.path, index, len(data))
    return data
