"""Shard members: one video inside a ``.tar.gz`` shard, fetched whole on first open.

decord reads the whole file on open and re-reads it 3-7 times, so the unit of caching is the whole
member. The fetch is one ranged GET of the compressed bytes between the member's checkpoint and the
end of the member (``ShardIndex.fetch_range``), inflated as it streams in, written to a cache temp file,
verified (exact length and the sha256 recorded at index time) and only then published. Nothing is
served before that, so a failed or corrupt fetch is EIO, never partial bytes. A corrupt answer (for
example a flipped byte) is retried a few times before giving up.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import TYPE_CHECKING

import trio

from vfs.catalog.shard_index import Member, MemberExtractor, ShardIndex
from vfs.errors import FetchError, IntegrityError, typed_error
from vfs.sources.refs import MemberRef

if TYPE_CHECKING:
    from vfs.hub.client import HubClient
    from vfs.sources.opener import Sources

log = logging.getLogger(__name__)

# A corrupt answer (a flipped byte passes every transport check) costs one refetch of the member's range;
# five attempts keep a member readable when even a third of the CDN's answers are corrupt.
MEMBER_ATTEMPTS = 5


async def fetch_member(sources: Sources, ref: MemberRef, index: ShardIndex) -> None:
    """Download, inflate, verify and publish one member; retried on integrity failures."""
    member = index.member(ref.member_path)
    if member is None or member.offset != ref.offset or member.size != ref.size:
        raise IntegrityError(f"{ref.member_path}: not in the index of shard {ref.shard_path} as catalogued")
    start, end = index.fetch_range(member)
    client = sources.require_client(ref.member_path)
    for attempt in range(1, MEMBER_ATTEMPTS + 1):
        try:
            await _fetch_once(sources, ref, index, member, client, start, end)
            log.debug("fetched %s from %s [%d, %d)", ref.member_path, ref.shard_path, start, end)
            return
        except IntegrityError as exc:
            if attempt == MEMBER_ATTEMPTS:
                raise
            log.warning(
                "%s: %s; refetching (attempt %d of %d)", ref.member_path, exc, attempt + 1, MEMBER_ATTEMPTS
            )
    raise FetchError(f"{ref.member_path}: fetch failed")  # pragma: no cover - loop always returns or raises


async def _fetch_once(
    sources: Sources,
    ref: MemberRef,
    index: ShardIndex,
    member: Member,
    client: HubClient,
    start: int,
    end: int,
) -> None:
    extractor = MemberExtractor(index, member)
    # extractor.finish() verifies the member's sha256 before writer.commit(): no second hash pass
    writer = sources.cache.writer(ref.cache_key, size=ref.size, sha256=ref.sha256, prehashed=True)
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


def _typed(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one typed error behind a group from the download/inflate nursery, so that callers (the refetch
    on ``IntegrityError`` above, the error boundary) see it. A group holding anything else stays a group."""
    return typed_error(group) or group


# Chunks (about 1 MiB each) the download may run ahead of inflation.
PIPELINE_CHUNKS = 8
# A range at least this long is fetched as several concurrent ranged GETs of PART_BYTES or more: one CDN
# connection gives 40-60 MB/s, so a large member needs several to fill the link (CRAFT.md). Parts are
# handed on in order, so inflation stays sequential from the member's checkpoint.
PARALLEL_MIN_BYTES = 16 << 20
PART_BYTES = 8 << 20
MAX_PARALLEL_PARTS = 4
HANDOFF_BYTES = 1 << 20


async def _download(client, commit: str, path: str, start: int, end: int, send) -> None:  # type: ignore[no-untyped-def]
    """Send the bytes of ``[start, end)`` of ``path`` in order on ``send``; several ranges when large."""
    async with send:
        if end - start < PARALLEL_MIN_BYTES:
            # aclosing: a failure downstream stops the loop early; the stream gives back its connection now.
            async with aclosing(client.stream_range(commit, path, start, end)) as chunks:
                async for chunk in chunks:
                    await send.send(chunk)
            return
        parts = max(2, min(-(-(end - start) // PART_BYTES), 256))
        bounds = [start + (end - start) * i // parts for i in range(parts + 1)]
        results: list[bytes] = [b""] * parts
        done = [trio.Event() for _ in range(parts)]
        window = trio.Semaphore(MAX_PARALLEL_PARTS)  # parts in flight, or fetched and not yet handed on

        async def fetch_part(i: int) -> None:
            results[i] = await client.read_range(commit, path, bounds[i], bounds[i + 1])
            done[i].set()

        async def start_parts(nursery: trio.Nursery) -> None:
            for i in range(parts):
                await window.acquire()
                nursery.start_soon(fetch_part, i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_parts, nursery)
            for i in range(parts):
                await done[i].wait()
                data, results[i] = results[i], b""
                window.release()
                for offset in range(0, len(data), HANDOFF_BYTES):
                    await send.send(data[offset : offset + HANDOFF_BYTES])
