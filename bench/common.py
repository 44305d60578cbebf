"""Shared machinery of the benchmarks: generated repos, the emulator + index + mount, timing and statistics.

Responsibility: make benchmark data cheaply and deterministically (real H.264 mp4s padded with seeded
random bytes to realistic sizes, packed into ``.tar.gz`` shards shaped like LLaVA-Video-178K's), serve it
with the local Hub emulator, index it with ``llava-vfs index``, run ``llava-vfs mount`` as a subprocess (as
users run it), and measure: repeated timings reported as median and spread, page cache dropped the same way
for the mount and for the native baseline.

Invariants: every process started here is stopped here (``BenchEnv`` is a context manager); nothing is
written outside the work directory given to it; generated data is keyed by its spec, so a rerun reuses
it and a changed spec regenerates it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vfs.hub.emulator import HubEmulator

log = logging.getLogger(__name__)

MiB = 1 << 20
GB = 10**9
REPO_ID = "lmms-lab/LLaVA-Video-178K"
REPO_ROOT = Path(__file__).resolve().parent.parent
VIDEO_DIR = "0_30_s_academic_v0_1"
READ_CHUNK_BYTES = 1 * MiB


# -- statistics ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """Repeated measurements of one quantity; reported as median [min, max]."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def fmt(self, scale: float = 1.0, digits: int = 3) -> str:
        m, lo, hi = self.median * scale, self.lo * scale, self.hi * scale
        if len(self.values) == 1:
            return f"{m:.{digits}g}"
        return f"{m:.{digits}g} [{lo:.{digits}g}-{hi:.{digits}g}]"

    def to_json(self) -> dict[str, object]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": len(self.values)}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def ratio_sample(numerators: Sequence[float], denominators: Sequence[float]) -> Sample:
    """Per-repetition ratios (paired runs share the machine's noise, so pairing narrows the spread)."""
    return Sample([n / d for n, d in zip(numerators, denominators, strict=True) if d > 0])


# -- page cache --------------------------------------------------------------------------------------------

_POSIX_FADV_DONTNEED = 4


def drop_caches(files: Sequence[Path] = ()) -> str:
    """Drop the page cache: globally as root (``/proc/sys/vm/drop_caches``), else per file (fadvise)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for path in files:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, _POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "fadvise"


def read_file(path: Path | str, chunk_bytes: int = READ_CHUNK_BYTES) -> int:
    """Read a whole file with buffered ``read`` calls of ``chunk_bytes``; returns the bytes read."""
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            total += n
    return total


def read_twice_like_decord(path: Path | str, chunk_bytes: int = READ_CHUNK_BYTES) -> int:
    """decord's access pattern without its decoding cost: read all, seek(0), re-read all, one open."""
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        for _ in range(2):
            f.seek(0)
            while True:
                n = f.readinto(view)
                if not n:
                    break
                total += n
    return total


def decord_sample(path: Path | str) -> int:
    """LLaVA-NeXT's ``process_video_with_decord``: open, 64 uniform frames, seek(0)."""
    import numpy as np
    from decord import VideoReader, cpu

    vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    total = len(vr)
    indices = np.linspace(0, total - 1, min(64, total), dtype=int).tolist()
    frames = vr.get_batch(indices).asnumpy()
    vr.seek(0)
    return int(frames.shape[0])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- generated repos ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    path: str  # the member path inside its shard == the path under the mount
    size: int
    shard: str  # repo path of the shard
    position: int  # index of the member in its shard
    tar_name: str = ""  # the name inside the tar when it differs from ``path`` (``./`` prefixes)

    @property
    def member_name(self) -> str:
        return self.tar_name or self.path


@dataclass
class RepoSpec:
    """Shards of generated videos: ``shards[i]`` lists the member sizes of shard i, in order."""

    name: str
    shards: list[list[int]]
    gzip_level: int = 1
    seed: int = 0

    def key(self) -> str:
        text = json.dumps([self.shards, self.gzip_level, self.seed, 2])
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass
class Repo:
    root: Path
    videos: list[Video] = field(default_factory=list)

    @property
    def shards(self) -> dict[str, int]:
        """repo path -> size in bytes."""
        return {v.shard: (self.root / v.shard).stat().st_size for v in self.videos}

    def shard_videos(self, shard: str) -> list[Video]:
        return [v for v in self.videos if v.shard == shard]


_BASE_MP4: dict[int, bytes] = {}


