"""The generated demo repo (vfs.demo.dataset): layout, shard contents and flavours, dirt, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter
from pathlib import Path

import decord
import pytest

from vfs.catalog.annotations import (
    BadPath,
    annotation_kind,
    iter_video_records,
    malformed_hint,
    normalise_video_path,
    video_directory,
)
from vfs.demo.dataset import (
    DEFAULT_DIRECTORIES,
    UNPACKED_DIR,
    DemoManifest,
    DemoSpec,
    build_demo_dataset,
    make_mp4,
    pad_mp4,
    video_bytes,
)

ANNOTATION_FILES = {
    "0_30_s_academic_v0_1": [
        "0_30_s_academic_v0_1_cap_processed.json",
        "0_30_s_academic_oe_v0_1_qa_processed.json",
        "0_30_s_academic_mc_v0_1_qa_processed.json",
    ],
    "30_60_s_academic_v0_1": [
        "30_60_s_academic_v0_1_cap_processed.json",
        "30_60_s_academic_oe_v0_1_qa_processed.json",
        "30_60_s_academic_mc_v0_1_qa_processed.json",
    ],
    "0_30_s_youtube_v0_1": [
        "0_30_s_youtube_v0_1_cap_processed.json",
        "0_30_s_youtube_oe_v0_1_qa_processed.json",
        "0_30_s_youtube_mc_v0_1_qa_processed.json",
    ],
    "0_30_s_activitynetqa": ["0_30_s_activitynetqa_oe_qa_processed.json"],
    "0_30_s_nextqa": ["0_30_s_nextqa_oe_qa_processed.json", "0_30_s_nextqa_mc_qa_processed.json"],
    "0_30_s_perceptiontest": ["0_30_s_perceptiontest_mc_qa_processed.json"],
}

YTID = r"[A-Za-z0-9_-]{11}"
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
FORMS = {
    "youtube": rf"liwei_youtube_videos/videos/youtube_video_2024/ytb_{YTID}\.mp4",
    "charades": r"academic_source/Charades/[A-Z0-9]{5}\.mp4",
    "activitynet": rf"academic_source/activitynet/v_{YTID}\.mp4",
    "activitynet v1-3": rf"academic_source/activitynet/v1-3/train_val/v_{YTID}\.mp4",
    "academic nextqa": r"academic_source/NextQA/\d{4}/\d{10,11}\.mp4",
    "youcook2": rf"academic_source/youcook2/\d{{3}}/{YTID}/split_\d+\.mp4",
    "ego4d": rf"academic_source/ego4d/{UUID4}\.mp4",
    "nextqa": r"NextQA/NExTVideo/\d{4}/\d{10,11}\.mp4",
    "activitynetqa": rf"ActivityNet-QA/activitynet/train/v_{YTID}\.mp4",
    "activitynetqa v1-3": rf"ActivityNet-QA/activitynet/train/v1-3/train_val/v_{YTID}\.mp4",
    "perception_test": r"perception_test/(?:[^/]+/)+video_\d{4,}\.mp4",
    "llava_hound": r"shareVideoGPTV/frames/all_frames/[A-Za-z0-9_-]+",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoManifest, float]:
    root = tmp_path_factory.mktemp("demo") / "repo"
    started = time.perf_counter()
    manifest = build_demo_dataset(root)
    return manifest, time.perf_counter() - started


@pytest.fixture(scope="module")
def manifest(built: tuple[DemoManifest, float]) -> DemoManifest:
    return built[0]


def all_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def repo_files(root: Path) -> dict[str, Path]:
    """What the Hub repo holds: every file but the clips the build keeps aside."""
    return {path: p for path, p in all_files(root).items() if not path.startswith(UNPACKED_DIR + "/")}


def all_records(manifest: DemoManifest) -> dict[str, list]:
    out = {}
    for repo_path in manifest.annotation_files:
        with (manifest.root / repo_path).open("rb") as f:
            out[repo_path] = list(iter_video_records(f, file_label=repo_path))
    return out


def tar_headers(raw_tar: bytes) -> list[dict[str, object]]:
    """Walk the raw 512-byte tar headers, to see what a tar library would hide."""
    headers: list[dict[str, object]] = []
    offset = 0
    while offset + 512 <= len(raw_tar) and raw_tar[offset : offset + 512] != bytes(512):
        block = raw_tar[offset : offset + 512]
        size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
        headers.append(
            {
                "name": block[0:100].rstrip(b"\0").decode(),
                "type": block[156:157],
                "magic": block[257:265],
                "prefix": block[345:500].rstrip(b"\0").decode(),
            }
        )
        offset += 512 + (size + 511) // 512 * 512
    return headers


def gzip_streams(raw: bytes) -> list[bytes]:
    """The gzip members of a file, each as its own compressed bytes."""
    streams = []
    while raw:
        inflater = zlib.decompressobj(31)
        inflater.decompress(raw)
        assert inflater.eof, "truncated gzip stream"
        consumed = len(raw) - len(inflater.unused_data)
        streams.append(raw[:consumed])
        raw = inflater.unused_data
    return streams


# --- layout ------------------------------------------------------------------------------------------


def test_default_build_is_fast(built: tuple[DemoManifest, float]) -> None:
    assert built[1] < 20, f"default build took {built[1]:.1f} s"


def test_layout_matches_the_real_repo(manifest: DemoManifest) -> None:
    files = repo_files(manifest.root)
    top = {path.split("/")[0] for path in files}
    assert top == {
        ".gitattributes",
        "README.md",
        "llava_hound",
        "gpt4o_caption_prompt",
        "gpt4o_qa_prompt",
        *DEFAULT_DIRECTORIES,
    }
    for directory, names in ANNOTATION_FILES.items():
        for name in names:
            assert f"{directory}/{name}" in files
        shards = sorted(p for p in files if p.startswith(f"{directory}/") and p.endswith(".tar.gz"))
        assert shards == [f"{directory}/{directory}_videos_{k}.tar.gz" for k in (1, 2)]
    assert "llava_hound/sharegptvideo_qa_255k_processed.json" in files

    annotations = sorted(p for p in files if annotation_kind(p))
    assert annotations == sorted(manifest.annotation_files)
    assert len(annotations) == sum(map(len, ANNOTATION_FILES.values())) + 1
    stray = [p for p in files if p.endswith(".parquet")]
    assert len(stray) == 1 and files[stray[0]].stat().st_size < 64 and annotation_kind(stray[0]) is None
    prompts = [p for p in files if p.startswith("gpt4o_caption_prompt/")]
    assert prompts and all(annotation_kind(p) is None for p in prompts)
    for path in files:
        if path.endswith(".tar.gz") or annotation_kind(path) in ("caption", "open_ended", "multi_choice"):
            assert video_directory(path) is not None or path.startswith("llava_hound/")


def test_readme_and_gitattributes(manifest: DemoManifest) -> None:
    readme = (manifest.root / "README.md").read_text()
    front = readme.split("---\n")[1]
    assert front.startswith("configs:\n")
    assert "- config_name: 0_30_s_activitynet\n" in front
    assert "path: 0_30_s_activitynet/*oe*.json" in front  # points at a folder that does not exist
    assert not (manifest.root / "0_30_s_activitynet").exists()
    assert "- config_name: 0_30_s_academic_v0_1\n" in front
    attributes = (manifest.root / ".gitattributes").read_text().splitlines()
    assert "*.tar.gz filter=lfs diff=lfs merge=lfs -text" in attributes
    assert "*.json filter=lfs diff=lfs merge=lfs -text" in attributes


def test_records_are_shaped_like_the_real_ones(manifest: DemoManifest) -> None:
    for repo_path in manifest.annotation_files:
        records = json.loads((manifest.root / repo_path).read_text(encoding="utf-8"))
        assert isinstance(records, list) and records
        directory = repo_path.split("/")[0]
        for record in records:
            assert set(record) >= {"id", "conversations", "video"}
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"]
            assert turns[0]["value"].startswith("<image>\n")
            if directory != "llava_hound":
                assert record["data_source"] == directory
        if annotation_kind(repo_path) != "caption":
            videos = Counter(json.dumps(r["video"]) for r in records)
            assert max(videos.values()) > 1, f"{repo_path}: QA files repeat their videos"


def test_every_video_form_is_present(manifest: DemoManifest) -> None:
    for form, pattern in FORMS.items():
        assert any(re.fullmatch(pattern, p) for p in manifest.wanted), form
    ytb_ids = [p.rsplit("ytb_", 1)[1] for p in manifest.wanted if re.fullmatch(FORMS["youtube"], p)]
    assert any("-" in i for i in ytb_ids) and any("_" in i for i in ytb_ids)


# --- shards ------------------------------------------------------------------------------------------


def test_every_shard_member_matches_the_manifest(manifest: DemoManifest) -> None:
    seen: Counter[str] = Counter()
    for shard in manifest.shards.values():
        with tarfile.open(manifest.root / shard.path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            names = [m.name.removeprefix("./") for m in members]
            assert tuple(names) == shard.members
            for member, name in zip(members, names, strict=True):
                video = manifest.videos[name]
                assert video.shard == shard.path
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                assert len(data) == video.size == member.size
                assert hashlib.sha256(data).hexdigest() == video.sha256
                seen[name] += 1
        raw = (manifest.root / shard.path).read_bytes()
        assert shard.size == len(raw) and shard.sha256 == hashlib.sha256(raw).hexdigest()
    assert set(seen) == set(manifest.videos) and set(seen.values()) == {1}
    assert (
        len({v.sha256 for p, v in manifest.videos.items()}) == len(manifest.videos) - 1
    )  # one clip, two paths


def test_shards_vary_in_tar_and_gzip_flavour(manifest: DemoManifest) -> None:
    formats, levels, long_names = set(), set(), set()
    dot_slash = dir_entries = two_streams = 0
    for shard in manifest.shards.values():
        raw = (manifest.root / shard.path).read_bytes()
        streams = gzip_streams(raw)
        assert len(streams) == shard.gzip_streams
        two_streams += len(streams) == 2
        xfl = {stream[8] for stream in streams}
        assert xfl == {{9: 2, 1: 4}.get(shard.gzip_level, 0)}
        levels.add(shard.gzip_level)
        headers = tar_headers(gzip.decompress(raw))
        magics = {h["magic"] for h in headers}
        types = {h["type"] for h in headers}
        if shard.tar_format == "gnu":
            assert magics == {b"ustar  \0"}
        else:
            assert magics == {b"ustar\x0000"}
            assert (b"x" in types) == (shard.tar_format == "pax")
        formats.add(shard.tar_format)
        names = [str(h["name"]) for h in headers if h["type"] in (b"0", b"5")]
        assert all(n.startswith("./") for n in names) == shard.dot_slash
        dot_slash += shard.dot_slash
        assert (b"5" in types) == shard.dir_entries
        dir_entries += shard.dir_entries
        if any(h["prefix"] for h in headers):
            long_names.add("ustar prefix")
        if b"L" in types:
            long_names.add("gnu longlink")
    assert formats == {"gnu", "pax", "ustar"}
    assert len(levels) >= 3
    assert two_streams == 1
    assert 0 < dot_slash < len(manifest.shards) and 0 < dir_entries < len(manifest.shards)
    assert long_names == {"ustar prefix", "gnu longlink"}
    assert any(len(p.encode()) > 100 for p in manifest.videos)


def test_a_two_stream_shard_splits_inside_a_member(manifest: DemoManifest) -> None:
    (shard,) = [s for s in manifest.shards.values() if s.gzip_streams == 2]
    first, second = gzip_streams((manifest.root / shard.path).read_bytes())
    split_at = len(zlib.decompress(first, 31))
    whole = gzip.decompress(first + second)
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                offsets.append((member.offset_data, member.offset_data + member.size))
    assert any(start < split_at < end for start, end in offsets)


# --- videos ------------------------------------------------------------------------------------------


def test_decord_reads_frames_of_a_generated_mp4(manifest: DemoManifest, tmp_path: Path) -> None:
    shard = next(iter(manifest.shards.values()))
    with tarfile.open(manifest.root / shard.path, "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    spec = manifest.spec
    assert len(reader) == round(spec.seconds * spec.fps)
    frames = reader.get_batch([0, len(reader) // 2, len(reader) - 1]).asnumpy()
    assert frames.shape == (3, spec.height, spec.width, 3)
    assert (frames[0] != frames[-1]).any(), "content moves"


def test_mp4s_are_deterministic_and_seeded() -> None:
    # Seeds 0-11 at the default size: with x264's assembly on, PyAV 18 gave 2-4 different outputs for
    # some of these in ten encodes in one process.
    for seed in range(12):
        outputs = {make_mp4(seconds=2.0, width=96, height=64, fps=12, seed=seed) for _ in range(4)}
        assert len(outputs) == 1, f"seed {seed}: {len(outputs)} different encodes"
    a = make_mp4(seconds=0.5, width=32, height=16, fps=8, seed=1)
    assert a != make_mp4(seconds=0.5, width=32, height=16, fps=8, seed=2)
    assert a[4:8] == b"ftyp"
    with pytest.raises(ValueError):
        make_mp4(seconds=1, width=48, height=16, fps=8, seed=1)  # decord mis-sizes 48 px wide frames


def test_padded_mp4_decodes_to_the_same_frames(tmp_path: Path) -> None:
    plain = make_mp4(seconds=1.0, width=64, height=32, fps=10, seed=5)
    padded = pad_mp4(plain, 300_000, seed=5)
    assert len(padded) == len(plain) + 300_000
    assert len(gzip.compress(padded, 1)) > len(padded) * 0.99, "padding does not compress, like real mp4s"
    frames = {}
    for name, data in (("plain", plain), ("padded", padded)):
        (tmp_path / f"{name}.mp4").write_bytes(data)
        reader = decord.VideoReader(str(tmp_path / f"{name}.mp4"), ctx=decord.cpu(0), num_threads=1)
        frames[name] = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert frames["plain"].shape[0] == 10
    assert (frames["plain"] == frames["padded"]).all()


def test_padding_reaches_benchmark_sizes(tmp_path: Path) -> None:
    spec = DemoSpec(
        directories=("0_30_s_youtube_v0_1",),
        videos_per_dir=3,
        shards_per_dir=1,
        seconds=0.5,
        extra_padding_bytes=400_000,
    )
    manifest = build_demo_dataset(tmp_path / "repo", spec=spec)
    packed = list(manifest.videos.values())
    assert len(packed) == 3
    assert all(200_000 < v.size < 400_000 + 100_000 for v in packed)
    assert len({v.size for v in packed}) == 3, "sizes vary per video"
    (shard,) = manifest.shards.values()
    assert shard.size > sum(v.size for v in packed) * 0.99
    assert all(hashlib.sha256(video_bytes(manifest, v.path)).hexdigest() == v.sha256 for v in packed)


# --- dirt ---------------------------------------------------------------------------------------------


def test_dirty_and_hostile_records_are_there(manifest: DemoManifest) -> None:
    found: dict[str, str] = {}
    valid: set[str] = set()
    for records in all_records(manifest).values():
        for record in records:
            if record.path is not None:
                valid.add(record.path)
            if record.problem is not None:
                raw = record.raw_video
                key = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
                found[key] = record.problem
    assert set(found) == set(manifest.dirty)
    for raw, reason in manifest.dirty.items():
        if reason.startswith("malformed record"):
            assert malformed_hint(normalise_video_path(raw)) == found[raw]
        else:
            assert found[raw] == reason
            if reason != "not a string":  # non-strings are keyed by their JSON text
                with pytest.raises(BadPath, match=re.escape(reason)):
                    normalise_video_path(raw)
    reasons = set(manifest.dirty.values())
    for needed in ("'..' component", "absolute path", "NUL byte", "component over 255 bytes", "not a string"):
        assert needed in reasons
    assert "../../etc/passwd" in manifest.dirty and "/etc/passwd" in manifest.dirty
    assert valid == manifest.wanted


def test_absent_and_duplicate_clips(manifest: DemoManifest) -> None:
    packed = set(manifest.videos)
    assert all(v.shard is not None for v in manifest.videos.values())
    assert manifest.absent == manifest.wanted - packed
    assert any(p.startswith("academic_source/ego4d/") for p in manifest.absent)
    assert any(p.startswith("shareVideoGPTV/frames/all_frames/") for p in manifest.absent)
    assert any(malformed_hint(p) for p in manifest.absent)
    by_sha: dict[str, list[str]] = {}
    for path in packed:
        by_sha.setdefault(manifest.videos[path].sha256, []).append(path)
    (pair,) = [sorted(paths) for paths in by_sha.values() if len(paths) > 1]
    assert pair[0].startswith("NextQA/NExTVideo/") and pair[1].startswith("academic_source/NextQA/")
    assert pair[0].removeprefix("NextQA/NExTVideo/") == pair[1].removeprefix("academic_source/NextQA/")
    assert manifest.unpacked and set(manifest.unpacked) <= manifest.absent
    for path, clip in manifest.unpacked.items():
        assert clip.shard is None and path.startswith("academic_source/ego4d/")
        assert hashlib.sha256(video_bytes(manifest, path)).hexdigest() == clip.sha256


# --- determinism, manifest, refusals -----------------------------------------------------------------


def test_a_second_build_in_another_process_is_byte_identical(manifest: DemoManifest, tmp_path: Path) -> None:
    again_root = tmp_path / "again"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from vfs.demo.dataset import build_demo_dataset; "
            "build_demo_dataset(Path(sys.argv[1])).save(sys.argv[2])",
            str(again_root),
            str(tmp_path / "again.json"),
        ],
        check=True,
        timeout=240,
    )
    again = DemoManifest.load(tmp_path / "again.json")
    first, second = all_files(manifest.root), all_files(again_root)
    assert list(first) == list(second)
    assert any(path.startswith(UNPACKED_DIR + "/") for path in first), "the kept clips are compared too"
    for path in first:
        assert (
            hashlib.sha256(first[path].read_bytes()).digest()
            == hashlib.sha256(second[path].read_bytes()).digest()
        ), path
    assert (
        again.videos == manifest.videos
        and again.unpacked == manifest.unpacked
        and again.shards == manifest.shards
        and again.dirty == manifest.dirty
    )


def test_manifest_round_trips(manifest: DemoManifest, tmp_path: Path) -> None:
    manifest.save(tmp_path / "manifest.json")
    loaded = DemoManifest.load(tmp_path / "manifest.json")
    assert loaded == manifest


def test_refuses_a_non_empty_root_and_bad_specs(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        build_demo_dataset(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    for bad in (
        {"directories": ("0_30_s_unknownfamily",)},
        {"directories": ("0_30_s_nextqa", "0_30_s_nextqa")},
        {"width": 95},
        {"width": 48},
        {"height": 15},
        {"videos_per_dir": 0},
        {"extra_padding_bytes": -1},
    ):
        with pytest.raises(ValueError):
            DemoSpec(**bad)  # type: ignore[arg-type]
