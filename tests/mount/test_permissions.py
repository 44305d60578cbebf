"""Multi-user nodes: through an ``allow_other`` mount each user reads exactly what they may read underneath.

Real mounts, real users: the daemon runs as root (under a capability bound like the shipped unit's where
that is the point), readers run as other uids and groups through ``setpriv`` (numeric ids need no
accounts). Upstream roots and mountpoints live outside pytest's 0700 temp root, so other users can reach
them at all. Ids: 65534 (nobody, in no group), 4000 (owns the licensed dataset), group 4242 (its
licensees), group 4343 (the lab allowed to read what the Hub serves).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ID
from tests.mounting import Mount, write_config
from vfs.demo.dataset import video_bytes

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="reading as other users needs root (setpriv)"),
]

NOBODY, OWNER, LICENSEES, LAB = 65534, 4000, 4242, 4343
EGO4D = "academic_source/ego4d/"
CHARADES = "academic_source/Charades/"
FRAMES = "shareVideoGPTV/frames/all_frames"
CANNOT_READ = r"the daemon may not read"


def read_as(path: Path, uid: int, gid: int, groups: tuple[int, ...] = ()) -> bytes | str:
    """The bytes ``uid``/``gid`` with supplementary ``groups`` read, or the error ``cat`` gave."""
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    done = subprocess.run(
        ["setpriv", "--reuid", str(uid), "--regid", str(gid), *group_args, "cat", str(path)],
        capture_output=True,
        timeout=60,
    )
    return done.stdout if done.returncode == 0 else done.stderr.decode(errors="replace")


def denied(result: bytes | str) -> bool:
    return isinstance(result, str) and "Permission denied" in result


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can reach (pytest's temp root is 0700), removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="llava-vfs-users-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def stage(top: Path, demo) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Upstream roots with real permissions. Charades: one file anyone may read, one only root may read.
    Ego4D, licensed: ``v2/`` belongs to 4000:4242 with mode 0750, so the clip below it, though 0644
    itself, is for the owner and group 4242 only. Returns the bytes by annotation path."""
    served: dict[str, bytes] = {}
    charades = top / "charades" / "Charades_v1_480"
    charades.mkdir(parents=True)
    for name, mode in (("ZZOPEN", 0o644), ("ZZSECRET", 0o600)):
        data = f"upstream-only {name} ".encode() * 500
        (charades / f"{name}.mp4").write_bytes(data)
        (charades / f"{name}.mp4").chmod(mode)
        served[f"{CHARADES}{name}.mp4"] = data
    clips = top / "ego4d" / "v2" / "clips"
    clips.mkdir(parents=True)
    ego = sorted(p for p in demo.unpacked if p.startswith(EGO4D))[0]
    clip = clips / ego.rsplit("/", 1)[1]
    clip.write_bytes(video_bytes(demo, ego))
    served[ego] = clip.read_bytes()
    for path, mode in ((top / "ego4d" / "v2", 0o750), (clips, 0o755), (clip, 0o644)):
        os.chown(path, OWNER, LICENSEES)
        path.chmod(mode)
    frames = top / "llava_hound" / "all_frames" / frame_dir_of(demo)
    frames.mkdir(parents=True)
    for n in (1, 2):
        (frames / f"{n:06d}.jpg").write_bytes(f"frame {n}".encode() * 100)
    os.chown(frames, OWNER, LICENSEES)
    frames.chmod(0o750)
    for path in (top, top / "charades", charades, top / "ego4d", top / "llava_hound", frames.parent):
        path.chmod(0o755)
    return served


def frame_dir_of(demo) -> str:  # type: ignore[no-untyped-def]
    """One llava_hound frame directory the annotations name (no shard holds frames)."""
    return sorted(p for p in demo.absent if p.startswith(FRAMES + "/"))[0].rsplit("/", 1)[1]


def config(work: Path, indexed_demo_cache: Path, endpoint: str, roots: Path, mount: str) -> Path:
    cache = work / "cache"
    shutil.copytree(indexed_demo_cache, cache)
    upstream = (
        f'[[upstream]]\nname = "charades"\nroot = "{roots / "charades"}"\n\n'
        f'[[upstream]]\nname = "ego4d"\nroot = "{roots / "ego4d"}"\n\n'
        f'[[upstream]]\nname = "llava_hound"\nroot = "{roots / "llava_hound"}"\n\n'
    )
    return write_config(
        work / "mount.toml",
        endpoint=endpoint,
        repo=REPO_ID,
        cache_dir=cache,
        extra=upstream + "[mount]\n" + mount,
    )


