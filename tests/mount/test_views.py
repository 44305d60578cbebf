"""Real FUSE mounts of the demo dataset with upstream roots: passthrough bytes and precedence, guidance in the
daemon log, readdir = coverage, ``.vfs/`` reports, filtered annotations, xattrs, the per-directory view and
``[mount] exclude``.

The daemon runs as a subprocess (``tests.mounting.Mount``) after ``llava-vfs index`` built the catalog and the
filtered annotations; truth comes from the demo manifest and from what the test staged in the roots.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ID
from tests.core.test_coverage import readable_records
from tests.mounting import Mount, cli, write_config
from vfs.catalog.annotations import normalise_video_path
from vfs.demo.dataset import video_bytes

pytestmark = pytest.mark.fuse

CHARADES = "academic_source/Charades/"
EGO4D = "academic_source/ego4d/"
FRAMES = "shareVideoGPTV/frames/all_frames/"
MERGED_TOPS = (
    "academic_source",
    "liwei_youtube_videos",
    "NextQA",
    "ActivityNet-QA",
    "perception_test",
    "shareVideoGPTV",
)


def stage(root: Path, demo) -> dict[str, bytes]:
    """Upstream roots: Charades (packed videos with other bytes, two upstream-only IDs, one copy that is a
    symlink out of the root), Ego4D (one clip that no shard holds) and LLaVA-Hound (two frame directories).
    Returns the annotation path -> bytes the mount must serve from upstream."""
    shutil.rmtree(root, ignore_errors=True)
    served: dict[str, bytes] = {}
    inner = root / "charades" / "Charades_v1_480"
    inner.mkdir(parents=True)
    charades = sorted(p for p in demo.videos if p.startswith(CHARADES))
    for path in charades[1:]:
        data = video_bytes(demo, path) + b"-upstream"
        (inner / path.rsplit("/", 1)[1]).write_bytes(data)
        served[path] = data
    (root / "outside.mp4").write_bytes(b"never served")
    (inner / charades[0].rsplit("/", 1)[1]).symlink_to(root / "outside.mp4")  # escapes: the shard serves it
    for name in ("ZZUP1", "ZZUP2"):
        served[f"{CHARADES}{name}.mp4"] = data = f"upstream-only {name} ".encode() * 300
        (inner / f"{name}.mp4").write_bytes(data)
    ego = sorted(p for p in demo.unpacked if p.startswith(EGO4D))[0]
    clip = root / "ego4d" / "v2" / "clips" / ego.rsplit("/", 1)[1]
    clip.parent.mkdir(parents=True)
    clip.write_bytes(video_bytes(demo, ego))
    served[ego] = clip.read_bytes()
    for frame_dir in sorted(p for p in demo.wanted if p.startswith(FRAMES))[:2]:
        d = root / "llava_hound" / frame_dir
        d.mkdir(parents=True)
        for i in range(3):
            served[f"{frame_dir}/c01_{i:04d}.jpg"] = data = f"{frame_dir} frame {i}".encode()
            (d / f"c01_{i:04d}.jpg").write_bytes(data)
    return served


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, demo, _session_hub):
    work = tmp_path_factory.mktemp("views")
    served = stage(work / "up", demo)
    up = work / "up"
    extra = (
        f'[[upstream]]\nname = "charades"\nroot = "{up / "charades"}"\n\n'
        f'[[upstream]]\nname = "ego4d"\nroot = "{up / "ego4d"}"\n\n'
        f'[[upstream]]\nname = "llava_hound"\nroot = "{up / "llava_hound"}"\n\n'
        '[mount]\nviews = ["merged", "repo", "per_directory"]\nnegative_timeout_s = 0\n'
    )
    cfg = write_config(
        work / "c.toml", endpoint=_session_hub.endpoint, repo=REPO_ID, cache_dir=work / "cache", extra=extra
    )
    index = cli("index", "--config", str(cfg), "--no-progress")
    assert index.returncode == 0, index.stderr
    return work, cfg, served


def _wanted_rows(demo) -> list[tuple[str, str]]:
    rows = []
    for repo_path in demo.annotation_files:
        for record in json.loads((demo.root / repo_path).read_text()):
            if record.get("data_source") and isinstance(record.get("video"), str):
                with contextlib.suppress(ValueError):
                    rows.append((record["data_source"], normalise_video_path(record["video"])))
    return sorted(set(rows))


def _files_under(mnt: Path, tops: tuple[str, ...]) -> set[str]:
    out = set()
    for top in tops:
        for dirpath, _dirs, files in os.walk(mnt / top):
            out |= {str(Path(dirpath, f).relative_to(mnt)) for f in files}
    return out


def test_upstream_guidance_coverage_and_filtered_annotations(setup, demo, _session_hub) -> None:
    work, cfg, served = setup
    charades = sorted(p for p in demo.videos if p.startswith(CHARADES))
    absent_ego = sorted(p for p in demo.absent if p.startswith(EGO4D) and p not in served)
    absent_frames = sorted(
        p for p in demo.absent if p.startswith(FRAMES) and not any(s.startswith(p + "/") for s in served)
    )
    dirty = next(p for p in demo.absent if p.startswith("liwei_youtube_videos/"))
    with Mount(cfg, work / "mnt", allow_log=(r"^missing ", r"outside the root; refused")) as m:
        mnt = m.mountpoint
        # 1. Upstream-only videos and frames are served with the upstream bytes; a video in both a shard and
        #    the root comes from the root; the copy that escapes the root through a symlink is the shard's.
        for path, data in served.items():
            assert (mnt / path).read_bytes() == data, path
            assert os.getxattr(mnt / path, "user.vfs.source").startswith(b"upstream:"), path
        assert (mnt / charades[0]).read_bytes() == video_bytes(demo, charades[0])
        assert os.getxattr(mnt / charades[0], "user.vfs.source").startswith(b"shard:")

        # 2. Readdir lists exactly what can be read.
        listed = set(os.listdir(mnt / "academic_source" / "Charades"))
        assert listed == {
            p.rsplit("/", 1)[1] for p in [*charades, f"{CHARADES}ZZUP1.mp4", f"{CHARADES}ZZUP2.mp4"]
        }
        ego_listed = set(os.listdir(mnt / "academic_source" / "ego4d"))
        assert ego_listed == {
            p.rsplit("/", 1)[1] for p in demo.videos.keys() | served.keys() if p.startswith(EGO4D)
        }
        available_files = demo.videos.keys() | served.keys()
        assert _files_under(mnt, MERGED_TOPS) == available_files
        revision = (mnt / ".vfs" / "revision").read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{40}", revision) and revision == _session_hub.commits[-1]

        # 3. Absent paths: ENOENT, and one WARNING each naming the path, the dataset, where to get it.
        made_up = f"{CHARADES}NOPE1.mp4"
        for path in [absent_ego[0], absent_frames[0], dirty, made_up]:
            for _ in range(5):  # negative_timeout_s = 0: every stat reaches the daemon
                with pytest.raises(FileNotFoundError):
                    os.stat(mnt / path)
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / absent_frames[0] / "c01_0000.jpg")  # a frame inside an absent frame directory
        coverage = json.loads((mnt / ".vfs" / "coverage.json").read_text())
        missing_tsv = (mnt / ".vfs" / "missing.tsv").read_text().splitlines()
        stats = json.loads((mnt / ".vfs" / "stats.json").read_text())
        xattrs = {
            name: os.getxattr(mnt / name, "user.vfs.source")
            for name in (".vfs/missing.tsv", "README.md", sorted(demo.videos)[0])
        }
        cached = os.getxattr(mnt / next(iter(served)), "user.vfs.cached")  # an upstream file: always local
        available_json = {
            repo_path: json.loads((mnt / ".vfs" / "available" / repo_path).read_text())
            for repo_path in demo.annotation_files
        }
        readable = {p for p in demo.wanted if os.path.exists(mnt / p)}
        per_dir = [(ds, p) for ds, p in _wanted_rows(demo) if p in readable]
        for ds, path in per_dir:  # the per-directory view serves the same bytes and frame directories
            if (mnt / path).is_dir():
                assert sorted(os.listdir(mnt / ds / path)) == sorted(os.listdir(mnt / path))
            else:
                assert (mnt / ds / path).read_bytes() == (mnt / path).read_bytes()
        ego_source = next(ds for ds, p in _wanted_rows(demo) if p == absent_ego[0])
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / ego_source / absent_ego[0])
    log = m.log()

    lines = {
        p: [ln for ln in log.splitlines() if f"missing {p}: " in ln]
        for p in (absent_ego[0], absent_frames[0], dirty, made_up)
    }
    assert all(len(v) == 1 for v in lines.values()), lines  # once per path, however often it is looked up
    ego_line = lines[absent_ego[0]][0]
    assert "Ego4D" in ego_line and "ego4d-data.org" in ego_line and " WARNING vfs.guidance: " in ego_line
    assert f"expected at {work / 'up' / 'ego4d' / 'v2' / 'clips'}/" in ego_line
    assert "Charades" in lines[made_up][0] and "prior.allenai.org" in lines[made_up][0]
    assert "ShareGPTVideo/train_video_and_instruction" in lines[absent_frames[0]][0]
    assert "malformed record" in lines[dirty][0]

    # 4. Coverage equals the truth; missing.tsv has a row per missing path.
    truth_available = {
        p
        for p in demo.wanted
        if p in demo.videos or p in served or any(s.startswith(p + "/") for s in served)
    }
    assert coverage["total"] == {
        "wanted": len(demo.wanted),
        "available": len(truth_available),
        "missing": len(demo.wanted) - len(truth_available),
    }
    assert readable == truth_available
    assert missing_tsv[0] == "path\treason\tguidance"
    assert {row.split("\t")[0] for row in missing_tsv[1:]} == demo.wanted - truth_available
    assert stats["missing"]["ego4d"]["distinct"] >= 1

    # 5. Filtered annotations: exactly the records whose video can be read, in order.
    for repo_path, records in available_json.items():
        expected = readable_records(json.loads((demo.root / repo_path).read_text()), readable)
        assert records == expected, repo_path
    assert sum(len(r) for r in available_json.values()) > 0

    # 6. xattrs say the source of every kind of file.
    assert xattrs[".vfs/missing.tsv"].startswith(b"local:")
    assert xattrs["README.md"] == b"hub:README.md"
    assert xattrs[sorted(demo.videos)[0]].startswith(b"shard:")
    assert cached == b"1"
    assert per_dir


def test_exclude_and_views(setup, demo) -> None:
    work, cfg, _ = setup
    text = cfg.read_text()
    excluded = work / "exclude.toml"
    excluded.write_text(
        text[: text.index("[[upstream]]")] + '[mount]\nviews = ["merged"]\nexclude = ["nextqa"]\n'
    )
    nextqa = sorted(p for p in demo.wanted if p.startswith(("academic_source/NextQA/", "NextQA/")))
    with Mount(excluded, work / "mnt2", allow_log=(r"^missing ",)) as m:
        mnt = m.mountpoint
        for path in nextqa:
            with pytest.raises(OSError) as info:
                os.stat(mnt / path)
            assert info.value.errno == errno.ENOENT
        assert not _files_under(mnt, ("academic_source/NextQA", "NextQA"))
        assert sorted(os.listdir(mnt)) == sorted([".vfs", *{p.split("/", 1)[0] for p in demo.wanted}])
        assert not (mnt / "0_30_s_academic_v0_1").exists()  # neither the repo nor the per-directory view
        nextqa_annotation = next(a for a in demo.annotation_files if "nextqa_oe" in a)
        assert json.loads((mnt / ".vfs" / "available" / nextqa_annotation).read_text()) == []
        coverage = json.loads((mnt / ".vfs" / "coverage.json").read_text())
    log = m.log()
    assert (
        coverage["by_dataset"]["nextqa"] | {"available": 0, "excluded": True}
        == coverage["by_dataset"]["nextqa"]
    )
    assert f"missing {nextqa[0]}: excluded by configuration" in log
