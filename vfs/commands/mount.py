"""``llava-vfs mount``: serve the dataset at a mountpoint, in the foreground, until unmounted."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfs.config import Config
from vfs.daemon import check_mountpoint, run


def main(args: argparse.Namespace, config: Config) -> int:
    mountpoint = Path(args.mountpoint)
    check_mountpoint(mountpoint)
    return run(config, mountpoint)
