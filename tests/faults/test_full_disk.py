"""A full cache disk never costs a training sample: with the cache's filesystem filled by another process
(before and during reads) every read through a real FUSE mount is byte-exact, served uncached from memory
when nothing is left to evict; caching resumes once space is back; ``[cache] min_free`` holds under steady
reads; ``index`` on a full disk is one line and exit 3, and a rerun completes; ``verify-cache`` and a
restart work on a full disk. The filesystems are real and small (tmpfs), so nothing here depends on the
free space of the machine that runs the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli
from tests.reliability import (
    UNCACHED_WARNING,
    Filler,
    drop_page_cache,
    indexed_cache,
    read_file,
    sha256,
    small_tmpfs,
    write_cfg,
)

pytestmark = pytest.mark.fuse


@pytest.fixture
def small_fs() -> Iterator[Callable[[Path, str], Path]]:
    """``small_fs(dir, size)`` mounts a tmpfs of ``size`` at ``dir``, unmounted after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda directory, size: stack.enter_context(small_tmpfs(directory, size))


KiB = 1 << 10


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def stats(m: Mount) -> dict:  # type: ignore[type-arg]
    return json.loads((m.mountpoint / ".vfs" / "stats.json").read_text())


def warnings(m: Mount) -> list[str]:
    return [line for line in m.log().splitlines() if " WARNING " in line]


def read_exact(m: Mount, video) -> None:  # type: ignore[no-untyped-def]
    data = read_file(m.mountpoint / video.path)
    assert not isinstance(data, OSError), f"{video.path}: {data}"
    assert sha256(data) == video.sha256, f"{video.path}: wrong bytes"


def test_a_full_cache_disk_serves_every_video_exactly_then_caching_resumes(
    tmp_path, hub, demo, small_fs
) -> None:
    cfg, cache_dir = mounted_cfg(tmp_path, hub.endpoint)
    data_dir = small_fs(cache_dir / "data", "1m")
    videos = sorted(demo.videos.values(), key=lambda v: v.path)
    with Filler(data_dir) as filler, Mount(cfg, tmp_path / "mnt", allow_log=(UNCACHED_WARNING,)) as m:
        for video in videos:
            read_exact(m, video)
        served = stats(m)
        assert served["uncached"]["serves"] >= len(videos)
        assert served["uncached"]["held_bytes"] == 0  # dropped with their handles
        assert served["cache"]["publishes"] == 0 and served["cache"]["entries"] == 0
        [warning] = warnings(m)  # one summary a minute, not one per video
        assert "uncached" in warning and "out of space" in warning

        filler.free()  # space comes back: caching resumes by itself
        for video in videos:
            drop_page_cache(m.mountpoint / video.path)
            read_exact(m, video)
        after = stats(m)
        assert after["cache"]["publishes"] >= len(videos)
        assert after["uncached"]["serves"] == served["uncached"]["serves"]
        hits = after["cache"]["hits"]
        for video in videos[:5]:
            drop_page_cache(m.mountpoint / video.path)
            read_exact(m, video)
        assert stats(m)["cache"]["hits"] > hits


def test_a_disk_kept_full_during_reads_never_fails_a_read(tmp_path, hub, demo, small_fs) -> None:
    cfg, cache_dir = mounted_cfg(tmp_path, hub.endpoint)
    data_dir = small_fs(cache_dir / "data", "1m")
    videos = sorted(demo.videos.values(), key=lambda v: v.path)
    with Mount(cfg, tmp_path / "mnt", allow_log=(UNCACHED_WARNING,)) as m:
        for video in videos[:8]:  # some cached before the disk fills
            read_exact(m, video)
        cached = stats(m)["cache"]["entries"]
        assert cached > 0
        with Filler(data_dir, hold=True):  # another process takes every byte that frees up
            for _ in range(2):
                for video in videos:
                    drop_page_cache(m.mountpoint / video.path)
                    read_exact(m, video)
        served = stats(m)
        assert served["uncached"]["serves"] > 0
        assert served["cache"]["evictions_for_space"] > 0  # the disk filled: the cache gave way first


