"""Shard members: one video inside a ``.tar.gz`` shard, fetched whole on first open.

decord reads the whole file on open and re-reads it 3-7 times, so the unit of caching is the whole
member. The fetch reads the compressed bytes between the member's checkpoint and the end of the member
(``ShardIndex.fetch_range``): one ranged GET, or for a range of ``PARALLEL_MIN_BYTES`` or more several
concurrent GETs of consecutive, disjoint parts (``part_bounds``; their number adapts to whether the network
keeps up), handed on in order. The bytes are inflated as they stream in, written to a cache temp file,
verified (exact length and the sha256 recorded at index time) and only then published. Nothing is
served before that, so a failed or corrupt fetch is EIO, never partial bytes. A corrupt answer (for
example a flipped byte) is retried a few times before giving up.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import trio

from vfs.errors import FetchError, IntegrityError, typed_error
from vfs.hub.parallel import download_in_order
from vfs.refs import MemberRef
from vfs.targz.extract import MemberExtractor
from vfs.targz.shard_index import Member, ShardIndex

if TYPE_CHECKING:
    from vfs.hub.client import HubClient
    from vfs.sources.base import FetchContext

log = logging.getLogger(__name__)

# A corrupt answer (a flipped byte passes every transport check) costs one refetch of the member's range;
# five attempts keep a member readable when even a third of the CDN's answers are corrupt.
MEMBER_ATTEMPTS = 5


async def fetch_member(
    sources: FetchContext, ref: MemberRef, index: ShardIndex, *, into_memory: bool = False
) -> bytearray | None:
    """Download, inflate, verify and publish one member; retried on integrity failures. ``into_memory``:
    return its verified bytes instead of publishing them (the cache has no room)."""
    member = index.member(ref.member_path)
    if member is None or member.offset != ref.offset or member.size != ref.size:
        raise IntegrityError(f"{ref.member_path}: not in the index of shard {ref.shard_path} as catalogued")
    start, end = index.fetch_range(member)
    client = sources.require_client(ref.member_path)
    for attempt in range(1, MEMBER_ATTEMPTS + 1):
        try:
            data = await _fetch_once(sources, ref, index, member, client, start, end, into_memory)
            log.debug("fetched %s from %s [%d, %d)", ref.member_path, ref.shard_path, start, end)
            return data
        except IntegrityError as exc:
            if attempt == MEMBER_ATTEMPTS:
                raise
            log.warning(
                "%s: %s; refetching (attempt %d of %d)", ref.member_path, exc, attempt + 1, MEMBER_ATTEMPTS
            )
    raise FetchError(f"{ref.member_path}: fetch failed")  # pragma: no cover - loop always returns or raises


async def _fetch_once(
    sources: FetchContext,
    ref: MemberRef,
    index: ShardIndex,
    member: Member,
    client: HubClient,
    start: int,
    end: int,
    into_memory: bool,
) -> bytearray | None:
    # Construction reads and inflates the checkpoint's window from the index file: off the trio thread.
    extractor = await trio.to_thread.run_sync(MemberExtractor, index, member, limiter=sources.cpu_limiter)
    # extractor.finish() verifies the member's sha256 before writer.commit(): no second hash pass
    writer: _Sink = (
        _MemorySink()
        if into_memory
        else sources.cache.writer(ref.cache_key, size=ref.size, sha256=ref.sha256, prehashed=True)
    )
    await trio.to_thread.run_sync(writer.__enter__, limiter=sources.disk_limiter)
    ok = False

    def feed_and_write(chunk: bytes) -> None:
        out = extractor.feed(chunk)
        if out:
            writer.write(out)

    try:
        # Pipelined: the download runs ahead (a bounded channel) while a worker thread inflates, hashes and
        # writes the previous chunk, so the network and the CPU overlap instead of taking turns.
        send, receive = trio.open_memory_channel[bytes](PIPELINE_CHUNKS)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    download_in_order, client, sources.commit, ref.shard_path, start, end, send
                )
                async with receive:
                    async for chunk in receive:
                        await trio.to_thread.run_sync(feed_and_write, chunk, limiter=sources.cpu_limiter)
        except BaseExceptionGroup as group:
            raise _typed(group) from None
        await trio.to_thread.run_sync(extractor.finish, limiter=sources.cpu_limiter)
        await trio.to_thread.run_sync(writer.commit, limiter=sources.disk_limiter)
        ok = True
    finally:
        if not ok:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    writer.__exit__, IntegrityError, None, None, limiter=sources.disk_limiter
                )
    await trio.to_thread.run_sync(writer.__exit__, None, None, None, limiter=sources.disk_limiter)
    return writer.buffer if isinstance(writer, _MemorySink) else None


class _Sink(Protocol):
    """Where a member's inflated bytes go: a cache entry writer, or memory."""

    def __enter__(self) -> object: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...


class _MemorySink:
    """A member held in memory (``vfs.sources.uncached``); verified by the extractor, as on the disk."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def __enter__(self) -> _MemorySink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.buffer += data

    def commit(self) -> None:
        return None


def _typed(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one typed error behind a group from the download/inflate nursery, so that callers (the refetch
    on ``IntegrityError`` above, the error boundary) see it. A group holding anything else stays a group."""
    return typed_error(group) or group


# Chunks (about 1 MiB each) the download may run ahead of inflation.
PIPELINE_CHUNKS = 8
