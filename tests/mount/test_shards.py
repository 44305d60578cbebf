"""Shard videos end to end: `llava-vfs index` (real CLI) -> mount -> videos from seek-indexed tar.gz shards.

Real H.264 mp4s in gzip tar shards of several flavours (vfs.demo.dataset), the real huggingface_hub code
path against the emulator, a real FUSE mount, and decord reading as LLaVA-NeXT does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli, write_config
from vfs.demo.dataset import DemoSpec, build_demo_dataset
from vfs.hub.emulator import HubEmulator

pytestmark = pytest.mark.fuse
SKIPPED = (r"skipped video", r"records skipped")


def process_video_with_decord(video_file: str, frames_upbound: int = 64) -> np.ndarray:
    """LLaVA-NeXT's reader (llava/train/train.py), reduced to what touches the file system."""
    from decord import VideoReader, cpu

    vr = VideoReader(video_file, ctx=cpu(0), num_threads=1)
    total_frame_num = len(vr)
    uniform_sampled_frames = np.linspace(0, total_frame_num - 1, frames_upbound, dtype=int)
    frame_idx = uniform_sampled_frames.tolist()
    video = vr.get_batch(frame_idx).asnumpy()
    vr.seek(0)
    return video


def index(cfg: Path, *args: str) -> str:
    result = cli("index", "--config", str(cfg), "--no-progress", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_index_then_every_video_byte_exact_and_decodable(tmp_path, hub, demo) -> None:
    cfg = write_config(tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache")
    out = index(cfg, "--jobs", "3")
    assert f"{len(demo.videos)} videos packed" in out
    hub.reset_log()
    # the absent videos probed at the end are logged loudly, with guidance
    with Mount(cfg, tmp_path / "mnt", allow_log=(*SKIPPED, r"^missing ")) as m:
        mnt = m.mountpoint
        for rel, video in sorted(demo.videos.items()):
            assert os.stat(mnt / rel).st_size == video.size, rel  # exact before any download
        assert hub.bytes_sent(origin="cdn") == 0
        for rel, video in sorted(demo.videos.items()):
            frames = process_video_with_decord(str(mnt / rel))
            assert frames.shape[0] == 64 and frames.ndim == 4, rel
            assert hashlib.sha256((mnt / rel).read_bytes()).hexdigest() == video.sha256, rel
        # `ls` of each video directory lists exactly the packed videos there
        by_dir: dict[str, set[str]] = {}
        for rel in demo.videos:
            parent, name = rel.rsplit("/", 1)
            by_dir.setdefault(parent, set()).add(name)
        for parent, names in by_dir.items():
            listed = {e.name for e in os.scandir(mnt / parent) if e.is_file()}
            assert listed == names, parent
        for rel in demo.absent:
            assert not (mnt / rel).exists(), rel


def test_index_is_idempotent_and_survives_restart(tmp_path, hub, demo) -> None:
    cfg = write_config(tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache")
    index(cfg)
    hub.reset_log()
    again = index(cfg)
    assert "(0 built now, 0 bytes read)" in again
    shard_bytes = sum(hub.bytes_sent(origin="cdn", file=s) for s in demo.shards)
    assert shard_bytes == 0  # indexes were reused, no shard was streamed again
    rel, video = sorted(demo.videos.items())[0]
    with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:
        assert hashlib.sha256((m.mountpoint / rel).read_bytes()).hexdigest() == video.sha256
    hub.reset_log()
    with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:  # restart: served from the cache
        assert hashlib.sha256((m.mountpoint / rel).read_bytes()).hexdigest() == video.sha256
    assert hub.bytes_sent(origin="cdn") == 0


def test_cold_read_of_realistic_videos_fetches_about_their_size(tmp_path) -> None:
    """Videos of about 0.7-1.5 MB: one cold read from the middle of each shard costs <= 1.25x its bytes."""
    spec = DemoSpec(
        videos_per_dir=6,
        shards_per_dir=2,
        extra_padding_bytes=1_400_000,
        directories=("0_30_s_academic_v0_1", "0_30_s_youtube_v0_1"),
    )
    manifest = build_demo_dataset(tmp_path / "repo", spec=spec)
    with HubEmulator(repo_id=REPO_ID) as emu:
        emu.commit(manifest.root)
        cfg = write_config(
            tmp_path / "c.toml", endpoint=emu.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache"
        )
        index(cfg)
        with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:
            emu.reset_log()
            picked = []
            for shard in manifest.shards.values():
                members = [p for p in shard.members if p in manifest.videos]
                if members:
                    picked.append(members[len(members) // 2])
            for rel in picked:
                assert (
                    hashlib.sha256((m.mountpoint / rel).read_bytes()).hexdigest()
                    == manifest.videos[rel].sha256
                )
            fetched = emu.bytes_sent()
            video_bytes = sum(manifest.videos[p].size for p in picked)
            assert min(manifest.videos[p].size for p in picked) > 600_000
            assert fetched <= 1.25 * video_bytes, (fetched, video_bytes)
            print(
                f"cold reads: {fetched} bytes fetched for {video_bytes} video bytes "
                f"({fetched / video_bytes:.3f}x) over {len(picked)} videos"
            )


def test_shard_replaced_under_a_new_commit(tmp_path) -> None:
    """A re-uploaded shard (new bytes, new LFS sha256) gets a new index; the mount serves the new bytes."""
    spec = DemoSpec(videos_per_dir=4, shards_per_dir=1, directories=("0_30_s_academic_v0_1",))
    manifest = build_demo_dataset(tmp_path / "v1", spec=spec)
    shard_rel = next(iter(manifest.shards))
    victim = sorted(manifest.shards[shard_rel].members)[0]
    with HubEmulator(repo_id=REPO_ID) as emu:
        emu.commit(manifest.root)
        cfg = write_config(
            tmp_path / "c.toml", endpoint=emu.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache"
        )
        index(cfg)
        with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:
            old = (m.mountpoint / victim).read_bytes()
        assert hashlib.sha256(old).hexdigest() == manifest.videos[victim].sha256

        # v2: the same tree, but the shard re-packed with one member's bytes changed (a re-encode)
        v2 = tmp_path / "v2"
        shutil.copytree(manifest.root, v2)
        new_bytes = old[:-16] + b"re-encoded!!!!!!"
        repack(manifest.root / shard_rel, v2 / shard_rel, {victim: new_bytes})
        commit2 = emu.commit(v2)
        out = index(cfg)
        assert "(1 built now" in out
        with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:
            assert (m.mountpoint / ".vfs" / "revision").read_text().strip() == commit2
            assert (m.mountpoint / victim).read_bytes() == new_bytes
            assert os.stat(m.mountpoint / victim).st_size == len(new_bytes)
        idx_files = list((tmp_path / "cache" / "index").rglob("*.idx"))
        assert len(idx_files) == 2  # one per shard sha256; the old index is not reused for the new shard


def repack(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    import io

    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz", format=tarfile.PAX_FORMAT) as tout:
        for info in tin:
            data = tin.extractfile(info).read() if info.isfile() else None
            name = info.name.removeprefix("./")
            if name in replace:
                data = replace[name]
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data) if data is not None else None)


def test_shards_stored_without_lfs_are_indexed_by_blob_id(tmp_path) -> None:
    """A mirror without LFS rules serves small shards as regular git files: they still work."""
    spec = DemoSpec(videos_per_dir=3, shards_per_dir=1, directories=("0_30_s_youtube_v0_1",))
    manifest = build_demo_dataset(tmp_path / "repo", spec=spec)
    (manifest.root / ".gitattributes").unlink()
    with HubEmulator(repo_id=REPO_ID) as emu:
        emu.commit(manifest.root)
        cfg = write_config(
            tmp_path / "c.toml", endpoint=emu.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache"
        )
        out = index(cfg)
        assert f"{len(manifest.videos)} videos packed" in out
        with Mount(cfg, tmp_path / "mnt", allow_log=SKIPPED) as m:
            for rel, video in manifest.videos.items():
                assert hashlib.sha256((m.mountpoint / rel).read_bytes()).hexdigest() == video.sha256
