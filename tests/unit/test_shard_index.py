"""Tests of the shard index (vfs/targz/shard_index.py) and its zlib driver (vfs/targz/zran.py).

Every archive is built here with ``tarfile`` (GNU, pax, ustar; GNU tar and gzip binaries too when
installed) and compressed with zlib at several levels, as one gzip member or several concatenated.
Member data is incompressible (seeded random bytes, the stand-in for mp4; one test also uses real H.264
mp4s made with PyAV) or offset-patterned (each 8-byte word encodes its member and offset, so a misplaced
byte shows). Every member is extracted from exactly the compressed bytes of ``fetch_range`` and compared
byte for byte; bytes fetched per member byte and the index size are asserted, and printed for realistic
data. The build throughput measurement is marked slow (``-m slow``).
"""

from __future__ import annotations

import array
import contextlib
import functools
import gzip
import hashlib
import io
import itertools
import os
import random
import shutil
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.demo.media import make_mp4
from vfs.errors import IntegrityError
from vfs.targz import zran
from vfs.targz.build import build_shard_index
from vfs.targz.extract import MemberExtractor, extract_member
from vfs.targz.shard_index import MAGIC, CorruptIndex, CorruptShard, ShardIndex, normalize_member_path

MiB = 1024 * 1024
MAX_FETCH_RATIO = 1.10  # bytes downloaded per member byte, for incompressible members >= 1 MB
WARN_SKIP = r"skipping member"

# -- data and archive helpers ---------------------------------------------------------------------------


