"""Peers on the same data, from the same emulator: ratarmount, fsspec's ``HfFileSystem``, rclone.

- ratarmount mounting the remote shard over HTTP (fsspec + aiohttp): time to first video including its own
  index build (it reads the whole shard once), then warm member reads; against our mount (index built
  beforehand by ``llava-vfs index``, as users run it) cold and cached.
- ``HfFileSystem`` ranged reads of a large hub file (random 1 MiB ranges) against the same ranges read
  through the mount's ``repo`` view (block-cached hub files), cold and again.
- rclone's http backend needs an HTML directory listing, which the Hub (and the emulator) do not serve;
  the attempt and its outcome are reported.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.common import REPO_ID, BenchEnv, MiB, Sample, build_repo, read_file
from bench.headline import headline_spec
from bench.report import Check, Report


def _wait_mount(proc: subprocess.Popen[bytes], mnt: Path, timeout_s: float) -> None:
    t0 = time.perf_counter()
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"not mounted after {timeout_s}s")
        time.sleep(0.01)


def _stop(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(report: Report, work: Path, data_dir: Path, *, quick: bool, tiny: bool = False) -> None:
    import sys

    repo = build_repo(headline_spec(quick, tiny), data_dir)
    shard = max(repo.shards, key=lambda s: repo.shards[s])
    members = repo.shard_videos(shard)
    sec = report.section("Peers on the same data")
    rows: list[list[str]] = []
    with BenchEnv(repo, work / "peers") as env:
        env.index()
        url = f"{env.emu.endpoint}/datasets/{REPO_ID}/resolve/{env.commit}/{shard}"
        last = members[-1]
        # our mount: time to first video (cold), then every member of the shard again (cached)
        env.clear_data_cache()
        with env.mounted():
            t0 = time.perf_counter()
            read_file(env.mountpoint / last.path)
            ours_first = time.perf_counter() - t0
            for v in members:
                read_file(env.mountpoint / v.path)
            ours_warm = Sample([_timed_pass([env.mountpoint / v.path for v in members]) for _ in range(3)])
        # ratarmount over HTTP
        mnt = work / "ratar-mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        index_dir = work / "ratar-index"
        index_dir.mkdir(exist_ok=True)
        ratar = Path(sys.executable).parent / "ratarmount"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(ratar), "-f", "--index-folders", str(index_dir), url, str(mnt)],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "ratar.log", "wb"),  # noqa: SIM115
        )
        ratar_note = ""
        try:
            _wait_mount(proc, mnt, 600)
            inner = _find(mnt, last.member_name)
            read_file(inner)
            ratar_first = time.perf_counter() - t0
            ratar_warm = Sample([_timed_pass([_find(mnt, v.member_name) for v in members]) for _ in range(3)])
        except Exception as exc:  # reported in the table: a peer failing is a result too
            ratar_first, ratar_warm = float("nan"), Sample([float("nan")])
            ratar_note = f"failed: {exc}; {(work / 'ratar.log').read_text()[-300:]!r}"
        finally:
            _stop(proc, mnt)
        size = sum(v.size for v in members)
        rows.append(
            [
                "time to first video (last member of the shard)",
                f"{ours_first * 1e3:.0f} ms",
                f"ratarmount: {ratar_first * 1e3:.0f} ms (incl. its index build)",
                ratar_note,
            ]
        )
        rows.append(
            [
                "warm reads of every member of the shard",
                f"{size / ours_warm.median / 1e6:.0f} MB/s",
                f"ratarmount: {size / ratar_warm.median / 1e6:.0f} MB/s",
                "",
            ]
        )
        if ratar_first == ratar_first:
            report.check(
                Check("time to first video vs ratarmount (ratio)", ratar_first / ours_first, 1.0, True)
            )
            report.check(
                Check(
                    "warm member reads vs ratarmount (ratio)", ratar_warm.median / ours_warm.median, 1.0, True
                )
            )

        # HfFileSystem ranged reads vs the mount's repo view (block cache) on the same large hub file
        from huggingface_hub import HfFileSystem

        rng = random.Random(3)
        shard_size = repo.shards[shard]
        offsets = [rng.randrange(0, max(1, shard_size - MiB)) for _ in range(8 if tiny else 24)]
        fs = HfFileSystem(endpoint=env.emu.endpoint, skip_instance_cache=True)
        t0 = time.perf_counter()
        with fs.open(f"datasets/{REPO_ID}@{env.commit}/{shard}", "rb", block_size=MiB) as f:
            for off in offsets:
                f.seek(off)
                f.read(MiB)
        hf_s = time.perf_counter() - t0
        env.clear_data_cache()
        with env.mounted():
            path = env.mountpoint / shard
            mount_cold = _ranged(path, offsets)
            mount_again = _ranged(path, offsets)
        hf_note = (
            "HfFileSystem is faster on these cold ranges (1 MiB reads against the mount's 8 MiB blocks)"
            if hf_s < mount_cold
            else "the mount is faster cold too"
        ) + "; only the mount keeps what it fetched"
        rows.append(
            [
                f"{len(offsets)} random 1 MiB ranges of a {shard_size / 1e6:.0f} MB hub file",
                f"cold {mount_cold * 1e3:.0f} ms, again {mount_again * 1e3:.1f} ms",
                f"HfFileSystem: {hf_s * 1e3:.0f} ms",
                hf_note,
            ]
        )

        # rclone: http backend over the resolve URL's directory
        rclone_note = _try_rclone(env, work, shard)
        rows.append(["rclone mount (http backend, full VFS cache)", "", rclone_note, ""])
    Report.table(sec, ["measure", "llava-vfs", "peer", "note"], rows)
    Report.text(
        sec,
        "ratarmount must read the whole shard over HTTP to build its index before the first video; "
        "the mount's "
        "index is built once by `llava-vfs index` (an explicit step, reused by every later mount). Reads of "
        "members it has cached are served by the kernel's page cache (keep_cache), ratarmount's by its "
        "Python process. rclone's http backend lists a directory by parsing an HTML index page, which "
        "neither the Hub nor the emulator serves, so it cannot mount a Hub resolve URL directly.",
    )


def _timed_pass(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        read_file(p)
    return time.perf_counter() - t0


def _ranged(path: Path, offsets: list[int]) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            os.pread(fd, MiB, off)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _find(mnt: Path, name: str) -> Path:
    direct = mnt / name
    if direct.exists():
        return direct
    matches = list(mnt.rglob(Path(name).name))
    if not matches:
        raise FileNotFoundError(name)
    return matches[0]


def _try_rclone(env: BenchEnv, work: Path, shard: str) -> str:
    if shutil.which("rclone") is None:
        return "not installed"
    mnt = work / "rclone-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    directory = shard.rsplit("/", 1)[0]
    url = f"{env.emu.endpoint}/datasets/{REPO_ID}/resolve/{env.commit}/{directory}/"
    proc = subprocess.Popen(
        [
            "rclone",
            "mount",
            ":http:",
            str(mnt),
            "--http-url",
            url,
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(work / "rclone-cache"),
            "--read-only",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "rclone.log", "wb"),  # noqa: SIM115
    )
    try:
        _wait_mount(proc, mnt, 30)
        name = shard.rsplit("/", 1)[1]
        t0 = time.perf_counter()
        n = read_file(mnt / name)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_file(mnt / name)
        again = time.perf_counter() - t0
        return (
            f"whole {n / 1e6:.0f} MB file: cold {n / cold / 1e6:.0f} MB/s, again {n / again / 1e6:.0f} MB/s"
        )
    except Exception as exc:
        log = (work / "rclone.log").read_text()[-200:].replace("\n", " ").replace("|", "/")
        return f"could not be measured: {exc} ({log})"
    finally:
        _stop(proc, mnt)
