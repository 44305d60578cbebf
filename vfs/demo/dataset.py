"""A small repo directory shaped like the real LLaVA-Video-178K, for the tests, ``make demo`` and benchmarks.

Responsibility: write, under one root, what the Hub repo holds (DATASET.md sections 1-3): ``README.md`` with
a ``configs:`` block (including the real README's trap: an ``*_activitynet`` config whose folder is really
``*_activitynetqa``), ``.gitattributes``, video directories with the exact annotation file names and
record shapes, ``*_videos_K.tar.gz`` shards holding real H.264 mp4s at the annotations' relative paths,
``llava_hound/`` (frame directories that no shard holds), prompt folders and a stray ``*.parquet``; and
return a ``DemoManifest`` that says what is where, so tests can assert on every byte.

Invariants:
- Deterministic with one install: the same ``DemoSpec`` gives byte-identical files in any process (fixed
  tar mtimes and owners, gzip mtime 0 and no file name, seeded content, and x264 as ``make_mp4`` says).
  Across PyAV/x264 versions the videos may differ, so a caller that needs a video's bytes again reads
  them back (``video_bytes``) instead of encoding them again.
- Every video's bytes differ (seeded content), except the one clip deliberately packed under two paths.
- Nothing is written or cached outside ``root``; ``root`` must be empty or absent.
- The dirt of the real dataset is reproduced on purpose and listed in the manifest: a youtube record
  without ``youtube_video_2024/`` and ``.mp4``, records whose videos no shard holds (ego4d clips,
  llava_hound frames), one clip under two paths, and hostile ``video`` values.
- Shards vary the way real-world tars do: GNU, PAX and USTAR headers, a member name over 100 bytes (USTAR
  prefix split and GNU LongLink), ``./``-prefixed names, directory entries, different gzip levels, and
  one shard made of two concatenated gzip streams split in the middle of a member.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import tarfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from vfs.demo.media import check_frame_size, make_mp4, pad_mp4
from vfs.demo.tarfiles import TAR_FORMATS, Flavour, GzipSink, flavour_of, tarinfo

__all__ = [
    "DEFAULT_DIRECTORIES",
    "UNPACKED_DIR",
    "DemoManifest",
    "DemoShard",
    "DemoSpec",
    "DemoVideo",
    "build_demo_dataset",
    "video_bytes",
]

DEFAULT_DIRECTORIES: Final = (
    "0_30_s_academic_v0_1",
    "0_30_s_youtube_v0_1",
    "0_30_s_nextqa",
    "0_30_s_activitynetqa",
    "0_30_s_perceptiontest",
    "30_60_s_academic_v0_1",
)
_BUCKETS: Final = ("0_30_s", "30_60_s", "1_2_m", "2_3_m")
# Annotation file names per family (DATASET.md section 1), with the irregular infixes kept exactly.
_ANNOTATION_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "academic_v0_1": (
        "{b}_academic_v0_1_cap_processed.json",
        "{b}_academic_oe_v0_1_qa_processed.json",
        "{b}_academic_mc_v0_1_qa_processed.json",
    ),
    "youtube_v0_1": (
        "{b}_youtube_v0_1_cap_processed.json",
        "{b}_youtube_oe_v0_1_qa_processed.json",
        "{b}_youtube_mc_v0_1_qa_processed.json",
    ),
    "activitynetqa": ("{b}_activitynetqa_oe_qa_processed.json",),
    "nextqa": ("{b}_nextqa_oe_qa_processed.json", "{b}_nextqa_mc_qa_processed.json"),
    "perceptiontest": ("{b}_perceptiontest_mc_qa_processed.json",),
}
# Records per video in each kind of file: QA files repeat their videos.
_RECORDS_PER_VIDEO: Final = {"cap": 1, "oe": 3, "mc": 2}
LLAVA_HOUND_ANNOTATION: Final = "llava_hound/sharegptvideo_qa_255k_processed.json"
# Where the build keeps the clips no shard holds, under the root: a hidden directory, which the Hub
# emulator does not serve, so the repo stays as it is.
UNPACKED_DIR: Final = ".unpacked"

# Makes one perception_test member name longer than the 100 bytes a plain tar header holds.
_LONG_DIRECTORY: Final = (
    "valid_videos_unpacked_from_the_release_archive_under_a_deliberately_long_directory_name"
)
_ACADEMIC_FORMS: Final = ("charades", "activitynet", "nextqa", "youcook2", "ego4d", "activitynet_v13")
_ABSENT_EGO4D_PER_DIRECTORY: Final = 2
_LLAVA_HOUND_FRAME_DIRECTORIES: Final = 4
_YTID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

# Hostile `video` values: (value, the BadPath reason normalise_video_path gives). Non-strings are keyed in
# DemoManifest.dirty by their JSON text.
_HOSTILE_VALUES: Final[tuple[tuple[object, str], ...]] = (
    ("../../etc/passwd", "'..' component"),
    ("/etc/passwd", "absolute path"),
    ("academic_source/Charades/NUL\x00BYTE.mp4", "NUL byte"),
    ("academic_source/Charades/" + "L" * 300 + ".mp4", "component over 255 bytes"),
    (["academic_source/Charades/AB123.mp4"], "not a string"),
    ("academic_source\\Charades\\AB123.mp4", "backslash"),
)


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults build in a few seconds; ``extra_padding_bytes`` makes benchmark-sized
    mp4s cheaply: each video gets a ``free`` box of seeded random bytes, between half and all of it."""

    videos_per_dir: int = 6
    seconds: float = 2.0
    width: int = 96
    height: int = 64
    fps: int = 12
    seed: int = 0
    shards_per_dir: int = 2
    directories: tuple[str, ...] = DEFAULT_DIRECTORIES
    extra_padding_bytes: int = 0

    def __post_init__(self) -> None:
        if self.videos_per_dir < 1 or self.shards_per_dir < 1:
            raise ValueError("videos_per_dir and shards_per_dir must be at least 1")
        check_frame_size(self.width, self.height)
        if self.fps < 1 or self.seconds <= 0:
            raise ValueError("fps must be at least 1 and seconds positive")
        if self.extra_padding_bytes < 0:
            raise ValueError("extra_padding_bytes must not be negative")
        if len(set(self.directories)) != len(self.directories):
            raise ValueError("directories must be distinct")
        for directory in self.directories:
            _split_directory(directory)


