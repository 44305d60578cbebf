"""Real FUSE mounts of a small repo: listing, exact sizes, byte-exact lazy reads, EROFS, SIGTERM.

The daemon runs as a subprocess (``tests.mounting.Mount``); the Hub emulator runs in this process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.mounting import Mount, write_config
from vfs.daemon import READ_AHEAD_KB
from vfs.hub.emulator import HubEmulator

pytestmark = pytest.mark.fuse
REPO = "org/small"
MiB = 1 << 20


def offset_pattern(size: int, salt: int = 0) -> bytes:
    """Bytes whose every 8-byte word holds its own offset (xor a salt): a misplaced byte shows."""
    words = (np.arange((size + 7) // 8, dtype="<u8") * 8) ^ np.uint64(salt)
    return words.tobytes()[:size]


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "0_30_s_academic_v0_1").mkdir(parents=True)
    (root / "big").mkdir()
    (root / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text("# small test repo\n")
    records = [
        {
            "id": f"v{i}",
            "conversations": [],
            "data_source": "0_30_s_academic_v0_1",
            "video": f"academic_source/Charades/V{i:04d}.mp4",
        }
        for i in range(50)
    ]
    (root / "0_30_s_academic_v0_1" / "0_30_s_academic_v0_1_cap_processed.json").write_text(
        json.dumps(records)
    )
    (root / "big" / "blob.bin").write_bytes(offset_pattern(8 * MiB + 12345, salt=7))
    (root / "big" / "empty.bin").write_bytes(b"")
    return root


@pytest.fixture
def small_hub(small_repo: Path):
    with HubEmulator(repo_id=REPO, tree_page_size=3) as emu:
        emu.commit(small_repo)
        yield emu


def test_every_file_listed_with_exact_size_and_bytes(tmp_path, small_repo, small_hub) -> None:
    cfg = write_config(
        tmp_path / "c.toml", endpoint=small_hub.endpoint, repo=REPO, cache_dir=tmp_path / "cache"
    )
    mnt = tmp_path / "mnt"
    with Mount(cfg, mnt):
        small_hub.reset_log()  # the listing at start-up is not a download
        expected = {p.relative_to(small_repo).as_posix(): p for p in small_repo.rglob("*") if p.is_file()}
        listed = {
            p.relative_to(mnt).as_posix()
            for p in mnt.rglob("*")
            if p.is_file() and not p.relative_to(mnt).as_posix().startswith(".vfs")
        }
        assert listed == set(expected)  # every repo file, .gitattributes included, and nothing else
        for rel, src in expected.items():
            assert os.stat(mnt / rel).st_size == src.stat().st_size, rel
        assert small_hub.bytes_sent() == 0  # sizes came from the listing, nothing was downloaded
        for rel, src in expected.items():
            assert (mnt / rel).read_bytes() == src.read_bytes(), rel
        revision = (mnt / ".vfs" / "revision").read_text().strip()
        assert revision == small_hub.commits[-1] and len(revision) == 40


def test_block_reads_fetch_little_and_survive_restart(tmp_path, small_repo, small_hub) -> None:
    cfg = write_config(
        tmp_path / "c.toml",
        endpoint=small_hub.endpoint,
        repo=REPO,
        cache_dir=tmp_path / "cache",
        block_size="1MiB",
    )
    mnt = tmp_path / "mnt"
    src = (small_repo / "big" / "blob.bin").read_bytes()
    with Mount(cfg, mnt):
        small_hub.reset_log()
        with open(mnt / "big" / "blob.bin", "rb", buffering=0) as fh:
            fh.seek(3 * MiB)
            assert fh.read(4096) == src[3 * MiB : 3 * MiB + 4096]
        first = small_hub.bytes_sent()
        assert 0 < first <= 2 * MiB
        with open(mnt / "big" / "blob.bin", "rb", buffering=0) as fh:
            fh.seek(3 * MiB)
            assert fh.read(4096) == src[3 * MiB : 3 * MiB + 4096]
        assert small_hub.bytes_sent() == first
    # the kernel page cache is gone with the mount; the disk cache must serve the same block
    with Mount(cfg, mnt):
        small_hub.reset_log()
        with open(mnt / "big" / "blob.bin", "rb", buffering=0) as fh:
            fh.seek(3 * MiB)
            assert fh.read(4096) == src[3 * MiB : 3 * MiB + 4096]
        assert small_hub.bytes_sent() == 0


def test_random_preads_are_byte_exact(tmp_path, small_repo, small_hub) -> None:
    cfg = write_config(
        tmp_path / "c.toml",
        endpoint=small_hub.endpoint,
        repo=REPO,
        cache_dir=tmp_path / "cache",
        block_size="256KiB",
    )
    src = (small_repo / "big" / "blob.bin").read_bytes()
    rng = np.random.default_rng(1)
    with Mount(cfg, tmp_path / "mnt") as m:
        fd = os.open(m.mountpoint / "big" / "blob.bin", os.O_RDONLY)
        try:
            for _ in range(200):
                off = int(rng.integers(0, len(src) + 1000))
                size = int(rng.integers(1, 3 * 256 * 1024))
                assert os.pread(fd, size, off) == src[off : off + size]
            assert os.pread(fd, 10, len(src)) == b""
            assert os.pread(fd, 10, len(src) + 10**6) == b""
        finally:
            os.close(fd)
        assert (m.mountpoint / "big" / "empty.bin").read_bytes() == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="the readahead window is a root-only sysfs knob")
def test_reads_reach_the_daemon_in_large_requests(tmp_path, small_repo, small_hub) -> None:
    """The mount's readahead window is raised once the kernel has processed INIT (which would cap an earlier
    setting at 128 KiB), so a sequential reader's pages arrive in requests of up to 1 MiB."""
    cfg = write_config(
        tmp_path / "c.toml", endpoint=small_hub.endpoint, repo=REPO, cache_dir=tmp_path / "cache"
    )
    with Mount(cfg, tmp_path / "mnt") as m:
        device = next(
            line.split()[2]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f" {m.mountpoint} " in line
        )
        deadline = time.monotonic() + 10
        while Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() != str(READ_AHEAD_KB):
            assert time.monotonic() < deadline, "the readahead window was never raised"
            time.sleep(0.05)
        blob = m.mountpoint / "big" / "blob.bin"
        with open(blob, "rb", buffering=0) as f:
            while f.read(64 * 1024):  # small reads by the reader; the kernel reads ahead in large requests
                pass
        stats = json.loads((m.mountpoint / ".vfs" / "stats.json").read_text())
        assert stats["bytes_served"] >= blob.stat().st_size
        assert stats["bytes_served"] / stats["reads"] > 256 * 1024  # 128 KiB requests without the fix


