"""vfs.access without the kernel: the permission rule, the caller's groups, and the real-chain check."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from vfs.access import (
    UNREADABLE,
    Caller,
    HubOwnership,
    Owner,
    check_real_chain,
    groups_of,
    permits,
    real_owner,
)
from vfs.cache.store import CacheStore
from vfs.core import FsCore
from vfs.errors import PermissionDenied
from vfs.refs import UpstreamRef, VirtualRef
from vfs.sources.opener import Sources
from vfs.tree.namespace import NamespaceBuilder
from vfs.tree.view import upstream_dir_ref

GONE_PID = 2**22 + 12345  # above the kernel's pid_max: no such process


def test_the_first_matching_class_decides() -> None:
    owner = Owner(uid=10, gid=20, mode=0o074)  # the owner may do nothing, the group everything
    assert not permits(owner, 10, frozenset({20}), 0o4), (
        "the owner's bits apply to the owner, not the group's"
    )
    assert permits(owner, 11, frozenset({20}), 0o4 | 0o1)
    assert permits(owner, 11, frozenset({21}), 0o4) and not permits(owner, 11, frozenset({21}), 0o1)


def test_groups_come_from_the_process(tmp_path: Path) -> None:
    child = subprocess.Popen(["setpriv", "--groups", "4242,4343", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while groups_of(Caller(0, 7, child.pid)) != {7, 4242, 4343}:
            assert time.monotonic() < deadline, groups_of(Caller(0, 7, child.pid))
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
    assert groups_of(Caller(0, 7, GONE_PID)) == {7}, "a process that is gone keeps only its primary group"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")
def test_the_real_chain_is_checked_from_the_root_down(tmp_path: Path) -> None:
    root = tmp_path / "root"
    licensed = root / "v2" / "clips"
    licensed.mkdir(parents=True)
    clip = licensed / "a.mp4"
    clip.write_bytes(b"x")
    for path, mode in ((root, 0o755), (root / "v2", 0o750), (licensed, 0o755), (clip, 0o644)):
        os.chown(path, 4000, 4242)
        path.chmod(mode)
    outsider, licensee, owner = (
        Caller(65534, 65534, GONE_PID),
        Caller(5000, 4242, GONE_PID),
        Caller(4000, 1, GONE_PID),
    )
    with pytest.raises(PermissionDenied, match=r"may not search .*v2$"):
        check_real_chain(str(clip), str(root), outsider, real_owner(str(clip)))
    check_real_chain(str(clip), str(root), licensee, real_owner(str(clip)))
    check_real_chain(str(clip), str(root), owner, real_owner(str(clip)))
    check_real_chain(
        str(clip), str(root), Caller(0, 0, GONE_PID), real_owner(str(clip))
    )  # root passes, as in the kernel
    clip.chmod(0o600)
    with pytest.raises(PermissionDenied, match=r"may not read .*a\.mp4$"):
        check_real_chain(str(clip), str(root), licensee, real_owner(str(clip)))
    root.chmod(0o700)  # the root itself counts
    with pytest.raises(PermissionDenied, match=r"may not search .*root$"):
        check_real_chain(str(clip), str(root), Caller(5000, 4242, GONE_PID), real_owner(str(clip)))
    assert real_owner(str(tmp_path / "missing")) is UNREADABLE
    assert real_owner(str(clip)) == Owner(4000, 4242, 0o600)


async def test_the_core_shows_real_owners_for_upstream_entries_and_the_setting_for_the_rest(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "frames").mkdir(parents=True)
    clip, frame = root / "clip.mp4", root / "frames" / "1.jpg"
    clip.write_bytes(b"c")
    frame.write_bytes(b"f")
    clip.chmod(0o640)
    (root / "frames").chmod(0o750)
    builder = NamespaceBuilder()
    builder.add_file("academic_source/ego4d/clip.mp4", 1, UpstreamRef("ego4d", str(clip), 1, str(root)))
    builder.add_file("frames/a/1.jpg", 1, UpstreamRef("llava_hound", str(frame), 1, str(root)))
    builder.add_file("academic_source/packed.mp4", 3, VirtualRef(lambda: b"hub"))
    builder.add_file("gone.mp4", 1, UpstreamRef("ego4d", str(root / "gone.mp4"), 1, str(root)))
    builder.fold_dirs(upstream_dir_ref)
    ns = builder.build()
    setting = HubOwnership(uid=0, gid=4343, file_mode=0o440, dir_mode=0o551)
    async with trio.open_nursery() as nursery:
        sources = Sources(
            commit="0" * 40,
            cache=CacheStore(tmp_path / "data", max_size_bytes=1 << 20),
            index_dir=tmp_path / "index",
            block_size=1 << 16,
            nursery=nursery,
            client=None,
        )
        core = FsCore(ns, sources, ownership=setting)
        paths = [
            "academic_source/ego4d/clip.mp4",
            "frames/a",  # only llava_hound frames: its real counterpart
            "frames",
            "academic_source",  # mixed: the setting
            "academic_source/packed.mp4",
            "gone.mp4",
        ]
        nodes = [ns.resolve(p) for p in paths]
        assert all(n is not None for n in nodes)
        owners = await core.owners(nodes)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    assert dict(zip(paths, owners, strict=True)) == {
        "academic_source/ego4d/clip.mp4": real_owner(str(clip)),
        "frames/a": real_owner(str(root / "frames")),
        "frames": real_owner(str(root)),
        "academic_source": Owner(0, 4343, 0o551),
        "academic_source/packed.mp4": Owner(0, 4343, 0o440),
        "gone.mp4": UNREADABLE,
    }
    assert real_owner(str(clip)).mode == 0o640 and real_owner(str(root / "frames")).mode == 0o750