@dataclass(frozen=True)
class DemoVideo:
    """One mp4: its annotation path, exact size and sha256, the shard holding it (None: no shard does, and
    the build kept it under ``UNPACKED_DIR``), and the seed its content was made from."""

    path: str
    size: int
    sha256: str
    shard: str | None
    seed: int


@dataclass(frozen=True)
class DemoShard:
    """One ``*_videos_K.tar.gz`` and the tar/gzip flavour it was written with."""

    path: str
    size: int
    sha256: str
    tar_format: str  # "ustar", "gnu" or "pax"
    gzip_level: int
    gzip_streams: int
    dot_slash: bool  # member names start with "./"
    dir_entries: bool  # directory members precede the files
    members: tuple[str, ...]  # annotation paths of the videos, in archive order


@dataclass
class DemoManifest:
    """What ``build_demo_dataset`` wrote. Paths are repo paths or annotation (``video``) paths."""

    root: Path
    videos: dict[str, DemoVideo]  # every packed video by its annotation path
    annotation_files: list[str]
    wanted: set[str]  # every distinct valid `video` path across annotations
    dirty: dict[str, str]  # raw dirty/hostile `video` value (JSON text for non-strings) -> what is wrong
    absent: set[str]  # valid wanted paths that no shard holds
    shards: dict[str, DemoShard] = field(default_factory=dict)
    # mp4 clips the annotations name but no shard holds (shard None): the build keeps their bytes under
    # ``UNPACKED_DIR`` (``video_bytes``), e.g. to stage them as an upstream dataset for passthrough tests.
    unpacked: dict[str, DemoVideo] = field(default_factory=dict)
    spec: DemoSpec = field(default_factory=DemoSpec)

    def save(self, path: Path | str) -> None:
        data = {
            "version": 1,
            "root": str(self.root),
            "spec": asdict(self.spec),
            "videos": [asdict(v) for v in sorted(self.videos.values(), key=lambda v: v.path)],
            "shards": [asdict(s) for s in sorted(self.shards.values(), key=lambda s: s.path)],
            "unpacked": [asdict(v) for v in sorted(self.unpacked.values(), key=lambda v: v.path)],
            "annotation_files": self.annotation_files,
            "wanted": sorted(self.wanted),
            "dirty": dict(sorted(self.dirty.items())),
            "absent": sorted(self.absent),
        }
        # ensure_ascii keeps hostile values (NUL, odd Unicode) exact and the file plain ASCII.
        Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n", encoding="ascii")

    @classmethod
    def load(cls, path: Path | str) -> DemoManifest:
        data = json.loads(Path(path).read_text(encoding="ascii"))
        if data.get("version") != 1:
            raise ValueError(f"{path}: unknown demo manifest version {data.get('version')!r}")
        spec = dict(data["spec"])
        spec["directories"] = tuple(spec["directories"])
        return cls(
            root=Path(data["root"]),
            videos={v["path"]: DemoVideo(**v) for v in data["videos"]},
            annotation_files=list(data["annotation_files"]),
            wanted=set(data["wanted"]),
            dirty=dict(data["dirty"]),
            absent=set(data["absent"]),
            shards={s["path"]: DemoShard(**{**s, "members": tuple(s["members"])}) for s in data["shards"]},
            unpacked={v["path"]: DemoVideo(**v) for v in data["unpacked"]},
            spec=DemoSpec(**spec),
        )