def stats(mnt: Path) -> dict[str, int]:
    data = json.loads((mnt / ".vfs" / "stats.json").read_text())
    return {k: data[k] for k in ("lookups", "getattrs", "opens", "reads")}


def test_each_user_reads_exactly_what_they_may_read_underneath(
    tmp_path, world, hub, demo, indexed_demo_cache
) -> None:
    served = stage(world / "roots", demo)
    cfg = config(
        tmp_path,
        indexed_demo_cache,
        hub.endpoint,
        world / "roots",
        "allow_other = true\nuid = 0\ngid = 4343\nfile_mode = 0o440\ndir_mode = 0o551\n"
        "attr_timeout_s = 1\nentry_timeout_s = 1\n",
    )
    mnt = world / "mnt"
    with Mount(cfg, mnt) as m:
        mnt = m.mountpoint
        opened, secret = mnt / f"{CHARADES}ZZOPEN.mp4", mnt / f"{CHARADES}ZZSECRET.mp4"
        ego = next(p for p in served if p.startswith(EGO4D))
        frame_dir = frame_dir_of(demo)

        # stat shows the real owner, group and permission bits
        for path in (f"{CHARADES}ZZOPEN.mp4", f"{CHARADES}ZZSECRET.mp4", ego):
            real = (
                world / "roots" / "charades" / "Charades_v1_480" / path.rsplit("/", 1)[1]
                if path.startswith(CHARADES)
                else world / "roots" / "ego4d" / "v2" / "clips" / path.rsplit("/", 1)[1]
            )
            shown, under = os.stat(mnt / path), os.stat(real)
            assert (shown.st_uid, shown.st_gid, shown.st_mode) == (under.st_uid, under.st_gid, under.st_mode)
        # a directory that exists only for one upstream dataset shows its real counterpart; one that also
        # holds Hub videos (academic_source/ego4d: some clips are packed) shows the [mount] setting
        frames = mnt / f"{FRAMES}/{frame_dir}"
        for shown_dir, real_dir in ((frames, f"all_frames/{frame_dir}"), (frames.parent, "all_frames")):
            shown, under = os.stat(shown_dir), os.stat(world / "roots" / "llava_hound" / real_dir)
            assert (shown.st_uid, shown.st_gid, shown.st_mode) == (under.st_uid, under.st_gid, under.st_mode)
        assert stat.S_IMODE(os.stat(frames).st_mode) == 0o750
        for mixed in ("academic_source", EGO4D.rstrip("/")):
            shown = os.stat(mnt / mixed)
            assert (shown.st_uid, shown.st_gid, stat.S_IMODE(shown.st_mode)) == (0, LAB, 0o551), mixed
        assert denied(read_as(frames / "000001.jpg", NOBODY, NOBODY)), "the mount's own chain denies"
        assert read_as(frames / "000001.jpg", NOBODY, NOBODY, (LICENSEES,)) == b"frame 1" * 100

        # upstream: the file's own bits, and the real directory chain above it
        assert read_as(opened, NOBODY, NOBODY) == served[f"{CHARADES}ZZOPEN.mp4"]
        assert denied(read_as(secret, NOBODY, NOBODY))
        assert denied(read_as(mnt / ego, NOBODY, NOBODY)), "v2/ (0750, 4000:4242) is above the clip"
        assert read_as(mnt / ego, NOBODY, NOBODY, (LICENSEES,)) == served[ego], "a supplementary group"
        assert read_as(mnt / ego, OWNER, OWNER) == served[ego]
        assert read_as(mnt / ego, 5000, LICENSEES) == served[ego], "the primary group"
        assert denied(read_as(secret, NOBODY, NOBODY, (LICENSEES, LAB)))

        # Hub-served files follow uid/gid/file_mode: the lab's group reads, nobody else
        video = sorted(v for v in demo.videos if v.startswith("liwei_youtube_videos/"))[0]
        shown = os.stat(mnt / video)
        assert (shown.st_uid, shown.st_gid, stat.S_IMODE(shown.st_mode)) == (0, LAB, 0o440)
        assert denied(read_as(mnt / video, NOBODY, NOBODY))
        assert read_as(mnt / video, NOBODY, NOBODY, (LAB,)) == video_bytes(demo, video)
        revision = os.stat(mnt / ".vfs" / "revision")
        assert (revision.st_gid, stat.S_IMODE(revision.st_mode)) == (LAB, 0o440)
        listing = subprocess.run(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "ls", str(mnt)],
            capture_output=True,
            text=True,
        )
        assert listing.returncode != 0 and "Permission denied" in listing.stderr, "dir_mode 0o551: no r"

        # a chmod underneath: the next open is refused at once, and stat shows it within attr_timeout_s
        (world / "roots" / "charades" / "Charades_v1_480" / "ZZOPEN.mp4").chmod(0o600)
        assert denied(read_as(opened, NOBODY, NOBODY))
        deadline = time.monotonic() + 10
        while stat.S_IMODE(os.stat(opened).st_mode) != 0o600:
            assert time.monotonic() < deadline, "the new mode never showed through the mount"
            time.sleep(0.1)


