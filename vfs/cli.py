"""``llava-vfs``: the command line. This module only parses: the arguments, then the config file, which it
checks before anything else runs. A mistake in either is one line on stderr and a documented exit code
(``vfs.errors.ConfigError``), never a traceback.

Each command lives in its own module under ``vfs.commands``, imported only when that command runs, so
``llava-vfs --help`` and a config mistake answer before trio, pyfuse3, huggingface_hub or PyAV load.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vfs.config import check_writable_cache, load_config
from vfs.errors import ConfigError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    *,
    config: bool = True,
    writes_cache: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand run by ``vfs.commands.<name>.main``. With ``config``, it takes ``--config``, loaded
    and checked before the command's module is imported; ``writes_cache`` also checks the cache dir."""
    p = sub.add_parser(name, help=help_text)
    if config:
        p.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    p.set_defaults(module=name.replace("-", "_"), uses_config=config, writes_cache=writes_cache)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-vfs", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "mount", "mount the dataset and serve in the foreground", writes_cache=True)
    p.add_argument("mountpoint")

    p = _command(
        sub,
        "index",
        "pin the revision, read annotations, index shards, write the catalog",
        writes_cache=True,
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        help="shards indexed in parallel (default: one per core, at most half of --connections)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=8,
        help="ranged connections to the Hub's CDN in all, shared by the shards being indexed (default 8)",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="also write the shard indexes of the pinned commit to DIR, with a manifest and a dataset card",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-resolve the revision on the Hub even when the shared cache holds the cluster's pin",
    )

    p = _command(sub, "prefetch", "warm the cache: fetch selected videos and annotations in parallel")
    p.add_argument("--dirs", nargs="+", metavar="DIR", help="repo directories (globs) or video path prefixes")
    p.add_argument("--paths-from", metavar="FILE", help="mount paths to fetch, one per line ('-': stdin)")
    p.add_argument("--dry-run", action="store_true", help="print what would be fetched and its size")
    p.add_argument("--jobs", "-j", type=int, default=4, help="files fetched in parallel (default 4)")
    p.add_argument("--mount", metavar="MOUNTPOINT", help="prefetch through this running mount of the config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = _command(sub, "yaml", "print a LLaVA-NeXT data YAML with json_path entries inside the mount")
    p.add_argument("--mount", required=True, metavar="MOUNTPOINT", help="where the dataset is mounted")
    p.add_argument("--available-only", action="store_true", help="point at .vfs/available/ (filtered) files")
    p.add_argument("--sampling-strategy", default="all", help="all, first:N, end:N or random:N (N or N%%)")
    p.add_argument("--dirs", nargs="+", metavar="DIR", help="only these repo directories (globs)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the YAML here instead of stdout")

    _command(sub, "verify-cache", "check every cached entry offline; quarantine bad ones")

    p = _command(sub, "coverage", "wanted, available and missing videos per directory, source, dataset")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")

    p = _command(sub, "provenance", "per wanted path: where it is served from, its dataset and terms")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tab-separated lines")

    p = _command(sub, "demo", "build a small demo dataset, serve it locally, mount it, read it", config=False)
    p.add_argument("--workdir", help="where to build the demo (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")

    p = _command(sub, "hub-emulator", "serve a directory as a Hub dataset repo on 127.0.0.1", config=False)
    p.add_argument("--root", required=True)
    p.add_argument("--repo", default="lmms-lab/LLaVA-Video-178K")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cdn-port", type=int, default=0)
    p.add_argument("--lfs-threshold", type=int, default=10 * 2**20)
    p.add_argument(
        "--cdn-bytes-per-s",
        type=float,
        default=None,
        metavar="RATE",
        help="pace every CDN response to RATE bytes/s, like a CDN connection (default: unlimited)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if not args.uses_config:
        command = importlib.import_module(f"vfs.commands.{args.module}")
        return int(command.main(args) or 0)
    config = load_config(Path(args.config) if args.config else None)
    if args.writes_cache:
        check_writable_cache(config)
    command = importlib.import_module(f"vfs.commands.{args.module}")
    return int(command.main(args, config) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"llava-vfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
