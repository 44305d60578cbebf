"""``llava-vfs hub-emulator``: serve a directory as a Hub dataset repo on 127.0.0.1, for the demo, the
tests and anyone trying the tool without the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfs.errors import ConfigError
from vfs.hub.emulator import serve_forever


def main(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise ConfigError(f"--root {root} is not a directory", 3)
    if args.cdn_bytes_per_s is not None and not args.cdn_bytes_per_s > 0:
        raise ConfigError(f"--cdn-bytes-per-s must be positive, not {args.cdn_bytes_per_s}", 3)
    serve_forever(
        root,
        args.repo,
        port=args.port,
        cdn_port=args.cdn_port,
        lfs_threshold_bytes=args.lfs_threshold,
        cdn_bytes_per_s=args.cdn_bytes_per_s,
    )
    return 0