def test_the_user_check_adds_no_round_trip(tmp_path, world, hub, demo, indexed_demo_cache) -> None:
    """The same reads ask the daemon exactly the same requests with and without ``allow_other``: the
    per-user check runs inside the open's own worker-thread call, and an upstream file's attributes come
    with its lookup (no extra getattr)."""
    served = stage(world / "roots", demo)
    name = f"{CHARADES}ZZOPEN.mp4"
    deltas = {}
    for allow_other in (False, True):
        work = tmp_path / str(allow_other)
        work.mkdir()
        cfg = config(
            work,
            indexed_demo_cache,
            hub.endpoint,
            world / "roots",
            f"allow_other = {allow_other!r}\n".lower(),
        )
        with Mount(cfg, world / f"mnt-{allow_other}") as m:
            before = stats(m.mountpoint)
            for _ in range(3):
                assert (m.mountpoint / name).read_bytes() == served[name]
            after = stats(m.mountpoint)
        deltas[allow_other] = {k: after[k] - before[k] for k in after}
        print(f"allow_other={allow_other}: daemon requests for 3 reads of one file: {deltas[allow_other]}")
    assert deltas[False] == deltas[True]
    assert deltas[True]["getattrs"] == 0 and deltas[True]["opens"] == 3 + 1  # + reading stats.json


def test_the_daemon_reads_what_any_permitted_user_may(tmp_path, world, hub, demo, indexed_demo_cache) -> None:
    """Files owned by another user and readable only by their group: root under the old unit's bound
    (CAP_SYS_ADMIN alone) may not read them, so a licensee gets EACCES (not ENOENT) with one WARNING that
    names the path and the fix. Restarted under the shipped unit's bound (+CAP_DAC_READ_SEARCH), on the
    same cache, the daemon serves them to the licensee, and still not to anyone else."""
    roots = world / "roots"
    served = stage(roots, demo)
    licensed = roots / "charades" / "Charades_v1_480" / "ZZLICENSED.mp4"  # listable, but not readable
    licensed.write_bytes(b"licensed " * 1000)
    os.chown(licensed, OWNER, LICENSEES)
    licensed.chmod(0o640)
    served[f"{CHARADES}ZZLICENSED.mp4"] = licensed.read_bytes()
    ego = next(p for p in served if p.startswith(EGO4D))  # below v2/ (0750, 4000:4242): not even listable
    cfg = config(tmp_path, indexed_demo_cache, hub.endpoint, roots, "allow_other = true\n")

    def mount(caps: str, allow_log: tuple[str, ...]) -> Mount:
        bound = ("setpriv", f"--bounding-set={caps}", "--inh-caps=-all", "--")
        return Mount(cfg, world / "mnt", prefix=bound, allow_log=allow_log)

    refused = (CANNOT_READ, r"cannot list .*: Permission denied", r"the daemon may not list")
    with mount("-all,+sys_admin", refused) as m:
        for path in (f"{CHARADES}ZZLICENSED.mp4", ego):
            first, second = (read_as(m.mountpoint / path, NOBODY, LICENSEES) for _ in range(2))
            assert denied(first) and denied(second), (path, first, second)
    log = m.log().splitlines()
    cannot_read = [line for line in log if " WARNING " in line and "may not read" in line]
    assert len(cannot_read) == 1 and str(licensed) in cannot_read[0], cannot_read
    cannot_list = [line for line in log if " WARNING " in line and f"missing {ego}:" in line]
    assert len(cannot_list) == 1 and "CAP_DAC_READ_SEARCH" in cannot_list[0], cannot_list
    assert all("CAP_DAC_READ_SEARCH" in line for line in cannot_read + cannot_list)

    with mount("-all,+sys_admin,+dac_read_search", ()) as m:
        assert "is stale" in m.log(), "the snapshot of the refused run is rebuilt"
        for path in (f"{CHARADES}ZZLICENSED.mp4", ego):
            assert read_as(m.mountpoint / path, NOBODY, LICENSEES) == served[path]
            assert denied(read_as(m.mountpoint / path, NOBODY, NOBODY))
