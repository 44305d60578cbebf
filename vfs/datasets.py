"""The one registry of the dataset families behind annotation paths (DATASET.md section 5).

For each family: its ``[[upstream]]``/``[mount] exclude`` name, the annotation prefixes it serves, where to
get it and its terms (what guidance says), and how an upstream copy is laid out under its root (what
passthrough tries). Config (``KNOWN_UPSTREAMS``), guidance (``vfs.guidance``) and passthrough
(``vfs.sources.upstream``) all read it from here.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "KNOWN_UPSTREAMS",
    "REGISTRY",
    "DatasetInfo",
    "Extras",
    "dataset_for_path",
    "is_dataset_ancestor",
    "under",
]

_VIDEO_EXTS = (".mp4", ".mkv", ".webm")


# --------------------------------------------------------------------------------------------- layouts


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _charades(rest: str) -> list[str]:
    return [f"Charades_v1_480/{rest}", f"Charades_v1/{rest}", rest]


def _nextqa(rest: str) -> list[str]:
    return [f"NExTVideo/{rest}", rest, f"videos/{rest}"]


def _activitynet(rest: str) -> list[str]:
    folder, _, name = rest.rpartition("/")
    stem, ext = os.path.splitext(name)
    folders = _dedupe([folder, "v1-3/train_val", "v1-2/train", "v1-2/val", "v1-3/test", ""])
    exts = _dedupe([ext, *_VIDEO_EXTS]) if ext else list(_VIDEO_EXTS)
    return _dedupe(f"{d}/{stem}{e}" if d else f"{stem}{e}" for d in folders for e in exts)


def _youcook2(rest: str) -> list[str]:
    return [rest, f"clips/{rest}"]


def _ego4d(rest: str) -> list[str]:
    clips = [f"v2/clips/{rest}", f"clips/{rest}", f"v1/clips/{rest}"]
    full = [f"v2/full_scale/{rest}", f"full_scale/{rest}", f"v1/full_scale/{rest}"]
    return [*clips, *full, rest]


def _perceptiontest(rest: str) -> list[str]:
    name = rest.rpartition("/")[2]
    return _dedupe([rest, f"train_videos/{name}", f"valid_videos/{name}", f"videos/{name}", name])


def _llava_hound(rest: str) -> list[str]:
    return [
        f"shareVideoGPTV/frames/all_frames/{rest}",
        f"frames/all_frames/{rest}",
        f"all_frames/{rest}",
        rest,
    ]


@dataclass(frozen=True, slots=True)
class Extras:
    """Where a dataset's files sit under its root, to list upstream-only files: the first existing
    ``folders`` entry is walked to ``depth`` levels, and files whose path below it matches ``rest_re``
    are served at ``prefix/<that path>``."""

    folders: tuple[str, ...]
    depth: int | None
    rest_re: re.Pattern[str]
    suffix: str = ""


# --------------------------------------------------------------------------------------------- families


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """One dataset family behind annotation paths.

    ``name`` is the ``[[upstream]] name`` (and ``[mount] exclude`` name) for the configurable ones;
    ``prefixes`` are the annotation-path prefixes it covers (the first one is the default ``prefix``).
    """

    name: str
    title: str
    where: str
    terms: str
    layout: str
    prefixes: tuple[str, ...]
    note: str = ""
    configurable: bool = True
    # How an upstream copy is laid out under its ``[[upstream]] root``:
    candidates: Callable[[str], list[str]] | None = None  # relative paths to try for a path's rest, in order
    aliases: tuple[str, ...] = ()  # other annotation prefixes whose rest maps the same way
    frames: bool = False  # an entry is a directory of frames, not a video file
    extras: Extras | None = None  # where files no annotation names sit (served as upstream-only)

    def describe(self) -> str:
        """``Ego4D (ego4d): get it from ...; terms: ...``: the part of a message that names the dataset."""
        return f"{self.title} ({self.name}): get it from {self.where}; terms: {self.terms}"


_DATASETS = (
    DatasetInfo(
        name="charades",
        title="Charades",
        where="prior.allenai.org/projects/charades (Charades_v1_480.zip)",
        terms="non-commercial research licence",
        layout="Charades_v1_480/<ID>.mp4",
        prefixes=("academic_source/Charades",),
        candidates=_charades,
        extras=Extras(("Charades_v1_480", "Charades_v1", ""), 1, re.compile(r"[^/]+\.mp4")),
    ),
    DatasetInfo(
        name="nextqa",
        title="NExT-QA (VidOR videos)",
        where="github.com/doc-doc/NExT-QA; VidOR videos via xdshang.github.io/docs/vidor.html",
        terms="per-video YFCC terms",
        layout="NExTVideo/<dir>/<id>.mp4",
        prefixes=("academic_source/NextQA", "NextQA"),
        candidates=_nextqa,
        aliases=("NextQA/NExTVideo",),
        extras=Extras(("NExTVideo",), 2, re.compile(r"[^/]+/[^/]+\.mp4")),
    ),
    DatasetInfo(
        name="activitynet",
        title="ActivityNet v1.3",
        where="activity-net.org/download.html (full videos by request form)",
        terms="YouTube-sourced videos (YouTube terms of service)",
        layout="v1-2/train/, v1-2/val/ or v1-3/train_val/ with v_<id>.mp4, .mkv or .webm",
        prefixes=("academic_source/activitynet", "ActivityNet-QA"),
        candidates=_activitynet,
        aliases=("ActivityNet-QA/activitynet",),
    ),
    DatasetInfo(
        name="youcook2",
        title="YouCook2",
        where="youcook2.eecs.umich.edu",
        terms="YouTube-sourced videos (YouTube terms of service)",
        layout="<recipe>/<ytid>/split_<n>.mp4 (pre-cut clips)",
        prefixes=("academic_source/youcook2",),
        note="the annotations want pre-cut clips (split_<n>.mp4), which cannot be reproduced from the "
        "raw videos (raw_videos/<split>/<recipe>/<ytid>.<ext>)",
        candidates=_youcook2,
        extras=Extras(("",), 3, re.compile(r"[^/]+/[^/]+/split_\d+\.mp4")),
    ),
    DatasetInfo(
        name="ego4d",
        title="Ego4D",
        where="ego4d-data.org (signed licence, approval takes days; then the `ego4d` CLI)",
        terms="Ego4D licence",
        layout="v2/clips/<uid>.mp4 or v2/full_scale/<uid>.mp4",
        prefixes=("academic_source/ego4d",),
        note="the annotations likely name cut clips: a full_scale video is only used when no clip exists",
        candidates=_ego4d,
        extras=Extras(("v2/clips", "clips", "v1/clips"), 1, re.compile(r"[^/]+\.mp4")),
    ),
    DatasetInfo(
        name="perceptiontest",
        title="Perception Test",
        where="github.com/google-deepmind/perception_test (train_videos.zip, valid_videos.zip)",
        terms="CC-BY 4.0",
        layout="video_<NNNN>.mp4 (as extracted, or under train_videos/ or valid_videos/)",
        prefixes=("perception_test",),
        candidates=_perceptiontest,
    ),
    DatasetInfo(
        name="llava_hound",
        title="LLaVA-Hound frames",
        where="the Hub dataset ShareGPTVideo/train_video_and_instruction, "
        "train_300k/chunk_*.tar.gz (~137 GB)",
        terms="Apache-2.0 (dataset tag)",
        layout="shareVideoGPTV/frames/all_frames/<id>/*.jpg (a directory of JPEG frames per video)",
        prefixes=("shareVideoGPTV/frames/all_frames", "shareVideoGPTV"),
        note="these frame directories live in another Hub repo, not in any shard of this one",
        candidates=_llava_hound,
        frames=True,
    ),
    DatasetInfo(
        name="youtube",
        title="LLaVA-Video-178K YouTube clips",
        where="only the *_youtube_v0_1_videos_K.tar.gz shards of lmms-lab/LLaVA-Video-178K",
        terms="the terms on the lmms-lab/LLaVA-Video-178K dataset card (YouTube-sourced)",
        layout="liwei_youtube_videos/videos/youtube_video_2024/ytb_<id>.mp4",
        prefixes=("liwei_youtube_videos",),
        configurable=False,
    ),
)

REGISTRY: Mapping[str, DatasetInfo] = types.MappingProxyType({d.name: d for d in _DATASETS})

# Every prefix, longest first, so the most specific family wins.
_PREFIXES: tuple[tuple[str, DatasetInfo], ...] = tuple(
    sorted(((p, d) for d in _DATASETS for p in d.prefixes), key=lambda item: -len(item[0]))
)


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it, component-wise."""
    return path == prefix or path.startswith(prefix + "/")


_BY_PREFIX: dict[str, DatasetInfo] = {p: d for p, d in reversed(_PREFIXES)}
_MAX_PREFIX_PARTS = max(p.count("/") + 1 for p, _ in _PREFIXES)


def dataset_for_path(path: str) -> DatasetInfo | None:
    """The dataset family an annotation path belongs to (longest prefix, component-wise), or None."""
    parts = path.split("/", _MAX_PREFIX_PARTS)
    # Called for every wanted path and on every lookup miss: dictionary probes, longest first.
    for count in range(min(len(parts), _MAX_PREFIX_PARTS), 0, -1):
        dataset = _BY_PREFIX.get("/".join(parts[:count]))
        if dataset is not None:
            return dataset
    return None


def is_dataset_ancestor(path: str) -> bool:
    """Whether ``path`` is a proper ancestor directory of a known prefix (``academic_source``)."""
    return any(prefix.startswith(path + "/") for prefix, _ in _PREFIXES)


# The datasets a config may name in ``[[upstream]]`` and ``[mount] exclude``, with their default prefix.
KNOWN_UPSTREAMS: Mapping[str, str] = types.MappingProxyType(
    {d.name: d.prefixes[0] for d in _DATASETS if d.configurable}
)