def test_min_free_holds_under_steady_reads(tmp_path, hub, demo, small_fs) -> None:
    cfg, cache_dir = mounted_cfg(tmp_path, hub.endpoint, min_free="640KiB")
    data_dir = small_fs(cache_dir / "data", "1m")
    videos = sorted(demo.videos.values(), key=lambda v: v.path)
    assert sum(v.size for v in videos) > 1 << 20  # more than the disk holds: min_free must evict
    with Mount(cfg, tmp_path / "mnt") as m:
        for _ in range(2):
            for video in videos:
                drop_page_cache(m.mountpoint / video.path)
                read_exact(m, video)
                assert free_bytes(data_dir) >= 640 * KiB
        served = stats(m)
        assert served["cache"]["evictions_for_space"] > 0 and served["uncached"]["serves"] == 0
        assert served["cache"]["min_free_bytes"] == 640 * KiB
        assert served["cache"]["free_bytes"] >= 640 * KiB
        assert warnings(m) == []

    # verify-cache and a restart (its start-up sweep) on a disk another process filled
    with Filler(data_dir):
        done = cli("verify-cache", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        assert " 0 corrupt" in done.stdout
        with Mount(cfg, tmp_path / "mnt", allow_log=(UNCACHED_WARNING,)) as m:
            # the start-up evicted what it could to get back to min_free, and still serves everything
            restarted = stats(m)["cache"]
            assert restarted["evictions_for_space"] > 0 and restarted["entries"] == 0
            for video in videos:
                read_exact(m, video)
            assert stats(m)["uncached"]["serves"] >= len(videos)


def test_an_open_waits_for_the_uncached_budget_rather_than_failing(tmp_path, hub, demo, small_fs) -> None:
    cfg, cache_dir = mounted_cfg(tmp_path, hub.endpoint, extra_cache='uncached_max = "4KiB"\n')
    data_dir = small_fs(cache_dir / "data", "1m")
    first, second = sorted(demo.videos.values(), key=lambda v: v.path)[:2]
    assert first.size > 4 * KiB and second.size > 4 * KiB  # each alone is larger than the whole budget
    with Filler(data_dir), Mount(cfg, tmp_path / "mnt", allow_log=(UNCACHED_WARNING,)) as m:
        held = open(m.mountpoint / first.path, "rb")  # noqa: SIM115 - held open on purpose
        try:
            assert sha256(held.read()) == first.sha256  # served: it is the only one held
            result: list[bytes | OSError] = []
            reader = threading.Thread(target=lambda: result.append(read_file(m.mountpoint / second.path)))
            reader.start()
            time.sleep(1.0)
            assert reader.is_alive() and not result  # waits for memory, does not fail
            assert stats(m)["uncached"]["waits"] == 1
        finally:
            held.close()
        reader.join(timeout=60)
        assert not reader.is_alive()
        assert not isinstance(result[0], OSError) and sha256(result[0]) == second.sha256


def test_index_on_a_full_disk_is_one_line_exit_3_and_a_rerun_completes(tmp_path, hub, small_fs) -> None:
    cache_dir = small_fs(tmp_path / "cache", "2m")
    cfg = write_cfg(tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=cache_dir)
    with Filler(cache_dir) as filler:
        os.truncate(filler.path, max(0, filler.path.stat().st_size - 96 * KiB))  # a little room, not enough
        done = cli("index", "--config", str(cfg), "--no-progress")
        assert done.returncode == 3, (done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.startswith("llava-vfs:")]
        assert len(lines) == 1 and "no space left" in lines[0] and "bytes free" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
        leftovers = [p for p in cache_dir.rglob("*") if p.name.endswith((".tmp", ".part"))]
        assert leftovers == []  # nothing half-written
    done = cli("index", "--config", str(cfg), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "indexed " in done.stdout


def mounted_cfg(  # type: ignore[no-untyped-def]
    tmp_path: Path, endpoint: str, *, min_free: str = "0", extra_cache: str = ""
):
    """(config, cache dir) over a clone of the indexed demo cache, the cache data dir left to the test."""
    cache_dir = indexed_cache(tmp_path.parent, endpoint, REPO_ID, tmp_path / "cache")
    cfg = write_cfg(  # max_size no larger than the small filesystems here: no start-up WARNING about it
        tmp_path / "c.toml",
        endpoint=endpoint,
        repo=REPO_ID,
        cache_dir=cache_dir,
        min_free=min_free,
        max_size="1MiB",
    )
    if extra_cache:
        cfg.write_text(cfg.read_text().replace("[cache]\n", f"[cache]\n{extra_cache}"))
    return cfg, cache_dir


def test_a_full_shared_dir_is_a_write_outage_and_reads_stay_exact(tmp_path, hub, demo, small_fs) -> None:
    share = small_fs(tmp_path / "share", "1m")
    cfg, _ = mounted_cfg(tmp_path, hub.endpoint, extra_cache=f'shared_dir = "{share}"\n')
    videos = sorted(demo.videos.values(), key=lambda v: v.path)
    outage = r"shared cache .*: write failed \(.*No space left on device.*\); not publishing"
    with Filler(share), Mount(cfg, tmp_path / "mnt", allow_log=(outage,)) as m:
        for video in videos:
            read_exact(m, video)
        served = stats(m)
        assert served["shared"]["errors"] >= 1  # the share's write side is down, and says so once
        assert served["cache"]["publishes"] >= len(videos)  # the local cache is unaffected
        assert served["uncached"]["serves"] == 0
        [warning] = warnings(m)
        assert "not publishing" in warning


def test_a_mount_on_a_full_disk_starts_and_serves_from_memory(tmp_path, hub, demo, small_fs) -> None:
    """The whole cache dir is on the full disk: the derived `.vfs/` files (and so the snapshot) cannot be
    written, so the mount serves its tree from memory, and every video uncached."""
    staged = indexed_cache(tmp_path.parent, hub.endpoint, REPO_ID, tmp_path / "staged")
    cache_dir = small_fs(tmp_path / "cache", "8m")
    shutil.copytree(staged, cache_dir, dirs_exist_ok=True)
    snapshots = list(cache_dir.glob("catalog/*/snapshots"))
    assert snapshots
    for directory in snapshots:
        shutil.rmtree(directory)  # the mount must build its tree, and cannot write what it derives
    cfg = write_cfg(
        tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=cache_dir, max_size="8MiB"
    )
    videos = sorted(demo.videos.values(), key=lambda v: v.path)
    expected = (UNCACHED_WARNING, r"could not write \.vfs/missing\.tsv .*No space left on device")
    with Filler(cache_dir), Mount(cfg, tmp_path / "mnt", allow_log=expected) as m:
        for video in videos:
            read_exact(m, video)
        assert stats(m)["uncached"]["serves"] >= len(videos)
        assert (m.mountpoint / ".vfs" / "revision").read_text().strip()
    log = m.log()
    assert "building the mount snapshot" in log and "could not write .vfs/missing.tsv" in log


def test_a_full_disk_is_recognised_behind_oserror_sqlite_and_groups(tmp_path, small_fs) -> None:
    """``index`` turns these into its one-line exit 3: the check must see through what really raises."""
    import sqlite3

    from vfs.errors import no_space_error

    full = small_fs(tmp_path / "tiny", "64k")
    with Filler(full):
        with pytest.raises(OSError) as raised_os:
            (full / "more").write_bytes(b"x" * 8192)
        con = sqlite3.connect(full / "db.sqlite")
        with pytest.raises(sqlite3.OperationalError) as raised_sql:
            con.execute("CREATE TABLE t (v BLOB)")
            con.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4096,)] * 64)
            con.commit()
        con.close()
    assert no_space_error(raised_os.value) is raised_os.value
    assert no_space_error(raised_sql.value) is raised_sql.value
    group = BaseExceptionGroup("nursery", [ValueError("other"), RuntimeError("wrapped")])
    group.exceptions[1].__cause__ = raised_os.value
    assert no_space_error(group) is raised_os.value
    assert no_space_error(ValueError("no")) is None
