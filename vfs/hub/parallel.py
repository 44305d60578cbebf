"""Downloading one byte range of a Hub file over several ranged connections, handed on in order.

One CDN connection gives 40-60 MB/s (CRAFT.md) while the work behind it (inflate, sha256, write) runs at
100+ MB/s, so a long range is cut into consecutive, disjoint parts fetched concurrently and handed on in
order: the consumer stays sequential (an inflater must be), no byte is asked for twice, and memory stays
bounded. Used by the member fetch (``vfs.sources.member``) and by the index pass (``llava-vfs index``).
"""

from __future__ import annotations

import logging
import math
from contextlib import AsyncExitStack, aclosing
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from vfs.hub.client import HubClient

log = logging.getLogger(__name__)

# A range of PARALLEL_MIN_BYTES or more is cut into consecutive,
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


async def download_in_order(
    client: HubClient,
    commit: str,
    path: str,
    start: int,
    end: int,
    send: trio.MemorySendChannel[bytes],
    *,
    budget: trio.CapacityLimiter | None = None,
) -> None:
    """Send the bytes of ``[start, end)`` of ``path`` in order on ``send``; several ranges when large.
    ``budget``: connections shared with other downloads (the index pass's total); each part holds one."""
    async with send:
        bounds = part_bounds(start, end)
        if len(bounds) == 2:
            async with AsyncExitStack() as stack:
                if budget is not None:
                    await stack.enter_async_context(budget)
                # aclosing: a failure downstream stops the loop early; the stream gives back its connection.
                chunks = await stack.enter_async_context(
                    aclosing(client.stream_range(commit, path, start, end))
                )
                async for chunk in chunks:
                    await send.send(chunk)
            return
        await _download_parts(client, commit, path, bounds, send, budget)


async def _download_parts(  # type: ignore[no-untyped-def]
    client, commit: str, path: str, bounds: list[int], send, budget: trio.CapacityLimiter | None
) -> None:
    parts = len(bounds) - 1
    # Unbounded per part, but a part is at most PART_MAX_BYTES and at most MAX_BUFFERED_PARTS are started
    # and not yet handed on: a part never waits for the pipeline, so its connection never stalls.
    channels = [trio.open_memory_channel[bytes](math.inf) for _ in range(parts)]
    window = trio.Semaphore(MAX_BUFFERED_PARTS)
    connections = trio.CapacityLimiter(START_CONNECTIONS)

    async def fetch_part(i: int) -> None:
        part_send = channels[i][0]
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(connections)
            if budget is not None:
                await stack.enter_async_context(budget)
            chunks = await stack.enter_async_context(
                aclosing(client.stream_range(commit, path, bounds[i], bounds[i + 1]))
            )
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
