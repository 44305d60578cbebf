"""The Hub emulator's bench knobs: the per-connection CDN bandwidth limit (``cdn_bytes_per_s``) and the
HTML directory index for rclone's http backend (``html_directory_index``).

Pacing is checked as a correctness property, not a performance figure: a body of N bytes at rate R cannot
arrive in less than N / R (each response has its own budget, starting empty), and the bytes are exactly
the file's. Also: the hub origin is never paced, the limit applies per response (a second request on the
same connection and a concurrent one each pay it in full), it combines with a body fault, ``stop`` cuts a
paced body short promptly, the daemon's own ``HubClient`` reads exact bytes through it, and the CLI flag
``llava-vfs hub-emulator --cdn-bytes-per-s`` reaches the server.

The HTML index is off by default (a directory URL is a 404 as on the real Hub); on, it lists exactly a
directory's children as relative links, leaves file answers unchanged, and real rclone (when installed)
lists the directory and reads exact bytes through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest

from vfs.hub.client import HubClient
from vfs.hub.emulator import Fault, HubEmulator

REPO = "lmms-lab/LLaVA-Video-178K"
LFS_PATH = "0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_1.tar.gz"  # LFS by .gitattributes
REGULAR_PATH = "annotations/big.json"  # a regular file: served by the hub origin
LFS_SIZE = 1_500_007
REGULAR_SIZE = 1_200_003
RATE_BYTES_PER_S = 3_000_000.0  # 1.5 MB takes at least 0.5 s


def pattern_bytes(size_bytes: int, salt: int) -> bytes:
    """Each 4-byte big-endian word encodes its own offset plus a salt: a shifted or lost byte shows."""
    words = (np.arange((size_bytes + 3) // 4, dtype=np.uint64) * 4 + salt) & 0xFFFFFFFF
    return words.astype(">u4").tobytes()[:size_bytes]


CONTENT = {
    ".gitattributes": b"*.tar.gz filter=lfs diff=lfs merge=lfs -text\n",
    LFS_PATH: pattern_bytes(LFS_SIZE, 0x1111),
    REGULAR_PATH: pattern_bytes(REGULAR_SIZE, 0x2222),
}


pytestmark = pytest.mark.usefixtures("no_machine_token")


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for path, data in CONTENT.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


@pytest.fixture
def emu(repo_dir: Path) -> Iterator[HubEmulator]:
    # LFS threshold above every file: .gitattributes makes the shard LFS; REGULAR_PATH stays on the hub
    with HubEmulator(REPO, lfs_threshold_bytes=10 << 20, cdn_bytes_per_s=RATE_BYTES_PER_S) as emulator:
        emulator.commit(repo_dir)
        yield emulator


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=30.0, follow_redirects=True) as c:
        yield c


def resolve_url(endpoint: str, path: str) -> str:
    return f"{endpoint}/datasets/{REPO}/resolve/main/{path}"


def timed_get(client: httpx2.Client, url: str, range_header: str | None = None) -> tuple[float, int, bytes]:
    """GET (following the CDN redirect); the clock starts before the request is sent."""
    headers = {"Range": range_header} if range_header else {}
    t0 = time.monotonic()
    r = client.get(url, headers=headers)
    return time.monotonic() - t0, r.status_code, r.content


def test_a_paced_cdn_body_takes_at_least_size_over_rate_and_is_exact(
    emu: HubEmulator, client: httpx2.Client
) -> None:
    url = resolve_url(emu.endpoint, LFS_PATH)
    elapsed_s, status, body = timed_get(client, url)
    assert status == 200 and body == CONTENT[LFS_PATH]
    assert elapsed_s >= LFS_SIZE / RATE_BYTES_PER_S

    first, last = 123_457, 1_023_456  # an odd range: the pacing pieces do not line up with it
    n = last - first + 1
    elapsed_s, status, body = timed_get(client, url, f"bytes={first}-{last}")
    assert status == 206 and body == CONTENT[LFS_PATH][first : last + 1]
    assert elapsed_s >= n / RATE_BYTES_PER_S
    cdn = [r for r in emu.requests if r.origin == "cdn"]
    assert [r.bytes_sent for r in cdn] == [LFS_SIZE, n]  # no byte sent twice or padded


def test_the_hub_origin_is_not_paced(emu: HubEmulator, client: httpx2.Client) -> None:
    emu.cdn_bytes_per_s = 100_000.0  # 12 s for this file if it were paced
    elapsed_s, status, body = timed_get(client, resolve_url(emu.endpoint, REGULAR_PATH))
    assert status == 200 and body == CONTENT[REGULAR_PATH]
    assert {r.origin for r in emu.requests} == {"hub"}
    assert elapsed_s < 6.0  # half the paced time: generous for a loaded machine, impossible if paced


def test_each_response_has_its_own_budget(emu: HubEmulator) -> None:
    """Sequential requests on one keep-alive connection, and concurrent ones, each take N / R or more."""
    url = resolve_url(emu.endpoint, LFS_PATH)
    n = 600_000
    with httpx2.Client(timeout=30.0, follow_redirects=True) as one:
        for _ in range(2):
            elapsed_s, status, body = timed_get(one, url, f"bytes=0-{n - 1}")
            assert status == 206 and body == CONTENT[LFS_PATH][:n]
            assert elapsed_s >= n / RATE_BYTES_PER_S

    results: dict[int, tuple[float, int, bytes]] = {}

    def worker(offset: int) -> None:
        with httpx2.Client(timeout=30.0, follow_redirects=True) as c:
            results[offset] = timed_get(c, url, f"bytes={offset}-{offset + n - 1}")

    threads = [threading.Thread(target=worker, args=(k * n // 2,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, n // 2, n]
    for offset, (elapsed_s, status, body) in results.items():
        assert status == 206 and body == CONTENT[LFS_PATH][offset : offset + n]
        assert elapsed_s >= n / RATE_BYTES_PER_S


def test_a_rate_changed_while_running_applies_to_later_responses(
    emu: HubEmulator, client: httpx2.Client
) -> None:
    emu.cdn_bytes_per_s = 1_000_000.0
    n = 700_000
    elapsed_s, status, body = timed_get(client, resolve_url(emu.endpoint, LFS_PATH), f"bytes=0-{n - 1}")
    assert status == 206 and body == CONTENT[LFS_PATH][:n]
    assert elapsed_s >= n / 1_000_000.0


def test_pacing_combines_with_a_flipped_byte(emu: HubEmulator, client: httpx2.Client) -> None:
    emu.add_fault(Fault("flip_byte", origin="cdn", after_bytes=1_000_000))
    elapsed_s, status, body = timed_get(client, resolve_url(emu.endpoint, LFS_PATH))
    assert status == 200 and len(body) == LFS_SIZE
    diff = [i for i in range(0, LFS_SIZE, 4) if body[i : i + 4] != CONTENT[LFS_PATH][i : i + 4]]
    assert diff == [1_000_000]
    assert elapsed_s >= LFS_SIZE / RATE_BYTES_PER_S


def test_stop_cuts_a_paced_body_short_promptly(repo_dir: Path) -> None:
    emu = HubEmulator(REPO, lfs_threshold_bytes=10 << 20, cdn_bytes_per_s=50_000.0)  # 30 s for the file
    emu.start()
    got = bytearray()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with (
                httpx2.Client(timeout=30.0, follow_redirects=True) as c,
                c.stream("GET", resolve_url(emu.endpoint, LFS_PATH)) as r,
            ):
                for chunk in r.iter_raw():
                    got.extend(chunk)
        except httpx2.TransportError as exc:
            errors.append(exc)

    try:
        emu.commit(repo_dir)
        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.5)
    finally:
        t0 = time.monotonic()
        emu.stop()
        stop_s = time.monotonic() - t0
    t.join(10)
    assert not t.is_alive()
    assert stop_s < 5.0
    assert 0 < len(got) < LFS_SIZE and errors  # a short body ends in an error, never passes as complete
    assert bytes(got) == CONTENT[LFS_PATH][: len(got)]


async def test_the_daemon_client_reads_exact_bytes_through_a_paced_cdn(emu: HubEmulator) -> None:
    commit = emu.head("main")
    async with HubClient(endpoint=emu.endpoint, repo_id=REPO, token=None, chunk_bytes=64 << 10) as hub:
        await hub.read_range(commit, LFS_PATH, 0, 1)  # resolve first: time the body only
        t0 = time.monotonic()
        data = await hub.read_range(commit, LFS_PATH, 5, LFS_SIZE - 3)
        elapsed_s = time.monotonic() - t0
    assert data == CONTENT[LFS_PATH][5 : LFS_SIZE - 3]
    assert elapsed_s >= (LFS_SIZE - 8) / RATE_BYTES_PER_S
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(CONTENT[LFS_PATH][5:-3]).hexdigest()


def test_invalid_rates_are_refused() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="cdn_bytes_per_s"):
            HubEmulator(REPO, cdn_bytes_per_s=bad)


def test_the_cli_flag_paces_the_cdn(repo_dir: Path) -> None:
    rate = 2_000_000.0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vfs.cli",
            "--log-level",
            "WARNING",
            "hub-emulator",
            "--root",
            str(repo_dir),
            "--lfs-threshold",
            str(10 << 20),
            "--cdn-bytes-per-s",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"hub emulator: HF_ENDPOINT=(http://127\.0\.0\.1:\d+) ", line)
        assert m is not None, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        with httpx2.Client(timeout=30.0, follow_redirects=True) as c:
            elapsed_s, status, body = timed_get(c, resolve_url(m.group(1), LFS_PATH))
        assert status == 200 and body == CONTENT[LFS_PATH]
        assert elapsed_s >= LFS_SIZE / rate
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    bad = subprocess.run(
        [sys.executable, "-m", "vfs.cli", "hub-emulator", "--root", str(repo_dir), "--cdn-bytes-per-s", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 3 and "--cdn-bytes-per-s" in bad.stderr


# --- html_directory_index ----------------------------------------------------------------------------------

SHARD_DIR = LFS_PATH.rsplit("/", 1)[0]


def dir_url(endpoint: str, commit: str, directory: str) -> str:
    return f"{endpoint}/datasets/{REPO}/resolve/{commit}/{directory}"


def test_the_html_index_is_off_by_default(repo_dir: Path) -> None:
    with HubEmulator(REPO) as emu:
        sha = emu.commit(repo_dir)
        r = httpx2.get(dir_url(emu.endpoint, sha, SHARD_DIR + "/"), timeout=10.0)
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"


def test_the_html_index_lists_exactly_a_directorys_children(repo_dir: Path) -> None:
    (repo_dir / SHARD_DIR / "odd name #1.txt").write_bytes(b"x")
    try:
        with HubEmulator(REPO, lfs_threshold_bytes=10 << 20, html_directory_index=True) as emu:
            sha = emu.commit(repo_dir)
            with httpx2.Client(timeout=10.0) as c:
                page = c.get(dir_url(emu.endpoint, sha, SHARD_DIR + "/"))
                root = c.get(dir_url(emu.endpoint, "main", ""))
                head = c.head(dir_url(emu.endpoint, sha, SHARD_DIR + "/"))
                not_a_dir = c.get(dir_url(emu.endpoint, sha, LFS_PATH + "/"))
                missing = c.get(dir_url(emu.endpoint, sha, "no/such/"))
                lfs_file = c.head(dir_url(emu.endpoint, sha, LFS_PATH))
                regular = c.get(dir_url(emu.endpoint, sha, REGULAR_PATH))
    finally:
        (repo_dir / SHARD_DIR / "odd name #1.txt").unlink()
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    hrefs = re.findall(r'<a href="([^"]+)">', page.text)
    assert hrefs == ["0_30_s_academic_v0_1_videos_1.tar.gz", "odd%20name%20%231.txt"]
    assert page.headers["X-Repo-Commit"] == sha
    listed = re.findall(r'<a href="([^"]+)">', root.text)
    assert listed == [".gitattributes", "0_30_s_academic_v0_1/", "annotations/"]
    assert head.status_code == 200 and head.content == b""
    assert not_a_dir.status_code == 404 and missing.status_code == 404
    assert lfs_file.status_code == 302  # files answer as usual
    assert regular.status_code == 200 and regular.content == CONTENT[REGULAR_PATH]


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_rclone_lists_the_directory_and_reads_exact_bytes(emu: HubEmulator) -> None:
    emu.html_directory_index = True
    emu.cdn_bytes_per_s = None
    url = dir_url(emu.endpoint, emu.head("main"), SHARD_DIR + "/")
    base = ["rclone", "--config", "/dev/null", "--http-url", url]
    listing = subprocess.run([*base, "lsjson", ":http:"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    entries = {e["Name"]: e["Size"] for e in json.loads(listing.stdout)}
    assert entries == {"0_30_s_academic_v0_1_videos_1.tar.gz": LFS_SIZE}
    offset, count = 1_000_003, 200_000
    cat = subprocess.run(
        [
            *base,
            "cat",
            "--offset",
            str(offset),
            "--count",
            str(count),
            ":http:0_30_s_academic_v0_1_videos_1.tar.gz",
        ],
        capture_output=True,
        timeout=60,
    )
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == CONTENT[LFS_PATH][offset : offset + count]
    assert emu.request_count(origin="cdn", method="GET") >= 1  # the bytes came from the CDN, via the hub
