"""Read-ahead of plain Hub files (vfs.sources.hubfile, Sources.read_ahead): a reader going through a file
in order gets the next blocks fetched in the background, several at a time; random reads fetch only what
they ask for; a failed read-ahead never fails the reader. Real client, real cache, the Hub emulator."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from vfs.cache.store import CacheStore
from vfs.errors import VfsError
from vfs.hub.client import HubClient
from vfs.hub.emulator import Fault, HubEmulator
from vfs.refs import HubFileRef
from vfs.sources.opener import Sources

pytestmark = pytest.mark.usefixtures("no_machine_token")

REPO = "org/readahead"
BS = 64 * 1024
FILES = {"big.bin": 20 * BS + 123, "other.bin": 12 * BS}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ra-repo")
    rng = random.Random(7)
    for name, size in FILES.items():
        (root / name).write_bytes(rng.randbytes(size))
    with HubEmulator(repo_id=REPO) as emu:
        emu.commit(root)
        yield emu, root


@asynccontextmanager
async def opened(served, tmp_path: Path) -> AsyncIterator[tuple[Sources, dict[str, HubFileRef]]]:
    emu, _ = served
    async with (
        HubClient(endpoint=emu.endpoint, repo_id=REPO, token=None) as client,
        trio.open_nursery() as nursery,
    ):
        commit = emu.head()
        refs = {
            f.path: HubFileRef(f.path, f.size, f.blob_id, f.lfs_sha256)
            for f in await client.list_files(commit)
        }
        sources = Sources(
            commit=commit,
            cache=CacheStore(tmp_path / "cache", max_size_bytes=1 << 30),
            index_dir=tmp_path / "index",
            block_size=BS,
            nursery=nursery,
            client=client,
        )
        yield sources, refs
        nursery.cancel_scope.cancel()


async def cached(sources: Sources, ref: HubFileRef, blocks: tuple[int, ...]) -> None:
    """Wait until every one of ``blocks`` is in the cache (the read-ahead publishes them)."""
    with trio.fail_after(20):
        while not all(sources.cache.contains(ref.block_key(BS, i)) for i in blocks):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_reading_in_order_fetches_ahead_and_never_twice(served, tmp_path) -> None:
    emu, root = served
    async with opened(served, tmp_path) as (sources, refs):
        ref = refs["big.bin"]
        emu.reset_log()
        handle = await sources.open(ref)
        body = bytearray(await handle.read(0, 4096))
        await cached(sources, ref, (1, 2, 3))  # the reader asked for block 0 only
        assert not sources.cache.contains(ref.block_key(BS, 5))  # only a few blocks ahead
        while len(body) < ref.size:
            body += await handle.read(len(body), 1 << 17)
        assert bytes(body) == (root / "big.bin").read_bytes()
        assert emu.bytes_sent(file="big.bin") == ref.size  # every block fetched once


async def test_random_reads_fetch_only_what_they_ask_for(served, tmp_path) -> None:
    emu, root = served
    want = (root / "other.bin").read_bytes()
    async with opened(served, tmp_path) as (sources, refs):
        ref = refs["other.bin"]
        emu.reset_log()
        handle = await sources.open(ref)
        for index in (7, 2, 5, 10):
            offset = index * BS + 10
            assert await handle.read(offset, 100) == want[offset : offset + 100]
        await trio.sleep(0.3)  # time for any read-ahead to show up
        assert emu.bytes_sent(file="other.bin") == 4 * BS


async def test_a_failed_read_ahead_never_fails_the_reader(served, tmp_path) -> None:
    emu, root = served
    async with opened(served, tmp_path) as (sources, refs):
        ref = refs["big.bin"]
        # every CDN answer fails while the read-ahead of blocks 1-3 runs
        fault = emu.add_fault(Fault(kind="status", status=404, file_glob="big.bin", count=None))
        handle = await sources.open(ref)
        with pytest.raises(VfsError):  # block 0 itself cannot be fetched either
            await handle.read(0, 4096)
        await trio.sleep(0.3)
        emu.clear_faults()
        assert fault.fired >= 2  # the reader's fetch and the read-ahead's
        assert not sources.cache.contains(ref.block_key(BS, 1))
        body = bytearray()
        while len(body) < ref.size:
            body += await handle.read(len(body), 1 << 17)
        assert bytes(body) == (root / "big.bin").read_bytes()