def random_data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def patterned(size: int, seed: int) -> bytes:
    """``size`` bytes in which the 8-byte word at offset ``o`` encodes ``seed`` and ``o``."""
    words = array.array("Q", range(seed << 40, (seed << 40) + size // 8 + 1))
    return words.tobytes()[:size]


Entry = tuple[str, bytes | None]  # (name, data); data None makes a directory entry


def make_tar(entries: Sequence[Entry], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(raw: bytes, level: int = 6) -> bytes:
    return gzip.compress(raw, compresslevel=level, mtime=0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(gz: bytes, **kwargs: object) -> ShardIndex:
    kwargs.setdefault("shard_sha256", sha(gz))
    kwargs.setdefault("shard_size", len(gz))
    return build_shard_index(io.BytesIO(gz).read, **kwargs)  # type: ignore[arg-type]


def expected_members(entries: Sequence[Entry]) -> dict[str, bytes]:
    return {normalize_member_path(name): data for name, data in entries if data is not None}


def assert_extracts_all(index: ShardIndex, gz: bytes, expected: dict[str, bytes]) -> list[tuple[int, float]]:
    """Extract every member from exactly its fetch range; returns (size, fetched/size) per member."""
    assert sorted(m.path for m in index.members) == sorted(expected)
    ratios = []
    for member in index.members:
        data = expected[member.path]
        assert member.size == len(data)
        assert member.sha256 == sha(data)
        checkpoint = index.checkpoints[member.checkpoint]
        assert checkpoint.out_offset <= member.offset
        start, end = index.fetch_range(member)
        assert 0 <= start <= end <= len(gz)
        assert extract_member(index, member, gz[start:end]) == data, member.path
        if member.size:
            ratios.append((member.size, (end - start) / member.size))
        else:
            assert start == end
    # One checkpoint per member at most, plus the stream start.
    assert len(index.checkpoints) <= len(index.members) + 1
    return ratios


def mixed_entries(seed: int, prefix: str = "") -> list[Entry]:
    """Directories, empty members, small and >1 MiB members, random and patterned data, long names."""
    rnd = random.Random(seed)
    long_dir = "academic_source/youcook2/" + "/".join(f"part{i:03d}" for i in range(18))  # ~150 chars
    return [
        (f"{prefix}academic_source/", None),
        (f"{prefix}academic_source/Charades/", None),
        (f"{prefix}academic_source/Charades/RW587.mp4", random_data(rnd.randint(MiB + 1, 2 * MiB), seed + 1)),
        (f"{prefix}academic_source/Charades/empty.mp4", b""),
        (f"{prefix}{long_dir}/split_1.mp4", random_data(rnd.randint(5000, 70000), seed + 2)),
        (f"{prefix}{long_dir}/split_2.mp4", patterned(rnd.randint(MiB + 1, MiB + 200_000), seed + 3)),
        (f"{prefix}academic_source/NextQA/0001/4882821564.mp4", random_data(1, seed + 4)),
        (f"{prefix}academic_source/NextQA/0001/4882821565.mp4", random_data(511, seed + 5)),
        (f"{prefix}academic_source/NextQA/0001/4882821566.mp4", random_data(513, seed + 6)),
        (f"{prefix}academic_source/activitynet/v_abc.mp4", random_data(rnd.randint(MiB, 3 * MiB), seed + 7)),
        (f"{prefix}academic_source/activitynet/v_zeros.mp4", bytes(300_000)),
    ]


# -- building and extracting ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("level", [1, 6, 9])
def test_every_member_extracts_from_its_fetch_range(fmt: int, level: int) -> None:
    entries = mixed_entries(seed=fmt * 10 + level, prefix="./")
    if fmt == tarfile.GNU_FORMAT:
        entries.append(
            ("liwei_youtube_videos/videos/youtube_video_2024/" + "x" * 180 + ".mp4", b"gnu longname")
        )
    if fmt == tarfile.PAX_FORMAT:
        entries.append(("perception_test/vidéo_ü/" + "y" * 250 + ".mp4", b"pax path, non-ASCII"))
    gz = gzip_bytes(make_tar(entries, fmt), level)
    index = build(gz)
    ratios = assert_extracts_all(index, gz, expected_members(entries))
    for size, ratio in ratios:
        if size >= MiB:
            assert ratio <= MAX_FETCH_RATIO


def test_realistic_members_fetch_about_their_own_size(capsys: pytest.CaptureFixture[str]) -> None:
    """mp4-sized incompressible members: fetched bytes <= 1.10x the member; index size relative to shard."""
    rnd = random.Random(7)
    entries: list[Entry] = [
        (f"liwei_youtube_videos/videos/youtube_video_2024/ytb_{i:011d}.mp4", random_data(size, i))
        for i, size in enumerate(
            [700_000, 1_000_000, 1_500_000, 3_000_000] + [rnd.randint(700_000, 4 * MiB) for _ in range(6)]
        )
    ]
    gz = gzip_bytes(make_tar(entries), 6)
    index = build(gz)
    ratios = assert_extracts_all(index, gz, expected_members(entries))
    assert all(ratio <= MAX_FETCH_RATIO for size, ratio in ratios if size >= 700_000)
    # Stored blocks read nothing from a window: sparse windows make the index tiny.
    index_fraction = index.index_size_bytes / len(gz)
    assert index_fraction < 0.001
    over_read_bytes = [int(size * (ratio - 1)) for size, ratio in ratios]
    with capsys.disabled():
        print(
            f"\n[shard index] {len(ratios)} members 0.7-4 MB: fetched/member worst "
            f"{max(r for _, r in ratios):.4f}, over-read max {max(over_read_bytes)} B; "
            f"index {index.index_size_bytes} B = {index_fraction:.4%} of the shard"
        )


@pytest.mark.skipif(not (shutil.which("tar") and shutil.which("gzip")), reason="needs GNU tar and gzip")
def test_gnu_tar_and_gzip_binaries(tmp_path: Path) -> None:
    """What a shard really is: `tar czf` (GNU tar headers, GNU gzip's own deflate and block sizes)."""
    root = tmp_path / "src"
    expected: dict[str, bytes] = {}
    for i, size in enumerate([1_200_000, 2_500_000, 700_000, 0, 9000]):
        path = root / "NextQA" / "NExTVideo" / f"{i:04d}" / f"{4882821564 + i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = random_data(size, 100 + i)
        path.write_bytes(data)
        expected[f"NextQA/NExTVideo/{i:04d}/{4882821564 + i}.mp4"] = data
    shard = tmp_path / "shard.tar.gz"
    subprocess.run(["tar", "-czf", str(shard), "-C", str(root), "."], check=True)
    gz = shard.read_bytes()
    with open(shard, "rb") as f:
        index = build_shard_index(f.read, shard_sha256=sha(gz), shard_size=len(gz), shard_name="shard.tar.gz")
    ratios = assert_extracts_all(index, gz, expected)
    assert all(ratio <= MAX_FETCH_RATIO for size, ratio in ratios if size >= MiB)


@pytest.mark.parametrize("level", [1, 9])
def test_multi_member_gzip(level: int) -> None:
    """Concatenated gzip members (pigz, `cat a.gz b.gz`), split inside data, at a data start, in a header."""
    entries = [
        ("NextQA/a.mp4", random_data(300_000, 1)),
        ("NextQA/b.mp4", patterned(200_000, 2)),
        ("NextQA/c.mp4", random_data(150_000, 3)),
        ("NextQA/d.mp4", random_data(80_000, 4)),
        ("NextQA/e.mp4", b""),
        ("NextQA/f.mp4", random_data(5000, 5)),
    ]
    raw = make_tar(entries)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        offsets = {info.name: info.offset_data for info in tf}
    splits = sorted(
        {
            offsets["NextQA/a.mp4"] + 123_457,  # inside a's data
            offsets["NextQA/b.mp4"],  # exactly at b's data start
            offsets["NextQA/c.mp4"] - 300,  # inside c's header
            offsets["NextQA/d.mp4"] + 80_000 - 1,  # one byte before d's end
        }
    )
    bounds = [0, *splits, len(raw)]
    gz = b"".join(gzip_bytes(raw[a:b], level) for a, b in itertools.pairwise(bounds))
    index = build(gz)
    assert_extracts_all(index, gz, expected_members(entries))
    # b's checkpoint is the start of a gzip member: no window needed.
    b_member = index.member("NextQA/b.mp4")
    assert b_member is not None
    assert index.checkpoints[b_member.checkpoint].out_offset == b_member.offset
    assert index.checkpoints[b_member.checkpoint].window_size == 0
    assert index.window(b_member.checkpoint) == b""


@pytest.mark.parametrize("flush", [zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH])
def test_flushed_streams_like_pigz(flush: int) -> None:
    """pigz compresses 128 KiB chunks and ends each with a sync flush (an empty stored block)."""
    entries: list[Entry] = [
        (f"clip{i}.mp4", random_data(size, i) if i % 2 else patterned(size, i))
        for i, size in enumerate([300_000, 131_072, 1, 600_000, 70_000])
    ]
    raw = make_tar(entries)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    pieces = []
    for start in range(0, len(raw), 128 * 1024):
        pieces.append(compressor.compress(raw[start : start + 128 * 1024]))
        pieces.append(compressor.flush(flush))
    gz = b"".join([*pieces, compressor.flush()])
    index = build(gz)
    assert_extracts_all(index, gz, expected_members(entries))


def test_empty_gzip_members_and_zero_padding_are_accepted() -> None:
    entries = [("a.mp4", random_data(40_000, 1))]
    raw = make_tar(entries)
    gz = gzip_bytes(b"") + gzip_bytes(raw[:10_000]) + gzip_bytes(b"") + gzip_bytes(raw[10_000:]) + bytes(4096)
    index = build(gz)
    assert_extracts_all(index, gz, expected_members(entries))


def test_extractor_accepts_any_chunking() -> None:
    entries = [("a.mp4", random_data(200_000, 1)), ("b.mp4", patterned(300_000, 2))]
    raw = make_tar(entries)
    gz = gzip_bytes(raw[:150_000], 6) + gzip_bytes(raw[150_000:], 6)  # b spans two gzip members
    index = build(gz)
    rnd = random.Random(3)
    for member in index.members:
        start, end = index.fetch_range(member)
        compressed = gz[start:end]
        for max_chunk in (7, 4096, 100_000):
            extractor = MemberExtractor(index, member)
            out, pos = [], 0
            while pos < len(compressed):
                # One byte at a time at the start (priming bits, dictionary) and the end, random between.
                single = pos < 300 or pos > len(compressed) - 300
                n = 1 if single else rnd.randint(1, max_chunk)
                out.append(extractor.feed(compressed[pos : pos + n]))
                pos += n
            extractor.finish()
            assert b"".join(out) == expected_members(entries)[member.path]


def test_bytes_past_the_fetch_range_are_ignored() -> None:
    entries = [("a.mp4", random_data(100_000, 1)), ("b.mp4", random_data(100_000, 2))]
    gz = gzip_bytes(make_tar(entries))
    index = build(gz)
    member = index.member("a.mp4")
    assert member is not None
    start, _ = index.fetch_range(member)
    assert extract_member(index, member, gz[start:]) == entries[0][1]


def test_non_regular_entries_are_skipped_quietly(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind in [("d", tarfile.DIRTYPE), ("link", tarfile.SYMTYPE), ("fifo", tarfile.FIFOTYPE)]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "d/file.mp4" if kind == tarfile.SYMTYPE else ""
            tf.addfile(info)
        info = tarfile.TarInfo("d/file.mp4")
        info.size = 10
        tf.addfile(info, io.BytesIO(b"0123456789"))
        hard = tarfile.TarInfo("hard.mp4")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "d/file.mp4"
        tf.addfile(hard)
    gz = gzip_bytes(buf.getvalue())
    index = build(gz)
    assert [m.path for m in index.members] == ["d/file.mp4"]
    assert index.member("link") is None
    assert_extracts_all(index, gz, {"d/file.mp4": b"0123456789"})


def test_empty_archive_has_no_members() -> None:
    gz = gzip_bytes(make_tar([]))
    index = build(gz)
    assert index.members == []
    assert len(index.checkpoints) == 1  # the stream start


def test_progress_reports_compressed_bytes() -> None:
    gz = gzip_bytes(make_tar([("a.mp4", random_data(900_000, 1))]))
    seen: list[int] = []
    build(gz, progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == len(gz)


def test_build_without_expected_sha256_computes_it() -> None:
    gz = gzip_bytes(make_tar([("a.mp4", b"abc")]))
    index = build_shard_index(io.BytesIO(gz).read, shard_sha256=None)
    assert index.shard_sha256 == sha(gz)
    assert index.shard_size == len(gz)


# -- hostile and unusable names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("./a/b.mp4", "a/b.mp4"),
        ("a//b/./c.mp4", "a/b/c.mp4"),
        ("././x.mp4", "x.mp4"),
        ("a/b/", "a/b"),
    ],
)
def test_normalize_member_path(name: str, normal: str) -> None:
    assert normalize_member_path(name) == normal


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../x.mp4", "a/../../x.mp4", "a\x00b", "a\nb.mp4", ".", "./", "x" * 256, "caf\udce9"],
)
def test_normalize_member_path_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        normalize_member_path(name)


@pytest.mark.allow_log(WARN_SKIP)
def test_hostile_member_names_are_skipped_with_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    hostile = [
        "/abs/video.mp4",
        "../escape.mp4",
        "academic_source/../../escape.mp4",
        "x" * 120 + "/nul\x00name.mp4",  # pax path keeps the NUL
        "new\nline.mp4",
        "academic_source/" + "y" * 300 + ".mp4",
        "caf\udce9.mp4",  # not UTF-8 in the archive
    ]
    good = [("academic_source/ok.mp4", random_data(70_000, 1)), ("academic_source/ok2.mp4", b"ok2")]
    entries: list[Entry] = [(name, random_data(1000 + i, i)) for i, name in enumerate(hostile)]
    entries[3:3] = good
    gz = gzip_bytes(make_tar(entries, tarfile.PAX_FORMAT))
    index = build(gz, shard_name="0_30_s_academic_v0_1_videos_1.tar.gz")
    assert_extracts_all(index, gz, dict((n, d) for n, d in good if d is not None))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == len(hostile)
    for message, name in zip(warnings, hostile, strict=True):
        assert "0_30_s_academic_v0_1_videos_1.tar.gz" in message
        assert repr(name) in message


@pytest.mark.allow_log(r"appears more than once")
def test_duplicate_member_last_copy_wins(caplog: pytest.LogCaptureFixture) -> None:
    entries = [("a.mp4", b"first"), ("b.mp4", b"bee"), ("./a.mp4", b"second copy")]
    gz = gzip_bytes(make_tar(entries))
    index = build(gz)
    assert_extracts_all(index, gz, {"a.mp4": b"second copy", "b.mp4": b"bee"})
    assert sum("appears more than once" in r.getMessage() for r in caplog.records) == 1


# -- corrupt and truncated input --------------------------------------------------------------------------


def test_corrupt_compressed_input_never_yields_wrong_bytes() -> None:
    entries = [("a.mp4", random_data(400_000, 1)), ("b.mp4", patterned(400_000, 2))]
    gz = gzip_bytes(make_tar(entries), 6)
    index = build(gz)
    rnd = random.Random(5)
    for member in index.members:
        start, end = index.fetch_range(member)
        good = expected_members(entries)[member.path]
        # In the middle of the member's own compressed bytes: must be detected. (The range's first bytes
        # may only code bytes before the member, its last few the codes zlib decodes just past its end.)
        bad = bytearray(gz[start:end])
        bad[len(bad) // 2] ^= 0x40
        with pytest.raises(IntegrityError):
            extract_member(index, member, bytes(bad))
        # Anywhere in the range: an error or the right bytes, never wrong bytes.
        for _ in range(40):
            bad = bytearray(gz[start:end])
            bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
            with contextlib.suppress(IntegrityError):
                assert extract_member(index, member, bytes(bad)) == good
        # Too short a range.
        with pytest.raises(IntegrityError, match="ended after"):
            extract_member(index, member, gz[start : (start + end) // 2])


def test_member_extractor_rejects_a_different_members_bytes() -> None:
    entries = [("a.mp4", random_data(100_000, 1)), ("b.mp4", random_data(100_000, 2))]
    gz = gzip_bytes(make_tar(entries))
    index = build(gz)
    a, b = index.members
    start, end = index.fetch_range(b)
    with pytest.raises(IntegrityError):
        extract_member(index, a, gz[start:end])


@pytest.mark.parametrize(
    "cut", ["header", "early", "middle", "last_deflate_byte", "trailer", "member_boundary"]
)
def test_truncated_shard_raises_corrupt_shard(cut: str) -> None:
    raw = make_tar([("a.mp4", random_data(300_000, 1)), ("b.mp4", random_data(300_000, 2))])
    first, second = gzip_bytes(raw[:400_000]), gzip_bytes(raw[400_000:])
    gz = first + second
    keep = {
        "header": 5,
        "early": 100,
        "middle": len(gz) // 2,
        "last_deflate_byte": len(gz) - 9,
        "trailer": len(gz) - 3,
        "member_boundary": len(first),  # a complete gzip file, but the tar is cut short
    }[cut]
    truncated = gz[:keep]
    with pytest.raises(CorruptShard):
        build_shard_index(io.BytesIO(truncated).read, shard_sha256=None)
    with pytest.raises(CorruptShard):  # and with the expected size, the size check catches it too
        build_shard_index(io.BytesIO(truncated).read, shard_sha256=None, shard_size=len(gz))


def test_sha256_and_size_mismatches_raise_corrupt_shard() -> None:
    gz = gzip_bytes(make_tar([("a.mp4", b"abc")]))
    with pytest.raises(CorruptShard, match="sha256"):
        build(gz, shard_sha256="0" * 64)
    with pytest.raises(CorruptShard, match="expected"):
        build(gz, shard_size=len(gz) + 1)
    with pytest.raises(CorruptShard, match="more than the expected"):
        build(gz, shard_size=len(gz) - 1)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda raw: raw, id="not-gzip"),
        pytest.param(lambda raw: zlib.compress(raw), id="zlib-wrapper"),
        pytest.param(lambda raw: gzip_bytes(raw) + b"garbage", id="trailing-garbage"),
        pytest.param(lambda raw: gzip_bytes(random_data(20_000, 9)), id="not-a-tar"),
        pytest.param(lambda raw: gzip_bytes(b""), id="empty-stream"),
        pytest.param(lambda raw: b"", id="empty-file"),
        pytest.param(lambda raw: gzip_bytes(raw[:-1024]), id="no-end-of-archive-block"),
    ],
)
def test_invalid_shards_raise_corrupt_shard(make: Callable[[bytes], bytes]) -> None:
    raw = make_tar([("a.mp4", random_data(5000, 1))])
    raw = raw[: raw.index(bytes(1024), 5000) + 1024]  # exactly two end blocks, no record padding
    with pytest.raises(CorruptShard):
        build_shard_index(io.BytesIO(make(raw)).read, shard_sha256=None)


def test_damaged_header_mid_archive_is_not_silently_the_end() -> None:
    """tarfile treats a bad header after the first as the end of the archive; the index must not."""
    raw = bytearray(make_tar([("a.mp4", random_data(3000, 1)), ("b.mp4", random_data(3000, 2))]))
    second_header = 512 + 3072
    assert raw[second_header : second_header + 5] == b"b.mp4"
    raw[second_header + 148] ^= 0x01  # its checksum field
    with pytest.raises(CorruptShard, match="non-zero data after the tar's end"):
        build_shard_index(io.BytesIO(gzip_bytes(bytes(raw))).read, shard_sha256=None)


def test_read_errors_propagate_unchanged() -> None:
    gz = gzip_bytes(make_tar([("a.mp4", random_data(600_000, 1))]))
    source = io.BytesIO(gz)

    def read(n: int) -> bytes:
        if source.tell() > 100_000:
            raise ConnectionResetError("network went away")
        return source.read(n)

    with pytest.raises(ConnectionResetError):
        build_shard_index(read, shard_sha256=None)


# -- persistence ------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    entries = mixed_entries(seed=3)
    gz = gzip_bytes(make_tar(entries))
    built = build(gz)
    path = tmp_path / "shard.idx"
    built.save(path)
    assert sorted(os.listdir(tmp_path)) == ["shard.idx"]  # no temp file left behind
    loaded = ShardIndex.load(path, expected_sha256=built.shard_sha256.upper())
    assert loaded.shard_sha256 == built.shard_sha256
    assert loaded.shard_size == built.shard_size == len(gz)
    assert loaded.members == built.members
    assert loaded.checkpoints == built.checkpoints
    for i in range(len(built.checkpoints)):
        assert loaded.window(i) == built.window(i)
    assert loaded.index_size_bytes == built.index_size_bytes == path.stat().st_size
    assert_extracts_all(loaded, gz, expected_members(entries))
    # Saving again over an existing index replaces it atomically.
    loaded.save(path)
    assert ShardIndex.load(path).members == built.members
    assert sorted(os.listdir(tmp_path)) == ["shard.idx"]


def test_thousand_member_index_loads_in_milliseconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries: list[Entry] = [
        (f"liwei_youtube_videos/videos/youtube_video_2024/ytb_{i:011d}.mp4", random_data(600, i))
        for i in range(1000)
    ]
    gz = gzip_bytes(make_tar(entries), 1)
    index = build(gz)
    assert len(index.members) == 1000
    path = tmp_path / "shard.idx"
    index.save(path)
    timings_s = []
    for _ in range(5):
        started = time.perf_counter()
        loaded = ShardIndex.load(path)
        timings_s.append(time.perf_counter() - started)
    assert loaded.members == index.members
    assert min(timings_s) < 0.1
    with capsys.disabled():
        print(
            f"\n[shard index] 1000-member index ({path.stat().st_size} B) "
            f"loads in {min(timings_s) * 1e3:.1f} ms"
        )


@functools.cache
def _saved_index_bytes() -> bytes:
    """An index file's bytes, built once for the damage tests."""
    gz = gzip_bytes(make_tar(mixed_entries(seed=4)))
    buf = io.BytesIO()
    for piece in build(gz)._encode():
        buf.write(piece)
    return buf.getvalue()


@pytest.fixture
def saved_index(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "shard.idx"
    path.write_bytes(_saved_index_bytes())
    ShardIndex.load(path)  # intact before each test damages it
    return path, path.read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:40], id="truncated-header"),
        pytest.param(lambda b: b[:100], id="truncated-metadata"),
        pytest.param(lambda b: b[:-1], id="truncated-window"),
        pytest.param(lambda b: b + b"\0", id="extended"),
        pytest.param(lambda b: b"XXXXXXXX" + b[8:], id="bad-magic"),
        pytest.param(lambda b: b[:8] + (2).to_bytes(2, "little") + b[10:], id="future-version"),
        pytest.param(lambda b: b[:70] + bytes([b[70] ^ 1]) + b[71:], id="flipped-metadata"),
        pytest.param(lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], id="flipped-header"),
        pytest.param(lambda b: random_data(len(b), 1), id="random"),
    ],
)
def test_damaged_index_raises_corrupt_index(
    saved_index: tuple[Path, bytes], damage: Callable[[bytes], bytes]
) -> None:
    path, good = saved_index
    path.write_bytes(damage(good))
    with pytest.raises(CorruptIndex):
        ShardIndex.load(path)