def video_payload(seed: int, size: int) -> bytes:
    """A decodable mp4 of exactly ``size`` bytes: a tiny real clip plus a ``free`` box of random bytes."""
    from vfs.demo.media import make_mp4, pad_mp4

    base = _BASE_MP4.get(seed % 16)
    if base is None:
        base = make_mp4(seconds=2.0, width=96, height=64, fps=12, seed=seed % 16)
        _BASE_MP4[seed % 16] = base
    if size < len(base) + 16:
        raise ValueError(f"a video of {size} bytes is smaller than the base clip ({len(base)} bytes)")
    return pad_mp4(base, size - len(base), seed=seed)


def _write_shard(path: Path, members: list[tuple[str, int, int]], level: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        import gzip

        with (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for name, size, seed in members:
                import io

                data = video_payload(seed, size)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_717_200_000
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)


def build_repo(spec: RepoSpec, data_dir: Path, *, video_dir: str = VIDEO_DIR) -> Repo:
    """The repo of ``spec`` under ``data_dir/<spec key>``, generated once and reused by later runs."""
    root = data_dir / spec.key()
    done = root / ".complete.json"
    repo = Repo(root)
    seed = spec.seed * 1_000_000
    jobs: list[tuple[Path, list[tuple[str, int, int]], int]] = []
    for k, sizes in enumerate(spec.shards, start=1):
        shard = f"{video_dir}/{video_dir}_videos_{k}.tar.gz"
        members = []
        for i, size in enumerate(sizes):
            seed += 1
            name = f"academic_source/{spec.name}/s{k:03d}/v{seed:07d}.mp4"
            members.append((name, size, seed))
            repo.videos.append(Video(name, size, shard, i))
        jobs.append((root / shard, members, spec.gzip_level))
    if done.exists():
        return repo
    if root.exists():
        shutil.rmtree(root)
    (root / video_dir).mkdir(parents=True)
    (root / ".gitattributes").write_text("*.tar.gz filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text(f"# generated benchmark repo {spec.key()}\n")
    t0 = time.monotonic()
    total = sum(sum(s) for s in spec.shards)
    print(f"[bench] generating {spec.name}: {len(jobs)} shards, {total / GB:.2f} GB ...", flush=True)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(2, len(jobs))) as pool:
        for fut in [pool.submit(_write_shard, *job) for job in jobs]:
            fut.result()
    done.write_text(json.dumps({"spec": spec.key()}))
    print(f"[bench] generated {spec.name} in {time.monotonic() - t0:.1f}s", flush=True)
    return repo


# -- the system under test ---------------------------------------------------------------------------------


def scan_repo(root: Path) -> Repo:
    """The videos of an existing repo directory (e.g. a reviewer's): every ``.mp4`` member of every shard."""
    from vfs.targz.shard_index import normalize_member_path

    repo = Repo(root)
    seen: set[str] = set()
    for shard in sorted(root.rglob("*.tar.gz")):
        rel = shard.relative_to(root).as_posix()
        # "r:gz" (gzip.GzipFile) reads shards made of several concatenated gzip streams; "r|gz" does not.
        with tarfile.open(shard, mode="r:gz") as tar:
            position = 0
            for info in tar:
                if not info.isreg() or not info.name.endswith(".mp4"):
                    continue
                try:
                    path = normalize_member_path(info.name)
                except Exception:  # a hostile name: the mount does not show it either
                    continue
                if path not in seen:
                    seen.add(path)
                    repo.videos.append(Video(path, info.size, rel, position, info.name))
                position += 1
    return repo


def write_config(path: Path, *, endpoint: str, cache_dir: Path, extra: str = "") -> Path:
    path.write_text(
        f'[hub]\nrepo = "{REPO_ID}"\nendpoint = "{endpoint}"\n\n'
        f'[cache]\ndir = "{cache_dir}"\nmax_size = "200GiB"\n\n{extra}'
    )
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    return env


DAEMON_PROBLEMS: list[str] = []


class Daemon:
    """``llava-vfs mount`` in a subprocess; ``ready_s`` is the time from exec to a live mountpoint."""

    def __init__(self, config: Path, mountpoint: Path, log_path: Path) -> None:
        self.config = config
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = float("nan")
        self._log_start = 0

    def start(self, timeout_s: float = 120.0) -> Daemon:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it; closed with the process
        self._log_start = log_file.tell()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vfs.cli",
                "--log-level",
                "WARNING",
                "mount",
                "--config",
                str(self.config),
                str(self.mountpoint),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            cwd=REPO_ROOT,
            env=_env(),
        )
        log_file.close()
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the mount exited with {self.proc.returncode}: {self.log_tail()}")
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"the mount was not ready after {timeout_s}s: {self.log_tail()}")
            time.sleep(0.005)
        self.ready_s = time.perf_counter() - t0
        return self

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        # A benchmark of a failing daemon measures nothing: surface its ERROR lines in the report.
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                    DAEMON_PROBLEMS.append(line[:300])

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BenchEnv:
    """One generated repo served by the emulator, indexed, with helpers to mount it and to reset caches."""

    def __init__(self, repo: Repo, work: Path, *, config_extra: str = "") -> None:
        self.repo = repo
        self.work = work
        self.config_extra = config_extra
        self._emu: HubEmulator | None = None
        self.commit = ""
        self.cache_dir = work / "cache"
        self.mountpoint = work / "mnt"
        self.config = work / "config.toml"
        self.index_s = float("nan")
        self.index_bytes = 0

    @property
    def emu(self) -> HubEmulator:
        assert self._emu is not None, "use BenchEnv as a context manager"
        return self._emu

    def __enter__(self) -> BenchEnv:
        from vfs.hub.emulator import HubEmulator

        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self._emu = HubEmulator(repo_id=REPO_ID, max_records=200_000)
        self._emu.start()
        self.commit = self.emu.commit(self.repo.root)
        write_config(
            self.config, endpoint=self.emu.endpoint, cache_dir=self.cache_dir, extra=self.config_extra
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._emu is not None:
            self._emu.stop()
        with contextlib.suppress(OSError):
            if not os.path.ismount(self.mountpoint):
                shutil.rmtree(self.work, ignore_errors=True)

    def index(self) -> float:
        """Run ``llava-vfs index`` (subprocess); returns its wall time."""
        self.emu.reset_log()
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vfs.cli",
                "--log-level",
                "WARNING",
                "index",
                "--config",
                str(self.config),
                "--no-progress",
            ],
            cwd=REPO_ROOT,
            env=_env(),
            capture_output=True,
            text=True,
        )
        self.index_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"llava-vfs index failed ({proc.returncode}): {proc.stderr[-2000:]}")
        self.index_bytes = self.emu.bytes_sent()
        return self.index_s

    def daemon(self) -> Daemon:
        return Daemon(self.config, self.mountpoint, self.work / "daemon.log")

    def clear_data_cache(self) -> None:
        """Forget every cached video (the index and catalog stay): the next reads are cold."""
        shutil.rmtree(self.cache_dir / "data", ignore_errors=True)

    def cache_files(self) -> list[Path]:
        root = self.cache_dir / "data"
        return [p for p in root.rglob("*") if p.is_file()]

    def index_files(self) -> list[Path]:
        return [p for p in (self.cache_dir / "index").rglob("*.idx")]

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Daemon]:
        with self.daemon() as d:
            yield d