# --- mp4 ---------------------------------------------------------------------------------------------


def _padding_for(spec: DemoSpec, seed: int) -> int:
    if spec.extra_padding_bytes == 0:
        return 0
    half = spec.extra_padding_bytes // 2
    return max(16, half + random.Random(seed).randrange(spec.extra_padding_bytes - half + 1))


def _render(spec: DemoSpec, seed: int) -> bytes:
    data = make_mp4(seconds=spec.seconds, width=spec.width, height=spec.height, fps=spec.fps, seed=seed)
    return pad_mp4(data, _padding_for(spec, seed), seed=seed)


def video_bytes(manifest: DemoManifest, path: str) -> bytes:
    """The bytes of a packed or unpacked video as the build wrote them, checked against their sha256.

    A packed video is read back from its shard; an unpacked one from the copy the build kept under
    ``UNPACKED_DIR``. Nothing is encoded again: bytes that PyAV and x264 produce are reproducible with one
    install, not across their versions, and a test must not depend on that.
    """
    video = manifest.videos.get(path) or manifest.unpacked[path]
    data = (
        _shard_member(manifest.root / video.shard, path)
        if video.shard is not None
        else (manifest.root / UNPACKED_DIR / path).read_bytes()
    )
    if len(data) != video.size or hashlib.sha256(data).hexdigest() != video.sha256:
        raise RuntimeError(f"the bytes of {path} under {manifest.root} differ from the manifest")
    return data


def _shard_member(shard: Path, path: str) -> bytes:
    with tarfile.open(shard, mode="r:gz") as tar:
        for info in tar:
            if info.isfile() and info.name.removeprefix("./") == path:
                member = tar.extractfile(info)
                assert member is not None  # a regular file always has a reader
                return member.read()
    raise KeyError(f"{shard} holds no member {path}")


# --- the plan: which clips, paths and records --------------------------------------------------------


@dataclass
class _Clip:
    path: str
    seed: int
    record_id: str
    packed: bool = True


@dataclass
class _DirectoryPlan:
    name: str
    bucket: str
    family: str
    clips: list[_Clip]
    extra_records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # file name -> records


def _split_directory(directory: str) -> tuple[str, str]:
    for bucket in _BUCKETS:
        prefix = bucket + "_"
        if directory.startswith(prefix) and directory[len(prefix) :] in _ANNOTATION_NAMES:
            return bucket, directory[len(prefix) :]
    families = ", ".join(_ANNOTATION_NAMES)
    raise ValueError(f"unknown video directory {directory!r}: expected <{'|'.join(_BUCKETS)}>_<{families}>")


def _ytid(rng: random.Random, special: str) -> str:
    """An 11-character YouTube id; ``special`` ('-' or '_') is forced in, as real ids often hold them."""
    chars = [rng.choice(_YTID_ALPHABET) for _ in range(11)]
    chars[rng.randrange(1, 10)] = special
    return "".join(chars)


def _digits(rng: random.Random, count: int) -> str:
    return str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(count - 1))


def _seed(rng: random.Random) -> int:
    return rng.getrandbits(31)


