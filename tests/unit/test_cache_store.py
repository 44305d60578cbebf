"""Tests of the local persistent cache (vfs/cache/store.py) against the real file system.

Content is offset-patterned (each 8-byte word holds its own offset plus a per-entry seed), so a misplaced,
missing or foreign byte shows. Crashes are real: a subprocess killed with SIGKILL mid-write. ENOSPC is a
real 1 MiB tmpfs (root only).
"""

from __future__ import annotations

import array
import contextlib
import errno
import hashlib
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.cache import store as store_mod
from vfs.cache.entry import FOOTER_CRC, FOOTER_HEAD, FOOTER_SIZE, encode_trailer, entry_name
from vfs.cache.store import CacheFull, CacheLocked, CacheStore
from vfs.config import MinFree
from vfs.errors import ConfigError, FetchError, IntegrityError

REPO_ROOT = Path(__file__).resolve().parents[2]
WARN_CORRUPT = r"is corrupt"


def patterned(size: int, seed: int) -> bytes:
    """``size`` bytes in which the 8-byte word at offset ``o`` encodes ``seed`` and ``o``."""
    words = array.array("Q", range(seed << 40, (seed << 40) + size // 8 + 1))
    return words.tobytes()[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_fd(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        assert chunk, f"unexpected EOF at {offset}"
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def lookup_bytes(store: CacheStore, key: str, size: int, sha256: str | None = None) -> bytes | None:
    fd = store.lookup(key, size=size, sha256=sha256)
    if fd is None:
        return None
    try:
        return read_fd(fd, size)
    finally:
        os.close(fd)


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "entries-v1").rglob("*") if p.is_file())


def file_bytes(entry_size: int, key: str) -> int:
    return entry_size + len(key.encode()) + FOOTER_SIZE


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.levelno >= logging.WARNING and r.name.startswith("vfs")
    ]


def assert_accounting_matches_disk(store: CacheStore) -> None:
    files = entry_files(store.root)
    assert store.entry_count() == len(files)
    assert store.size_bytes() == sum(p.stat().st_size for p in files)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- round trip and the writer contract ---------------------------------------------------------


def test_publish_lookup_round_trip(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    data = patterned(300_001, seed=1)
    key = "blk/" + "a" * 64 + "/0"
    store.publish(key, data, sha256=sha(data))

    assert store.contains(key)
    assert store.entry_count() == 1
    assert store.size_bytes() == file_bytes(len(data), key) == store.path_of(key).stat().st_size
    fd = store.lookup(key, size=len(data), sha256=sha(data))
    assert fd is not None
    try:
        assert read_fd(fd, len(data)) == data
        # Content is at offsets 0..size-1 of the returned fd: random preads land on the right bytes.
        rng = random.Random(7)
        for _ in range(200):
            offset = rng.randrange(len(data))
            length = min(rng.randrange(1, 5000), len(data) - offset)
            assert os.pread(fd, length, offset) == data[offset : offset + length]
        assert not os.get_inheritable(fd)
        assert os.fstat(fd).st_mode & 0o777 == 0o600
    finally:
        os.close(fd)

    assert store.lookup("blk/absent/0", size=10) is None
    assert not store.contains("blk/absent/0")
    assert (store.stats.hits, store.stats.misses, store.stats.publishes) == (1, 1, 1)
    assert store.stats.bytes_written == len(data)

    # Private to the daemon's user: the root, every directory below it, every file.
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    path = store.path_of(key)
    assert path.name == entry_name(key)
    assert path.parent.name == path.name[2:4] and path.parent.parent.name == path.name[:2]


def test_any_key_is_a_safe_file_name(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 20)
    keys = ["../../etc/passwd", "/abs", "nul\x00byte", "é/ü/" + "x" * 2000, "mem/" + "f" * 64 + "/123"]
    for i, key in enumerate(keys):
        store.publish(key, patterned(100 + i, seed=i))
    for i, key in enumerate(keys):
        assert lookup_bytes(store, key, 100 + i) == patterned(100 + i, seed=i)
        assert store.path_of(key).is_relative_to(root / "entries-v1")
    assert sorted(os.listdir(root)) == ["entries-v1", "lock", "quarantine", "tmp"]
    with pytest.raises(ValueError):
        store.publish("", b"x")
    with pytest.raises(ValueError):
        store.publish("k" * 5000, b"x")


def test_writer_checks_length_and_sha256_and_publishes_nothing_on_mismatch(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    data = patterned(100_000, seed=2)

    with pytest.raises(IntegrityError, match="sha256"):
        store.publish("k/sha", data, sha256=sha(data + b"x"))
    short = pytest.raises(IntegrityError, match="99999 bytes written, expected 100000")
    with short, store.writer("k/short", size=len(data)) as w:
        w.write(data[:-1])
        w.commit()
    with (
        pytest.raises(IntegrityError, match="more than the expected"),
        store.writer("k/long", size=len(data)) as w,
    ):
        w.write(data)
        w.write(b"!")
    with pytest.raises(RuntimeError, match="boom"), store.writer("k/exc", size=len(data)) as w:
        w.write(data[:5000])
        assert len(os.listdir(root / "tmp")) == 1
        raise RuntimeError("boom")
    with store.writer("k/forgotten", size=1) as w:
        w.write(b"x")  # left without commit: discarded

    for key in ("k/sha", "k/short", "k/long", "k/exc", "k/forgotten"):
        assert not store.contains(key)
        assert store.lookup(key, size=len(data)) is None
    assert os.listdir(root / "tmp") == []
    assert entry_files(root) == []
    assert store.stats.publishes == 0

    # Constructing a writer touches no disk (it may be built on the trio thread); entering creates the file.
    pending = store.writer("k/pending", size=3)
    assert os.listdir(root / "tmp") == []
    with pending:
        assert len(os.listdir(root / "tmp")) == 1
    assert os.listdir(root / "tmp") == []

    # Chunked writes of memoryviews, with the sha256 checked at commit, then a zero-length entry.
    with store.writer("k/chunks", size=len(data), sha256=sha(data).upper()) as w:
        view = memoryview(data)
        for offset in range(0, len(data), 4096):
            w.write(view[offset : offset + 4096])
        w.commit()
        with pytest.raises(ValueError, match="already committed"):
            w.write(b"x")
    assert lookup_bytes(store, "k/chunks", len(data)) == data
    store.publish("k/empty", b"")
    assert lookup_bytes(store, "k/empty", 0) == b""


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_writers_of_one_key(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    data = patterned(1 << 20, seed=3)
    key = "mem/" + "b" * 64 + "/4096"
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            with store.writer(key, size=len(data), sha256=sha(data)) as w:
                for offset in range(0, len(data), 65536):
                    w.write(data[offset : offset + 65536])
                w.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.entry_count() == 1
    assert store.stats.publishes == 8
    assert_accounting_matches_disk(store)
    assert os.listdir(root / "tmp") == []
    assert lookup_bytes(store, key, len(data), sha(data)) == data


def test_concurrent_publish_lookup_evict_keeps_bytes_and_accounting_right(root: Path) -> None:
    sizes = {f"blk/{i:02d}/0": 2000 + 97 * i for i in range(24)}
    max_bytes = 8 * 4500
    store = CacheStore(root, max_size_bytes=max_bytes)
    errors: list[BaseException] = []
    deadline = time.monotonic() + 0.8

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < deadline:
                key = rng.choice(list(sizes))
                index = int(key.split("/")[1])
                data = patterned(sizes[key], seed=index)
                if rng.random() < 0.4:
                    store.publish(key, data)
                else:
                    got = lookup_bytes(store, key, len(data))
                    assert got is None or got == data, key
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.stats.publishes > 20 and store.stats.evictions > 0 and store.stats.hits > 0
    assert store.size_bytes() <= max_bytes
    assert_accounting_matches_disk(store)
    assert os.listdir(root / "tmp") == []
    assert store.stats.quarantined == 0


# -- quota and LRU ---------------------------------------------------------------------------------


def test_quota_held_and_recently_used_entries_survive(root: Path) -> None:
    size = 4000
    per_entry = file_bytes(size, "blk/00/0")
    store = CacheStore(root, max_size_bytes=10 * per_entry)
    hot = ["blk/00/0", "blk/01/0"]
    keys = [f"blk/{i:02d}/0" for i in range(40)]
    for i, key in enumerate(keys):
        store.publish(key, patterned(size, seed=i))
        assert store.size_bytes() <= store.max_size_bytes
        for hot_key in hot[: i + 1]:
            assert lookup_bytes(store, hot_key, size) == patterned(size, seed=int(hot_key[4:6]))
    present = {key for key in keys if store.contains(key)}
    # The two hot keys plus the eight most recently published ones; everything else went in LRU order.
    assert present == set(hot) | set(keys[-8:])
    assert store.stats.evictions == 30
    assert store.size_bytes() == 10 * per_entry
    assert_accounting_matches_disk(store)
    for key in keys[2:-8]:
        assert store.lookup(key, size=size) is None
        assert not store.path_of(key).exists()


def test_eviction_while_a_reader_holds_the_entry(root: Path) -> None:
    size = 1 << 20
    store = CacheStore(root, max_size_bytes=2 * file_bytes(size, "mem/a/0"))
    data = patterned(size, seed=9)
    store.publish("mem/a/0", data)
    fd = store.lookup("mem/a/0", size=size)
    assert fd is not None
    try:
        assert os.pread(fd, 4096, 0) == data[:4096]
        store.publish("mem/b/0", patterned(size, seed=10))
        store.publish("mem/c/0", patterned(size, seed=11))
        assert not store.contains("mem/a/0")
        assert not store.path_of("mem/a/0").exists()
        assert store.stats.evictions == 1
        assert os.fstat(fd).st_nlink == 0
        assert read_fd(fd, size) == data  # the reader keeps reading the complete, correct bytes
    finally:
        os.close(fd)
    assert store.lookup("mem/a/0", size=size) is None
    assert_accounting_matches_disk(store)


def test_entry_larger_than_the_quota_is_served_then_evicted_first(root: Path) -> None:
    small = 1000
    store = CacheStore(root, max_size_bytes=4 * file_bytes(small, "s/0"))
    for i in range(3):
        store.publish(f"s/{i}", patterned(small, seed=i))
    big = patterned(10 * small, seed=99)
    store.publish("big/0", big)
    assert lookup_bytes(store, "big/0", len(big)) == big  # served, and its lookup does not make it hot
    assert all(store.contains(f"s/{i}") for i in range(3))  # it did not wipe the rest
    store.publish("s/3", patterned(small, seed=3))
    assert not store.contains("big/0")
    assert all(store.contains(f"s/{i}") for i in range(4))
    assert store.size_bytes() <= store.max_size_bytes
    assert_accounting_matches_disk(store)


class LruModel:
    """The reference: whole-file sizes in LRU order; an entry over the quota by itself sits at the cold
    end, is not warmed by lookups, and goes first on the next publish."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, int] = OrderedDict()

    def _evict(self) -> None:
        while sum(self.entries.values()) > self.max_bytes and self.entries:
            self.entries.popitem(last=False)

    def publish(self, key: str, nbytes: int) -> None:
        self.entries.pop(key, None)
        if nbytes > self.max_bytes:
            self._evict()
            self.entries[key] = nbytes
            self.entries.move_to_end(key, last=False)
        else:
            self.entries[key] = nbytes
            self._evict()

    def lookup(self, key: str) -> bool:
        if key not in self.entries:
            return False
        if self.entries[key] <= self.max_bytes:
            self.entries.move_to_end(key)
        return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["publish", "lookup"]), st.integers(0, 7), st.sampled_from([0, 500, 3000, 9000])
        ),
        max_size=40,
    )
)
def test_lru_matches_a_reference_model(tmp_path: Path, ops: list[tuple[str, int, int]]) -> None:
    max_bytes = 8000
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        store = CacheStore(Path(scratch), max_size_bytes=max_bytes)
        model = LruModel(max_bytes)
        sizes: dict[str, int] = {}
        for op, index, size in ops:
            key = f"k/{index}"
            if op == "publish":
                data = patterned(size, seed=index * 10 + size)
                store.publish(key, data)
                sizes[key] = size
                model.publish(key, file_bytes(size, key))
            else:
                got = lookup_bytes(store, key, sizes.get(key, 0))
                assert (got is not None) == model.lookup(key)
                if got is not None:
                    assert got == patterned(sizes[key], seed=index * 10 + sizes[key])
            assert [k for k in model.entries if store.contains(k)] == list(model.entries)
            assert store.entry_count() == len(model.entries)
            assert store.size_bytes() == sum(model.entries.values())
        assert_accounting_matches_disk(store)
        store.close()


# -- restart and verification ----------------------------------------------------------------------


@pytest.fixture
def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts full-content hash passes (verifications) by wrapping the real function."""
    calls: list[int] = []
    real = store_mod.sha256_of_prefix

    def counting(fd: int, size: int) -> str:
        calls.append(size)
        return real(fd, size)

    monkeypatch.setattr(store_mod, "sha256_of_prefix", counting)
    return calls


@pytest.mark.allow_log(WARN_CORRUPT)
def test_restart_finds_entries_and_verifies_on_first_lookup_only(
    root: Path, count_hashing: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    datas = {f"blk/{i}/0": patterned(5000 + i, seed=i) for i in range(5)}
    store = CacheStore(root, max_size_bytes=1 << 30)
    for key, data in datas.items():
        store.publish(key, data)
    assert lookup_bytes(store, "blk/0/0", 5000) == datas["blk/0/0"]
    assert count_hashing == []  # published by this process: verified while written
    store.close()

    started = time.monotonic()
    again = CacheStore(root, max_size_bytes=1 << 30)
    assert time.monotonic() - started < 1.0
    assert count_hashing == []  # no hashing at start
    assert again.entry_count() == 5
    assert again.size_bytes() == store.size_bytes()
    assert all(again.contains(key) for key in datas)
    for key, data in datas.items():
        assert lookup_bytes(again, key, len(data), sha(data)) == data
        assert lookup_bytes(again, key, len(data)) == data
    assert count_hashing == [len(d) for d in datas.values()]  # once per key, on its first lookup

    # After the first lookup only the length is checked: a same-length flip is not re-detected in
    # this process, but a truncation is; and a new process verifies again and catches the flip.
    path = again.path_of("blk/1/0")
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\xff")
    assert lookup_bytes(again, "blk/1/0", 5001) is not None
    again.close()
    third = CacheStore(root, max_size_bytes=1 << 30)
    assert third.lookup("blk/1/0", size=5001) is None
    assert third.stats.quarantined == 1
    assert len(warnings_of(caplog)) == 1 and "content sha256" in warnings_of(caplog)[0]


@pytest.mark.allow_log(WARN_CORRUPT)
def test_truncation_after_verification_is_caught_by_the_length_check(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    data = patterned(5000, seed=5)
    store.publish("k", data)
    assert lookup_bytes(store, "k", 5000) == data
    os.truncate(store.path_of("k"), 3000)
    assert store.lookup("k", size=5000) is None
    assert warnings_of(caplog) == [
        f"cache entry 'k' is corrupt (file is 3000 bytes, expected {file_bytes(5000, 'k')} "
        f"(5000 content + {file_bytes(0, 'k')} trailer)); moved to "
        + str(next((root / "quarantine").iterdir()))
    ]


def test_restart_rebuilds_lru_order_from_mtime(root: Path) -> None:
    size = 1000
    store = CacheStore(root, max_size_bytes=1 << 30)
    keys = [f"k/{i}" for i in range(6)]
    for i, key in enumerate(keys):
        store.publish(key, patterned(size, seed=i))
    # Recency as the previous process left it: k/5 oldest ... k/0 newest.
    now_ns = time.time_ns()
    for i, key in enumerate(keys):
        stamp = now_ns - (i + 1) * 10**9 * 100
        os.utime(store.path_of(key), ns=(stamp, stamp))
    store.close()
    again = CacheStore(root, max_size_bytes=3 * file_bytes(size, "k/0"))  # quota shrank: evicts at start
    assert [key for key in keys if again.contains(key)] == ["k/0", "k/1", "k/2"]
    assert again.stats.evictions == 3
    assert_accounting_matches_disk(again)


def test_lookup_touches_mtime_so_recency_survives_restart(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    store.publish("a", b"a" * 100)
    old_ns = time.time_ns() - 3600 * 10**9
    os.utime(store.path_of("a"), ns=(old_ns, old_ns))
    assert lookup_bytes(store, "a", 100) is not None
    assert store.path_of("a").stat().st_mtime_ns > old_ns + 3000 * 10**9


def _rewrite_footer(path: Path, **changes: int) -> None:
    """Re-encode the footer with fields changed and a valid crc, so only the changed field is wrong."""
    raw = path.read_bytes()
    head = FOOTER_HEAD
    footer = raw[-FOOTER_SIZE:]
    fields = list(head.unpack_from(footer))
    names = ["magic", "version", "reserved", "key_len", "size", "digest"]
    for name, value in changes.items():
        fields[names.index(name)] = value
    key_len = fields[3]
    key_bytes = raw[-FOOTER_SIZE - key_len : -FOOTER_SIZE]
    new_head = head.pack(*fields)
    crc = FOOTER_CRC.pack(zlib.crc32(key_bytes + new_head))
    path.write_bytes(raw[:-FOOTER_SIZE] + new_head + crc)


def _flip_content_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 0x01]))


def _garbage_footer(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        f.write(random.Random(1).randbytes(FOOTER_SIZE))


def _foreign_entry(path: Path) -> None:
    # The complete, valid entry of another key (same length) placed at this key's path.
    other = patterned(6000, seed=77)
    path.write_bytes(other + encode_trailer("blk/Z/0", len(other), sha(other)))


POISONS = {
    "flipped byte": (_flip_content_byte, "content sha256 "),
    "truncated": (
        lambda p: os.truncate(p, p.stat().st_size - 100),
        f"file is {file_bytes(6000, 'blk/A/0') - 100} bytes, expected {file_bytes(6000, 'blk/A/0')}",
    ),
    "truncated to the trailer": (lambda p: os.truncate(p, 50), "file is 50 bytes"),
    "zero-length": (lambda p: os.truncate(p, 0), "file is 0 bytes"),
    "appended": (
        lambda p: p.write_bytes(p.read_bytes() + b"extra"),
        f"file is {file_bytes(6000, 'blk/A/0') + 5} bytes",
    ),
    "wrong version": (lambda p: _rewrite_footer(p, version=2), "format version 2, expected 1"),
    "garbage trailer": (_garbage_footer, "bad magic"),
    "bad trailer crc": (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00"), "trailer checksum"),
    "wrong size in trailer": (lambda p: _rewrite_footer(p, size=5999), "trailer records 5999 content"),
    "foreign key": (_foreign_entry, "trailer names key 'blk/Z/0'"),
}


@pytest.mark.allow_log(WARN_CORRUPT)
@pytest.mark.parametrize("poison", list(POISONS))
def test_poisoned_entry_is_quarantined_with_one_warning(
    root: Path, poison: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage, problem = POISONS[poison]
    key = "blk/A/0"
    data = patterned(6000, seed=4)
    store = CacheStore(root, max_size_bytes=1 << 30)
    store.publish(key, data)
    store.publish("blk/B/0", patterned(6000, seed=5))
    store.close()
    damage(store.path_of(key))

    again = CacheStore(root, max_size_bytes=1 << 30)
    assert again.contains(key)  # start-up only stats; the first lookup is what verifies
    assert again.lookup(key, size=len(data)) is None
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert f"cache entry {key!r} is corrupt (" in messages[0] and problem in messages[0], messages[0]
    assert not again.contains(key)
    assert not again.path_of(key).exists()
    assert len(list((root / "quarantine").iterdir())) == 1
    assert (again.stats.quarantined, again.stats.misses, again.stats.hits) == (1, 1, 0)
    assert_accounting_matches_disk(again)

    assert again.lookup(key, size=len(data)) is None  # now simply absent: no second warning
    assert len(warnings_of(caplog)) == 1
    assert lookup_bytes(again, "blk/B/0", 6000) == patterned(6000, seed=5)  # neighbours unaffected
    again.publish(key, data)  # the caller refetches
    assert lookup_bytes(again, key, len(data)) == data


@pytest.mark.allow_log(WARN_CORRUPT)
def test_expected_sha256_differing_from_the_recorded_one_is_corruption(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = patterned(3000, seed=1)
    with CacheStore(root, max_size_bytes=1 << 30) as store:
        store.publish("k", data)
    again = CacheStore(root, max_size_bytes=1 << 30)
    assert again.lookup("k", size=3000, sha256="0" * 64) is None
    assert len(warnings_of(caplog)) == 1 and "recorded sha256" in warnings_of(caplog)[0]


@pytest.mark.allow_log(WARN_CORRUPT)
def test_concurrent_first_lookups_verify_once(
    root: Path, count_hashing: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    good = patterned(4 << 20, seed=1)
    with CacheStore(root, max_size_bytes=1 << 30) as store:
        store.publish("good", good)
        store.publish("bad", good)
    _flip_content_byte(store.path_of("bad"))
    again = CacheStore(root, max_size_bytes=1 << 30)
    barrier = threading.Barrier(16)
    results: dict[str, list[bytes | None]] = {"good": [], "bad": []}

    def read(key: str) -> None:
        barrier.wait()
        results[key].append(lookup_bytes(again, key, len(good)))

    threads = [threading.Thread(target=read, args=(k,)) for k in ("good", "bad") for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["good"] == [good] * 8
    assert results["bad"] == [None] * 8
    assert count_hashing == [len(good), len(good)]  # one verification per key, not one per reader
    assert len(warnings_of(caplog)) == 1


def test_entry_evicted_while_being_verified_is_served_but_not_reindexed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 50_000
    data = patterned(size, seed=1)
    with CacheStore(root, max_size_bytes=1 << 30) as store:
        store.publish("a", data)
    again = CacheStore(root, max_size_bytes=2 * file_bytes(size, "a"))
    real = store_mod.sha256_of_prefix

    def evict_a_meanwhile(fd: int, nbytes: int) -> str:
        again.publish("b", patterned(size, seed=2))
        again.publish("c", patterned(size, seed=3))  # "a" is the oldest: evicted
        assert not again.path_of("a").exists()
        return real(fd, nbytes)

    monkeypatch.setattr(store_mod, "sha256_of_prefix", evict_a_meanwhile)
    fd = again.lookup("a", size=size)
    assert fd is not None
    try:
        assert read_fd(fd, size) == data
    finally:
        os.close(fd)
    assert not again.contains("a")
    assert again.stats.evictions == 1
    assert_accounting_matches_disk(again)


@pytest.mark.allow_log(r"is corrupt \(content sha256 .*\); already replaced or removed")
def test_good_publish_during_verification_of_a_bad_entry_is_not_quarantined(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = patterned(20_000, seed=1)
    with CacheStore(root, max_size_bytes=1 << 30) as store:
        store.publish("a", data)
    _flip_content_byte(store.path_of("a"))
    again = CacheStore(root, max_size_bytes=1 << 30)
    real = store_mod.sha256_of_prefix

    def republish_meanwhile(fd: int, nbytes: int) -> str:
        again.publish("a", data)  # a refetch by another reader lands while this one verifies
        return real(fd, nbytes)

    monkeypatch.setattr(store_mod, "sha256_of_prefix", republish_meanwhile)
    assert again.lookup("a", size=len(data)) is None  # the bytes this lookup opened were bad
    assert len(warnings_of(caplog)) == 1
    assert again.stats.quarantined == 0 and list((root / "quarantine").iterdir()) == []
    monkeypatch.undo()
    assert lookup_bytes(again, "a", len(data)) == data  # the good entry stayed in place
    assert_accounting_matches_disk(again)


# -- crashes and start-up sweep --------------------------------------------------------------------


def test_leftover_temp_files_are_swept_at_start_and_never_visible(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    store.close()
    data = patterned(5000, seed=1)
    # What a crash between write and rename leaves: a complete-looking temp file named for the key.
    leftover = root / "tmp" / f"{entry_name('k')}.deadbeef.tmp"
    leftover.write_bytes(data + encode_trailer("k", len(data), sha(data)))
    (root / "tmp" / f"{entry_name('j')}.cafe.evicted").write_bytes(b"x" * 10)

    again = CacheStore(root, max_size_bytes=1 << 30)
    assert os.listdir(root / "tmp") == []
    assert not again.contains("k")
    assert again.lookup("k", size=len(data)) is None
    assert again.entry_count() == 0 and again.size_bytes() == 0
    assert again.verify_all().orphan_temp_files == 2


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vfs.cache.store import CacheStore

    store = CacheStore(Path(sys.argv[1]), max_size_bytes=1 << 30)
    store.publish("done", b"committed before the crash")
    with store.writer("torn", size=64 << 20) as w:
        for i in range(1 << 20):
            w.write(bytes([i % 256]) * 4096)
            if i == 16:
                print("writing", flush=True)
            time.sleep(0.001)
        w.commit()
    """
)


def test_sigkill_mid_write_leaves_nothing_visible(root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"writing\n"
        # While the child lives it owns the root: a second daemon is refused with a start-up error.
        with pytest.raises(CacheLocked, match="in use by another process") as refused:
            CacheStore(root, max_size_bytes=1 << 30)
        assert refused.value.exit_code == 3
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    (torn_tmp,) = list((root / "tmp").iterdir())
    assert torn_tmp.name.startswith(entry_name("torn")) and torn_tmp.stat().st_size >= 17 * 4096

    store = CacheStore(root, max_size_bytes=1 << 30)
    assert os.listdir(root / "tmp") == []
    assert not store.contains("torn")
    assert store.lookup("torn", size=64 << 20) is None
    assert lookup_bytes(store, "done", 26) == b"committed before the crash"
    assert store.entry_count() == 1
    report = store.verify_all()
    assert (report.ok, report.corrupt, report.orphan_temp_files) == (1, 0, 1)


# -- durability order ------------------------------------------------------------------------------


def test_publish_order_is_fsync_file_rename_fsync_dir(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    data = patterned(70_000, seed=6)
    events: list[tuple[str, str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", target, os.fstat(fd).st_size))
        real_fsync(fd)

    def recording_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}", 0))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    store.publish("order", data)
    monkeypatch.undo()

    final = store.path_of("order")
    (replace_at,) = [i for i, e in enumerate(events) if e[0] == "replace"]
    tmp_src, dst = events[replace_at][1].split(" -> ")
    assert dst == str(final) and Path(tmp_src).parent == root / "tmp"
    # The temp file is fsynced complete (content and trailer) before the rename...
    assert ("fsync", tmp_src, file_bytes(len(data), "order")) in events[:replace_at]
    # ...and the directory that gained the name is fsynced after it.
    assert [e[1] for e in events[replace_at + 1 :] if e[0] == "fsync"] == [str(final.parent)]
    assert lookup_bytes(store, "order", len(data)) == data


# -- out of space ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs to provoke ENOSPC needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)  # a test left an fd open


@pytest.mark.allow_log(r"max_size .* is larger than its filesystem")
def test_an_entry_larger_than_the_free_space_raises_cache_full_before_writing(
    tiny_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheStore(tiny_tmpfs / "cache", max_size_bytes=1 << 30)  # the quota is not what stops it
    [warning] = warnings_of(caplog)
    assert "is larger than its filesystem" in warning and "free space is the limit that rules" in warning
    big = patterned(2 << 20, seed=8)
    with pytest.raises(CacheFull) as raised:
        store.publish("big", big)
    assert isinstance(raised.value, FetchError) and raised.value.errno == errno.EIO
    assert "out of space" in str(raised.value)
    with pytest.raises(CacheFull), store.writer("big2", size=len(big)) as w:
        w.write(big[:65536])  # refused at the first write: nothing was written or downloaded
    assert os.listdir(tiny_tmpfs / "cache" / "tmp") == []
    assert not store.contains("big") and store.lookup("big", size=len(big)) is None
    assert store.entry_count() == 0 and store.stats.publishes == 0
    assert len(warnings_of(caplog)) == 1  # the store only logs it at DEBUG: the sources report it
    small = patterned(200_000, seed=9)
    store.publish("small", small)
    assert lookup_bytes(store, "small", len(small)) == small
    store.close()  # the root lock's fd would keep the tmpfs busy


def fill(directory: Path, leave_bytes: int) -> Path:
    """Another writer takes the filesystem's free space down to about ``leave_bytes``."""
    filler = directory / "filler.bin"
    st = os.statvfs(directory)
    with open(filler, "ab") as fh:
        fh.write(b"\xa5" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler


def test_min_free_evicts_lru_entries_to_keep_free_space(tiny_tmpfs: Path) -> None:
    store = CacheStore(tiny_tmpfs / "cache", max_size_bytes=1 << 20, min_free=MinFree(bytes=400_000))
    assert store.min_free_bytes == 400_000
    entries = [(f"e{i}", patterned(100_000, seed=i)) for i in range(12)]  # 1.2 MB through a 1 MiB disk
    for key, data in entries:
        store.publish(key, data)
        st = os.statvfs(tiny_tmpfs)
        assert st.f_bavail * st.f_frsize >= 400_000
    assert store.stats.evictions_for_space > 0 and store.stats.evictions == store.stats.evictions_for_space
    assert store.contains("e11") and not store.contains("e0")  # least recently used first
    assert lookup_bytes(store, "e11", 100_000) == entries[11][1]
    store.close()


def test_a_disk_filled_by_another_writer_evicts_then_raises_when_nothing_is_left(tiny_tmpfs: Path) -> None:
    store = CacheStore(tiny_tmpfs / "cache", max_size_bytes=1 << 20)
    for i in range(3):
        store.publish(f"old{i}", patterned(100_000, seed=i))
    filler = fill(tiny_tmpfs, 20_000)
    fresh = patterned(150_000, seed=7)
    store.publish("fresh", fresh)  # the old entries gave way
    assert lookup_bytes(store, "fresh", len(fresh)) == fresh
    assert store.stats.evictions_for_space >= 2
    # now the disk is full, and evicting "fresh" (all that is left) is not enough
    with open(filler, "ab") as fh, contextlib.suppress(OSError):
        fh.write(b"\xa5" * (2 << 20))
    with pytest.raises(CacheFull):
        store.publish("more", patterned(300_000, seed=8))
    assert os.listdir(tiny_tmpfs / "cache" / "tmp") == []
    filler.unlink()  # space is back: caching resumes
    store.publish("more", patterned(300_000, seed=8))
    assert store.contains("more")
    store.close()


# -- offline check and start-up hygiene ------------------------------------------------------------


@pytest.mark.allow_log(WARN_CORRUPT)
def test_verify_all_reports_and_quarantines(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    for i in range(5):
        store.publish(f"v/{i}", patterned(8000, seed=i))
    _flip_content_byte(store.path_of("v/1"))
    os.truncate(store.path_of("v/3"), 40)
    (root / "tmp" / "orphan.tmp").write_bytes(b"left behind")
    with store.writer("v/in-flight", size=10) as w:
        w.write(b"12345")  # a live writer's temp file is not an orphan
        report = store.verify_all()
        w.write(b"67890")
        w.commit()

    assert (report.ok, report.corrupt, report.orphan_temp_files) == (3, 2, 1)
    assert report.ok_bytes == 3 * file_bytes(8000, "v/0")
    problems = dict(report.problems)
    assert problems.keys() == {"v/1", entry_name("v/3")}  # a truncated trailer loses the key: file name
    assert problems["v/1"].startswith("content sha256 ")
    assert problems[entry_name("v/3")].startswith("file is 40 bytes, shorter than the 60-byte trailer")
    assert len(warnings_of(caplog)) == 2
    assert len(list((root / "quarantine").iterdir())) == 2
    assert [store.contains(f"v/{i}") for i in range(5)] == [True, False, True, False, True]
    assert lookup_bytes(store, "v/in-flight", 10) == b"1234567890"
    assert_accounting_matches_disk(store)


@pytest.mark.allow_log(WARN_CORRUPT)
def test_quarantine_keeps_only_the_newest_few(root: Path) -> None:
    store = CacheStore(root, max_size_bytes=1 << 30)
    for i in range(12):
        store.publish(f"q/{i}", patterned(3000, seed=i))
        os.truncate(store.path_of(f"q/{i}"), 10)
    assert store.verify_all().corrupt == 12
    assert len(list((root / "quarantine").iterdir())) == store_mod._QUARANTINE_KEEP


@pytest.mark.allow_log(r"is not a cache entry")
def test_start_removes_other_versions_and_quarantines_strays(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = root / "entries-v0" / "ab" / "cd"
    old.mkdir(parents=True)
    (old / ("abcd" + "0" * 60)).write_bytes(b"old format")
    stray_dir = root / "entries-v1" / "zz"
    stray_dir.mkdir(parents=True)
    (root / "entries-v1" / "12" / "34").mkdir(parents=True)
    (root / "entries-v1" / "12" / "34" / "notes.txt").write_bytes(b"?")
    (root / "unrelated").write_bytes(b"not ours to judge")

    store = CacheStore(root, max_size_bytes=1 << 30)
    assert not (root / "entries-v0").exists()
    assert not stray_dir.exists()
    assert len(warnings_of(caplog)) == 2
    assert len(list((root / "quarantine").iterdir())) == 2
    assert (root / "unrelated").read_bytes() == b"not ours to judge"
    assert store.entry_count() == 0


def test_unusable_root_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError) as raised:
        CacheStore(blocker / "cache", max_size_bytes=1 << 20)
    assert raised.value.exit_code == 3 and str(blocker) in str(raised.value)
    with pytest.raises(ValueError):
        CacheStore(tmp_path / "c", max_size_bytes=0)


@pytest.mark.allow_log(r"quarantin|corrupt|sha256")
def test_prehashed_writer_records_the_callers_digest_and_restart_still_verifies(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    with CacheStore(tmp_path / "c", max_size_bytes=10**7) as store:
        with pytest.raises(ValueError):
            store.writer("k0", size=1, prehashed=True)  # nothing to record without the caller's digest
        with store.writer("k", size=len(data), sha256=digest, prehashed=True) as w:
            w.write(data)
            w.commit()
        path = store.path_of("k")
    # a restarted store verifies the recorded digest against the bytes on disk
    with CacheStore(tmp_path / "c", max_size_bytes=10**7) as store:
        fd = store.lookup("k", size=len(data), sha256=digest)
        assert fd is not None
        assert os.pread(fd, len(data), 0) == data
        os.close(fd)
    with open(path, "r+b") as fh:  # flip one content byte
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with CacheStore(tmp_path / "c", max_size_bytes=10**7) as store:
        assert store.lookup("k", size=len(data), sha256=digest) is None
