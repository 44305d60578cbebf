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
import math
from contextlib import aclosing
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import trio

from vfs.errors import FetchError, IntegrityError, typed_error
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
                nursery.start_soon(_download, client, sources.commit, ref.shard_path, start, end, send)
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
# Parallel ranges. One CDN connection gives 40-60 MB/s (CRAFT.md) while the pipeline behind it (inflate,
# sha256, write) runs at about 100+ MB/s, so a range of PARALLEL_MIN_BYTES or more is cut into consecutive,
# disjoint parts (no byte is asked for twice: amplification stays that of one range) fetched concurrently
# and handed on in order, so inflation stays sequential from the member's checkpoint. The head part streams
# straight into the pipeline; later parts buffer in memory until their turn.
PARALLEL_MIN_BYTES = 4 << 20
PART_MIN_BYTES = 2 << 20  # a part is at least this long (fewer parts for a shorter range)...
PART_MAX_BYTES = 8 << 20  # ...and at most this long (more parts for a longer one)
# Parts started and not yet handed on: bounds the memory of one fetch to MAX_BUFFERED_PARTS x PART_MAX_BYTES.
MAX_BUFFERED_PARTS = 4
# Adaptive: a fetch starts with START_CONNECTIONS concurrent parts and doubles them (up to MAX_CONNECTIONS)
# each time the pipeline behind it (inflate, hash, write) sat idle waiting for bytes, i.e. when the network
# is what holds it back. On a link faster than the pipeline it never waits and no connection is added;
# starting with a few rather than opening them all at once also spares a CDN that drops bursts.
START_CONNECTIONS = 2
MAX_CONNECTIONS = 4


def part_bounds(start: int, end: int) -> list[int]:
    """Offsets cutting ``[start, end)`` into the parts fetched concurrently: ``[bounds[i], bounds[i+1])``.
    ``[start, end]`` (one part) below ``PARALLEL_MIN_BYTES``; else enough parts to use ``MAX_CONNECTIONS``
    when each can be ``PART_MIN_BYTES`` long, and none longer than ``PART_MAX_BYTES``."""
    size = end - start
    if size < PARALLEL_MIN_BYTES:
        return [start, end]
    parts = max(2, -(-size // PART_MAX_BYTES), min(MAX_CONNECTIONS, size // PART_MIN_BYTES))
    return [start + size * i // parts for i in range(parts + 1)]


async def _download(client, commit: str, path: str, start: int, end: int, send) -> None:  # type: ignore[no-untyped-def]
    """Send the bytes of ``[start, end)`` of ``path`` in order on ``send``; several ranges when large."""
    async with send:
        bounds = part_bounds(start, end)
        if len(bounds) == 2:
            # aclosing: a failure downstream stops the loop early; the stream gives back its connection now.
            async with aclosing(client.stream_range(commit, path, start, end)) as chunks:
                async for chunk in chunks:
                    await send.send(chunk)
            return
        await _download_parts(client, commit, path, bounds, send)


async def _download_parts(client, commit: str, path: str, bounds: list[int], send) -> None:  # type: ignore[no-untyped-def]
    parts = len(bounds) - 1
    # Unbounded per part, but a part is at most PART_MAX_BYTES and at most MAX_BUFFERED_PARTS are started
    # and not yet handed on: a part never waits for the pipeline, so its connection never stalls.
    channels = [trio.open_memory_channel[bytes](math.inf) for _ in range(parts)]
    window = trio.Semaphore(MAX_BUFFERED_PARTS)
    connections = trio.CapacityLimiter(START_CONNECTIONS)

    async def fetch_part(i: int) -> None:
        part_send = channels[i][0]
        async with (
            connections,
            aclosing(client.stream_range(commit, path, bounds[i], bounds[i + 1])) as chunks,
        ):
            async for chunk in chunks:
                part_send.send_nowait(chunk)
        # Closed only when complete: a failed part raises into the nursery, which cancels the consumer
        # rather than letting it take a short part for a whole one.
        part_send.close()

    async def start_parts(nursery: trio.Nursery) -> None:
        for i in range(parts):
            await window.acquire()  # in order, so the parts in flight are always the next ones needed
            nursery.start_soon(fetch_part, i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_parts, nursery)
        got_bytes = False
        for i in range(parts):
            receive = channels[i][1]
            while True:
                try:
                    chunk = receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        chunk = await receive.receive()
                    except trio.EndOfChannel:
                        break
                    # We waited for bytes and so did the pipeline behind us: the network holds it back, so
                    # twice the connections. (The wait for the very first bytes is latency, not bandwidth.)
                    idle = send.statistics().tasks_waiting_receive > 0
                    if got_bytes and idle and connections.total_tokens < MAX_CONNECTIONS:
                        connections.total_tokens = min(MAX_CONNECTIONS, 2 * connections.total_tokens)
                        log.debug(
                            "%s [%d, %d): the network is behind, %d connections",
                            path,
                            bounds[0],
                            bounds[-1],
                            connections.total_tokens,
                        )
                except trio.EndOfChannel:
                    break
                got_bytes = True
                await send.send(chunk)
            window.release()