def _academic_clip(rng: random.Random, form: str, index: int) -> _Clip:
    special = "-_"[index % 2]
    if form == "charades":
        clip_id = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(5))
        return _Clip(f"academic_source/Charades/{clip_id}.mp4", _seed(rng), clip_id)
    if form in ("activitynet", "activitynet_v13"):
        clip_id = f"v_{_ytid(rng, special)}"
        folder = (
            "academic_source/activitynet/v1-3/train_val"
            if form == "activitynet_v13"
            else "academic_source/activitynet"
        )
        return _Clip(f"{folder}/{clip_id}.mp4", _seed(rng), clip_id)
    if form == "nextqa":
        folder, clip_id = _digits(rng, 4), _digits(rng, 10)
        return _Clip(f"academic_source/NextQA/{folder}/{clip_id}.mp4", _seed(rng), clip_id)
    if form == "youcook2":
        recipe, ytid, split = _digits(rng, 3), _ytid(rng, special), rng.randrange(30)
        return _Clip(
            f"academic_source/youcook2/{recipe}/{ytid}/split_{split}.mp4", _seed(rng), f"{ytid}_{split}"
        )
    if form == "ego4d":
        clip_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return _Clip(f"academic_source/ego4d/{clip_id}.mp4", _seed(rng), clip_id)
    raise AssertionError(form)


def _plan_directory(spec: DemoSpec, directory: str) -> _DirectoryPlan:
    bucket, family = _split_directory(directory)
    # Seeded by name, so a directory's plan does not depend on which others are built.
    rng = random.Random(f"{spec.seed}:{directory}")
    plan = _DirectoryPlan(directory, bucket, family, [])
    n = spec.videos_per_dir
    if family == "academic_v0_1":
        plan.clips = [_academic_clip(rng, _ACADEMIC_FORMS[i % len(_ACADEMIC_FORMS)], i) for i in range(n)]
        for _ in range(
            _ABSENT_EGO4D_PER_DIRECTORY
        ):  # annotated, but in no shard (dirty data, as in the real one)
            clip = _academic_clip(rng, "ego4d", 0)
            clip.packed = False
            plan.clips.append(clip)
    elif family == "youtube_v0_1":
        for i in range(n):
            clip_id = f"ytb_{_ytid(rng, '-_'[i % 2])}"
            plan.clips.append(
                _Clip(f"liwei_youtube_videos/videos/youtube_video_2024/{clip_id}.mp4", _seed(rng), clip_id)
            )
    elif family == "nextqa":
        for _ in range(n):
            folder, clip_id = _digits(rng, 4), _digits(rng, 10)
            plan.clips.append(_Clip(f"NextQA/NExTVideo/{folder}/{clip_id}.mp4", _seed(rng), clip_id))
    elif family == "activitynetqa":
        for i in range(n):
            clip_id = f"v_{_ytid(rng, '-_'[i % 2])}"
            folder = "ActivityNet-QA/activitynet/train" + ("/v1-3/train_val" if i % 3 == 2 else "")
            plan.clips.append(_Clip(f"{folder}/{clip_id}.mp4", _seed(rng), clip_id))
    elif family == "perceptiontest":
        starts = {start for start, _ in _shard_ranges(n, spec.shards_per_dir)}
        for i in range(n):
            clip_id = f"video_{rng.randrange(10_000):04d}"
            folder = f"perception_test/videos/{_LONG_DIRECTORY}" if i in starts else "perception_test/videos"
            plan.clips.append(_Clip(f"{folder}/{clip_id}.mp4", _seed(rng), clip_id))
    _dedupe_paths(plan, rng)
    return plan


def _dedupe_paths(plan: _DirectoryPlan, rng: random.Random) -> None:
    """Random ids may collide (perception_test has only 10,000): re-seed a clip until its path is unique."""
    seen: set[str] = set()
    for clip in plan.clips:
        while clip.path in seen:
            stem, _, ext = clip.path.rpartition(".")
            clip.path = f"{stem}{rng.randrange(10)}.{ext}"
        seen.add(clip.path)


def _shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal [start, end) ranges; never an empty shard."""
    shards = max(1, min(shards, count))
    bounds = [count * k // shards for k in range(shards + 1)]
    return list(itertools.pairwise(bounds))


def _link_shared_clip(plans: dict[str, _DirectoryPlan]) -> None:
    """The same clip under two paths: a bucket's first nextqa video is its academic NextQA clip."""
    for plan in plans.values():
        if plan.family != "nextqa":
            continue
        academic = plans.get(f"{plan.bucket}_academic_v0_1")
        source = (
            next((c for c in academic.clips if c.path.startswith("academic_source/NextQA/")), None)
            if academic
            else None
        )
        if source is None or not plan.clips:
            continue
        folder_and_name = source.path.removeprefix("academic_source/NextQA/")
        plan.clips[0] = _Clip(f"NextQA/NExTVideo/{folder_and_name}", source.seed, source.record_id)


