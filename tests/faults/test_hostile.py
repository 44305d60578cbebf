"""Bad input: hostile paths in annotations and in shard member names, malformed and
truncated annotation JSON, a corrupt shard, a corrupt index file, and an unexpected exception inside a
FUSE handler.

Each is refused clearly (one warning per skipped item, or an error naming the file), nothing escapes the
mount or a configured root, everything else is still indexed and served, and the mount stays up.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.mounting import REPO_ROOT, Mount, _env, cli
from tests.reliability import read_file, write_cfg
from vfs.hub.emulator import HubEmulator

pytestmark = pytest.mark.fuse
REPO = "org/hostile"
DIR = "0_30_s_academic_v0_1"
ANNOTATION = f"{DIR}/{DIR}_cap_processed.json"
SHARD = f"{DIR}/{DIR}_videos_1.tar.gz"
OTHER_SHARD = f"{DIR}/{DIR}_videos_2.tar.gz"


def patterned(size: int, salt: int) -> bytes:
    """Bytes that spell their own offset (xor a salt): a misplaced byte shows."""
    return b"".join(((i ^ salt) & (2**64 - 1)).to_bytes(8, "big") for i in range(0, size + 8, 8))[:size]


def write_shard(path: Path, members: list[tuple[str, bytes | None, str]]) -> None:
    """A gzip tar of (name, data, kind) with arbitrary (hostile) names; kind: file, symlink, hardlink."""
    raw = io.BytesIO()
    with tarfile.open(
        fileobj=raw, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_717_200_000
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, "../../etc/shadow"
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))


GOOD = {
    "academic_source/Charades/GOOD1.mp4": patterned(40_000, 1),
    "academic_source/Charades/GOOD2.mp4": patterned(30_001, 2),
    "academic_source/Charades/GOOD3.mp4": patterned(25_000, 3),
}
HOSTILE_MEMBERS: list[tuple[str, bytes | None, str]] = [
    ("../escape.mp4", b"escaped!", "file"),
    ("/abs/evil.mp4", b"absolute", "file"),
    ("academic_source/../../up.mp4", b"up and out", "file"),
    ("academic_source/Charades/" + "L" * 300 + ".mp4", b"long", "file"),
    ("academic_source/Charades/bad\udcff\udcfe.mp4", b"not utf-8", "file"),  # raw bytes 0xff 0xfe
    ("academic_source/Charades/new\nline.mp4", b"control", "file"),
    ("academic_source/Charades/link.mp4", None, "symlink"),
    ("academic_source/Charades/hard.mp4", None, "hardlink"),
    ("academic_source/Charades/GOOD1.mp4/inside.mp4", b"under a file", "file"),  # file/dir collision
    (".vfs/revision", b"forged", "file"),  # collides with the mount's own directory
]
HOSTILE_VIDEOS: list[object] = [
    "../../etc/passwd",
    "/etc/passwd",
    "academic_source/Charades/../../../secret.mp4",
    "academic_source/Charades/NUL\x00BYTE.mp4",
    "academic_source/Charades/" + "L" * 300 + ".mp4",
    "academic_source/Charades/\udc80lone.mp4",  # a lone surrogate: not encodable as UTF-8
    "academic_source\\Charades\\GOOD1.mp4",
    "academic_source/Charades/tab\t.mp4",
    "",
    42,
    None,
    ["academic_source/Charades/GOOD1.mp4"],
    "academic_source/Charades/GOOD1.mp4/inside.mp4",  # under a file
]


def records(videos: list[object]) -> list[dict[str, object]]:
    return [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
            "data_source": DIR,
            "video": v,
        }
        for i, v in enumerate(videos)
    ]


def build_repo(
    root: Path,
    *,
    annotation_bytes: bytes | None = None,
    extra: dict[str, bytes] | None = None,
    hostile: bool = True,
) -> None:
    (root / DIR).mkdir(parents=True)
    (root / ".gitattributes").write_text("*.tar.gz filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text("# hostile test repo\n")
    good = list(GOOD)
    members: list[tuple[str, bytes | None, str]] = [(good[0], GOOD[good[0]], "file")]
    members += HOSTILE_MEMBERS if hostile else []
    members += [
        (good[1], b"an older copy that a later member replaces", "file"),
        (good[1], GOOD[good[1]], "file"),
    ]
    write_shard(root / SHARD, members)
    write_shard(root / OTHER_SHARD, [(good[2], GOOD[good[2]], "file")])
    if annotation_bytes is None:
        videos = [*good, good[0], *HOSTILE_VIDEOS]  # a duplicate too
        annotation_bytes = json.dumps(records(videos)).encode()
    (root / ANNOTATION).write_bytes(annotation_bytes)
    for rel, data in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def index(cfg: Path, expect: int) -> str:
    done = cli("index", "--config", str(cfg), "--no-progress")
    out = done.stdout + done.stderr
    assert done.returncode == expect, out
    assert "Traceback" not in out, out
    return out


def sane(name: str) -> bool:
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
        and len(os.fsencode(name)) <= 255
        and name.encode("utf-8", "strict") is not None
    )


HOSTILE_LOGS = (
    r"skipping member",
    r"skipped video",
    r"records skipped",
    r"appears more than once",
    r"not shown",
    r"collide",
    r"^missing ",  # vfs.guidance: a lookup of a path that is not there (the probes below)
)


def test_hostile_paths_are_never_served_and_the_mount_keeps_working(tmp_path) -> None:
    root = tmp_path / "repo"
    build_repo(root)
    # an upstream root for charades, with a secret beside it that a '..' path would reach
    charades = tmp_path / "charades"
    charades.mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"SECRET")
    (charades / "escape.mp4").symlink_to(tmp_path / "secret.mp4")
    with HubEmulator(repo_id=REPO) as emu:
        emu.commit(root)
        cfg = write_cfg(
            tmp_path / "c.toml",
            endpoint=emu.endpoint,
            repo=REPO,
            cache_dir=tmp_path / "cache",
            extra=f'[mount]\nviews = ["merged", "repo", "per_directory"]\n\n'
            f'[[upstream]]\nname = "charades"\nroot = "{charades}"\nprefer = "shard"\n',
        )
        out = index(cfg, 0)
        for name, *_ in HOSTILE_MEMBERS[:6]:  # each hostile member: one warning naming it
            assert sum(repr(name)[1:-1][:20] in line for line in out.splitlines()) >= 1, name
        with Mount(cfg, tmp_path / "mnt", allow_log=HOSTILE_LOGS) as m:
            mnt = m.mountpoint
            seen: list[str] = []
            for dirpath, dirnames, filenames in os.walk(mnt):
                for name in dirnames + filenames:
                    assert sane(name), (dirpath, name)
                    seen.append(os.path.relpath(os.path.join(dirpath, name), mnt))
            videos = sorted(p for p in seen if p.endswith(".mp4") and not p.startswith(DIR))
            assert videos == sorted(GOOD), videos  # exactly the good members, nothing hostile
            for rel, data in GOOD.items():
                assert (mnt / rel).read_bytes() == data, rel  # GOOD2: the last copy in the tar wins
                assert (mnt / DIR / rel).read_bytes() == data  # the per-directory view
            assert (mnt / ".vfs" / "revision").read_text().strip() == emu.commits[-1]
            for probe in (
                "escape.mp4",
                "abs/evil.mp4",
                "up.mp4",
                "academic_source/Charades/link.mp4",
                "academic_source/Charades/hard.mp4",
                "academic_source/Charades/escape.mp4",
                "academic_source/Charades/" + "L" * 300 + ".mp4",
                "academic_source/Charades/GOOD1.mp4/x",
            ):
                got = read_file(mnt / probe)
                assert isinstance(got, OSError) and got.errno in (
                    errno.ENOENT,
                    errno.ENOTDIR,
                    errno.ENAMETOOLONG,
                ), probe
            for hostile in (
                os.fsencode(mnt) + b"/academic_source/Charades/bad\xff\xfe.mp4",
                os.fsencode(mnt) + b"/academic_source/Charades/new\nline.mp4",
            ):
                assert not os.path.exists(hostile)
            assert (mnt / "academic_source/Charades/GOOD1.mp4").read_bytes() == GOOD[
                "academic_source/Charades/GOOD1.mp4"
            ]  # still serving after all of that
        # nothing was written outside the cache: no escaped member anywhere on disk
        for bad in ("escape.mp4", "evil.mp4", "up.mp4", "inside.mp4"):
            found = [p for p in tmp_path.rglob(bad) if "repo" not in p.parts and p.parent != charades]
            assert found == [], found
        assert not Path("/abs/evil.mp4").exists() and not Path("/escape.mp4").exists()


def test_malformed_and_truncated_annotations_named_and_the_rest_indexed(tmp_path) -> None:
    root = tmp_path / "repo"
    good_json = json.dumps(records(list(GOOD)))
    truncated = f"{DIR}/0_30_s_academic_oe_v0_1_qa_processed.json"
    malformed = f"{DIR}/0_30_s_academic_mc_v0_1_qa_processed.json"
    build_repo(
        root,
        hostile=False,
        annotation_bytes=good_json.encode(),
        extra={
            truncated: good_json[: len(good_json) // 2].encode(),  # cut mid-record
            malformed: b'[{"id": "x", "video": "academic_source/Charades/GOOD1.mp4",}]',  # trailing comma
        },
    )
    with HubEmulator(repo_id=REPO) as emu:
        emu.commit(root)
        cfg = write_cfg(tmp_path / "c.toml", endpoint=emu.endpoint, repo=REPO, cache_dir=tmp_path / "cache")
        out = index(cfg, 1)  # the command ran, and reports the two bad files
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 2, out
        assert any(truncated in e for e in errors) and any(malformed in e for e in errors), errors
        assert "3 videos packed" in out  # both shards indexed
        coverage = cli("coverage", "--config", str(cfg), "--json")
        if coverage.returncode == 0:  # the good annotation's videos are all wanted and available
            assert json.loads(coverage.stdout)["total"]["available"] == len(GOOD)
        with Mount(cfg, tmp_path / "mnt", allow_log=HOSTILE_LOGS) as m:
            for rel, data in GOOD.items():
                assert (m.mountpoint / rel).read_bytes() == data
            assert (m.mountpoint / truncated).read_bytes() == (root / truncated).read_bytes()  # repo view


def test_corrupt_shard_named_other_shards_indexed(tmp_path) -> None:
    root = tmp_path / "repo"
    build_repo(root, hostile=False)
    shard = bytearray((root / SHARD).read_bytes())
    for i in range(len(shard) // 2, len(shard) // 2 + 64):  # garbage in the middle of the deflate stream
        shard[i] ^= 0xA5
    (root / SHARD).write_bytes(bytes(shard))
    with HubEmulator(repo_id=REPO) as emu:
        emu.commit(root)
        cfg = write_cfg(tmp_path / "c.toml", endpoint=emu.endpoint, repo=REPO, cache_dir=tmp_path / "cache")
        out = index(cfg, 1)
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and SHARD in errors[0], out
        assert "1 videos packed" in out  # the other shard's video
        with Mount(cfg, tmp_path / "mnt", allow_log=HOSTILE_LOGS) as m:
            rel = "academic_source/Charades/GOOD3.mp4"
            assert (m.mountpoint / rel).read_bytes() == GOOD[rel]
            assert not (m.mountpoint / "academic_source/Charades/GOOD1.mp4").is_file()


def test_corrupt_index_file_named_rebuilt_by_index_eio_at_mount(tmp_path) -> None:
    root = tmp_path / "repo"
    build_repo(root)
    with HubEmulator(repo_id=REPO) as emu:
        emu.commit(root)
        cfg = write_cfg(tmp_path / "c.toml", endpoint=emu.endpoint, repo=REPO, cache_dir=tmp_path / "cache")
        index(cfg, 0)
        shard_sha = hashlib.sha256((root / SHARD).read_bytes()).hexdigest()
        idx = tmp_path / "cache" / "index" / shard_sha[:2] / f"{shard_sha}.idx"
        good_index = idx.read_bytes()
        broken = bytearray(good_index)
        broken[100] ^= 0xFF
        idx.write_bytes(bytes(broken))
        # A mount with a damaged index: that shard's videos fail with EIO and an error naming the file;
        # the other shard's videos, the listing and the mount itself are fine.
        allow = (*HOSTILE_LOGS, re.escape(str(idx)))
        with Mount(cfg, tmp_path / "mnt", allow_log=allow) as m:
            got = read_file(m.mountpoint / "academic_source/Charades/GOOD1.mp4")
            assert isinstance(got, OSError) and got.errno == errno.EIO
            rel = "academic_source/Charades/GOOD3.mp4"
            assert (m.mountpoint / rel).read_bytes() == GOOD[rel]
        errors = [line for line in m.log().splitlines() if " ERROR " in line]
        assert errors and all(str(idx) in e for e in errors), errors
        # `llava-vfs index` notices the damage, says so naming the file, and rebuilds it
        out = index(cfg, 0)
        assert str(idx) in out and "rebuilding" in out
        assert idx.read_bytes() == good_index
        with Mount(cfg, tmp_path / "mnt", allow_log=HOSTILE_LOGS) as m:
            for rel, data in GOOD.items():
                assert (m.mountpoint / rel).read_bytes() == data


# ------------------------------------------------------------------------------------------------ handler

# A mount of the real FsCore and pyfuse3 adapter over a namespace holding a file whose ref no source
# knows (``Sources.open`` raises TypeError: an unexpected exception, not a VfsError) and a file whose
# rendering raises. Everything else is the production code path.
DRIVER = r"""
import logging, signal, sys
from pathlib import Path
import pyfuse3, trio
from vfs.cache.store import CacheStore
from vfs.core import FsCore
from vfs.fuse_ops import Operations
from vfs.tree.namespace import NamespaceBuilder
from vfs.sources.opener import Sources
from vfs.refs import VirtualRef