def test_every_mutation_is_erofs(tmp_path, small_hub) -> None:
    cfg = write_config(
        tmp_path / "c.toml", endpoint=small_hub.endpoint, repo=REPO, cache_dir=tmp_path / "cache"
    )
    with Mount(cfg, tmp_path / "mnt") as m:
        mnt = m.mountpoint
        attempts = {
            "create": lambda: open(mnt / "new.txt", "w"),  # noqa: SIM115
            "open for writing": lambda: open(mnt / "README.md", "r+b"),  # noqa: SIM115
            "truncate": lambda: os.truncate(mnt / "README.md", 0),
            "mkdir": lambda: os.mkdir(mnt / "d"),
            "unlink": lambda: os.unlink(mnt / "README.md"),
            "rmdir": lambda: os.rmdir(mnt / "big"),
            "rename": lambda: os.rename(mnt / "README.md", mnt / "R.md"),
            "symlink": lambda: os.symlink("README.md", mnt / "link"),
            "chmod": lambda: os.chmod(mnt / "README.md", 0o777),
            "setxattr": lambda: os.setxattr(mnt / "README.md", "user.x", b"1"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS, what
        assert (mnt / "README.md").read_text() == "# small test repo\n"  # still serving


def test_misses_are_enoent_and_xattrs_say_source(tmp_path, small_hub) -> None:
    cfg = write_config(
        tmp_path / "c.toml", endpoint=small_hub.endpoint, repo=REPO, cache_dir=tmp_path / "cache"
    )
    # Not indexed: a miss below a dataset family says so, once (vfs.guidance).
    with Mount(cfg, tmp_path / "mnt", allow_log=(r"not indexed yet",)) as m:
        mnt = m.mountpoint
        for _ in range(3):
            assert not (mnt / "academic_source" / "Charades" / "nope.mp4").exists()
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "nope")
        assert os.getxattr(mnt / "README.md", "user.vfs.source") == b"hub:README.md"
        assert os.getxattr(mnt / "README.md", "user.vfs.cached") == b"0"
        (mnt / "README.md").read_bytes()
        assert os.getxattr(mnt / "README.md", "user.vfs.cached") == b"1"
        assert set(os.listxattr(mnt / "README.md")) == {"user.vfs.source", "user.vfs.cached"}
        stats = json.loads((mnt / ".vfs" / "stats.json").read_text())
        assert stats["opens"] >= 1 and "cache" in stats
        # repeated misses are answered by the kernel (negative entries): the daemon sees the first only
        for _ in range(50):
            assert not (mnt / "academic_source" / "Charades" / "nope.mp4").exists()
            assert not (mnt / "nope").exists()
        again = json.loads((mnt / ".vfs" / "stats.json").read_text())
        assert again["misses"] == stats["misses"] and again["lookups"] == stats["lookups"]


def test_sigterm_with_reads_in_flight_unmounts_cleanly(tmp_path, small_repo, small_hub) -> None:
    from vfs.hub.emulator import Fault

    cfg = write_config(
        tmp_path / "c.toml",
        endpoint=small_hub.endpoint,
        repo=REPO,
        cache_dir=tmp_path / "cache",
        block_size="1MiB",
    )
    m = Mount(cfg, tmp_path / "mnt").start()
    small_hub.add_fault(Fault(kind="delay", origin="cdn", delay_s=2.0, count=None))
    errors: list[BaseException] = []

    def slow_read() -> None:
        try:
            (m.mountpoint / "big" / "blob.bin").read_bytes()
        except OSError as exc:  # the read may fail as the mount goes away; it must not hang
            errors.append(exc)

    t = threading.Thread(target=slow_read)
    t.start()
    import time

    time.sleep(0.5)
    assert m.stop(signal.SIGTERM) == 0
    t.join(timeout=30)
    assert not t.is_alive()
    assert not os.path.ismount(m.mountpoint)


def test_bad_mountpoints_fail_with_one_line(tmp_path, small_hub) -> None:
    from tests.mounting import cli

    cfg = write_config(
        tmp_path / "c.toml", endpoint=small_hub.endpoint, repo=REPO, cache_dir=tmp_path / "cache"
    )
    missing = cli("mount", "--config", str(cfg), str(tmp_path / "nope"))
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    not_dir = cli("mount", "--config", str(cfg), str(tmp_path / "file"))
    assert not_dir.returncode == 3
    with Mount(cfg, tmp_path / "mnt"):
        busy = cli("mount", "--config", str(cfg), str(tmp_path / "mnt"))
        assert busy.returncode == 5, busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
    shutil.rmtree(tmp_path / "cache")