# --- records -----------------------------------------------------------------------------------------

_CAPTIONS: Final = (
    "A person opens a door, walks into a kitchen and puts a cup on the table.",
    "The video shows a cyclist riding along a river at dusk — the light is orange and soft.",
    "Someone slices vegetables on a wooden board, then adds them to a pan; a café sign hangs behind. 🎬",
    "A child plays with a red ball in a park while a dog runs around.",
)
_OPEN_QUESTIONS: Final = (
    ("What is the person holding?", "A blue cup."),
    ("Where does the scene take place?", "In a small kitchen with white walls."),
    ("What happens after the door opens?", "The person walks in and sits down. ✔"),
    ("How many people appear?", "Two people appear in the video."),
)
_MC_QUESTIONS: Final = (
    ("What colour is the ball?", ("Red", "Green", "Blue", "Yellow"), "A"),
    ("What does the person do first?", ("Sits down", "Opens the door", "Leaves", "Sleeps"), "B"),
)


def _conversation(human: str, gpt: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{human}"}, {"from": "gpt", "value": gpt}]


def _records_for(
    kind: str, clip_id: str, video: object, data_source: str | None, rng: random.Random, count: int
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for _ in range(count):
        if kind == "cap":
            conversations = _conversation(
                "Please provide a detailed description of the video, focusing on the main subjects "
                "and actions.",
                rng.choice(_CAPTIONS),
            )
        elif kind == "oe":
            question, answer = rng.choice(_OPEN_QUESTIONS)
            conversations = _conversation(question, answer)
        else:
            question, options, letter = rng.choice(_MC_QUESTIONS)
            lines = "\n".join(f"{'ABCD'[i]}. {option}" for i, option in enumerate(options))
            conversations = _conversation(
                f"{question}\n{lines}\nAnswer with the option's letter from the given choices directly.",
                f"{letter}.",
            )
        record: dict[str, Any] = {"id": clip_id, "conversations": conversations}
        if data_source is not None:
            record["data_source"] = data_source
        record["video"] = video
        records.append(record)
    return records


def _kind_of(file_name: str) -> str:
    tokens = file_name.split("_")
    return "cap" if "cap" in tokens else "mc" if "mc" in tokens else "oe"


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- shards ------------------------------------------------------------------------------------------


def _write_shard(
    path: Path, clips: list[_Clip], spec: DemoSpec, flavour: Flavour
) -> tuple[DemoShard, list[DemoVideo]]:
    prefix = "./" if flavour.dot_slash else ""
    videos: list[DemoVideo] = []
    emitted_dirs: set[str] = set()
    repo_path = f"{path.parent.name}/{path.name}"
    with path.open("wb") as raw:
        # A two-stream shard splits in the middle of its middle member, the hardest place for an indexer.
        sink = GzipSink(raw, flavour.gzip_level, split_at=None)
        # cast: the sink is write-only, and tarfile's "w" mode never reads or seeks its file.
        tar_file = tarfile.TarFile(fileobj=cast(Any, sink), mode="w", format=TAR_FORMATS[flavour.tar_format])
        with tar_file as tar:
            if flavour.dir_entries and flavour.dot_slash:
                tar.addfile(tarinfo(".", flavour, directory=True))
            for position, clip in enumerate(clips):
                data = _render(spec, clip.seed)
                if flavour.dir_entries:
                    parts = clip.path.split("/")[:-1]
                    for depth in range(1, len(parts) + 1):
                        folder = "/".join(parts[:depth])
                        if folder not in emitted_dirs:
                            emitted_dirs.add(folder)
                            tar.addfile(tarinfo(prefix + folder, flavour, directory=True))
                if flavour.two_streams and position == len(clips) // 2:
                    # Past this member's header (one or more 512-byte blocks), inside its data.
                    sink.split_at(sink.tell() + 512 + len(data) // 2)
                tar.addfile(tarinfo(prefix + clip.path, flavour, size=len(data)), io.BytesIO(data))
                videos.append(
                    DemoVideo(clip.path, len(data), hashlib.sha256(data).hexdigest(), repo_path, clip.seed)
                )
        sink.close()
    shard_bytes_sha = _sha256_file(path)
    shard = DemoShard(
        path=repo_path,
        size=path.stat().st_size,
        sha256=shard_bytes_sha,
        tar_format=flavour.tar_format,
        gzip_level=flavour.gzip_level,
        gzip_streams=sink.streams,
        dot_slash=flavour.dot_slash,
        dir_entries=flavour.dir_entries,
        members=tuple(clip.path for clip in clips),
    )
    return shard, videos


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- repo files --------------------------------------------------------------------------------------

_GITATTRIBUTES: Final = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.mp4 filter=lfs diff=lfs merge=lfs -text
*.tar.gz filter=lfs diff=lfs merge=lfs -text
*.json filter=lfs diff=lfs merge=lfs -text
"""

_README_BODY: Final = """\
# Dataset Card for LLaVA-Video-178K (generated demo)

A small, generated stand-in for `lmms-lab/LLaVA-Video-178K`, written by `vfs.demo.dataset`: the same
layout, annotation file names and record shapes, with real (tiny) H.264 videos packed in
`*_videos_K.tar.gz` shards, and the real dataset's dirty records reproduced on purpose.

Like the real card, the `configs:` block above names `*_activitynet` configs whose folders are really
`*_activitynetqa`: derive the layout from the repo listing, never from this card.
"""


def _readme(plans: list[_DirectoryPlan]) -> str:
    lines = ["---", "configs:"]
    split_names = {"cap": "caption", "oe": "open_ended", "mc": "multi_choice"}
    for plan in plans:
        # The real card calls the activitynetqa folders "*_activitynet" and points its globs there.
        config = plan.name.removesuffix("qa") if plan.family == "activitynetqa" else plan.name
        lines += [f"- config_name: {config}", "  data_files:"]
        for template in _ANNOTATION_NAMES[plan.family]:
            kind = _kind_of(template)
            lines += [f"  - split: {split_names[kind]}", f"    path: {config}/*{kind}*.json"]
    lines += [
        "- config_name: llava_hound",
        "  data_files:",
        "  - split: open_ended",
        f"    path: {LLAVA_HOUND_ANNOTATION}",
        "language:",
        "- en",
        "task_categories:",
        "- visual-question-answering",
        "- video-text-to-text",
        "---",
        "",
    ]
    return "\n".join(lines) + _README_BODY


def _write_json(path: Path, records: list[dict[str, Any]], style: int) -> None:
    """Write one annotation array; ``style`` varies the formatting the way real files vary."""
    indent, ensure_ascii = ((None, False), (4, True), (2, False))[style % 3]
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=ensure_ascii), encoding="utf-8")


# --- the build ---------------------------------------------------------------------------------------


def build_demo_dataset(root: Path, *, spec: DemoSpec | None = None) -> DemoManifest:
    """Write the demo repo under ``root`` (absent or empty) and return what is where."""
    spec = spec or DemoSpec()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty: the demo dataset is only written into an empty directory"
        )
    root.mkdir(parents=True, exist_ok=True)

    plans = {name: _plan_directory(spec, name) for name in sorted(spec.directories)}
    _link_shared_clip(plans)

    manifest = DemoManifest(
        root=root, videos={}, annotation_files=[], wanted=set(), dirty={}, absent=set(), spec=spec
    )
    hostile_target = _hostile_target(plans)
    youtube_dirty_done = False
    global_shard_index = 0

    for directory_index, plan in enumerate(plans.values()):
        folder = root / plan.name
        folder.mkdir()
        rng = random.Random(f"{spec.seed}:{plan.name}:records")

        # Shards: the packed clips, split contiguously.
        packed = [clip for clip in plan.clips if clip.packed]
        for shard_index, (start, end) in enumerate(_shard_ranges(len(packed), spec.shards_per_dir)):
            shard_path = folder / f"{plan.name}_videos_{shard_index + 1}.tar.gz"
            flavour = flavour_of(directory_index, shard_index, global_shard_index)
            shard, videos = _write_shard(shard_path, packed[start:end], spec, flavour)
            manifest.shards[shard.path] = shard
            manifest.videos.update((video.path, video) for video in videos)
            global_shard_index += 1
        for clip in plan.clips:
            if not clip.packed:
                data = _render(spec, clip.seed)
                digest = hashlib.sha256(data).hexdigest()
                kept = root / UNPACKED_DIR / clip.path
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_bytes(data)
                manifest.unpacked[clip.path] = DemoVideo(clip.path, len(data), digest, None, clip.seed)

        # Annotations: every clip in every file of its directory, QA files repeating them.
        for style, template in enumerate(_ANNOTATION_NAMES[plan.family]):
            file_name = template.format(b=plan.bucket)
            kind = _kind_of(file_name)
            records: list[dict[str, Any]] = []
            for clip in plan.clips:
                records += _records_for(
                    kind, clip.record_id, clip.path, plan.name, rng, _RECORDS_PER_VIDEO[kind]
                )
                manifest.wanted.add(clip.path)
            if plan.family == "youtube_v0_1" and not youtube_dirty_done and plan.clips:
                # The real dirty record: no youtube_video_2024/ level and no .mp4 extension.
                bad = f"liwei_youtube_videos/videos/{plan.clips[0].record_id}"
                records += _records_for(kind, plan.clips[0].record_id, bad, plan.name, rng, 1)
                manifest.dirty[bad] = (
                    "malformed record: the youtube path lacks the youtube_video_2024/ level "
                    "and has no .mp4 extension"
                )
                manifest.wanted.add(bad)
                youtube_dirty_done = True
            if (plan.name, file_name) == hostile_target:
                for number, (value, reason) in enumerate(_HOSTILE_VALUES):
                    records += _records_for(kind, f"hostile_{number}", value, plan.name, rng, 1)
                    manifest.dirty[_json_text(value)] = reason
            rng.shuffle(records)
            _write_json(folder / file_name, records, style + directory_index)
            manifest.annotation_files.append(f"{plan.name}/{file_name}")

    _write_llava_hound(root, spec, manifest)
    _write_other_files(root, spec, list(plans.values()))
    manifest.annotation_files.sort()
    manifest.absent = manifest.wanted - manifest.videos.keys()
    return manifest


def _hostile_target(plans: dict[str, _DirectoryPlan]) -> tuple[str, str]:
    """The file that gets the hostile records: the first academic open-ended file, else the first file."""
    for plan in plans.values():
        if plan.family == "academic_v0_1":
            return plan.name, _ANNOTATION_NAMES[plan.family][1].format(b=plan.bucket)
    first = next(iter(plans.values()))
    return first.name, _ANNOTATION_NAMES[first.family][0].format(b=first.bucket)


def _write_llava_hound(root: Path, spec: DemoSpec, manifest: DemoManifest) -> None:
    """llava_hound's records point at JPEG frame directories from another repo: wanted, never in a shard."""
    rng = random.Random(f"{spec.seed}:llava_hound")
    records: list[dict[str, Any]] = []
    for index in range(_LLAVA_HOUND_FRAME_DIRECTORIES):
        frame_id = ("v_" if index % 2 == 0 else "") + _ytid(rng, "-_"[index % 2])
        path = f"shareVideoGPTV/frames/all_frames/{frame_id}"
        # No data_source: llava_hound records do not name a video directory.
        records += _records_for("oe", frame_id, path, None, rng, 2)
        manifest.wanted.add(path)
    rng.shuffle(records)
    (root / "llava_hound").mkdir()
    _write_json(root / LLAVA_HOUND_ANNOTATION, records, 0)
    manifest.annotation_files.append(LLAVA_HOUND_ANNOTATION)


def _write_other_files(root: Path, spec: DemoSpec, plans: list[_DirectoryPlan]) -> None:
    (root / "README.md").write_text(_readme(plans), encoding="utf-8")
    (root / ".gitattributes").write_text(_GITATTRIBUTES, encoding="utf-8")
    (root / "gpt4o_caption_prompt").mkdir()
    (root / "gpt4o_caption_prompt" / "caption_prompt.txt").write_text(
        "You are given frames of a video. Describe the video in detail: subjects, actions, setting, "
        "and how they change over time.\n",
        encoding="utf-8",
    )
    (root / "gpt4o_qa_prompt").mkdir()
    (root / "gpt4o_qa_prompt" / "qa_prompt.json").write_text(
        json.dumps({"system": "Write question-answer pairs about the video.", "max_pairs": 5}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    # A stray parquet that appeared in some revisions: a few bytes, not an annotation.
    first = plans[0].name if plans else "llava_hound"
    (root / first / f"{first}_cap_processed.parquet").write_bytes(b"PAR1" + bytes(8) + b"PAR1")