def test_damaged_window_raises_corrupt_index_when_read(saved_index: tuple[Path, bytes]) -> None:
    path, good = saved_index
    index = ShardIndex.load(path)
    damaged = bytearray(good)
    damaged[-5] ^= 0x10  # inside the last window
    path.write_bytes(bytes(damaged))
    index = ShardIndex.load(path)  # metadata intact: loads
    last = len(index.checkpoints) - 1
    with pytest.raises(CorruptIndex, match=f"window {last}"):
        index.window(last)
    member = next(m for m in index.members if m.checkpoint == last)
    with pytest.raises(CorruptIndex):
        MemberExtractor(index, member)


def test_index_for_another_shard_is_refused(saved_index: tuple[Path, bytes]) -> None:
    path, good = saved_index
    assert good.startswith(MAGIC)
    with pytest.raises(CorruptIndex, match="expected"):
        ShardIndex.load(path, expected_sha256="ab" * 32)


def test_missing_index_file_is_not_reported_as_corrupt(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ShardIndex.load(tmp_path / "absent.idx")
    (tmp_path / "dir.idx").mkdir()
    with pytest.raises(CorruptIndex):
        ShardIndex.load(tmp_path / "dir.idx")


# -- zran internals ---------------------------------------------------------------------------------------


def test_zlib_errors_are_typed() -> None:
    inflater = zran.Inflater(zran.WBITS_GZIP)
    inflater.set_input(b"this is not gzip data at all")
    with pytest.raises(zran.ZlibError) as excinfo:
        inflater.inflate(1024)
    assert excinfo.value.code == zran.Z_DATA_ERROR
    assert isinstance(excinfo.value, IntegrityError)
    assert "incorrect header check" in str(excinfo.value)
    inflater.close()
    inflater.close()  # idempotent


def test_scanner_memory_stays_bounded_over_a_large_member() -> None:
    """History is kept for about one block plus read-ahead, not for the member being streamed."""
    raw = make_tar([("big.mp4", random_data(24 * MiB, 1))])
    gz = gzip_bytes(raw, 1)
    scanner = zran.GzipScanner(io.BytesIO(gz).read)
    header = scanner.read(512)
    assert header.startswith(b"big.mp4")
    scanner.forget_before(512 + 24 * MiB)
    peak = 0
    while chunk := scanner.read(64 * 1024):
        assert chunk
        peak = max(peak, scanner.retained_bytes)
    assert scanner.finished
    assert scanner.out_offset == len(raw)
    assert peak < 2 * MiB
    scanner.close()


def test_scanner_reports_exact_compressed_end_for_registered_offsets() -> None:
    data = random_data(3 * MiB, 2)
    gz = gzip_bytes(data, 6)
    scanner = zran.GzipScanner(io.BytesIO(gz).read)
    ends: dict[int, int] = {}
    targets = [1, 100_000, MiB + 17, 3 * MiB]
    for target in targets:
        scanner.on_output_reaches(target, functools.partial(ends.__setitem__, target))
    while scanner.read(MiB):
        pass
    boundary, window = scanner.checkpoint_at(0)
    assert (boundary.out_offset, boundary.cmp_bit_offset % 8, window) == (0, 0, b"")
    for target in targets:
        # Inflating exactly the reported bytes yields at least `target` bytes; one byte fewer does not.
        d = zlib.decompressobj(31)
        assert len(d.decompress(gz[: ends[target]])) >= target
        d = zlib.decompressobj(31)
        assert len(d.decompress(gz[: ends[target] - 1])) < target
    scanner.close()


def test_sparse_window_keeps_exactly_the_bytes_inflation_reads() -> None:
    """A checkpoint inside data that copies from the 32 KiB before it: only those bytes are kept."""
    rnd = random.Random(11)
    data = bytearray(random_data(100_000, 1))
    while len(data) < 400_000:  # 40-byte copies from up to 30 KB back: many matches cross the checkpoint
        start = len(data) - rnd.randint(40, 30_000)
        data += data[start : start + 40] + random_data(rnd.randint(0, 8), len(data))
    gz = gzip_bytes(bytes(data), 6)
    scanner = zran.GzipScanner(io.BytesIO(gz).read)
    scanner.read(200_000)
    boundary, window = scanner.checkpoint_at(200_000)
    assert len(window) == zran.WINDOW_SIZE
    sparse: list[bytes] = []
    scanner.request_sparse_window(boundary, window, sparse.append)
    while scanner.read(MiB):
        pass
    scanner.close()
    (kept,) = sparse
    used = sum(1 for a, b in zip(kept, window, strict=True) if a == b and a != 0)
    assert 0 < used < len(window) - window.count(0)
    assert all(a in (0, b) for a, b in zip(kept, window, strict=True))
    compressed = gz[boundary.cmp_bit_offset // 8 :]
    expected = bytes(data[boundary.out_offset : boundary.out_offset + 100_000])

    def resume(dictionary: bytes) -> bytes:
        inflater = zran.ResumedInflater(boundary.cmp_bit_offset, dictionary, output_limit_bytes=100_000)
        out = b"".join(inflater.feed(compressed))
        inflater.close()
        return out

    assert resume(kept) == expected
    assert resume(bytes(len(window))) != expected  # the kept bytes are really needed
    # Dropping any one kept byte changes the output.
    for position in [i for i, byte in enumerate(kept) if byte][:: max(1, used // 5)]:
        damaged = bytearray(kept)
        damaged[position] ^= 0xFF
        assert resume(bytes(damaged)) != expected


# -- property and real-video tests --------------------------------------------------------------------------

member_data = st.one_of(
    st.builds(random_data, st.integers(0, 150_000), st.integers(0, 1000)),
    st.builds(patterned, st.integers(0, 150_000), st.integers(0, 1000)),
    st.binary(max_size=2000),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datas=st.lists(member_data, min_size=0, max_size=6),
    level=st.integers(0, 9),
    fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]),
    split_fraction=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_property_every_member_round_trips(
    datas: list[bytes], level: int, fmt: int, split_fraction: float | None
) -> None:
    entries: list[Entry] = [(f"dir{i % 2}/m{i}.mp4", data) for i, data in enumerate(datas)]
    raw = make_tar(entries, fmt)
    if split_fraction is None:
        gz = gzip_bytes(raw, level)
    else:
        cut = int(len(raw) * split_fraction)
        gz = gzip_bytes(raw[:cut], level) + gzip_bytes(raw[cut:], level)
    index = build(gz)
    assert_extracts_all(index, gz, expected_members(entries))


def test_real_h264_mp4_members(capsys: pytest.CaptureFixture[str]) -> None:
    frame_counts = {
        f"liwei_youtube_videos/videos/youtube_video_2024/ytb_{i:011d}.mp4": 24 + 8 * i for i in range(4)
    }
    videos = {
        path: make_mp4(seconds=frames / 24, width=160, height=120, fps=24, seed=i)
        for i, (path, frames) in enumerate(frame_counts.items())
    }
    gz = gzip_bytes(make_tar(list(videos.items())), 6)
    index = build(gz)
    ratios = assert_extracts_all(index, gz, videos)
    for member in index.members:
        start, end = index.fetch_range(member)
        data = extract_member(index, member, gz[start:end])
        with av.open(io.BytesIO(data)) as container:
            assert sum(1 for _ in container.decode(video=0)) == frame_counts[member.path]
    # Real video reads few window bytes: the index stays far below one full window per member.
    used = [len(w) - w.count(0) for w in map(index.window, range(len(index.checkpoints)))]
    assert index.index_size_bytes < len(index.members) * 4096
    with capsys.disabled():
        print(
            f"\n[shard index] H.264 members of {min(map(len, videos.values()))}-"
            f"{max(map(len, videos.values()))} B: fetched/member worst {max(r for _, r in ratios):.4f}; "
            f"window bytes kept per checkpoint {used}; index {index.index_size_bytes} B"
        )


@pytest.mark.slow
def test_build_throughput_on_mp4_like_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Indexing must outrun the network (about 50 MB/s per connection): measure on 300 MB from a file."""
    rnd = random.Random(1)
    shard = tmp_path / "shard.tar.gz"
    with (
        open(shard, "wb") as out,
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf,
    ):
        total, i = 0, 0
        while total < 300_000_000:
            info = tarfile.TarInfo(f"liwei_youtube_videos/videos/youtube_video_2024/ytb_{i:011d}.mp4")
            info.size = rnd.randint(700_000, 8_000_000)
            tf.addfile(info, io.BytesIO(rnd.randbytes(info.size)))
            total, i = total + info.size, i + 1
    with open(shard, "rb", buffering=0) as f:
        started_s, started_cpu_s = time.perf_counter(), time.thread_time()
        index = build_shard_index(f.read, shard_sha256=None)
        wall_s, cpu_s = time.perf_counter() - started_s, time.thread_time() - started_cpu_s
    mb = index.shard_size / 1e6
    with capsys.disabled():
        print(
            f"\n[shard index] build: {mb:.0f} MB, {len(index.members)} members in {wall_s:.2f} s = "
            f"{mb / wall_s:.0f} MB/s wall, {mb / cpu_s:.0f} MB/s per CPU-second of the calling thread; "
            f"index {index.index_size_bytes} B"
        )
    assert mb / wall_s > 100