# -- the user's alternative: download the shard, extract the member ---------------------------------------


def download_and_untar(env: BenchEnv, video: Video, dest: Path) -> Path:
    """Today's workflow: ``hf_hub_download`` of the shard into a fresh cache, then ``tar -x`` of the
    member."""
    from huggingface_hub import hf_hub_download

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shard = hf_hub_download(
        repo_id=REPO_ID,
        filename=video.shard,
        repo_type="dataset",
        revision=env.commit,
        cache_dir=dest / "hf-cache",
        endpoint=env.emu.endpoint,
    )
    out = dest / "x"
    out.mkdir()
    subprocess.run(["tar", "-xzf", shard, "-C", str(out), video.member_name], check=True)
    return out / video.member_name


def ranged_get(endpoint: str, commit: str, path: str, start: int, end: int) -> int:
    """A raw ranged GET (resolve, follow the redirect, read the body) with httpx; returns the bytes read."""
    import httpx2 as httpx

    url = f"{endpoint}/datasets/{REPO_ID}/resolve/{commit}/{path}"
    n = 0
    with (
        httpx.Client(follow_redirects=True, timeout=60) as client,
        client.stream(
            "GET", url, headers={"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        ) as resp,
    ):
        resp.raise_for_status()
        for chunk in resp.iter_raw(1 << 20):
            n += len(chunk)
    return n


def libc_sync() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).sync()
