"""Peers on the same data, from the same emulator: ratarmount, fsspec's ``HfFileSystem``, rclone.

- ratarmount mounting the remote shard over HTTP (fsspec + aiohttp): time to first video including its own
  index build (it reads the whole shard once), then warm member reads; against our mount (index built
  beforehand by ``llava-vfs index``, as users run it) cold and cached.
- ``HfFileSystem`` ranged reads of a large hub file (random 1 MiB ranges) against the same ranges read
  through the mount's ``repo`` view (block-cached hub files), cold and again.
- rclone mount (Debian's rclone, http backend, ``--vfs-cache-mode full``) against the mount's ``repo``
  view on one large plain hub file (a shard of 200+ MB): a whole sequential read and random 1 MiB ranges,
  cold (fresh caches) and warm, with the CDN unthrottled and paced per connection like a real CDN.
  rclone's http backend lists a directory only by parsing a web server's HTML index page, which the Hub
  does not serve: the emulator serves one behind a bench-only flag (``html_directory_index``, off by
  default), so rclone lists the directory and then reads the same bytes from the same emulator the way it
  would read any web server (a HEAD per file, then ranged GETs of the resolve URL, redirected to the CDN).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO_ID, BenchEnv, MiB, RepoSpec, Sample, build_repo, drop_caches, read_file
from bench.headline import headline_spec
from bench.report import Check, Report

# A realistic per-connection CDN rate for the paced passes (the Hub's CDN gives about 40-60 MB/s).
CDN_BYTES_PER_S = 50e6


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

    Report.table(sec, ["measure", "llava-vfs", "peer", "note"], rows)
    Report.text(
        sec,
        "ratarmount must read the whole shard over HTTP to build its index before the first video; "
        "the mount's "
        "index is built once by `llava-vfs index` (an explicit step, reused by every later mount). Reads of "
        "members it has cached are served by the kernel's page cache (keep_cache), ratarmount's by its "
        "Python process.",
    )
    _rclone_section(report, work, data_dir, quick=quick, tiny=tiny)


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


# -- rclone mount against the mount's repo view, on one large plain hub file ---------------------------------


def rclone_spec(tiny: bool) -> RepoSpec:
    """One shard of 256 MB (24 MB tiny), read as a plain hub file: its bytes are what matters, not its
    members (8 MB each, incompressible like real videos)."""
    count = 3 if tiny else 32
    return RepoSpec("peerfile", [[8_000_000 + k for k in range(count)]], gzip_level=1)


@dataclass
class _Side:
    """One way to read the file: a context manager giving its path behind a fresh, cold cache."""

    name: str
    cold: Callable[[], AbstractContextManager[Path]]
    results: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)


def _rclone_section(report: Report, work: Path, data_dir: Path, *, quick: bool, tiny: bool) -> None:
    sec = report.section("rclone mount on a large plain hub file")
    if shutil.which("rclone") is None:
        Report.text(sec, "rclone is not installed (`make bench` installs it from Debian): not measured.")
        return
    repo = build_repo(rclone_spec(tiny), data_dir)
    shard, size = next(iter(repo.shards.items()))
    rng = random.Random(5)
    offsets = [rng.randrange(0, size - MiB) for _ in range(8 if tiny else 24)]
    reps = 1 if tiny else 3
    with BenchEnv(repo, work / "peers-rclone") as env:
        env.index()
        env.emu.html_directory_index = True  # bench-only: rclone's http backend needs an HTML index page
        directory, name = shard.rsplit("/", 1)
        url = f"{env.emu.endpoint}/datasets/{REPO_ID}/resolve/{env.commit}/{directory}/"

        @contextmanager
        def ours() -> Iterator[Path]:
            env.clear_data_cache()
            with env.mounted():
                yield env.mountpoint / shard

        @contextmanager
        def theirs() -> Iterator[Path]:
            mnt, cache = work / "rclone-mnt", work / "rclone-cache"
            shutil.rmtree(cache, ignore_errors=True)
            with _rclone_mount(url, mnt, cache, work / "rclone.log"):
                yield mnt / name

        sides = [_Side("llava-vfs", ours), _Side("rclone", theirs)]
        try:
            for side in sides:
                for rate in (None, CDN_BYTES_PER_S):
                    env.emu.cdn_bytes_per_s = rate
                    tag = "paced" if rate else "free"
                    with side.cold() as path:
                        env.emu.reset_log()
                        side.add(f"seq cold {tag}", size / _timed_read(path) / 1e6)
                        side.add(f"seq amp {tag}", env.emu.bytes_sent(origin="cdn") / size)
                        if rate is None:
                            for _ in range(reps):
                                drop_caches()
                                side.add("seq warm", size / _timed_read(path) / 1e6)
                                side.add("seq hot", size / _timed_read(path) / 1e6)
                    with side.cold() as path:
                        env.emu.reset_log()
                        side.add(f"ranges cold {tag}", _ranged(path, offsets) * 1e3)
                        side.add(f"ranges amp {tag}", env.emu.bytes_sent(origin="cdn") / (len(offsets) * MiB))
                        for _ in range(reps):
                            side.add("ranges warm", _ranged(path, offsets) * 1e3)
        except Exception as exc:  # a peer failing is a result too: say what happened
            log = (work / "rclone.log").read_text()[-300:] if (work / "rclone.log").exists() else ""
            Report.text(sec, f"Failed: {exc!r} {log!r}")
            return
        finally:
            env.emu.cdn_bytes_per_s = None
    ours_r, theirs_r = sides[0].results, sides[1].results
    rate_mb = f"{CDN_BYTES_PER_S / 1e6:.0f} MB/s"
    n = len(offsets)
    measures = [
        ("seq cold free", "sequential read, cold, CDN unthrottled (MB/s)", True),
        ("seq amp free", "  bytes fetched / file size", False),
        ("seq cold paced", f"sequential read, cold, CDN at {rate_mb} per connection (MB/s)", True),
        ("seq amp paced", "  bytes fetched / file size", False),
        ("seq warm", "sequential read, warm: page cache dropped, each from its own disk cache (MB/s)", True),
        ("seq hot", "sequential read, hot: again at once (MB/s)", True),
        ("ranges cold free", f"{n} random 1 MiB reads, cold, CDN unthrottled (ms)", False),
        ("ranges amp free", "  bytes fetched / bytes read", False),
        ("ranges cold paced", f"{n} random 1 MiB reads, cold, CDN at {rate_mb} per connection (ms)", False),
        ("ranges amp paced", "  bytes fetched / bytes read", False),
        ("ranges warm", f"the same {n} reads again (ms)", False),
    ]
    rows = []
    for key, label, higher_is_better in measures:
        a, b = Sample(ours_r[key]), Sample(theirs_r[key])
        if key.startswith(("seq amp", "ranges amp")):
            rows.append([label, f"{a.median:.2f}x", f"{b.median:.2f}x", ""])
            continue
        better = a.median > b.median if higher_is_better else a.median < b.median
        ratio = a.median / b.median if higher_is_better else b.median / a.median
        rows.append(
            [label, a.fmt(), b.fmt(), f"llava-vfs {ratio:.2f}x" + ("" if better else " (rclone wins)")]
        )
    Report.text(
        sec,
        f"Data: one {size / 1e6:.0f} MB file of the repo (a `.tar.gz` shard, read as a plain hub file "
        "through the mount's `repo` view, fetched in blocks and cached), against rclone "
        f"{_rclone_version()} `mount --vfs-cache-mode full` with its http backend on the same emulator. "
        "Cold: fresh caches and a fresh mount for each side; each cold figure is one run, warm and hot ones "
        f"are {reps} runs. Last column: llava-vfs over rclone, above 1 when llava-vfs is faster.",
    )
    Report.table(sec, ["measure", "llava-vfs", "rclone", "llava-vfs / rclone"], rows)
    wins = [r[0].strip() for r in rows if r[3].endswith("(rclone wins)")]
    Report.text(
        sec,
        "Where rclone wins: " + ("; ".join(wins) if wins else "nowhere in this run") + ". "
        "How rclone reads: its http backend lists the directory from the HTML page (a bench-only emulator "
        "flag: the real Hub has no such page, so rclone cannot list a Hub repo), HEADs each file for its "
        "size, and sends every ranged GET to the resolve URL, which redirects to the CDN: one resolve per "
        "range, which the real Hub rate-limits (about 3,000 resolves per 5 minutes per IP); the mount "
        "resolves each file once. Neither side can verify such a file's bytes before serving them (the Hub "
        "lists one checksum for the whole file): rclone serves what arrives, the mount checks each block's "
        "exact length (and the checksum of a file that fits in one block).",
    )
    report.data["peers_rclone"] = {"file_bytes": size, "llava_vfs": ours_r, "rclone": theirs_r}


@contextmanager
def _rclone_mount(url: str, mnt: Path, cache: Path, log_path: Path) -> Iterator[None]:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
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
                str(cache),
                "--read-only",
                "--config",
                "/dev/null",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        _wait_mount(proc, mnt, 30)
        yield
    finally:
        _stop(proc, mnt)


def _rclone_version() -> str:
    out = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False).stdout
    return out.split("\n", 1)[0].removeprefix("rclone ").strip() or "(unknown version)"


def _timed_read(path: Path) -> float:
    t0 = time.perf_counter()
    read_file(path)
    return time.perf_counter() - t0
