"""Members served uncached (the cache had no room): concurrent opens share one fetch and one copy, the
memory is bounded by the budget with opens waiting rather than failing, a member larger than the whole
budget is served once it is the only one held, and everything is dropped with its last handle."""

from __future__ import annotations

import pytest
import trio

from vfs.errors import FetchError
from vfs.sources.uncached import UncachedMembers

# Each test's first serve is reported at once (then at most once a minute).
pytestmark = pytest.mark.allow_log(r"served \d+ files \(\d+ bytes\) uncached in the last minute")


def fetcher(data: bytes, calls: list[str], key: str, delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    async def fetch() -> bytearray:
        calls.append(key)
        await trio.sleep(delay_s)
        return bytearray(data)

    return fetch


async def test_concurrent_opens_share_one_fetch_and_one_copy() -> None:
    members = UncachedMembers(1 << 20)
    calls: list[str] = []
    data = bytes(range(256)) * 40
    handles = []

    async def open_one() -> None:
        handles.append(await members.open("k", len(data), fetcher(data, calls, "k", 0.05), "full"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(open_one)
    assert calls == ["k"] and len(handles) == 5
    assert members.stats.held_bytes == len(data) and members.stats.serves == 5
    assert [await h.read(10, 20) for h in handles] == [data[10:30]] * 5
    for h in handles:
        await h.close()
    assert members.stats.held_bytes == 0
    handle = await members.open("k", len(data), fetcher(data, calls, "k"), "full")  # dropped: fetched again
    assert calls == ["k", "k"]
    await handle.close()


async def test_an_open_waits_for_the_budget_and_a_member_larger_than_it_is_served_alone() -> None:
    members = UncachedMembers(1000, wait_s=30)
    calls: list[str] = []
    big = await members.open("a", 4000, fetcher(b"a" * 4000, calls, "a"), "full")  # alone: served
    got: list[bytes] = []

    async def second() -> None:
        handle = await members.open("b", 4000, fetcher(b"b" * 4000, calls, "b"), "full")
        got.append(await handle.read(0, 4000))
        await handle.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.sleep(1.0)
        assert got == [] and calls == ["a"] and members.stats.waits == 1  # waiting, not failed
        await big.close()
    assert got == [b"b" * 4000] and members.stats.held_bytes == 0


async def test_a_wait_past_its_bound_is_an_error_and_holds_nothing() -> None:
    members = UncachedMembers(1000, wait_s=0.2)
    calls: list[str] = []
    held = await members.open("a", 800, fetcher(b"a" * 800, calls, "a"), "full")
    with pytest.raises(FetchError, match="uncached_max"):
        await members.open("b", 800, fetcher(b"b" * 800, calls, "b"), "full")
    assert calls == ["a"] and members.stats.held_bytes == 800
    await held.close()
    assert members.stats.held_bytes == 0


async def test_a_failed_fetch_releases_its_budget_and_the_next_open_tries_again() -> None:
    members = UncachedMembers(1000)

    async def failing() -> bytearray:
        raise FetchError("the Hub is down")

    with pytest.raises(FetchError, match="down"):
        await members.open("a", 500, failing, "full")
    assert members.stats.held_bytes == 0
    handle = await members.open("a", 500, fetcher(b"x" * 500, [], "a"), "full")
    assert await handle.read(0, 3) == b"xxx"
    await handle.close()
