"""The async Hub client against the running local Hub emulator, with its faults.

Every test talks real HTTP to the emulator on 127.0.0.1 through huggingface_hub's async session. The repo
holds regular files and LFS files whose bytes encode their own offsets, so a misplaced byte shows; the
emulator's request log is used to count resolves, CDN requests, bytes and the Authorization header.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from vfs.errors import FetchError, IntegrityError
from vfs.hub.client import (
    EntryNotFound,
    GatedRepo,
    HubAccessError,
    HubClient,
    RepoFile,
    RepoNotFound,
    RevisionNotFound,
)
from vfs.hub.emulator import Fault, HubEmulator

REPO = "org/name"
LFS_THRESHOLD_BYTES = 64 * 1024
CHUNK_BYTES = 256 * 1024
LFS_PATH = "shards/part-000.bin"
LFS_SIZE = 3 * (1 << 20) + 12_345  # several chunks, not a multiple of anything
SMALL_LFS_PATH = "shards/part-001.bin"
SMALL_LFS_SIZE = LFS_THRESHOLD_BYTES + 1
REGULAR_PATH = "README.md"
REGULAR_SIZE = 40_000
TOKEN = "hf_TESTtokenNEVERlogged0123456789"


def patterned(size: int, salt: int) -> bytes:
    """Bytes that spell their own offset: every 8-byte word is (offset ^ salt) big-endian."""
    words = b"".join(((i ^ salt) & (2**64 - 1)).to_bytes(8, "big") for i in range(0, size + 8, 8))
    return words[:size]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


CONTENT = {
    LFS_PATH: patterned(LFS_SIZE, 0x5A5A_0000_0000),
    SMALL_LFS_PATH: patterned(SMALL_LFS_SIZE, 0x1111_0000_0000),
    REGULAR_PATH: patterned(REGULAR_SIZE, 0x7777_0000_0000),
    "annotations/a.json": b'{"video": "x.mp4"}\n',
    "annotations/deep/b.json": b"[]\n",
    "empty.txt": b"",
}


pytestmark = pytest.mark.usefixtures("no_machine_token")


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for path, data in CONTENT.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def start_emulator(repo_dir: Path, **kwargs: object) -> HubEmulator:
    emu = HubEmulator(repo_id=REPO, lfs_threshold_bytes=LFS_THRESHOLD_BYTES, **kwargs)  # type: ignore[arg-type]
    emu.start()
    return emu


@pytest.fixture
def emu(repo_dir: Path) -> Iterator[HubEmulator]:
    emulator = start_emulator(repo_dir, tree_page_size=2)
    try:
        emulator.commit(repo_dir, branch="main", tags=("v1",))
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def commit(emu: HubEmulator) -> str:
    return emu.head("main")


def client_for(emu: HubEmulator, **overrides: object) -> HubClient:
    settings: dict[str, object] = {
        "endpoint": emu.endpoint,
        "repo_id": REPO,
        "token": None,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "max_retries": 5,
        "retry_deadline_s": 10.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "chunk_bytes": CHUNK_BYTES,
    }
    settings.update(overrides)
    return HubClient(**settings)  # type: ignore[arg-type]


def hub_resolves(emu: HubEmulator, path: str) -> int:
    return emu.request_count(origin="hub", file=path)


# --- revisions and listings ---------------------------------------------------------------------------------


async def test_resolve_commit_branch_tag_and_sha(emu: HubEmulator, repo_dir: Path, tmp_path: Path) -> None:
    first = emu.head("main")
    async with client_for(emu) as hub:
        assert await hub.resolve_commit("main") == first
        assert await hub.resolve_commit("v1") == first
        assert await hub.resolve_commit(first) == first

        # The branch moves: the name follows it, the old sha still names the old commit.
        (tmp_path / "new.txt").write_bytes(b"new\n")
        second = emu.commit(tmp_path, branch="main")
        assert second != first
        assert await hub.resolve_commit("main") == second
        assert await hub.resolve_commit("v1") == first
        assert await hub.resolve_commit(first) == first

        with pytest.raises(RevisionNotFound) as info:
            await hub.resolve_commit("no-such-branch")
        assert isinstance(info.value, HubAccessError)
        assert "no-such-branch" in str(info.value)
        assert hub.stats.errors == 1


async def test_list_files_follows_pages(emu: HubEmulator, commit: str) -> None:
    async with client_for(emu) as hub:
        files = await hub.list_files(commit)
    # Page size 2 over 9 entries (6 files, 3 directories): at least 5 tree pages were followed.
    tree_pages = [r for r in emu.requests if "/tree/" in r.path]
    assert len(tree_pages) >= 5
    by_path = {f.path: f for f in files}
    assert sorted(by_path) == sorted(CONTENT)
    assert [f.path for f in files] == sorted(by_path)
    for path, data in CONTENT.items():
        f = by_path[path]
        assert f.size == len(data)
        if len(data) > LFS_THRESHOLD_BYTES:
            assert f.lfs_sha256 == hashlib.sha256(data).hexdigest()
            assert f.content_id == f.lfs_sha256
            assert f.blob_id != git_blob_sha1(data)  # the pointer's blob, not the content's
        else:
            assert f.lfs_sha256 is None
            assert f.blob_id == git_blob_sha1(data)
            assert f.content_id == f.blob_id


async def test_commit_must_be_a_sha(emu: HubEmulator) -> None:
    async with client_for(emu) as hub:
        with pytest.raises(ValueError, match="40-hex"):
            await hub.read_range("main", REGULAR_PATH, 0, 1)
        with pytest.raises(ValueError, match="40-hex"):
            await hub.list_files("main")


# --- ranged reads -------------------------------------------------------------------------------------------


async def test_read_range_exact_at_many_offsets(emu: HubEmulator, commit: str) -> None:
    rng = random.Random(7)
    async with client_for(emu) as hub:
        for path in (LFS_PATH, REGULAR_PATH):
            data = CONTENT[path]
            size = len(data)
            spans = [
                (0, 1),
                (0, size),
                (size - 1, size),
                (size - 9, size),
                (1, 9),
                (7, 8),
                (size // 2, size // 2),  # empty
                (CHUNK_BYTES - 1, CHUNK_BYTES + 1) if size > CHUNK_BYTES else (size - 2, size),
            ]
            for _ in range(25):
                start = rng.randrange(size)
                spans.append((start, rng.randrange(start, size + 1)))
            for start, end in spans:
                got = await hub.read_range(commit, path, start, end)
                assert got == data[start:end], (path, start, end)
            with pytest.raises(ValueError, match="past the end"):
                await hub.read_range(commit, path, size - 1, size + 1)
        # One resolve per file however many ranges; every LFS range went to the CDN, without a token.
        assert hub_resolves(emu, LFS_PATH) == 1
        assert hub_resolves(emu, REGULAR_PATH) > 25  # regular files are read from the resolve URL
        assert emu.request_count(origin="hub", file=REGULAR_PATH, method="HEAD") == 1
        assert emu.request_count(origin="cdn", file=LFS_PATH) >= 30
        assert hub.stats.resolves == 2
        assert hub.stats.retries == 0
    assert all(r.status in (200, 206, 302) for r in emu.requests)


async def test_empty_file_and_missing_entry(emu: HubEmulator, commit: str) -> None:
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, "empty.txt", 0, 0) == b""
        with pytest.raises(EntryNotFound) as info:
            await hub.read_range(commit, "no/such/file.bin", 0, 10)
        assert info.value.errno == errno.ENOENT


async def test_concurrent_cold_reads_resolve_once(emu: HubEmulator, commit: str) -> None:
    data = CONTENT[LFS_PATH]
    results: dict[int, bytes] = {}
    async with client_for(emu, max_connections=3) as hub:

        async def read(i: int) -> None:
            start = i * 100_003
            results[i] = await hub.read_range(commit, LFS_PATH, start, start + 70_000)

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(read, i)
    assert all(results[i] == data[i * 100_003 : i * 100_003 + 70_000] for i in range(12))
    assert hub_resolves(emu, LFS_PATH) == 1
    assert emu.request_count(origin="cdn", file=LFS_PATH) == 12


async def test_cdn_reresolve_after_signed_url_expiry(emu: HubEmulator, commit: str) -> None:
    data = CONTENT[LFS_PATH]
    emu.signed_url_ttl_s = 1.0
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, LFS_PATH, 10, 20) == data[10:20]
        await trio.sleep(1.1)
        assert await hub.read_range(commit, LFS_PATH, 1000, 5000) == data[1000:5000]
        assert await hub.read_range(commit, LFS_PATH, 5000, 6000) == data[5000:6000]
        assert hub.stats.retries == 0  # an expired signature is routine, not a retry
    assert hub_resolves(emu, LFS_PATH) == 2
    assert [r.status for r in emu.requests if r.origin == "cdn"] == [206, 403, 206, 206]


async def test_cdn_403_fault_reresolves(emu: HubEmulator, commit: str) -> None:
    emu.add_fault(Fault(kind="expire_url", origin="cdn", file_glob=LFS_PATH))
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, LFS_PATH, 0, 100) == CONTENT[LFS_PATH][:100]
    assert hub_resolves(emu, LFS_PATH) == 2


@pytest.mark.allow_log(r"CDN refused a freshly signed URL", r"gave up")
async def test_cdn_403_on_fresh_url_is_not_an_endless_loop(emu: HubEmulator, commit: str) -> None:
    emu.add_fault(Fault(kind="expire_url", origin="cdn", count=None))
    async with client_for(emu, max_retries=2) as hub:
        with pytest.raises(FetchError, match="403"):
            await hub.read_range(commit, LFS_PATH, 0, 100)
    assert emu.request_count(origin="cdn") <= 4


async def test_token_goes_to_the_hub_only(repo_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    emu = start_emulator(repo_dir, required_token=TOKEN)
    try:
        commit = emu.commit(repo_dir)
        async with client_for(emu, token=TOKEN) as hub:
            assert await hub.resolve_commit("main") == commit
            assert len(await hub.list_files(commit)) == len(CONTENT)
            assert await hub.read_range(commit, LFS_PATH, 5, 50) == CONTENT[LFS_PATH][5:50]
            assert await hub.read_range(commit, REGULAR_PATH, 5, 50) == CONTENT[REGULAR_PATH][5:50]
        hub_requests = [r for r in emu.requests if r.origin == "hub"]
        cdn_requests = [r for r in emu.requests if r.origin == "cdn"]
        assert hub_requests and all(r.auth for r in hub_requests)
        assert cdn_requests and not any(r.auth for r in cdn_requests)
        assert TOKEN not in caplog.text
    finally:
        emu.stop()


# --- access errors ------------------------------------------------------------------------------------------


async def test_access_errors_are_typed(repo_dir: Path) -> None:
    gated = start_emulator(repo_dir, gated=True, required_token=TOKEN)
    try:
        commit = gated.commit(repo_dir)
        async with client_for(gated) as hub:  # no token: metadata is public, downloads are not
            assert await hub.resolve_commit("main") == commit
            with pytest.raises(GatedRepo, match="no token was sent"):
                await hub.read_range(commit, REGULAR_PATH, 0, 10)
        async with client_for(gated, token="hf_someoneelse") as hub:
            with pytest.raises(GatedRepo, match="not been granted") as info:
                await hub.read_range(commit, LFS_PATH, 0, 10)
            assert info.value.errno == errno.EACCES
        async with client_for(gated, token=TOKEN) as hub:
            assert await hub.read_range(commit, LFS_PATH, 0, 10) == CONTENT[LFS_PATH][:10]
        async with client_for(gated, repo_id="org/missing") as hub:
            with pytest.raises(RepoNotFound):
                await hub.resolve_commit("main")
        assert not any(r.status >= 500 for r in gated.requests)
    finally:
        gated.stop()

    private = start_emulator(repo_dir, required_token=TOKEN)
    try:
        private.commit(repo_dir)
        for token in (None, "hf_wrong"):
            async with client_for(private, token=token) as hub:
                with pytest.raises(RepoNotFound, match=REPO):
                    await hub.resolve_commit("main")
                assert hub.stats.retries == 0  # never retried
    finally:
        private.stop()


# --- faults -------------------------------------------------------------------------------------------------


@pytest.mark.allow_log(r"rate limited \(429\); retry 1/")
@pytest.mark.parametrize("origin", ["hub", "cdn"])
async def test_rate_limit_waits_as_told(emu: HubEmulator, commit: str, origin: str) -> None:
    emu.add_fault(Fault(kind="rate_limit", origin=origin, file_glob=LFS_PATH, retry_after_s=1.0))
    async with client_for(emu) as hub:
        started = trio.current_time()
        got = await hub.read_range(commit, LFS_PATH, 100, 200)
        waited_s = trio.current_time() - started
        assert got == CONTENT[LFS_PATH][100:200]
        assert hub.stats.rate_limited == 1
        assert hub.stats.retries == 1
    assert 0.95 <= waited_s < 3.0  # t=1 was honoured, not the 10 ms backoff


@pytest.mark.allow_log(r"HTTP 50[234]; retry [12]/5")
async def test_5xx_retried(emu: HubEmulator, commit: str) -> None:
    emu.add_fault(Fault(kind="status", status=503, origin="hub", count=1))
    emu.add_fault(Fault(kind="status", status=502, origin="cdn", count=2))
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, LFS_PATH, 0, 1000) == CONTENT[LFS_PATH][:1000]
        assert hub.stats.retries == 3
    assert [r.status for r in emu.requests] == [503, 302, 502, 502, 206]


@pytest.mark.allow_log(r"RemoteProtocolError|ReadError|body ended early")
@pytest.mark.parametrize("kind", ["reset", "truncate"])
async def test_mid_body_failure_resumes(emu: HubEmulator, commit: str, kind: str) -> None:
    data = CONTENT[LFS_PATH]
    start, end = 1000, 1000 + 2 * CHUNK_BYTES + 17
    emu.add_fault(Fault(kind=kind, origin="cdn", after_bytes=CHUNK_BYTES + 5000))
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, LFS_PATH, start, end) == data[start:end]
        assert hub.stats.retries == 1
    cdn = [r for r in emu.requests if r.origin == "cdn"]
    assert len(cdn) == 2 and cdn[0].fault == kind
    resumed_at = int((cdn[1].range or "").removeprefix("bytes=").split("-")[0])
    assert start < resumed_at <= start + CHUNK_BYTES + 5000  # resumed, not restarted


@pytest.mark.allow_log(r"ReadError|RemoteProtocolError")
@pytest.mark.parametrize("kind", ["reset", "truncate"])
async def test_stream_range_resumes_mid_stream(emu: HubEmulator, commit: str, kind: str) -> None:
    data = CONTENT[LFS_PATH]
    cut_at = LFS_SIZE // 2 + 3
    emu.add_fault(Fault(kind=kind, origin="cdn", after_bytes=cut_at))
    chunks: list[bytes] = []
    async with client_for(emu) as hub:
        async with aclosing(hub.stream_range(commit, LFS_PATH, 0, LFS_SIZE)) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        assert hub.stats.retries == 1
        received = hub.stats.bytes_received
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) < 2 * CHUNK_BYTES
    first, second = [r for r in emu.requests if r.origin == "cdn"]
    assert first.fault == kind and second.fault is None
    resumed_at = int((second.range or "").removeprefix("bytes=").split("-")[0])
    assert second.range == f"bytes={resumed_at}-{LFS_SIZE - 1}"
    # Nothing the client received is fetched again: the second request starts where the first one's
    # delivered bytes end, so the client received each byte once.
    assert received == LFS_SIZE
    if kind == "truncate":  # a clean close delivers every byte sent
        assert resumed_at == cut_at
        assert emu.bytes_sent(origin="cdn", file=LFS_PATH) == LFS_SIZE
    else:  # an RST drops what was still in the socket buffers: those bytes are fetched again
        assert 0 < resumed_at <= cut_at


async def test_stream_range_stopped_early_releases_its_connection(emu: HubEmulator, commit: str) -> None:
    async with client_for(emu, max_connections=1) as hub:
        for _ in range(3):
            async with aclosing(hub.stream_range(commit, LFS_PATH, 0, LFS_SIZE)) as stream:
                first = await stream.__anext__()
            assert first == CONTENT[LFS_PATH][: len(first)]
        # The only connection slot is free again: another read completes.
        with trio.fail_after(5):
            assert await hub.read_range(commit, LFS_PATH, 7, 9) == CONTENT[LFS_PATH][7:9]


@pytest.mark.allow_log(r"ignored the Range header|asked bytes .* got Content-Range")
@pytest.mark.parametrize("kind", ["ignore_range", "wrong_range"])
@pytest.mark.parametrize("path", [LFS_PATH, REGULAR_PATH])
async def test_bad_range_answers_retried_never_returned(
    emu: HubEmulator, commit: str, kind: str, path: str
) -> None:
    data = CONTENT[path]
    emu.add_fault(Fault(kind=kind, origin="any", count=2))
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, path, 100, 3000) == data[100:3000]
        assert hub.stats.retries == 2
        if kind == "ignore_range" and len(data) > 1 << 20:  # it hung up instead of reading the whole file
            assert hub.stats.bytes_received < 1 << 20
    assert len([r for r in emu.requests if r.fault == kind]) == 2


@pytest.mark.allow_log(r"Content-Range total")
async def test_wrong_total_on_whole_file_range_retried(emu: HubEmulator, commit: str) -> None:
    data = CONTENT[SMALL_LFS_PATH]
    emu.add_fault(Fault(kind="wrong_range", origin="cdn"))
    async with client_for(emu) as hub:
        assert await hub.read_range(commit, SMALL_LFS_PATH, 0, len(data)) == data
        assert hub.stats.retries == 1


@pytest.mark.allow_log(r"HTTP 503; retry \d+/")
async def test_persistent_fault_fails_within_the_retry_budget(emu: HubEmulator, commit: str) -> None:
    emu.add_fault(Fault(kind="status", status=503, origin="cdn", count=None))
    async with client_for(emu, max_retries=3) as hub:
        with pytest.raises(FetchError, match=r"gave up after 4 failed attempts.*HTTP 503"):
            await hub.read_range(commit, LFS_PATH, 0, 10)
        assert hub.stats.errors == 1
    assert emu.request_count(origin="cdn") == 4

    # The deadline bounds it too, whatever max_retries says.
    async with client_for(emu, max_retries=10_000, retry_deadline_s=0.6, backoff_base_s=0.05) as hub:
        started = trio.current_time()
        with pytest.raises(FetchError, match="HTTP 503"):
            await hub.read_range(commit, LFS_PATH, 0, 10)
        assert trio.current_time() - started < 3.0  # 0.6 s deadline + one attempt, on a busy machine


@pytest.mark.allow_log(r"ReadTimeout")
async def test_stall_times_out_and_retries(emu: HubEmulator, commit: str) -> None:
    data = CONTENT[LFS_PATH]
    emu.add_fault(Fault(kind="stall", origin="cdn", after_bytes=50_000, delay_s=5.0))
    async with client_for(emu, read_timeout_s=0.3) as hub:
        started = trio.current_time()
        assert await hub.read_range(commit, LFS_PATH, 0, 200_000) == data[:200_000]
        elapsed_s = trio.current_time() - started
        assert hub.stats.retries == 1
    assert 0.3 <= elapsed_s < 3.0
    resumed = [r for r in emu.requests if r.origin == "cdn"][1]
    assert resumed.range == "bytes=50000-199999"


async def test_slow_headers_within_the_timeout_are_fine(emu: HubEmulator, commit: str) -> None:
    emu.add_fault(Fault(kind="delay", origin="cdn", delay_s=0.2))
    emu.add_fault(Fault(kind="trickle", origin="cdn", after_bytes=16_384, delay_s=0.005))
    async with client_for(emu, read_timeout_s=1.0) as hub:
        assert await hub.read_range(commit, LFS_PATH, 0, 100_000) == CONTENT[LFS_PATH][:100_000]
        assert hub.stats.retries == 0


# --- whole-file downloads -----------------------------------------------------------------------------------


@pytest.mark.allow_log(r"checksum mismatch")
@pytest.mark.parametrize("path", [LFS_PATH, REGULAR_PATH])
async def test_download_file_detects_a_flipped_byte(
    emu: HubEmulator, commit: str, tmp_path: Path, path: str
) -> None:
    emu.add_fault(Fault(kind="flip_byte", origin="any", file_glob=path, after_bytes=12_345))
    dest = tmp_path / "out" / "file.bin"
    async with client_for(emu) as hub:
        f = next(f for f in await hub.list_files(commit) if f.path == path)
        await hub.download_file(commit, f, dest)
        assert hub.stats.retries == 1
    assert dest.read_bytes() == CONTENT[path]
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]  # no temp file left
    assert [r.fault for r in emu.requests if r.fault] == ["flip_byte"]


@pytest.mark.allow_log(r"checksum mismatch")
async def test_download_file_never_publishes_unverified_bytes(
    emu: HubEmulator, commit: str, tmp_path: Path
) -> None:
    dest = tmp_path / "file.bin"
    wrong = RepoFile(path=REGULAR_PATH, size=REGULAR_SIZE, blob_id="0" * 40, lfs_sha256=None)
    async with client_for(emu, max_retries=1) as hub:
        with pytest.raises(IntegrityError, match="checksum mismatch on all 2 attempts"):
            await hub.download_file(commit, wrong, dest)
        with pytest.raises(IntegrityError, match="listed as"):
            await hub.download_file(commit, RepoFile(LFS_PATH, 5, "0" * 40, "0" * 64), dest)
        assert hub.stats.errors == 2
    assert os.listdir(tmp_path) == []


async def test_download_empty_file(emu: HubEmulator, commit: str, tmp_path: Path) -> None:
    async with client_for(emu) as hub:
        f = next(f for f in await hub.list_files(commit) if f.path == "empty.txt")
        await hub.download_file(commit, f, tmp_path / "empty")
    assert (tmp_path / "empty").read_bytes() == b""


@pytest.mark.allow_log(r"HTTP 504")
async def test_retry_warnings_name_reason_and_attempt_once_each(
    emu: HubEmulator, commit: str, caplog: pytest.LogCaptureFixture
) -> None:
    emu.add_fault(Fault(kind="status", status=504, origin="cdn", count=2))
    async with client_for(emu) as hub:
        await hub.read_range(commit, LFS_PATH, 0, 10)
    warnings = [r for r in caplog.records if r.name.startswith("vfs.hub") and r.levelno >= logging.WARNING]
    assert [r.getMessage().split("; ")[-1].split(" in ")[0] for r in warnings] == ["retry 1/5", "retry 2/5"]
    assert all("HTTP 504" in r.getMessage() and LFS_PATH in r.getMessage() for r in warnings)
    assert not any("Signature" in r.getMessage() for r in caplog.records)
