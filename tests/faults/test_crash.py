"""Crash safety: the daemon is SIGKILLed during a slow member download, after a
publish, and at randomized points while downloads, publishes and evictions run; then restarted.

After every restart: no torn entry is served (a torn or corrupt entry would be quarantined with a WARNING,
which the daemon's log contract would flag), leftover temp files are swept, and every read is exact.
Also: a poisoned cache is detected, quarantined and refetched through the mount, and
``llava-vfs verify-cache`` checks the whole cache offline with its documented exit codes.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli
from tests.reliability import (
    SKIPPED,
    cache_entries,
    cache_temp_files,
    indexed_cache,
    read_file,
    sha256,
    wait_for,
    write_cfg,
)
from vfs.cache.entry import FOOTER_SIZE
from vfs.hub.emulator import Fault

pytestmark = pytest.mark.fuse
# The emulator notices the killed client's connection going away mid-body.
HANGUP = (r"hub emulator \((hub|cdn)\): unexpected error serving",)


def setup(tmp_path: Path, hub, **cfg_kw) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    cache_dir = indexed_cache(tmp_path.parent, hub.endpoint, REPO_ID, tmp_path / "cache")
    return write_cfg(
        tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=cache_dir, **cfg_kw
    ), cache_dir


def swept_at_start(log: str) -> int:
    match = re.search(r"; (\d+) temp files swept", log)
    assert match is not None, log
    return int(match.group(1))


@pytest.mark.allow_log(*HANGUP)
def test_sigkill_mid_download_then_restart_sweeps_and_serves_exact_bytes(tmp_path, hub, demo) -> None:
    cfg, cache_dir = setup(tmp_path, hub)
    video = sorted(demo.videos.values(), key=lambda v: v.size)[-1]
    m = Mount(cfg, tmp_path / "mnt").start()
    # A slow CDN: the member's compressed bytes arrive in 256-byte pieces, 50 ms apart (about 4.5 s).
    hub.add_fault(Fault(kind="trickle", origin="cdn", file_glob=video.shard, after_bytes=256, delay_s=0.05))
    result: list[bytes | OSError] = []
    reader = threading.Thread(target=lambda: result.append(read_file(m.mountpoint / video.path)))
    reader.start()
    wait_for(lambda: bool(cache_temp_files(cache_dir)), 20.0, "the member download to start")
    time.sleep(1.0)  # well inside the download
    assert reader.is_alive()
    assert m.stop(signal.SIGKILL) == -signal.SIGKILL
    reader.join(timeout=30)
    assert isinstance(result[0], OSError)  # the reader got an error, not a short or torn file
    torn = cache_temp_files(cache_dir)
    assert torn  # the crash left the temp file of the unfinished download ...
    assert cache_entries(cache_dir) == []  # ... and never a published entry

    hub.clear_faults()
    with Mount(cfg, tmp_path / "mnt") as m2:
        assert swept_at_start(m2.log()) == len(torn)
        assert cache_temp_files(cache_dir) == []
        assert sha256((m2.mountpoint / video.path).read_bytes()) == video.sha256


def test_sigkill_after_publish_serves_the_verified_entry_without_refetch(tmp_path, hub, demo) -> None:
    cfg, cache_dir = setup(tmp_path, hub)
    videos = sorted(demo.videos.values(), key=lambda v: v.path)[:4]
    m = Mount(cfg, tmp_path / "mnt").start()
    for v in videos:
        assert sha256((m.mountpoint / v.path).read_bytes()) == v.sha256
    assert m.stop(signal.SIGKILL) == -signal.SIGKILL  # right after the publishes, no clean shutdown
    assert len(cache_entries(cache_dir)) == len(videos)
    hub.reset_log()
    with Mount(cfg, tmp_path / "mnt") as m2:
        for v in videos:
            assert sha256((m2.mountpoint / v.path).read_bytes()) == v.sha256
        assert hub.bytes_sent(origin="cdn") == 0  # verified from the disk (first use after a restart)


@pytest.mark.allow_log(*HANGUP)
def test_sigkill_at_random_points_during_downloads_and_eviction(tmp_path, hub, demo) -> None:
    """A small quota: every new member evicts an old one. Readers run; SIGKILL at seeded random moments;
    each restart must find no torn entry (the log contract: no 'corrupt' warning) and serve exact bytes."""
    cfg, cache_dir = setup(tmp_path, hub, max_size="128KiB")
    videos = sorted(demo.videos.values(), key=lambda v: v.path)
    rng = random.Random(5)
    # some latency per request so that a kill lands inside a fetch as often as between fetches
    hub.add_fault(Fault(kind="delay", origin="cdn", count=None, delay_s=0.02))
    swept = 0
    for _round in range(4):
        m = Mount(cfg, tmp_path / "mnt").start()
        swept += swept_at_start(m.log())
        stop = threading.Event()
        wrong: list[str] = []

        def reader(seed: int, m: Mount = m, stop: threading.Event = stop, wrong: list[str] = wrong) -> None:
            order = random.Random(seed).sample(videos, len(videos))
            for v in order:
                if stop.is_set():
                    return
                got = read_file(m.mountpoint / v.path)
                if isinstance(got, bytes) and sha256(got) != v.sha256:
                    wrong.append(v.path)

        threads = [threading.Thread(target=reader, args=(rng.random(),)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.1, 1.2))
        stop.set()
        assert m.stop(signal.SIGKILL) == -signal.SIGKILL
        for t in threads:
            t.join(timeout=30)
        assert wrong == []
        bad = m.unexpected_log_lines()
        assert bad == [], bad  # e.g. no cache entry found corrupt at start
    hub.clear_faults()
    with Mount(cfg, tmp_path / "mnt") as m:
        for v in videos:
            assert sha256((m.mountpoint / v.path).read_bytes()) == v.sha256, v.path
        assert cache_temp_files(cache_dir) == []
    total = sum(p.stat().st_size for p in cache_entries(cache_dir))
    assert total <= 128 * 1024
    check = cli("verify-cache", "--config", str(cfg))
    assert check.returncode == 0 and " 0 corrupt" in check.stdout, check.stdout + check.stderr


def _poison(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    if how == "flipped byte":
        data[len(data) // 3] ^= 0x40
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zero length":
        data = bytearray()
    elif how == "old format":
        version_at = len(data) - FOOTER_SIZE + 8  # magic (8 bytes), then the format version
        data[version_at : version_at + 2] = (0).to_bytes(2, "little")
    entry.write_bytes(bytes(data))


POISONS = ("flipped byte", "truncated", "zero length", "old format")


@pytest.mark.allow_log(*SKIPPED)
def test_poisoned_cache_is_quarantined_and_refetched_one_warning_each(tmp_path, hub, demo) -> None:
    cfg, cache_dir = setup(tmp_path, hub)
    videos = sorted(demo.videos.values(), key=lambda v: v.path)[5 : 5 + len(POISONS)]
    with Mount(cfg, tmp_path / "mnt") as m:
        for v in videos:
            assert sha256((m.mountpoint / v.path).read_bytes()) == v.sha256
    entries = cache_entries(cache_dir)
    assert len(entries) == len(POISONS)
    for entry, how in zip(entries, POISONS, strict=True):
        _poison(entry, how)
    hub.reset_log()
    with Mount(cfg, tmp_path / "mnt", allow_log=(r"is corrupt",)) as m:
        for v in videos:
            assert sha256((m.mountpoint / v.path).read_bytes()) == v.sha256
    warnings = [line for line in m.log().splitlines() if " WARNING " in line]
    assert len(warnings) == len(POISONS) and all("is corrupt" in w for w in warnings), warnings
    assert len(list((cache_dir / "data" / "quarantine").iterdir())) == len(POISONS)
    assert all(hub.request_count(origin="cdn", file=v.shard, method="GET") >= 1 for v in videos)  # refetched


def test_verify_cache_summary_and_exit_codes(tmp_path, hub, demo) -> None:
    cfg, cache_dir = setup(tmp_path, hub)
    nothing = write_cfg(
        tmp_path / "none.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "none"
    )
    absent = cli("verify-cache", "--config", str(nothing))
    assert absent.returncode == 0 and "nothing to check" in absent.stdout
    assert not (tmp_path / "none").exists()  # checking creates nothing
    empty = cli("verify-cache", "--config", str(cfg))
    assert empty.returncode == 0 and empty.stdout.startswith("checked 0 cache entries"), empty.stdout
    videos = sorted(demo.videos.values(), key=lambda v: v.path)[:3]
    with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:
        for v in videos:
            (m.mountpoint / v.path).read_bytes()
        busy = cli("verify-cache", "--config", str(cfg))  # the running daemon owns the cache
        assert busy.returncode == 3 and "in use" in busy.stderr and "Traceback" not in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
    good = cli("verify-cache", "--config", str(cfg))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("checked 3 cache entries") and "3 good" in good.stdout
    assert " 0 corrupt" in good.stdout and "VerifyReport(" not in good.stdout
    _poison(cache_entries(cache_dir)[1], "flipped byte")
    (cache_dir / "data" / "tmp" / "leftover.tmp").write_bytes(b"partial")
    bad = cli("verify-cache", "--config", str(cfg))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "2 good" in bad.stdout and " 1 corrupt" in bad.stdout and "1 leftover temp files" in bad.stdout
    corrupt_lines = [line for line in bad.stdout.splitlines() if line.startswith("corrupt: mem/")]
    assert len(corrupt_lines) == 1 and "sha256" in corrupt_lines[0], bad.stdout
    again = cli("verify-cache", "--config", str(cfg))  # the bad entry is in quarantine now
    assert again.returncode == 0 and "checked 2 cache entries" in again.stdout
    with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:  # and refetched on next use
        for v in videos:
            assert sha256((m.mountpoint / v.path).read_bytes()) == v.sha256
    assert os.listdir(cache_dir / "data" / "tmp") == []
