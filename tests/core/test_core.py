"""FsCore without the kernel: the real Hub client against the emulator, the real cache and shard indexes."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO_ID
from tests.mounting import write_config
from vfs.cache.store import CacheStore
from vfs.catalog.catalog import CatalogDir
from vfs.commands.index import build_catalog
from vfs.config import load_config
from vfs.daemon import build_core, build_sources
from vfs.errors import ReadOnly, VfsError
from vfs.hub.client import HubClient
from vfs.layout import CacheLayout
from vfs.tree.snapshot import NO_STATS, build_namespace


async def _index(tmp_path: Path, hub, **kw):
    cfg = load_config(
        write_config(
            tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache", **kw
        )
    )
    layout = CacheLayout(cfg.cache.dir)
    layout.create()
    async with HubClient(endpoint=cfg.hub.endpoint, repo_id=REPO_ID, token=None) as client:
        data, report = await build_catalog(cfg, layout, client, jobs=2)
    CatalogDir(layout.catalog, REPO_ID).write(data)
    return cfg, layout, data, report


@asynccontextmanager
async def harness(cfg, layout, data, hub) -> AsyncIterator[Harness]:
    """A FsCore over the real client, cache and indexes; its service nursery is cancelled on exit."""
    async with (
        HubClient(endpoint=hub.endpoint, repo_id=REPO_ID, token=None) as client,
        trio.open_nursery() as n,
    ):
        yield Harness(cfg, layout, data, n, client)
        n.cancel_scope.cancel()


class Harness:
    def __init__(self, cfg, layout, data, nursery, client) -> None:
        self.cache = CacheStore(layout.data, max_size_bytes=cfg.cache.max_size_bytes)
        self.sources = build_sources(
            cfg, commit=data.commit, cache=self.cache, client=client, nursery=nursery
        )
        namespace, _ = build_namespace(cfg, layout, data, stats=NO_STATS)
        self.core = build_core(cfg, namespace, self.sources)

    async def read_all(self, path: str, chunk: int = 1 << 17) -> bytes:
        node = self.core.ns.resolve(path)
        assert node is not None, path
        fh, _ = await self.core.open(node.ino, os.O_RDONLY)
        try:
            out = bytearray()
            while True:
                data = await self.core.read(fh, len(out), chunk)
                if not data:
                    return bytes(out)
                out += data
        finally:
            await self.core.release(fh)


@pytest.mark.allow_log(r"skipped video", r"records skipped")
async def test_every_packed_video_reads_byte_exact(tmp_path, hub, demo) -> None:
    cfg, layout, data, report = await _index(tmp_path, hub)
    assert report.members == len(demo.videos)
    assert set(data.members) == set(demo.videos)
    async with harness(cfg, layout, data, hub) as h:
        for path, video in sorted(demo.videos.items()):
            node = h.core.ns.resolve(path)
            assert node is not None and node.size == video.size  # exact before any download
            body = await h.read_all(path)
            assert hashlib.sha256(body).hexdigest() == video.sha256, path


@pytest.mark.allow_log(r"skipped video", r"records skipped")
async def test_concurrent_opens_share_one_fetch(tmp_path, hub, demo) -> None:
    cfg, layout, data, _ = await _index(tmp_path, hub)
    path, video = max(demo.videos.items(), key=lambda kv: kv[1].size)
    hub.reset_log()
    results: list[bytes] = []
    async with harness(cfg, layout, data, hub) as h:

        async def reader() -> None:
            results.append(await h.read_all(path))

        async with trio.open_nursery() as readers:
            for _ in range(32):
                readers.start_soon(reader)
    assert len(results) == 32 and all(hashlib.sha256(r).hexdigest() == video.sha256 for r in results)
    shard = data.members[path].shard_path
    assert hub.request_count(origin="cdn", file=shard, method="GET") == 1
    fetched = hub.bytes_sent(origin="cdn", file=shard)
    assert fetched <= 1.10 * video.size + 64 * 1024


@pytest.mark.allow_log(r"skipped video", r"records skipped")
async def test_hub_file_block_reads_and_read_only(tmp_path, hub, demo) -> None:
    cfg, layout, data, _ = await _index(tmp_path, hub, block_size="64KiB")
    big = max(data.files, key=lambda f: f.size)
    async with harness(cfg, layout, data, hub) as h:
        node = h.core.ns.resolve(big.path)
        assert node is not None
        with pytest.raises(ReadOnly):
            await h.core.open(node.ino, os.O_RDWR)
        hub.reset_log()
        fh, _ = await h.core.open(node.ino, os.O_RDONLY)
        offset = min(3 * 65536, big.size - 4096)
        data4k = await h.core.read(fh, offset, 4096)
        assert data4k == (demo.root / big.path).read_bytes()[offset : offset + 4096]
        assert hub.bytes_sent(file=big.path) <= 2 * 65536
        before = hub.bytes_sent()
        assert await h.core.read(fh, offset, 4096) == data4k
        assert hub.bytes_sent() == before
        await h.core.release(fh)
        assert await h.core.getxattr(node.ino, "user.vfs.source") == f"hub:{big.path}".encode()
        with pytest.raises(VfsError) as info:
            await h.core.getxattr(node.ino, "user.nope")
        assert info.value.errno == errno.ENODATA
