"""Fidelity tests of the local Hub emulator (vfs.hub.emulator).

First the unmodified huggingface_hub client (listing with pagination, downloads through the hub and the CDN,
paths-info, dataset info, revisions, its own typed errors), then raw HTTP: Range semantics, HEAD, signed URL
expiry, every fault kind, the request log and counters, keep-alive, a moving branch and the CLI entry point.
Test files hold offset-dependent bytes (each 4-byte big-endian word encodes its own offset plus a salt), so a
misplaced, shifted or flipped byte shows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
import trio
import trio.lowlevel
from huggingface_hub import HfApi, get_async_session, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from huggingface_hub.utils import hf_raise_for_status, parse_ratelimit_headers

from vfs.hub.emulator import Fault, HubEmulator, RequestRecord

REPO = "lmms-lab/LLaVA-Video-178K"
LFS_THRESHOLD_BYTES = 200_000
SIZES = {
    "README.md": 1_000,
    "0_30_s_academic_v0_1/cap.json": 50_000,
    "0_30_s_academic_v0_1/sub/deep.txt": 4_099,
    "0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_1.tar.gz": 20_001,  # LFS by .gitattributes
    "big/blob.dat": 300_003,  # LFS by size
    "big/empty.txt": 0,
}
LFS_PATHS = {"0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_1.tar.gz", "big/blob.dat"}
GITATTRIBUTES = b"*.tar.gz filter=lfs diff=lfs merge=lfs -text\n"
SHARD = "0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_1.tar.gz"


def pattern_bytes(size_bytes: int, salt: int = 0) -> bytes:
    words = (np.arange((size_bytes + 3) // 4, dtype=np.uint64) * 4 + salt) & 0xFFFFFFFF
    return words.astype(">u4").tobytes()[:size_bytes]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_tree(root: Path, salt: int = 0, sizes: dict[str, int] | None = None) -> dict[str, bytes]:
    """Write the test repo under root; returns repo path -> bytes for every file the repo must show."""
    contents: dict[str, bytes] = {".gitattributes": GITATTRIBUTES}
    for rel, size in (sizes or SIZES).items():
        contents[rel] = pattern_bytes(size, salt + len(rel))
    for rel, data in contents.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    # Hidden files and directories are not part of the repo.
    (root / ".cache").mkdir(exist_ok=True)
    (root / ".cache" / "junk.bin").write_bytes(b"junk")
    (root / "big" / ".DS_Store").write_bytes(b"junk")
    return contents


def expected_dirs(files: Iterator[str] | list[str]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("repo")
    return root, write_tree(root)


@pytest.fixture
def emu(tree: tuple[Path, dict[str, bytes]]) -> Iterator[HubEmulator]:
    with HubEmulator(REPO, lfs_threshold_bytes=LFS_THRESHOLD_BYTES, tree_page_size=3) as emulator:
        emulator.commit(tree[0])
        yield emulator


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10.0, follow_redirects=False) as c:
        yield c


def resolve_url(emu: HubEmulator, path: str, revision: str = "main") -> str:
    return hf_hub_url(REPO, path, repo_type="dataset", revision=revision, endpoint=emu.endpoint)


def signed_url(client: httpx2.Client, emu: HubEmulator, path: str) -> str:
    r = client.head(resolve_url(emu, path))
    assert r.status_code == 302, r.status_code
    return r.headers["Location"]


def fetch(
    client: httpx2.Client, url: str, **headers: str
) -> tuple[int, dict[str, str], bytes, Exception | None]:
    """GET url, keeping the status, headers and every body byte received even if the transfer breaks."""
    got = bytearray()
    status, resp_headers = 0, {}
    try:
        with client.stream("GET", url, headers=headers) as r:
            status, resp_headers = r.status_code, dict(r.headers)
            for chunk in r.iter_raw():
                got += chunk
    except httpx2.TransportError as exc:
        return status, resp_headers, bytes(got), exc
    return status, resp_headers, bytes(got), None


def wait_for_records(emu: HubEmulator, count: int, timeout_s: float = 5.0) -> list[RequestRecord]:
    """Records are appended when a response ends; a client can see the end (RST, close) a moment before."""
    deadline = time.monotonic() + timeout_s
    while len(emu.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return emu.requests


# --------------------------------------------------------------------------------------------------
# The unmodified huggingface_hub client
# --------------------------------------------------------------------------------------------------


def test_list_repo_tree_recursive_paginates_and_matches_the_directory(
    emu: HubEmulator, tree: tuple[Path, dict[str, bytes]]
) -> None:
    _, contents = tree
    api = HfApi(endpoint=emu.endpoint, token=False)
    entries = list(api.list_repo_tree(REPO, repo_type="dataset", recursive=True, revision="main"))

    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    assert set(files) == set(contents)  # hidden files skipped, .gitattributes kept
    assert folders == expected_dirs(list(contents))
    for path, data in contents.items():
        entry = files[path]
        assert entry.size == len(data)
        if path in LFS_PATHS:
            assert entry.lfs is not None
            assert entry.lfs.sha256 == hashlib.sha256(data).hexdigest()
            assert entry.lfs.size == len(data)
            oid_line = f"oid sha256:{entry.lfs.sha256}\n"
            pointer = f"version https://git-lfs.github.com/spec/v1\n{oid_line}size {len(data)}\n"
            assert entry.blob_id == git_blob_sha1(pointer.encode())
            assert entry.lfs.pointer_size == len(pointer)
        else:
            assert entry.lfs is None
            assert entry.blob_id == git_blob_sha1(data)
        assert getattr(entry, "xet_hash", None) is None

    pages = [r for r in emu.requests if "/tree/" in r.path]
    assert len(pages) == math.ceil(len(entries) / 3) > 2  # every Link rel=next was followed
    assert {r.status for r in pages} == {200}


def test_list_repo_tree_sub_path_non_recursive_and_missing(emu: HubEmulator, client: httpx2.Client) -> None:
    api = HfApi(endpoint=emu.endpoint, token=False)
    sub = [
        e.path
        for e in api.list_repo_tree(REPO, "0_30_s_academic_v0_1/sub", repo_type="dataset", recursive=True)
    ]
    assert sub == ["0_30_s_academic_v0_1/sub/deep.txt"]
    top = [e.path for e in api.list_repo_tree(REPO, repo_type="dataset")]
    assert sorted(top) == sorted([".gitattributes", "README.md", "0_30_s_academic_v0_1", "big"])
    academic = {
        e.path for e in api.list_repo_tree(REPO, "0_30_s_academic_v0_1", repo_type="dataset", recursive=True)
    }
    assert academic == {p for p in SIZES if p.startswith("0_30_s_academic_v0_1/")} | {
        "0_30_s_academic_v0_1/sub"
    }

    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "no/such/dir", repo_type="dataset"))
    with pytest.raises(EntryNotFoundError):  # a file is not a directory to list
        list(api.list_repo_tree(REPO, "README.md", repo_type="dataset"))

    # The sub-path arrives as one %2F-encoded segment; the Link is absolute, on the hub origin.
    r = client.get(f"{emu.endpoint}/api/datasets/{REPO}/tree/main/0_30_s_academic_v0_1%2Fsub")
    assert [e["path"] for e in r.json()] == ["0_30_s_academic_v0_1/sub/deep.txt"]
    r = client.get(f"{emu.endpoint}/api/datasets/{REPO}/tree/main", params={"recursive": "true"})
    assert r.headers["Link"].startswith(f"<{emu.endpoint}/api/datasets/{REPO}/tree/main?")
    assert r.headers["Link"].endswith('>; rel="next"')
    missing = client.get(f"{emu.endpoint}/api/datasets/{REPO}/tree/main/nope")
    assert missing.status_code == 404
    assert missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == emu.head("main")


def test_expand_reports_the_last_commit_per_path(tmp_path: Path) -> None:
    write_tree(tmp_path)
    with HubEmulator(REPO, lfs_threshold_bytes=LFS_THRESHOLD_BYTES, tree_page_size=4) as emu:
        first = emu.commit(tmp_path, message="first")
        (tmp_path / "README.md").write_bytes(b"changed readme")
        second = emu.commit(tmp_path, message="second")
        api = HfApi(endpoint=emu.endpoint, token=False)
        entries = {
            e.path: e for e in api.list_repo_tree(REPO, repo_type="dataset", recursive=True, expand=True)
        }
    last = {path: (c.oid, c.title) for path, entry in entries.items() if (c := entry.last_commit) is not None}
    assert set(last) == set(entries)
    assert last.pop("README.md") == (second, "second")
    assert set(last.values()) == {(first, "first")}  # every other file and folder is unchanged


def test_hf_hub_download_regular_and_lfs(
    emu: HubEmulator, tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    _, contents = tree
    for path in ("0_30_s_academic_v0_1/cap.json", SHARD, "big/blob.dat", "big/empty.txt"):
        local = hf_hub_download(
            REPO, path, repo_type="dataset", endpoint=emu.endpoint, cache_dir=tmp_path, token=False
        )
        assert Path(local).read_bytes() == contents[path], path

    # Regular files come from the hub itself; LFS files through a 302 to the CDN.
    assert emu.request_count(origin="hub", file="0_30_s_academic_v0_1/cap.json", method="GET") == 1
    assert emu.request_count(origin="cdn", file="0_30_s_academic_v0_1/cap.json") == 0
    for path in LFS_PATHS:
        heads = [r for r in emu.requests if r.file == path and r.origin == "hub"]
        assert [r.status for r in heads] == [302]
        assert emu.request_count(origin="cdn", file=path, method="GET") == 1
        assert emu.bytes_sent(origin="cdn", file=path) == len(contents[path])

    meta = get_hf_file_metadata(resolve_url(emu, SHARD), token=False)
    assert meta.etag == hashlib.sha256(contents[SHARD]).hexdigest()
    assert meta.size == len(contents[SHARD])
    assert meta.commit_hash == emu.head()
    assert meta.location.startswith(emu.cdn_endpoint + "/")
    assert meta.xet_file_data is None
    meta = get_hf_file_metadata(resolve_url(emu, "README.md"), token=False)
    assert meta.etag == git_blob_sha1(contents["README.md"])
    assert meta.size == len(contents["README.md"])


def test_get_paths_info(emu: HubEmulator, tree: tuple[Path, dict[str, bytes]]) -> None:
    _, contents = tree
    api = HfApi(endpoint=emu.endpoint, token=False)
    infos = api.get_paths_info(REPO, ["README.md", "big", "missing.json", SHARD, "big/"], repo_type="dataset")
    assert [i.path for i in infos] == ["README.md", "big", SHARD]  # missing omitted, duplicates once
    readme, big, shard = infos
    assert isinstance(readme, RepoFile) and readme.lfs is None and readme.size == 1_000
    assert isinstance(big, RepoFolder)
    assert (
        isinstance(shard, RepoFile)
        and shard.lfs is not None
        and shard.lfs.sha256 == hashlib.sha256(contents[SHARD]).hexdigest()
    )
    expanded = api.get_paths_info(REPO, ["README.md"], repo_type="dataset", expand=True)
    assert expanded[0].last_commit is not None and expanded[0].last_commit.oid == emu.head()


def test_dataset_info(emu: HubEmulator, tree: tuple[Path, dict[str, bytes]]) -> None:
    _, contents = tree
    api = HfApi(endpoint=emu.endpoint, token=False)
    info = api.dataset_info(REPO)
    assert info.id == REPO
    assert info.sha == emu.head("main") == emu.commits[-1]
    assert info.private is False and info.gated is False
    assert info.siblings is not None
    assert sorted(s.rfilename for s in info.siblings) == sorted(contents)
    detailed = api.dataset_info(REPO, revision=emu.head(), files_metadata=True)
    assert detailed.siblings is not None
    by_name = {s.rfilename: s for s in detailed.siblings}
    assert by_name["big/blob.dat"].size == SIZES["big/blob.dat"]
    assert by_name["big/blob.dat"].lfs is not None
    assert by_name["README.md"].lfs is None
    assert by_name["README.md"].blob_id == git_blob_sha1(contents["README.md"])


def test_revisions_by_branch_tag_sha_and_pr_ref(tmp_path: Path) -> None:
    v1_root, v2_root, pr_root = tmp_path / "v1", tmp_path / "v2", tmp_path / "pr"
    v1 = write_tree(v1_root, salt=1)
    v2 = write_tree(v2_root, salt=2)
    pr = write_tree(pr_root, salt=3)
    with HubEmulator(REPO, lfs_threshold_bytes=LFS_THRESHOLD_BYTES) as emu:
        sha1 = emu.commit(v1_root, tags=["v1.0"])
        sha2 = emu.commit(v2_root)
        sha_pr = emu.commit(pr_root, branch="refs/pr/1")
        assert emu.commits == [sha1, sha2, sha_pr]
        assert len({sha1, sha2, sha_pr}) == 3 and all(re.fullmatch(r"[0-9a-f]{40}", s) for s in emu.commits)
        api = HfApi(endpoint=emu.endpoint, token=False)
        cases = [
            ("main", sha2, v2),
            ("v1.0", sha1, v1),
            (sha1, sha1, v1),
            (sha2, sha2, v2),
            ("refs/pr/1", sha_pr, pr),
        ]
        for n, (revision, sha, contents) in enumerate(cases):
            assert api.dataset_info(REPO, revision=revision).sha == sha
            for path in ("README.md", "big/blob.dat"):
                local = hf_hub_download(
                    REPO,
                    path,
                    repo_type="dataset",
                    revision=revision,
                    endpoint=emu.endpoint,
                    cache_dir=tmp_path / f"cache{n}",
                    token=False,
                )
                assert Path(local).read_bytes() == contents[path], (revision, path)
        listed = {
            e.path
            for e in api.list_repo_tree(REPO, repo_type="dataset", revision="refs/pr/1", recursive=True)
        }
        assert "big/blob.dat" in listed
        refs = api.list_repo_refs(REPO, repo_type="dataset", include_pull_requests=True)
        assert [(b.name, b.target_commit) for b in refs.branches] == [("main", sha2)]
        assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", sha1)]
        assert refs.pull_requests is not None
        assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", sha_pr)]
        # The revision travels as one percent-encoded path segment.
        assert any("/resolve/refs%2Fpr%2F1/README.md" in r.path for r in emu.requests)
        assert any(r.path.endswith("/revision/refs%2Fpr%2F1") for r in emu.requests)


def test_errors_are_mapped_by_huggingface_hub(emu: HubEmulator, tmp_path: Path) -> None:
    api = HfApi(endpoint=emu.endpoint, token=False)

    calls = iter(range(1000))

    def download(path: str = "README.md", **kwargs: Any) -> str:
        # A fresh cache each time: with a cached copy, a failed HEAD falls back to the cache.
        kwargs.setdefault("token", False)
        kwargs.setdefault("repo_id", REPO)
        cache_dir = tmp_path / f"cache{next(calls)}"
        return hf_hub_download(
            filename=path, repo_type="dataset", endpoint=emu.endpoint, cache_dir=cache_dir, **kwargs
        )

    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        download(revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        download(revision="0" * 40)
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("lmms-lab/no-such-repo")
    with pytest.raises(RepositoryNotFoundError):
        download(repo_id="lmms-lab/no-such-repo")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=emu.endpoint, token="hf_any").dataset_info("lmms-lab/no-such-repo")
    with pytest.raises(RemoteEntryNotFoundError):
        download("no/such/file.json")

    # Gated, approving any token ("auto"): metadata stays public, downloads need a token.
    emu.gated = True
    assert api.dataset_info(REPO).gated == "auto"
    with pytest.raises(GatedRepoError) as gated_401:
        download()
    assert gated_401.value.response.status_code == 401
    assert Path(download(token="hf_anyone")).read_bytes()[:4] == pattern_bytes(4, len("README.md"))

    # Gated with manual approval: only the approved token downloads.
    emu.required_token = "hf_approved"
    with pytest.raises(GatedRepoError) as gated_403:
        download(token="hf_not_approved")
    assert gated_403.value.response.status_code == 403
    download(token="hf_approved")

    # Private: no token and a wrong token both look like a missing repo; the right one works.
    emu.gated = False
    with pytest.raises(RepositoryNotFoundError) as private_401:
        api.dataset_info(REPO)
    assert private_401.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as private_404:
        HfApi(endpoint=emu.endpoint, token="hf_wrong").dataset_info(REPO)
    assert private_404.value.response.status_code == 404
    assert HfApi(endpoint=emu.endpoint, token="hf_approved").dataset_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError):
        list(api.list_repo_tree(REPO, repo_type="dataset"))

    emu.required_token = None
    assert api.dataset_info(REPO).private is False


def test_hf_raise_for_status_on_raw_responses(emu: HubEmulator, client: httpx2.Client) -> None:
    def raised(url: str, **headers: str) -> tuple[type[Exception], httpx2.Response]:
        r = client.get(url, headers=headers)
        with pytest.raises(HfHubHTTPError) as info:
            hf_raise_for_status(r)
        return type(info.value), r

    kind, r = raised(resolve_url(emu, "README.md", revision="nope"))
    assert kind is RevisionNotFoundError and r.headers["X-Error-Code"] == "RevisionNotFound"
    kind, r = raised(resolve_url(emu, "nope.txt"))
    assert kind is RemoteEntryNotFoundError and r.headers["X-Repo-Commit"] == emu.head()
    kind, r = raised(f"{emu.endpoint}/datasets/lmms-lab/other/resolve/main/README.md")
    assert (
        kind is RepositoryNotFoundError
        and r.status_code == 401
        and r.headers["X-Error-Code"] == "RepoNotFound"
    )
    kind, r = raised(f"{emu.endpoint}/api/models/{REPO}", Authorization="Bearer hf_x")
    assert kind is RepositoryNotFoundError and r.status_code == 404
    kind, r = raised(resolve_url(emu, "README.md"), Range="bytes=5000-")
    assert r.status_code == 416 and kind is HfHubHTTPError
    emu.gated = True
    kind, r = raised(resolve_url(emu, "README.md"))
    assert kind is GatedRepoError and r.status_code == 401
    # Unknown endpoints (the client probes some) are a plain 404.
    assert client.get(f"{emu.endpoint}/api/agent-harnesses").status_code == 404


async def test_async_session_streams_a_range_and_drops_auth_on_the_cdn_hop(
    emu: HubEmulator, tree: tuple[Path, dict[str, bytes]]
) -> None:
    _, contents = tree
    async with get_async_session() as session:
        r = await session.get(
            resolve_url(emu, "big/blob.dat"),
            headers={
                "Authorization": "Bearer hf_token",
                "Range": "bytes=1000-1999",
                "Accept-Encoding": "identity",
            },
            timeout=10.0,
        )
    assert r.status_code == 206
    assert r.content == contents["big/blob.dat"][1000:2000]
    await trio.lowlevel.checkpoint()
    hub, cdn = emu.requests
    assert (hub.origin, hub.status, hub.auth) == ("hub", 302, True)
    assert (cdn.origin, cdn.status, cdn.auth, cdn.range) == ("cdn", 206, False, "bytes=1000-1999")


# --------------------------------------------------------------------------------------------------
# Raw HTTP: Range, HEAD, headers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["0_30_s_academic_v0_1/cap.json", "big/blob.dat"], ids=["hub-regular", "cdn-lfs"]
)
def test_range_semantics_and_head(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]], path: str
) -> None:
    data = tree[1][path]
    size = len(data)
    url = signed_url(client, emu, path) if path in LFS_PATHS else resolve_url(emu, path)
    cases = {
        "bytes=100-199": (100, 199),
        "bytes=0-0": (0, 0),
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=-77": (size - 77, size - 1),
        f"bytes=-{size * 2}": (0, size - 1),  # a suffix longer than the file is the whole file
        f"bytes=5-{size + 1000}": (5, size - 1),  # the end is clamped
    }
    for header, (first, last) in cases.items():
        r = client.get(url, headers={"Range": header, "Accept-Encoding": "gzip, deflate"})
        assert r.status_code == 206, header
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}", header
        assert int(r.headers["Content-Length"]) == last - first + 1
        assert r.content == data[first : last + 1], header
        assert "Content-Encoding" not in r.headers

    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["Content-Range"] == f"bytes */{size}"
    for header in ("bytes=10-5", "items=0-5", "bytes=0-1,5-9"):  # invalid or multi-range: ignored (RFC 9110)
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 200 and r.content == data, header

    full = client.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["Accept-Ranges"] == "bytes"
    expected_etag = hashlib.sha256(data).hexdigest() if path in LFS_PATHS else git_blob_sha1(data)
    assert full.headers["ETag"] == f'"{expected_etag}"'
    for range_header in (None, "bytes=10-20"):
        headers = {"Range": range_header} if range_header else {}
        got, head = client.get(url, headers=headers), client.head(url, headers=headers)
        assert head.status_code == got.status_code and head.content == b""
        for name in (
            "Content-Length",
            "Content-Range",
            "ETag",
            "Accept-Ranges",
            "X-Repo-Commit",
            "Content-Type",
        ):
            assert head.headers.get(name) == got.headers.get(name), name
    for r in (full, client.head(resolve_url(emu, path))):
        assert not any(k.lower().startswith("x-xet") for k in r.headers)
        assert "xet" not in r.headers.get("Link", "")
        assert "Content-Encoding" not in r.headers


def test_empty_file_and_lfs_redirect_headers(emu: HubEmulator, client: httpx2.Client) -> None:
    url = resolve_url(emu, "big/empty.txt")
    assert client.get(url).content == b""
    r = client.get(url, headers={"Range": "bytes=0-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */0"

    r = client.head(resolve_url(emu, "big/blob.dat"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 302
    assert r.headers["X-Linked-Size"] == str(SIZES["big/blob.dat"])
    assert re.fullmatch(r'"[0-9a-f]{64}"', r.headers["X-Linked-Etag"])
    assert r.headers["X-Repo-Commit"] == emu.head()
    location = httpx2.URL(r.headers["Location"])
    assert f"http://{location.host}:{location.port}" == emu.cdn_endpoint != emu.endpoint
    assert {"Expires", "Signature"} <= set(location.params.keys())
    assert re.fullmatch(r"\d+", location.params["Expires"])
    assert int(location.params["Expires"]) >= time.time() + 3500


def test_signed_url_expires_and_is_checked(emu: HubEmulator, client: httpx2.Client) -> None:
    emu.signed_url_ttl_s = 0.2
    url = signed_url(client, emu, SHARD)
    assert (
        client.get(url, headers={"Range": "bytes=0-9", "Authorization": "Bearer ignored"}).status_code == 206
    )
    time.sleep(0.3)
    expired = client.get(url, headers={"Range": "bytes=0-9"})
    assert expired.status_code == 403 and b"expired" in expired.content
    emu.signed_url_ttl_s = 3600.0
    fresh = signed_url(client, emu, SHARD)
    assert client.get(fresh, headers={"Range": "bytes=0-9"}).status_code == 206

    u = httpx2.URL(fresh)
    assert client.get(u.copy_set_param("Signature", "0" * 64)).status_code == 403
    assert client.get(u.copy_set_param("Expires", str(int(u.params["Expires"]) + 10))).status_code == 403
    assert client.get(u.copy_remove_param("Signature")).status_code == 403
    other_object = str(u).replace(u.path.rsplit("/", 1)[1], "f" * 64)
    assert client.get(other_object).status_code == 403  # a signature is bound to its object
    assert [r.status for r in emu.requests if r.origin == "cdn"] == [206, 403, 206, 403, 403, 403, 403]
    assert all(r.file == SHARD for r in emu.requests[:3])


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------

CAP = "0_30_s_academic_v0_1/cap.json"


def test_fault_status_fires_count_times_on_the_matching_file(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]
) -> None:
    fault = emu.add_fault(Fault("status", status=502, file_glob="*.json", count=2))
    assert client.get(resolve_url(emu, "README.md")).status_code == 200  # other file: no match
    assert [client.get(resolve_url(emu, CAP)).status_code for _ in range(3)] == [502, 502, 200]
    assert fault.fired == 2
    assert [r.fault for r in emu.requests] == [None, "status", "status", None]
    emu.add_fault(Fault("status", status=500))
    with pytest.raises(HfHubHTTPError) as info:
        hf_raise_for_status(client.get(resolve_url(emu, CAP)))
    assert info.value.response.status_code == 500


def test_fault_rate_limit(emu: HubEmulator, client: httpx2.Client) -> None:
    emu.add_fault(Fault("rate_limit", origin="hub", retry_after_s=2.0))
    r = client.head(resolve_url(emu, SHARD))
    assert r.status_code == 429
    assert r.headers["RateLimit"] == '"resolvers";r=0;t=2'
    assert r.headers["Retry-After"] == "2"
    info = parse_ratelimit_headers(r.headers)
    assert info is not None and info.remaining == 0 and info.reset_in_seconds == 2
    assert info.resource_type == "resolvers"
    assert client.head(resolve_url(emu, SHARD)).status_code == 302
    # A sub-second wait keeps its fraction (tests stay fast), for clients that read one.
    emu.add_fault(Fault("rate_limit", origin="cdn", retry_after_s=0.25))
    r = client.get(signed_url(client, emu, SHARD))
    assert (r.status_code, r.headers["RateLimit"], r.headers["Retry-After"]) == (
        429,
        '"resolvers";r=0;t=0.25',
        "0.25",
    )


def test_fault_delay(emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]) -> None:
    emu.add_fault(Fault("delay", delay_s=0.3, method="GET"))
    started = time.monotonic()
    r = client.get(resolve_url(emu, CAP))
    assert time.monotonic() - started >= 0.3
    assert r.status_code == 200 and r.content == tree[1][CAP]


def test_fault_stall(emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]) -> None:
    emu.add_fault(Fault("stall", after_bytes=1000, delay_s=0.3))
    started = time.monotonic()
    status, headers, body, error = fetch(client, resolve_url(emu, CAP))
    assert time.monotonic() - started >= 0.3
    assert status == 200 and int(headers["content-length"]) == SIZES[CAP]
    assert body == tree[1][CAP][:1000]
    assert isinstance(error, httpx2.RemoteProtocolError)
    assert wait_for_records(emu, 1)[0].bytes_sent == 1000


def test_fault_trickle(emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]) -> None:
    emu.add_fault(Fault("trickle", after_bytes=10_000, delay_s=0.03))
    started = time.monotonic()
    status, _, body, error = fetch(client, resolve_url(emu, CAP))
    assert time.monotonic() - started >= 4 * 0.03  # 5 pieces, 4 pauses
    assert (status, body, error) == (200, tree[1][CAP], None)


def test_fault_truncate(emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]) -> None:
    emu.add_fault(Fault("truncate", origin="cdn", after_bytes=4321))
    status, headers, body, error = fetch(client, signed_url(client, emu, SHARD), Range="bytes=100-")
    assert status == 206 and int(headers["content-length"]) == SIZES[SHARD] - 100
    assert body == tree[1][SHARD][100 : 100 + 4321]
    assert isinstance(error, httpx2.RemoteProtocolError)
    # A truncated transfer closes the connection; the next request works on a new one.
    assert client.get(resolve_url(emu, "README.md")).status_code == 200


@pytest.mark.parametrize("after_bytes", [0, 3000])
def test_fault_reset(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]], after_bytes: int
) -> None:
    fault = emu.add_fault(Fault("reset", after_bytes=after_bytes, file_glob=CAP))
    status, _, body, error = fetch(client, resolve_url(emu, CAP))
    assert error is not None
    assert fault.fired == 1
    record = wait_for_records(emu, 1)[0]
    if after_bytes == 0:
        assert status == 0 and body == b""
        assert (record.status, record.bytes_sent, record.fault) == (0, 0, "reset")
    else:
        assert tree[1][CAP].startswith(body) and len(body) <= after_bytes  # an RST may drop unread bytes
        assert (record.status, record.bytes_sent) == (200, after_bytes)
    assert client.get(resolve_url(emu, CAP)).content == tree[1][CAP]


def test_fault_ignore_range(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]
) -> None:
    fault = emu.add_fault(Fault("ignore_range"))
    assert client.get(resolve_url(emu, CAP)).status_code == 200  # no Range: the fault does not apply
    assert fault.fired == 0
    r = client.get(resolve_url(emu, CAP), headers={"Range": "bytes=10-19"})
    assert r.status_code == 200 and r.content == tree[1][CAP] and "Content-Range" not in r.headers
    assert fault.fired == 1


@pytest.mark.parametrize("asked", [(10, 19), (SIZES[CAP] - 10, SIZES[CAP] - 1), (0, SIZES[CAP] - 1)])
def test_fault_wrong_range(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]], asked: tuple[int, int]
) -> None:
    data = tree[1][CAP]
    emu.add_fault(Fault("wrong_range"))
    r = client.get(resolve_url(emu, CAP), headers={"Range": f"bytes={asked[0]}-{asked[1]}"})
    assert r.status_code == 206
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers["Content-Range"])
    assert m is not None
    first, last, total = map(int, m.groups())
    assert (first, last, total) != (asked[0], asked[1], len(data))
    assert len(r.content) == last - first + 1 == asked[1] - asked[0] + 1
    assert r.content == data[first : last + 1]  # the body matches the header, not the request
    assert r.content != data[asked[0] : asked[1] + 1] or total != len(data)


def test_fault_flip_byte(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]
) -> None:
    data = tree[1][SHARD]
    emu.add_fault(Fault("flip_byte", origin="cdn", after_bytes=777))
    r = client.get(signed_url(client, emu, SHARD), headers={"Range": "bytes=1000-2999"})
    assert r.status_code == 206 and len(r.content) == 2000
    diffs = [i for i, (a, b) in enumerate(zip(r.content, data[1000:3000], strict=True)) if a != b]
    assert diffs == [777]
    assert r.content[777] == data[1777] ^ 0xFF


def test_fault_expire_url(emu: HubEmulator, client: httpx2.Client) -> None:
    fault = emu.add_fault(Fault("expire_url"))
    assert client.head(resolve_url(emu, SHARD)).status_code == 302  # never fires on the hub
    url = signed_url(client, emu, SHARD)
    assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 403
    assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206
    assert fault.fired == 1


def test_fault_matching_by_origin_method_and_count(emu: HubEmulator, client: httpx2.Client) -> None:
    cdn_only = emu.add_fault(Fault("status", origin="cdn", status=503, count=None))
    head_only = emu.add_fault(Fault("status", origin="hub", method="HEAD", status=504, file_glob="big/*"))
    assert client.get(resolve_url(emu, "big/empty.txt")).status_code == 200
    assert client.head(resolve_url(emu, "big/empty.txt")).status_code == 504
    assert client.head(resolve_url(emu, "big/empty.txt")).status_code == 200  # count=1 spent
    url = signed_url(client, emu, SHARD)
    assert [client.get(url).status_code for _ in range(3)] == [503, 503, 503]
    assert (cdn_only.fired, head_only.fired) == (3, 1)
    # A body fault is not spent on a request without a body (HEAD, a 302).
    body_fault = emu.add_fault(Fault("truncate", origin="hub", after_bytes=10))
    client.head(resolve_url(emu, "README.md"))
    client.head(resolve_url(emu, SHARD))
    assert body_fault.fired == 0
    emu.clear_faults()
    assert client.get(url).status_code == 200

    with pytest.raises(ValueError):
        Fault("no_such_kind")
    with pytest.raises(ValueError):
        Fault("status", origin="edge")


def test_fault_probability_is_seeded(tree: tuple[Path, dict[str, bytes]]) -> None:
    def pattern(seed: int) -> list[int]:
        with HubEmulator(REPO, seed=seed) as emu, httpx2.Client(timeout=10.0) as c:
            emu.commit(tree[0])
            fault = emu.add_fault(Fault("status", status=500, count=None, probability=0.5))
            statuses = [c.get(resolve_url(emu, "README.md")).status_code for _ in range(30)]
            assert fault.fired == statuses.count(500)
            return statuses

    first = pattern(7)
    assert 0 < first.count(500) < 30
    assert pattern(7) == first
    assert pattern(8) != first


def test_client_hang_ups_are_not_errors(emu: HubEmulator) -> None:
    ports = _ports(emu)
    """A client that resets an idle keep-alive connection, or abandons a body mid-transfer, is routine: the
    log contract (no WARNING+ from vfs loggers) fails this test if the emulator reports either as an error."""

    def hang_up(endpoint: str, target: str, *, read_all: bool) -> None:
        host, port = endpoint.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            got = sock.recv(100)
            if read_all:  # the whole response, so the server is back waiting for the next request
                while b"\r\n\r\n" not in got:
                    got += sock.recv(4096)
                head, _, body = got.partition(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                while len(body) < length:
                    body += sock.recv(4096)
                time.sleep(0.1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    def handler_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.name.startswith("hub-emulator-") and t.name.endswith("-conn") and _owned_by(ports, t)
        ]

    hang_up(emu.endpoint, f"/datasets/{REPO}/resolve/main/README.md", read_all=True)
    url = httpx2.head(resolve_url(emu, "big/blob.dat"), timeout=10.0).headers["Location"]
    hang_up(emu.cdn_endpoint, url.removeprefix(emu.cdn_endpoint), read_all=False)
    deadline = time.monotonic() + 5.0
    while handler_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not handler_threads()
    assert [(r.origin, r.status) for r in emu.requests] == [("hub", 200), ("hub", 302), ("cdn", 200)]


def test_stop_ends_stalled_requests_promptly(emu: HubEmulator, client: httpx2.Client) -> None:
    ports = _ports(emu)
    emu.add_fault(Fault("stall", after_bytes=10, delay_s=60.0))
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(fetch(client, resolve_url(emu, CAP))))
    reader.start()
    while not any(
        t.name.startswith("hub-emulator-hub-") and t.name.endswith("-conn") and _owned_by(ports, t)
        for t in threading.enumerate()
    ):
        time.sleep(0.01)
    time.sleep(0.1)
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 3.0
    reader.join(5.0)
    assert not reader.is_alive()
    assert result[0][3] is not None  # the stalled reader saw the connection end
    assert not [t for t in threading.enumerate() if t.name.startswith("hub-emulator") and _owned_by(ports, t)]


def _ports(emu: HubEmulator) -> set[str]:
    return {emu.endpoint.rsplit(":", 1)[1], emu.cdn_endpoint.rsplit(":", 1)[1]}


def _owned_by(ports: set[str], thread: threading.Thread) -> bool:
    """Whether a thread serves the emulator on these ports (other emulators may run in this process)."""
    return any(f"-{port}-" in thread.name or thread.name.endswith(f"-{port}") for port in ports)


# --------------------------------------------------------------------------------------------------
# Log, counters, keep-alive, moving branches, commits
# --------------------------------------------------------------------------------------------------


def test_request_log_counters_and_log_lines(
    emu: HubEmulator, client: httpx2.Client, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hf_SuperSecretToken123"
    url = signed_url(client, emu, "big/blob.dat")
    client.get(url, headers={"Range": "bytes=0-999"})
    client.get(url, headers={"Range": "bytes=1000-1499", "Authorization": f"Bearer {secret}"})
    client.get(resolve_url(emu, "README.md"), headers={"Authorization": f"Bearer {secret}"})
    emu.add_fault(Fault("status", status=503))
    client.get(resolve_url(emu, CAP))

    records = emu.requests
    assert [(r.origin, r.method, r.status) for r in records] == [
        ("hub", "HEAD", 302),
        ("cdn", "GET", 206),
        ("cdn", "GET", 206),
        ("hub", "GET", 200),
        ("hub", "GET", 503),
    ]
    assert [r.auth for r in records] == [False, False, True, True, False]
    assert records[1].range == "bytes=0-999" and records[1].file == "big/blob.dat"
    assert records[4].fault == "status"
    assert emu.bytes_sent(origin="cdn", file="big/blob.dat") == 1500
    assert emu.bytes_sent(file="README.md") == 1000
    assert emu.bytes_sent(origin="hub", file="big/blob.dat") == 0
    assert emu.request_count(origin="cdn") == 2
    assert emu.request_count(method="HEAD") == 1
    assert emu.request_count(file="big/blob.dat", origin="hub") == 1

    def per_request_lines() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "vfs.hub.emulator"]
        return [line for line in lines if re.match(r"(hub|cdn) (GET|HEAD|POST) /", line)]

    deadline = time.monotonic() + 5.0  # a request's line is logged when its handler is done, just after
    while len(per_request_lines()) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    per_request = per_request_lines()
    assert len(per_request) == 5
    assert (
        "range=bytes=0-999" in per_request[1]
        and "status=206" in per_request[1]
        and "bytes=1000" in per_request[1]
    )
    assert "auth=True" in per_request[2]
    assert any(r.levelno == logging.INFO and "fault status fired" in r.getMessage() for r in caplog.records)
    every_text = caplog.text + repr(records)
    assert secret not in every_text
    assert httpx2.URL(url).params["Signature"] not in every_text  # signed URLs are credentials too

    emu.reset_log()
    assert emu.requests == [] and emu.bytes_sent() == 0 and emu.request_count() == 0


def test_keep_alive_and_no_nagle_delay(emu: HubEmulator, client: httpx2.Client) -> None:
    url = resolve_url(emu, "README.md")
    client.get(url)
    started = time.monotonic()
    for _ in range(30):
        assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206
    elapsed_s = time.monotonic() - started
    assert emu.connections_accepted == 1  # one keep-alive connection for all 31 requests
    assert elapsed_s < 0.9, elapsed_s  # ~40 ms per request if Nagle and delayed ACKs met


def test_moving_branch(tmp_path: Path, client: httpx2.Client) -> None:
    old, new = write_tree(tmp_path / "old", salt=10), write_tree(tmp_path / "new", salt=20)
    with HubEmulator(REPO, lfs_threshold_bytes=LFS_THRESHOLD_BYTES) as emu:
        sha_old = emu.commit(tmp_path / "old")
        url = resolve_url(emu, "README.md")
        assert client.get(url).headers["X-Repo-Commit"] == sha_old
        sha_new = emu.commit(tmp_path / "new")
        r = client.get(url)
        assert r.headers["X-Repo-Commit"] == sha_new and r.content == new["README.md"]
        # A pinned sha keeps answering the same bytes while the branch moves.
        pinned = resolve_url(emu, "README.md", revision=sha_old)
        assert client.get(pinned).content == old["README.md"]
        emu.move_branch("main", sha_old)
        assert client.get(url).content == old["README.md"]
        assert HfApi(endpoint=emu.endpoint, token=False).dataset_info(REPO).sha == sha_old
        assert emu.commits == [sha_old, sha_new]
        with pytest.raises(ValueError):
            emu.move_branch("main", "f" * 40)
        # A commit's sha derives from its tree and parent: the same tree on the same parent is the same
        # commit, on another parent a new one, with identical file identities.
        assert emu.commit(tmp_path / "new") == sha_new
        again = emu.commit(tmp_path / "new")
        assert again not in (sha_old, sha_new)
        assert emu.commits == [sha_old, sha_new, again]
        assert client.get(url).headers["ETag"] == r.headers["ETag"]


def test_commit_rules_gitattributes_and_hidden_files(tmp_path: Path) -> None:
    files = {
        ".gitattributes": (
            b"# comment\n"
            b"*.tar.gz filter=lfs diff=lfs merge=lfs -text\n"
            b"data/**/*.json filter=lfs\n"
            b"keep.tar.gz -filter\n"
            b"/top.bin filter=lfs\n"
        ),
        "a.tar.gz": b"x" * 10,
        "sub/b.tar.gz": b"x" * 10,
        "sub/keep.tar.gz": b"x" * 10,
        "data/x/y/z.json": b"{}",
        "data/z.json": b"{}",
        "other/z.json": b"{}",
        "top.bin": b"1",
        "sub/top.bin": b"1",
        "large.txt": b"y" * 2_000,
        ".hidden.txt": b"no",
        "sub/.env": b"no",
        ".git/config": b"no",
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    os.symlink(tmp_path / "a.tar.gz", tmp_path / "sub" / "link.tar.gz")
    with HubEmulator(REPO, lfs_threshold_bytes=1_000) as emu:
        emu.commit(tmp_path)
        api = HfApi(endpoint=emu.endpoint, token=False)
        entries = {e.path: e for e in api.list_repo_tree(REPO, repo_type="dataset", recursive=True)}
    lfs = {p for p, e in entries.items() if getattr(e, "lfs", None) is not None}
    assert lfs == {
        "a.tar.gz",
        "sub/b.tar.gz",
        "sub/link.tar.gz",
        "data/x/y/z.json",
        "data/z.json",
        "top.bin",
        "large.txt",
    }
    assert not any((p.startswith(".") and p != ".gitattributes") or "/." in p for p in entries)
    assert ".gitattributes" in entries

    with pytest.raises(NotADirectoryError), HubEmulator(REPO) as emu:
        emu.commit(tmp_path / "missing")


def test_serve_forever_prints_one_line_and_stops_on_sigterm(tree: tuple[Path, dict[str, bytes]]) -> None:
    code = (
        "import sys; from pathlib import Path; from vfs.hub.emulator import serve_forever; "
        f"serve_forever(Path(sys.argv[1]), {REPO!r}, port=0, cdn_port=0, "
        f"lfs_threshold_bytes={LFS_THRESHOLD_BYTES})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tree[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(
            rf"hub emulator: HF_ENDPOINT=(http://127\.0\.0\.1:\d+) repo={re.escape(REPO)} "
            r"commit=([0-9a-f]{40})\n",
            line,
        )
        assert m is not None, line
        info = httpx2.get(f"{m.group(1)}/api/datasets/{REPO}", timeout=10.0).json()
        assert info["sha"] == m.group(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_ranges_beyond_4_gib_in_a_sparse_file(tmp_path: Path, client: httpx2.Client) -> None:
    size = 4 * 2**30 + 12_345
    tail = pattern_bytes(8_192, salt=99)
    with open(tmp_path / "huge.bin", "wb") as f:
        f.truncate(size - len(tail))
        f.seek(size - len(tail))
        f.write(tail)
    with HubEmulator(REPO, lfs_threshold_bytes=LFS_THRESHOLD_BYTES) as emu:
        emu.commit(tmp_path)
        url = signed_url(client, emu, "huge.bin")
        r = client.get(url, headers={"Range": f"bytes={size - 5000}-"})
        assert r.status_code == 206 and r.content == tail[-5000:]
        assert r.headers["Content-Range"] == f"bytes {size - 5000}-{size - 1}/{size}"
        r = client.get(url, headers={"Range": "bytes=-3"})
        assert r.content == tail[-3:]


def test_random_ranges_match_the_file(
    emu: HubEmulator, client: httpx2.Client, tree: tuple[Path, dict[str, bytes]]
) -> None:
    rng = random.Random(1234)
    data = tree[1]["big/blob.dat"]
    url = signed_url(client, emu, "big/blob.dat")
    for _ in range(40):
        first = rng.randrange(len(data))
        last = first + rng.randrange(1, 70_000)
        r = client.get(url, headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206
        assert r.content == data[first : min(last, len(data) - 1) + 1]
