"""``llava-vfs``: the command line. Each subcommand validates its config first and exits with a
documented code on a user mistake (one line on stderr, no traceback; see ``vfs.errors.ConfigError``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vfs.errors import ConfigError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from vfs.config import load_config

    return load_config(Path(args.config) if args.config else None)


def cmd_mount(args: argparse.Namespace) -> int:
    from vfs.config import check_writable_cache
    from vfs.daemon import check_mountpoint, run

    config = _load(args)
    check_writable_cache(config)
    mountpoint = Path(args.mountpoint)
    check_mountpoint(mountpoint)
    return run(config, mountpoint)


def cmd_index(args: argparse.Namespace) -> int:
    from vfs.catalog.indexer import run_index
    from vfs.config import check_writable_cache

    config = _load(args)
    check_writable_cache(config)
    return run_index(config, jobs=args.jobs, progress=not args.no_progress)


def cmd_verify_cache(args: argparse.Namespace) -> int:
    from vfs.cache.store import CacheStore
    from vfs.layout import CacheLayout

    config = _load(args)
    layout = CacheLayout(config.cache.dir)
    if not layout.data.is_dir():
        print(f"no cache at {layout.data}")
        return 0
    report = CacheStore(layout.data, max_size_bytes=config.cache.max_size_bytes).verify_all()
    print(report)
    return 0 if getattr(report, "corrupt", 0) == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from vfs.demo.run import run_demo

    return run_demo(workdir=Path(args.workdir) if args.workdir else None, keep=args.keep)


def cmd_hub_emulator(args: argparse.Namespace) -> int:
    from vfs.hub.emulator import serve_forever

    root = Path(args.root)
    if not root.is_dir():
        raise ConfigError(f"--root {root} is not a directory", 3)
    serve_forever(
        root, args.repo, port=args.port, cdn_port=args.cdn_port, lfs_threshold_bytes=args.lfs_threshold
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-vfs", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mount", help="mount the dataset and serve in the foreground")
    p.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("index", help="pin the revision, read annotations, index shards, write the catalog")
    p.add_argument("--config", "-c")
    p.add_argument("--jobs", "-j", type=int, default=2, help="shards indexed in parallel (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("verify-cache", help="check every cached entry offline; quarantine bad ones")
    p.add_argument("--config", "-c")
    p.set_defaults(func=cmd_verify_cache)

    p = sub.add_parser("demo", help="build a small demo dataset, serve it locally, mount it, read it")
    p.add_argument("--workdir", help="where to build the demo (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("hub-emulator", help="serve a directory as a Hub dataset repo on 127.0.0.1")
    p.add_argument("--root", required=True)
    p.add_argument("--repo", default="lmms-lab/LLaVA-Video-178K")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cdn-port", type=int, default=0)
    p.add_argument("--lfs-threshold", type=int, default=10 * 2**20)
    p.set_defaults(func=cmd_hub_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"llava-vfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
