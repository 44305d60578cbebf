"""``llava-vfs yaml``: a LLaVA-NeXT data YAML pointing into the mount, loaded the way LLaVA-NeXT loads it."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli, write_config
from vfs.commands.yaml import run_yaml
from vfs.config import load_config
from vfs.errors import ConfigError

pytestmark = pytest.mark.allow_log(r"skipped video", r"records skipped")


@pytest.fixture
def template(indexed_demo_cache: Path) -> Path:
    return indexed_demo_cache


@pytest.fixture
def node(tmp_path: Path, template: Path, hub) -> Path:
    shutil.copytree(template, tmp_path / "cache")
    return write_config(
        tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache"
    )


def generate(config_path: Path, mountpoint: Path, **kw) -> dict:
    out = io.StringIO()
    run_yaml(load_config(config_path), mountpoint=mountpoint, out=out, **kw)
    return yaml.safe_load(out.getvalue())


def llava_next_samples(data: dict, video_folder: Path) -> list[tuple[str, bool]]:
    """What LLaVA-NeXT's LazySupervisedDataset does with the YAML: load each json_path (``.json``), apply the
    sampling strategy, then join ``video_folder`` and each record's ``video``. Returns (video, exists)."""
    samples = []
    for dataset in data["datasets"]:
        json_path = dataset["json_path"]
        assert json_path.endswith(".json")
        strategy = dataset.get("sampling_strategy", "all")
        with open(json_path) as fh:
            records = json.load(fh)
        if ":" in strategy:
            kind, number = strategy.split(":")
            count = int(number)
            records = records[:count] if kind == "first" else records[-count:] if kind == "end" else records
        for record in records:
            video = record.get("video")
            if isinstance(video, str):
                # hostile records (absolute paths, '..') would point outside the mount: count them as missing
                full = os.path.normpath(os.path.join(video_folder, video))
                inside = full.startswith(str(video_folder) + os.sep)
                samples.append((video, inside and os.path.exists(full)))
    return samples


def test_yaml_lists_every_annotation_file(node: Path, demo, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    data = generate(node, mnt)
    assert [d["json_path"] for d in data["datasets"]] == [str(mnt / a) for a in sorted(demo.annotation_files)]
    assert {d["sampling_strategy"] for d in data["datasets"]} == {"all"}

    available = generate(node, mnt, available_only=True, sampling_strategy="random:10%")
    assert [d["json_path"] for d in available["datasets"]] == [
        str(mnt / ".vfs" / "available" / a) for a in sorted(demo.annotation_files)
    ]
    assert {d["sampling_strategy"] for d in available["datasets"]} == {"random:10%"}

    youtube = generate(node, mnt, dirs=("*_youtube_v0_1",), sampling_strategy="first:5")
    assert [d["json_path"] for d in youtube["datasets"]] == [
        str(mnt / a) for a in sorted(demo.annotation_files) if a.startswith("0_30_s_youtube_v0_1/")
    ]
    for bad in ("some", "first:", "first:x", "middle:10", "random:10%%"):
        with pytest.raises(ConfigError) as info:
            generate(node, mnt, sampling_strategy=bad)
        assert info.value.exit_code == 2
    with pytest.raises(ConfigError):
        generate(node, mnt, dirs=("nothing_*",))


@pytest.mark.fuse
def test_yaml_against_a_live_mount_drops_no_sample_silently(node: Path, demo, tmp_path: Path) -> None:
    out_file = tmp_path / "data.yaml"
    # the trainer's existence checks of absent videos are logged with guidance: expected here
    with Mount(node, tmp_path / "mnt", allow_log=(r"^missing ",)) as m:
        result = cli("yaml", "--config", str(node), "--mount", str(m.mountpoint), "--output", str(out_file))
        assert result.returncode == 0, result.stderr  # every json_path exists in the mount
        full = yaml.safe_load(out_file.read_text())
        samples = llava_next_samples(full, m.mountpoint)
        missing = {video for video, ok in samples if not ok}
        assert samples and missing  # the demo wants videos no shard holds: the trainer would skip them
        assert missing <= demo.absent | set(demo.dirty)

        result = cli("yaml", "--config", str(node), "--mount", str(m.mountpoint), "--available-only")
        assert result.returncode == 0, result.stderr
        filtered = llava_next_samples(yaml.safe_load(result.stdout), m.mountpoint)
        assert filtered and all(ok for _, ok in filtered)  # exactly the readable samples
        assert {v for v, _ in filtered} == {v for v, ok in samples if ok}


def test_yaml_without_a_catalog_says_what_to_do(tmp_path: Path, hub) -> None:
    cfg = write_config(tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache")
    result = cli("yaml", "--config", str(cfg), "--mount", str(tmp_path / "mnt"))
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1 and "llava-vfs index" in result.stderr
