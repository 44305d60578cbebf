"""The shared cache tier: atomic publishing by many writers, verified copies into a bounded local cache,
a slow or unavailable share that only ever costs a WARNING and a trip to the Hub, and two nodes sharing one
directory against one Hub emulator, where the second fetches almost nothing.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli, write_config
from vfs.cache.index_share import IndexShare
from vfs.cache.levels import MultilevelCache
from vfs.cache.shared import SharedCache
from vfs.cache.store import CacheStore
from vfs.cache.tier import TRAILER_BYTES, SharedTier, iter_shared_files
from vfs.catalog.catalog import CatalogDir
from vfs.catalog.share import restore_catalog
from vfs.refs import HubFileRef, MemberRef

KiB = 1 << 10


def member(seed: int, size: int = 40 * KiB) -> tuple[str, bytes, str]:
    """A cache key, content whose bytes depend on the seed and offset, and its sha256."""
    data = hashlib.shake_256(f"member {seed}".encode()).digest(size)
    shard = hashlib.sha256(f"shard {seed % 3}".encode()).hexdigest()
    return f"mem/{shard}/{seed * 100_000}", data, hashlib.sha256(data).hexdigest()


def publish_local(cache: CacheStore, key: str, data: bytes, sha: str) -> None:
    cache.publish(key, data, sha256=sha)


def read_local(cache: CacheStore, key: str, size: int, sha: str) -> bytes | None:
    fd = cache.lookup(key, size=size, sha256=sha)
    if fd is None:
        return None
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def test_members_round_trip_verified_and_the_local_tier_stays_bounded(tmp_path: Path) -> None:
    tier = SharedTier(tmp_path / "share")
    assert tier.prepare()
    with CacheStore(tmp_path / "a", max_size_bytes=10 << 20) as a:
        entries = [member(i) for i in range(6)]
        for key, data, sha in entries:
            publish_local(a, key, data, sha)
            assert tier.publish_from_cache(a, key, len(data), sha)
        key0, data0, sha0 = entries[0]
        assert not tier.publish_from_cache(a, key0, len(data0), sha0)  # already there: skipped
        assert tier.stats.publishes == 6 and tier.stats.publish_skipped == 1
        shared_file = tier.entry_path(key0)
        assert shared_file.stat().st_size == len(data0) + TRAILER_BYTES
        assert shared_file.read_bytes()[: len(data0)] == data0

    # node B: a local cache that holds only about two of the six members
    with CacheStore(tmp_path / "b", max_size_bytes=100 * KiB) as b:
        for key, data, sha in entries:
            assert tier.copy_into(b, key, len(data), sha)
            assert read_local(b, key, len(data), sha) == data
            assert b.size_bytes() <= 100 * KiB
        assert b.stats.evictions >= 4
        assert tier.stats.hits == 6 and tier.stats.bytes_read == sum(len(d) for _, d, _ in entries)
        # a key the share does not hold is a plain miss
        key, data, sha = member(99)
        assert not tier.copy_into(b, key, len(data), sha)
        assert tier.stats.misses == 1


@pytest.mark.allow_log(r"shared cache file .* is unusable")
def test_bad_shared_files_are_misses_and_get_replaced(tmp_path: Path) -> None:
    tier = SharedTier(tmp_path / "share")
    tier.prepare()
    with (
        CacheStore(tmp_path / "a", max_size_bytes=10 << 20) as a,
        CacheStore(tmp_path / "b", max_size_bytes=10 << 20) as b,
    ):
        key, data, sha = member(1)
        publish_local(a, key, data, sha)
        path = tier.entry_path(key)

        def corrupt(how: str) -> None:
            tier.publish_from_cache(a, key, len(data), sha)
            raw = bytearray(path.read_bytes())
            if how == "flip":
                raw[1234] ^= 0x40
            elif how == "truncate":
                del raw[-100:]
            elif how == "trailer":
                raw[-3:] = b"xyz"
            path.write_bytes(bytes(raw))

        for how in ("flip", "truncate", "trailer"):
            corrupt(how)
            assert not tier.copy_into(b, key, len(data), sha), how
            assert read_local(b, key, len(data), sha) is None, how
            assert not path.exists(), how  # removed, so the next publish repairs the share
        assert tier.stats.corrupt == 3
        # a digest that disagrees with the catalog's sha256 is refused before copying anything
        tier.publish_from_cache(a, key, len(data), sha)
        other_sha = hashlib.sha256(b"something else").hexdigest()
        assert not tier.copy_into(b, key, len(data), other_sha)
        # after repair the good copy is served
        tier.publish_from_cache(a, key, len(data), sha)
        assert tier.copy_into(b, key, len(data), sha)
        assert read_local(b, key, len(data), sha) == data


def test_many_writers_and_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    share = tmp_path / "share"
    nodes = [SharedTier(share) for _ in range(6)]  # six "nodes" writing the same share
    for node in nodes:
        node.prepare()
    entries = [member(i, size=300 * KiB) for i in range(4)]
    caches = [CacheStore(tmp_path / f"c{i}", max_size_bytes=50 << 20) for i in range(6)]
    for cache in caches:
        for key, data, sha in entries:
            publish_local(cache, key, data, sha)
    readers = [CacheStore(tmp_path / f"r{i}", max_size_bytes=50 << 20) for i in range(3)]
    stop = threading.Event()
    errors: list[str] = []

    def write(i: int) -> None:
        for _ in range(5):
            for key, data, _sha in entries:
                # replace=True: every publish renames over the file the readers are copying from
                assert nodes[i].publish_bytes(key, data, replace=True)

    def read(i: int) -> None:
        while not stop.is_set():
            for key, data, sha in entries:
                if nodes[0].copy_into(readers[i], key, len(data), sha):
                    got = read_local(readers[i], key, len(data), sha)
                    if got != data:
                        errors.append(f"{key}: wrong bytes")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads[:6]:
        t.join()
    stop.set()
    for t in threads[6:]:
        t.join()
    assert not errors
    assert sum(n.stats.corrupt for n in nodes) == 0
    assert sum(n.stats.publishes for n in nodes) == 6 * 5 * 4
    assert list((share / "llava-vfs-shared-v1" / "tmp").iterdir()) == []  # no temp file left behind
    for key, data, _ in entries:
        assert nodes[0].entry_path(key).read_bytes()[: len(data)] == data
    for cache in caches + readers:
        cache.close()


@pytest.mark.allow_log(r"shared cache .*: (read|write) failed")
def test_an_unavailable_share_warns_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "nfs"
    blocker.write_text("not a directory: every path under it fails with ENOTDIR")
    tier = SharedTier(blocker / "share", retry_after_s=0.2)
    assert not tier.prepare()
    with CacheStore(tmp_path / "a", max_size_bytes=10 << 20) as a:
        key, data, sha = member(3)
        publish_local(a, key, data, sha)
        for _ in range(5):
            assert not tier.copy_into(a, key, len(data), sha)
            assert not tier.publish_from_cache(a, key, len(data), sha)
        time.sleep(0.25)
        assert not tier.copy_into(a, key, len(data), sha)  # tried again after the pause: still down
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "vfs.cache.shared"]
        assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one per outage, reads and writes
        assert "ENOTDIR" in warnings[0].getMessage() or "Not a directory" in warnings[0].getMessage()
        # the share comes back
        blocker.unlink()
        time.sleep(0.25)
        assert tier.prepare()
        assert tier.publish_from_cache(a, key, len(data), sha)
        assert any("works again" in r.getMessage() for r in caplog.records)


def test_stale_temp_files_are_swept_and_keys_stay_inside_the_share(tmp_path: Path) -> None:
    tier = SharedTier(tmp_path / "share")
    tier.prepare()
    tmp = tier.root / "tmp"
    old, fresh = tmp / "crashed.1.a.tmp", tmp / "live.2.b.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    tier.prepare()
    assert not old.exists() and fresh.exists()
    for bad in (
        "mem/../../etc/1",
        "mem/" + "a" * 64 + "/../1",
        "blk/xyz/1",
        "/etc/passwd",
        "mem/" + "a" * 64,
    ):
        with pytest.raises(ValueError):
            tier.entry_path(bad)
    pin = tier.pin_path("org/x", "../../../escape")
    assert pin.parent == tier.catalog_dir("org/x") / "pins"
    assert tier.write_pin("org/x", "refs/pr/1", "a" * 40)
    assert tier.read_pin("org/x", "refs/pr/1") == "a" * 40
    # every file is world-readable whatever the umask, so other nodes (other users) can use it
    old_umask = os.umask(0o077)
    try:
        key, data, _ = member(5)
        tier.publish_bytes(key, data)
    finally:
        os.umask(old_umask)
    assert tier.entry_path(key).stat().st_mode & 0o777 == 0o644
    assert tier.entry_path(key).parent.stat().st_mode & 0o777 == 0o755


async def test_a_hit_in_a_far_tier_backfills_the_local_store_and_the_nearer_tiers(tmp_path: Path) -> None:
    near_tier, far_tier = SharedTier(tmp_path / "near"), SharedTier(tmp_path / "far")
    assert near_tier.prepare() and far_tier.prepare()
    key, data, sha = member(3)
    shard, offset = key.split("/")[1], int(key.split("/")[2])
    ref = MemberRef("d/x.tar.gz", shard, "v.mp4", offset, len(data), sha)
    block = hashlib.shake_256(b"a small annotation file").digest(3000)
    hub_file = HubFileRef("a.json", len(block), "0" * 40, hashlib.sha256(block).hexdigest())
    with CacheStore(tmp_path / "seed", max_size_bytes=10 << 20) as seed:
        publish_local(seed, key, data, sha)
        assert far_tier.publish_from_cache(seed, key, len(data), sha)
    assert far_tier.publish_bytes(hub_file.block_key(4096, 0), block)
    far_publishes = far_tier.stats.publishes
    with CacheStore(tmp_path / "local", max_size_bytes=10 << 20) as local:
        async with trio.open_nursery() as nursery:
            near, far = SharedCache(near_tier, nursery), SharedCache(far_tier, nursery)
            far.name = "far"
            tiers = MultilevelCache(local, [near, far], disk_limiter=trio.CapacityLimiter(2))
            assert tiers.tier("far") is far and tiers.tier("elsewhere") is None

            assert await tiers.member_fd(ref) is None
            assert await tiers.member_below(ref) == "far"
            assert read_local(local, key, len(data), sha) == data
            assert await tiers.block(hub_file, 4096, 0) is None
            assert await tiers.block_below(hub_file, 4096, 0) == (block, "far")
            assert await tiers.block(hub_file, 4096, 0) == block  # backfilled into the local store

            assert await tiers.drain() == 0
            assert near_tier.has_entry(key, len(data))
            assert near_tier.read_entry(hub_file.block_key(4096, 0), len(block)) == block
            assert near_tier.stats.publishes == 2 and far_tier.stats.publishes == far_publishes
            nursery.cancel_scope.cancel()


@pytest.mark.allow_log(r"shared cache .*: read failed", r"shared cache file .* is unusable")
async def test_a_hung_share_times_out_and_the_reader_goes_on(tmp_path: Path) -> None:
    tier = SharedTier(tmp_path / "share")
    tier.prepare()
    key, data, sha = member(7)
    shard, offset = key.split("/")[1], int(key.split("/")[2])
    ref = MemberRef("d/x.tar.gz", shard, "v.mp4", offset, len(data), sha)
    fifo = tier.entry_path(key)
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # opening it blocks until a writer appears: a server that stopped answering
    cache = CacheStore(tmp_path / "local", max_size_bytes=10 << 20)
    try:
        async with trio.open_nursery() as nursery:
            shared = SharedCache(tier, nursery, open_timeout_s=0.3)
            started = trio.current_time()
            assert not await shared.get_member(ref, into=cache)
            assert trio.current_time() - started < 2.0
            assert not tier.readable()  # the next reads skip the share at once
            assert not await shared.get_member(ref, into=cache)
            assert tier.stats.errors == 1
    finally:
        # release the abandoned thread (it then sees an empty file and reports it) and let it finish here,
        # so its report belongs to this test
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        for _ in range(100):
            if tier.stats.corrupt:
                break
            await trio.sleep(0.02)
        cache.close()
    assert tier.stats.corrupt == 1 and not fifo.exists()


async def test_index_joins_the_cluster_pin_unless_refreshed(tmp_path: Path) -> None:
    tier = SharedTier(tmp_path / "share")
    tier.prepare()
    calls: list[str] = []

    async def resolve() -> str:
        calls.append("resolve")
        return "b" * 40

    assert await IndexShare(tier, REPO_ID).commit("main", resolve) == "b" * 40  # nothing pinned yet
    tier.write_pin(REPO_ID, "main", "a" * 40)
    assert await IndexShare(tier, REPO_ID).commit("main", resolve) == "a" * 40
    assert calls == ["resolve"]
    assert await IndexShare(tier, REPO_ID, refresh=True).commit("main", resolve) == "b" * 40
    assert await IndexShare(None, REPO_ID).commit("main", resolve) == "b" * 40
    assert calls == ["resolve"] * 3
    # a mount with no pin of its own takes the cluster's (and no catalog exists to copy: nothing else)
    catalogs = CatalogDir(tmp_path / "catalog", REPO_ID)
    assert restore_catalog(tier, catalogs, "main") == "a" * 40
    assert catalogs.read_pins() == {"main": "a" * 40}


# -- two nodes, one share, one Hub -------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.fuse
def test_a_second_node_fetches_almost_nothing_from_the_hub(tmp_path: Path, demo, hub) -> None:
    share = tmp_path / "share"

    def node(name: str, **kw: str) -> Path:
        cfg = write_config(
            tmp_path / f"{name}.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / name, **kw
        )
        text = cfg.read_text().replace("[cache]\n", f'[cache]\nshared_dir = "{share}"\n')
        cfg.write_text(text)
        return cfg

    videos = sorted(demo.videos)
    video_bytes = sum(demo.videos[v].size for v in videos)
    annotation = demo.annotation_files[0]

    # node A: index, then read every video and one annotation file through its mount
    cfg_a = node("a", block_size="64KiB")  # Hub-file blocks are shared per block size: same on all nodes
    result = cli("index", "--config", str(cfg_a), "--no-progress")
    assert result.returncode == 0, result.stderr
    with Mount(cfg_a, tmp_path / "mnt-a") as m:
        for v in videos:
            assert sha256_of(m.mountpoint / v) == demo.videos[v].sha256, v
        (m.mountpoint / annotation).read_bytes()
    tier = SharedTier(share)
    shared_members = {p for p in iter_shared_files(tier) if "/data/mem/" in str(p)}
    catalogs = CatalogDir(tmp_path / "a" / "catalog", REPO_ID)
    members = catalogs.read(catalogs.read_pins()["main"]).members.values()
    assert shared_members == {tier.entry_path(m.cache_key) for m in members}  # all published at unmount

    # node B: its own small cache, the same share; index and read everything
    hub.reset_log()
    cfg_b = node("b", block_size="64KiB", max_size="300KiB")
    result = cli("index", "--config", str(cfg_b), "--no-progress")
    assert result.returncode == 0, result.stderr
    index_bytes = hub.bytes_sent()
    with Mount(cfg_b, tmp_path / "mnt-b") as m:
        assert (m.mountpoint / ".vfs" / "revision").read_text().strip() == hub.head("main")
        for v in videos:
            assert sha256_of(m.mountpoint / v) == demo.videos[v].sha256, v
        assert (m.mountpoint / annotation).read_bytes() == (demo.root / annotation).read_bytes()
        available = m.mountpoint / ".vfs" / "available" / annotation
        assert available.is_file()  # filtered annotations built from the shared copies
    total = hub.bytes_sent()
    print(f"node B: {index_bytes} bytes for index, {total} in all, for {video_bytes} bytes of video")
    assert total <= 0.01 * video_bytes
    local_b = sum(f.stat().st_size for f in (tmp_path / "b" / "data").rglob("*") if f.is_file())
    assert local_b <= 300 * KiB  # the local tier stayed within max_size

    # node C: no index at all and no Hub: the cluster's pin, catalog and bytes come from the share
    cfg_c = node("c")
    cfg_c.write_text(cfg_c.read_text().replace("[hub]\n", "[hub]\noffline = true\n"))
    hub.reset_log()
    with Mount(cfg_c, tmp_path / "mnt-c") as m:
        assert (m.mountpoint / ".vfs" / "revision").read_text().strip() == hub.head("main")
        for v in videos[:5]:
            assert sha256_of(m.mountpoint / v) == demo.videos[v].sha256, v
    assert hub.request_count() == 0


@pytest.mark.allow_log(r"shared cache .*: (publishing|copying) .* failed")
async def test_a_surprise_on_the_share_never_escapes_into_the_daemon(tmp_path: Path) -> None:
    tier = SharedTier(tmp_path / "share")
    tier.prepare()
    key, data, sha = member(8)
    shard, offset = key.split("/")[1], int(key.split("/")[2])
    ref = MemberRef("d/x.tar.gz", shard, "v.mp4", offset, len(data), sha)

    def explode(*args: object) -> bool:
        raise RuntimeError("a bug or an exotic filesystem error")

    tier.publish_from_cache = explode  # type: ignore[method-assign]
    tier.copy_into = explode  # type: ignore[method-assign]
    with CacheStore(tmp_path / "local", max_size_bytes=10 << 20) as cache:
        async with trio.open_nursery() as nursery:  # the daemon's nursery: it must survive
            shared = SharedCache(tier, nursery)
            shared.put_member_soon(ref, cache)
            assert await shared.drain(timeout_s=5) == 0
            assert not await shared.get_member(ref, into=cache)  # a miss: the Hub serves it