class UnknownRef:
    pass

def explode():
    raise ZeroDivisionError("renderer bug")

async def main(mnt, work):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    builder = NamespaceBuilder()
    builder.add_file("good.txt", 5, VirtualRef(lambda: b"hello"))
    builder.add_file("dir/unknown.bin", 10, UnknownRef())
    builder.add_file("dir/exploding.json", 0, VirtualRef(explode, dynamic=True))
    cache = CacheStore(Path(work) / "data", max_size_bytes=1 << 20)
    async with trio.open_nursery() as nursery:
        sources = Sources(commit="0" * 40, cache=cache, index_dir=Path(work) / "index", block_size=1 << 16,
                          nursery=nursery, client=None)
        ops = Operations(FsCore(builder.build(), sources))
        pyfuse3.init(ops, mnt, set(pyfuse3.default_options) | {"fsname=llava-vfs-test", "ro"})
        async def on_signal():
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return
        nursery.start_soon(on_signal)
        try:
            await pyfuse3.main(min_tasks=2, max_tasks=8)
        finally:
            pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1], sys.argv[2])
"""


def test_unexpected_handler_exception_is_eio_one_error_line_mount_survives(tmp_path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(mnt), str(tmp_path)], stderr=log, cwd=REPO_ROOT, env=_env(None)
        )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.02)
        failures = 0
        for _ in range(3):
            for rel in ("dir/unknown.bin", "dir/exploding.json"):
                got = read_file(mnt / rel)
                assert isinstance(got, OSError) and got.errno == errno.EIO, (rel, got)
                failures += 1
            assert (mnt / "good.txt").read_bytes() == b"hello"  # the mount is still up
            assert os.stat(mnt / "dir/unknown.bin").st_size == 10
            assert sorted(os.listdir(mnt / "dir")) == ["exploding.json", "unknown.bin"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert not os.path.ismount(mnt)
    lines = log_path.read_text().splitlines()
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == failures, errors  # exactly one ERROR line per failed call ...
    assert all("unexpected error in open" in e for e in errors)
    assert sum("TypeError: unknown ref" in line for line in lines) == 3  # ... with its traceback
    assert sum("ZeroDivisionError: renderer bug" in line for line in lines) == 3
    assert not [line for line in lines if " WARNING " in line or " CRITICAL " in line]
