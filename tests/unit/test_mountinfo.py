"""vfs.mountinfo: the one parser of /proc/self/mountinfo."""

from __future__ import annotations

import os
from pathlib import Path

from vfs.mountinfo import MountInfo, mounts

SAMPLE = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "98 22 0:52 / /mnt/llava\\040video rw,nosuid,nodev,relatime shared:60 - fuse.llava-vfs llava-vfs ro\n"
    "99 22 0:53 / /mnt/tab\\011and\\134slash rw - fuse.llava-vfs llava-vfs ro\n"
    "100 98 0:54 / /mnt/llava\\040video rw - fuse.llava-vfs llava-vfs ro\n"
    "garbage without the separator\n"
    "101 22 x:y / /bad rw - tmpfs tmpfs rw\n"
)


def test_fields_escapes_and_order(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(SAMPLE)
    assert mounts(str(tmp_path / "mountinfo")) == [
        MountInfo((254, 0), "/", "ext4"),
        MountInfo((0, 52), "/mnt/llava video", "fuse.llava-vfs"),
        MountInfo((0, 53), "/mnt/tab\tand\\slash", "fuse.llava-vfs"),
        MountInfo(
            (0, 54), "/mnt/llava video", "fuse.llava-vfs"
        ),  # mounted over the one above: it comes later
    ]
    assert mounts(str(tmp_path / "missing")) == []


def test_this_process_sees_its_root() -> None:
    root = [m for m in mounts() if m.mountpoint == "/"]
    assert root and root[-1].device == (os.major(os.stat("/").st_dev), os.minor(os.stat("/").st_dev))
