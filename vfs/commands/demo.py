"""``llava-vfs demo`` / ``make demo``: the main job end to end on a small generated dataset.

Builds the demo dataset (real H.264 mp4s in gzip tar shards, annotation JSONs shaped like the real ones,
a few dirty records), serves it with the local Hub emulator, runs ``llava-vfs index``, mounts it in a
temporary directory, reads every annotated video through the mount exactly as LLaVA-NeXT does
(``decord.VideoReader(path, ctx=cpu(0), num_threads=1)``, 64 uniformly spaced frames), prints a report,
and unmounts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vfs.commands.index import run_index
from vfs.config import load_config
from vfs.demo.dataset import DemoSpec, build_demo_dataset
from vfs.hub.emulator import HubEmulator

REPO_ID = "lmms-lab/LLaVA-Video-178K"


def _read_like_llava_next(path: str) -> int:
    """LLaVA-NeXT's ``process_video_with_decord``: open, 64 uniform frames, seek(0). Returns frames read."""
    import numpy as np  # the demo extra: the filesystem itself never needs numpy or decord
    from decord import VideoReader, cpu  # the demo extra

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    total = len(vr)
    indices = np.linspace(0, total - 1, min(64, total), dtype=int).tolist()
    frames = vr.get_batch(indices).asnumpy()
    vr.seek(0)
    return int(frames.shape[0])


def _wait_mounted(proc: subprocess.Popen[bytes], mountpoint: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            raise RuntimeError(f"the mount exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the mount did not become ready")
        time.sleep(0.05)


def run_demo(*, workdir: Path | None = None, keep: bool = False) -> int:

    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="llava-vfs-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    repo_dir, cache_dir, mountpoint = work / "repo", work / "cache", work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    t0 = time.monotonic()
    print(f"[demo] building the demo dataset in {repo_dir} ...", flush=True)
    # Videos padded to 0.5-1 MB (still valid mp4s) so the fetch figures look like the real dataset's.
    manifest = build_demo_dataset(repo_dir, spec=DemoSpec(extra_padding_bytes=1_000_000))
    print(
        f"[demo] {len(manifest.videos)} packed videos, {len(manifest.annotation_files)} annotation files "
        f"({time.monotonic() - t0:.1f}s)",
        flush=True,
    )

    proc: subprocess.Popen[bytes] | None = None
    with HubEmulator(repo_id=REPO_ID) as emu:
        commit = emu.commit(repo_dir)
        print(f"[demo] hub emulator at {emu.endpoint} serving {REPO_ID}@{commit[:12]}", flush=True)
        config_path = work / "config.toml"
        config_path.write_text(
            f'[hub]\nrepo = "{REPO_ID}"\nendpoint = "{emu.endpoint}"\n\n[cache]\ndir = "{cache_dir}"\n'
            'max_size = "10GiB"\n'  # the demo's few MB; the default would outgrow a small disk, and say so
        )
        config = load_config(config_path)
        t_index = time.monotonic()
        if run_index(config, jobs=2, progress=sys.stdout.isatty()) != 0:
            print("[demo] indexing reported errors", flush=True)
        index_s = time.monotonic() - t_index
        index_bytes = emu.bytes_sent()
        emu.reset_log()

        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vfs.cli",
                "--log-level",
                "WARNING",
                "mount",
                "--config",
                str(config_path),
                str(mountpoint),
            ]
        )
        try:
            _wait_mounted(proc, mountpoint)
            videos = sorted(manifest.videos)
            frames = 0
            read_ok = 0
            failures: list[str] = []
            first_video_s: float | None = None
            t_read = time.monotonic()
            for rel in videos:
                t_one = time.monotonic()
                try:
                    frames += _read_like_llava_next(str(mountpoint / rel))
                    read_ok += 1
                except Exception as exc:  # the demo reports every failure, as the trainer would hide it
                    failures.append(f"{rel}: {exc}")
                if first_video_s is None:
                    first_video_s = time.monotonic() - t_one
            read_s = time.monotonic() - t_read
            video_bytes = sum(v.size for v in manifest.videos.values())
            fetched = emu.bytes_sent()
            listed = sum(1 for p in mountpoint.rglob("*.mp4"))
            total = json.loads((mountpoint / ".vfs" / "coverage.json").read_text())["total"]
            print("")
            print("llava-vfs demo report")
            print(f"  revision            {(mountpoint / '.vfs' / 'revision').read_text().strip()}")
            print(f"  index               {index_s:.1f}s, {index_bytes / 1e6:.1f} MB read from the hub")
            print(
                f"  videos read         {read_ok} of {len(videos)} with decord (64 uniform frames each), "
                f"{frames} frames in {read_s:.1f}s"
            )
            print(f"  time to first video {first_video_s or 0:.3f}s")
            print(
                f"  bytes fetched       {fetched / 1e6:.2f} MB for {video_bytes / 1e6:.2f} MB of video "
                f"({fetched / max(video_bytes, 1):.3f}x)"
            )
            print(
                f"  coverage            {total['available']} of {total['wanted']} wanted videos available, "
                f"{total['missing']} missing (see .vfs/missing.tsv); {listed} .mp4 files listed"
            )
            for failure in failures:
                print(f"  FAILED {failure}")
            return 0 if not failures else 1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            if os.path.ismount(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
            if own_dir and not keep:
                shutil.rmtree(work, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    return run_demo(workdir=Path(args.workdir) if args.workdir else None, keep=args.keep)
