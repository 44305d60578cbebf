"""Extended attributes at listing speed: what `ls -l` costs the daemon, and `[mount] xattrs = false`.

The kernel never caches extended attributes, and GNU `ls -l` asks every entry for ``security.selinux``
and ``system.posix_acl_access``: answered ENODATA, that is two daemon round trips per entry (bench/
RESULTS.md measured 23x local disk on a 100K-entry directory). The mount answers names outside the
``user.`` namespace EOPNOTSUPP, which ls remembers per device, so a listing costs a couple of round trips
in all; with ``xattrs = false`` the kernel stops asking after one ENOSYS per operation. The daemon counts
every such refusal in ``.vfs/stats.json`` ``errors`` (by errno name), which is what these tests read:
behaviour, never timings.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mounting import Mount, write_config
from vfs.hub.emulator import HubEmulator

pytestmark = pytest.mark.fuse
REPO = "org/listing"
ENTRIES = 200


@pytest.fixture(scope="module")
def listing_hub(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("listing") / "repo"
    (root / "many").mkdir(parents=True)
    (root / "README.md").write_text("# a repo with one wide directory\n")
    for i in range(ENTRIES):
        (root / "many" / f"f{i:04d}.txt").write_text(f"file {i}\n")
    with HubEmulator(repo_id=REPO, tree_page_size=100) as emu:
        emu.commit(root)
        yield emu


def _config(tmp_path: Path, hub: HubEmulator, extra: str = "") -> Path:
    return write_config(
        tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO, cache_dir=tmp_path / "cache", extra=extra
    )


def _errors(mnt: Path) -> dict[str, int]:
    errors: dict[str, int] = json.loads((mnt / ".vfs" / "stats.json").read_text())["errors"]
    return errors


def _errno_of(call: Callable[..., object], *args: object) -> int:
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno is not None
    return info.value.errno


def _ls_l(directory: Path) -> list[str]:
    out = subprocess.run(["ls", "-l", str(directory)], check=True, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if not line.startswith("total")]


def test_default_serves_user_vfs_and_ls_l_asks_once_per_listing(tmp_path, listing_hub) -> None:
    with Mount(_config(tmp_path, listing_hub), tmp_path / "mnt") as m:
        mnt = m.mountpoint
        readme = mnt / "README.md"
        # The documented attributes work by default, by name and by listing (getfattr -d).
        assert os.getxattr(readme, "user.vfs.source") == b"hub:README.md"
        assert os.getxattr(readme, "user.vfs.cached") == b"0"
        assert set(os.listxattr(readme)) == {"user.vfs.source", "user.vfs.cached"}
        # Other user names are absent; other namespaces are not supported at all.
        assert _errno_of(os.getxattr, readme, "user.other") == errno.ENODATA
        for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
            assert _errno_of(os.getxattr, readme, name) == errno.EOPNOTSUPP, name

        before = _errors(mnt).get("ENOTSUP", 0)  # EOPNOTSUPP's name in errno.errorcode on Linux
        for _ in range(3):
            lines = _ls_l(mnt / "many")
            assert len(lines) == ENTRIES and all(line.startswith("-r--r--r--") for line in lines)
        refused = _errors(mnt).get("ENOTSUP", 0) - before
        # ls gives up on security contexts and ACLs for the device after the first refusal of each: a
        # handful of round trips per listing, where ENODATA would have cost two per entry (1200 here).
        assert refused <= 3 * 4, refused
        # The kernel did not give up on getxattr: the user.vfs names still reach the daemon.
        assert os.getxattr(mnt / "many" / "f0007.txt", "user.vfs.source") == b"hub:many/f0007.txt"


def test_xattrs_false_is_refused_by_the_kernel_after_one_round_trip(tmp_path, listing_hub) -> None:
    cfg = _config(tmp_path, listing_hub, extra="[mount]\nxattrs = false\n")
    with Mount(cfg, tmp_path / "mnt") as m:
        mnt = m.mountpoint
        files = [mnt / "README.md", *(mnt / "many" / f"f{i:04d}.txt" for i in range(20))]
        for path in files:
            assert _errno_of(os.getxattr, path, "user.vfs.source") == errno.EOPNOTSUPP
            assert _errno_of(os.getxattr, path, "security.selinux") == errno.EOPNOTSUPP
            assert _errno_of(os.listxattr, path) == errno.EOPNOTSUPP
        assert len(_ls_l(mnt / "many")) == ENTRIES
        # One ENOSYS for getxattr and one for listxattr; every later call was answered by the kernel.
        assert _errors(mnt) == {"ENOSYS": 2}
        assert (mnt / "many" / "f0003.txt").read_text() == "file 3\n"  # the data path is untouched
