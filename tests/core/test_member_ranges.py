"""Parallel ranges (vfs.hub.parallel, used by the member fetch and the index pass): how a fetch range is
cut, how the parts are fetched (adaptively, in order, never overlapping), and that the integrity rules
hold when a part goes wrong.

- ``part_bounds``: consecutive, disjoint parts covering exactly the range, within the size limits.
- ``download_in_order`` over the real ``HubClient`` against the emulator with its CDN paced per
  connection: exact bytes in order, every byte asked for once (amplification 1.0), connections added
  when the network is behind and not when the consumer is; a truncated part resumes at its first missing
  byte; a part that cannot be fetched fails the whole download with a typed error.
- ``fetch_member`` through ``FsCore`` on members of 6-12 MB: a flipped byte in any part is caught by the
  member's sha256 and refetched; a cold read costs at most 1.10x the member's size.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.reliability import RETRY_LOGS, SKIPPED, core_harness, indexed_cache
from vfs.demo.dataset import DemoSpec, build_demo_dataset
from vfs.errors import FetchError
from vfs.hub.client import HubClient
from vfs.hub.emulator import Fault, HubEmulator
from vfs.hub.parallel import (
    MAX_CONNECTIONS,
    PARALLEL_MIN_BYTES,
    PART_MAX_BYTES,
    PART_MIN_BYTES,
    START_CONNECTIONS,
    download_in_order,
    part_bounds,
)

REPO = "lmms-lab/LLaVA-Video-178K"
BLOB = "0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_1.tar.gz"
BLOB_SIZE = 9_000_003
START, END = 12_345, 9_000_000  # 4 parts of about 2.2 MB
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d+)")


def pattern_bytes(size_bytes: int, salt: int) -> bytes:
    words = (np.arange((size_bytes + 3) // 4, dtype=np.uint64) * 4 + salt) & 0xFFFFFFFF
    return words.astype(">u4").tobytes()[:size_bytes]


CONTENT = pattern_bytes(BLOB_SIZE, 0x5A5A)


# --- part_bounds -----------------------------------------------------------------------------------------


@given(start=st.integers(0, 1 << 40), size=st.integers(0, 400 << 20))
def test_part_bounds_cut_the_range_into_disjoint_parts_within_limits(start: int, size: int) -> None:
    bounds = part_bounds(start, start + size)
    assert bounds[0] == start and bounds[-1] == start + size
    lengths = [b - a for a, b in itertools.pairwise(bounds)]
    if size < PARALLEL_MIN_BYTES:
        assert len(lengths) == 1
        return
    assert all(PART_MIN_BYTES <= n <= PART_MAX_BYTES for n in lengths), lengths
    assert len(lengths) >= min(MAX_CONNECTIONS, size // PART_MIN_BYTES)  # enough to use every connection
    assert max(lengths) - min(lengths) <= 1  # even: no straggler part


def test_part_bounds_examples() -> None:
    assert part_bounds(10, 10) == [10, 10]
    assert len(part_bounds(0, PARALLEL_MIN_BYTES - 1)) == 2  # one part
    assert len(part_bounds(0, 10_000_000)) - 1 == 4  # a 10 MB member: 4 parts of 2.5 MB
    assert len(part_bounds(0, 50_000_000)) - 1 == 6  # 50 MB: 6 parts of 8.3 MB


# --- _download over the real client ------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("no_machine_token")


@pytest.fixture(scope="module")
def blob_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("blob-repo")
    (root / ".gitattributes").write_text("*.tar.gz filter=lfs diff=lfs merge=lfs -text\n")
    (root / BLOB).parent.mkdir(parents=True)
    (root / BLOB).write_bytes(CONTENT)
    return root


@pytest.fixture
def emu(blob_repo: Path) -> Iterator[HubEmulator]:
    with HubEmulator(REPO) as emulator:
        emulator.commit(blob_repo)
        yield emulator


def cdn_ranges(emu: HubEmulator) -> list[tuple[int, int, int]]:
    """(first, last + 1, body bytes sent) of every CDN GET, sorted."""
    out = []
    for r in emu.requests:
        if r.origin == "cdn" and r.method == "GET":
            m = _RANGE_RE.fullmatch(r.range or "")
            assert m is not None, r
            out.append((int(m.group(1)), int(m.group(2)) + 1, r.bytes_sent))
    return sorted(out)


class CountingClient:
    """The real client, counting the ranged streams open at once (the connections a fetch uses)."""

    def __init__(self, client: HubClient) -> None:
        self._client = client
        self.open_streams = 0
        self.most_open_streams = 0

    async def stream_range(self, commit: str, path: str, start: int, end: int) -> AsyncIterator[bytes]:
        self.open_streams += 1
        self.most_open_streams = max(self.most_open_streams, self.open_streams)
        try:
            async with aclosing(self._client.stream_range(commit, path, start, end)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.open_streams -= 1


async def download(
    emu: HubEmulator, *, chunk_bytes: int, consumer_delay_s: float = 0.0, faults: Sequence[Fault] = ()
) -> tuple[bytes, int]:
    """Run ``download_in_order`` for [START, END); what it handed on, in order, and the most ranged streams
    it had open at once. ``faults`` are armed after the file is resolved."""
    async with HubClient(
        endpoint=emu.endpoint,
        repo_id=REPO,
        token=None,
        chunk_bytes=chunk_bytes,
        max_retries=3,
        retry_deadline_s=10.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    ) as client:
        commit = emu.head("main")
        await client.read_range(commit, BLOB, 0, 1)  # resolve now: the log below is the download's only
        emu.reset_log()
        for fault in faults:
            emu.add_fault(fault)
        counting = CountingClient(client)
        got = bytearray()
        send, receive = trio.open_memory_channel[bytes](0)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(download_in_order, counting, commit, BLOB, START, END, send)
                async with receive:
                    async for chunk in receive:
                        got += chunk
                        if consumer_delay_s:
                            await trio.sleep(consumer_delay_s)
        return bytes(got), counting.most_open_streams


async def test_paced_cdn_parts_arrive_in_order_once_each_with_connections_added(emu: HubEmulator) -> None:
    emu.cdn_bytes_per_s = 8e6  # a slow CDN: the consumer waits for the network, so connections are added
    body, streams = await download(emu, chunk_bytes=256 << 10)
    assert body == CONTENT[START:END]
    ranges = cdn_ranges(emu)
    assert [(a, b) for a, b, _ in ranges] == list(itertools.pairwise(part_bounds(START, END)))
    assert sum(n for _, _, n in ranges) == END - START  # amplification 1.0: no byte asked for twice
    assert streams == MAX_CONNECTIONS == 4  # ramped up from START_CONNECTIONS


async def test_a_consumer_slower_than_the_network_opens_no_extra_connection(emu: HubEmulator) -> None:
    body, streams = await download(emu, chunk_bytes=512 << 10, consumer_delay_s=0.04)
    assert body == CONTENT[START:END]
    assert streams == START_CONNECTIONS == 2
    assert sum(n for _, _, n in cdn_ranges(emu)) == END - START


@pytest.mark.allow_log(r"retry \d+/\d+")
async def test_a_truncated_part_resumes_at_its_first_missing_byte(emu: HubEmulator) -> None:
    emu.cdn_bytes_per_s = 20e6
    fault = Fault("truncate", origin="cdn", after_bytes=300_000)
    body, _ = await download(emu, chunk_bytes=256 << 10, faults=[fault])
    assert body == CONTENT[START:END]
    assert fault.fired == 1
    ranges = cdn_ranges(emu)
    assert len(ranges) == len(part_bounds(START, END)) - 1 + 1  # one extra GET: the truncated part's rest
    assert sum(n for _, _, n in ranges) == END - START  # bytes received before the cut are kept


@pytest.mark.allow_log(r"retry \d+/\d+")
async def test_a_part_that_cannot_be_fetched_fails_the_download_with_a_typed_error(emu: HubEmulator) -> None:
    with pytest.raises(BaseException) as info:
        await download(
            emu, chunk_bytes=256 << 10, faults=[Fault("status", origin="cdn", status=410, count=None)]
        )
    leaves = list(_leaves(info.value))
    assert leaves and all(isinstance(e, FetchError) for e in leaves), leaves


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


# --- fetch_member through the core: integrity and amplification on large members ---------------------------


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubEmulator, object, Path]]:
    """Three videos of 6-12 MB in one shard, served by their own emulator, indexed once."""
    root = tmp_path_factory.mktemp("large")
    spec = DemoSpec(
        videos_per_dir=3,
        shards_per_dir=1,
        directories=("0_30_s_academic_v0_1",),
        extra_padding_bytes=12_000_000,
    )
    manifest = build_demo_dataset(root / "repo", spec=spec)
    with HubEmulator(REPO) as emulator:
        emulator.commit(manifest.root)
        template = indexed_cache(root, emulator.endpoint, REPO, root / "template")
        yield emulator, manifest, template


def packed(manifest) -> list:  # type: ignore[no-untyped-def]
    return sorted((v for v in manifest.videos.values() if v.shard), key=lambda v: v.path)


@pytest.mark.allow_log(*RETRY_LOGS, *SKIPPED, r"sha256 .* expected", r"corrupt compressed data")
async def test_a_flipped_byte_in_any_part_is_caught_and_refetched(large, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The first 1, 2, then 3 CDN GETs of a member's fetch carry a flipped byte: the head part, then also
    the part fetched beside it, then a third. Never served: the sha256 fails and the member is refetched."""
    emu, manifest, template = large
    shutil.copytree(template, tmp_path / "cache", symlinks=True)
    emu.cdn_bytes_per_s = 50e6
    try:
        async with core_harness(tmp_path / "cache", emu.endpoint, REPO) as h:
            for corrupt, video in enumerate(packed(manifest), start=1):
                emu.reset_log()
                fault = emu.add_fault(Fault("flip_byte", origin="cdn", after_bytes=100_000, count=corrupt))
                body = await h.read_all(video.path)
                assert hashlib.sha256(body).hexdigest() == video.sha256
                assert fault.fired == corrupt
                emu.clear_faults()
                assert h.cache.contains(h.data.members[video.path].cache_key)
    finally:
        emu.clear_faults()
        emu.cdn_bytes_per_s = None


@pytest.mark.allow_log(*SKIPPED)
async def test_cold_reads_of_large_members_cost_at_most_1_10x_their_size(large, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    emu, manifest, template = large
    shutil.copytree(template, tmp_path / "cache", symlinks=True)
    emu.cdn_bytes_per_s = 50e6
    try:
        async with core_harness(tmp_path / "cache", emu.endpoint, REPO) as h:
            for video in packed(manifest):
                assert video.size > 6_000_000
                emu.reset_log()
                body = await h.read_all(video.path)
                assert hashlib.sha256(body).hexdigest() == video.sha256
                gets = [r for r in emu.requests if r.origin == "cdn" and r.method == "GET"]
                assert len(gets) >= 2  # fetched as parallel parts
                assert emu.bytes_sent(origin="cdn") <= 1.10 * video.size
    finally:
        emu.cdn_bytes_per_s = None
