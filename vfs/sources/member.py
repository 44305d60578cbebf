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
from typing import TYPE_CHECKING

import trio

from vfs.catalog.shard_index import MemberExtractor, ShardIndex
from vfs.errors import FetchError, IntegrityError
from vfs.sources.refs import MemberRef

if TYPE_CHECKING:
    from vfs.sources.opener import Sources

log = logging.getLogger(__name__)

MEMBER_ATTEMPTS = 3


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


async def _fetch_once(sources, ref, index, member, client, start: int, end: int) -> None:  # type: ignore[no-untyped-def]
    extractor = MemberExtractor(index, member)
    writer = sources.cache.writer(ref.cache_key, size=ref.size, sha256=ref.sha256)
    await trio.to_thread.run_sync(writer.__enter__, limiter=sources.disk_limiter)
    ok = False
    try:
        async for chunk in client.stream_range(sources.commit, ref.shard_path, start, end):
            out = await trio.to_thread.run_sync(extractor.feed, chunk, limiter=sources.cpu_limiter)
            if out:
                await trio.to_thread.run_sync(writer.write, out, limiter=sources.disk_limiter)
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
