"""``llava-vfs``: the command line. Each subcommand validates its config first and exits with a
documented code on a user mistake (one line on stderr, no traceback; see ``vfs.errors.ConfigError``).

Each command imports its own modules when it runs (the imports marked "lazy"), so that ``llava-vfs
--help``, and a config mistake, answer before trio, pyfuse3, huggingface_hub or PyAV are loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vfs.cache.store import CacheStore
from vfs.config import check_writable_cache, load_config
from vfs.errors import ConfigError
from vfs.layout import CacheLayout


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return load_config(Path(args.config) if args.config else None)


def cmd_mount(args: argparse.Namespace) -> int:
    # The config is checked before the daemon's heavy imports (trio, pyfuse3, the Hub client): a mistake
    # in it is reported at once.
    config = _load(args)
    check_writable_cache(config)
    from vfs.daemon import check_mountpoint, run  # lazy

    mountpoint = Path(args.mountpoint)
    check_mountpoint(mountpoint)
    return run(config, mountpoint)


def cmd_index(args: argparse.Namespace) -> int:
    config = _load(args)
    check_writable_cache(config)
    from vfs.indexer import run_index  # lazy

    return run_index(config, jobs=args.jobs, progress=not args.no_progress, refresh=args.refresh)


def cmd_prefetch(args: argparse.Namespace) -> int:
    from vfs.prefetch import run_prefetch  # lazy

    return run_prefetch(
        _load(args),
        dirs=args.dirs,
        paths_from=args.paths_from,
        dry=args.dry_run,
        jobs=args.jobs,
        mountpoint=Path(args.mount) if args.mount else None,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def cmd_yaml(args: argparse.Namespace) -> int:
    from vfs.yamlgen import run_yaml  # lazy

    return run_yaml(
        _load(args),
        mountpoint=Path(args.mount),
        available_only=args.available_only,
        sampling_strategy=args.sampling_strategy,
        dirs=tuple(args.dirs or ()),
        output=Path(args.output) if args.output else None,
    )


def cmd_verify_cache(args: argparse.Namespace) -> int:
    """Exit 0: every entry is good (or there is no cache); 1: corrupt entries were found and quarantined;
    3: the cache is in use by a running mount (it verifies its entries itself) or unusable."""
    config = _load(args)
    layout = CacheLayout(config.cache.dir)
    if not layout.data.is_dir():
        print(f"no cache at {layout.data}: nothing to check")
        return 0
    with CacheStore(layout.data, max_size_bytes=config.cache.max_size_bytes) as store:
        report = store.verify_all()
    checked = report.ok + report.corrupt
    print(
        f"checked {checked} cache entries in {layout.data}: {report.ok} good ({_human(report.ok_bytes)}), "
        f"{report.corrupt} corrupt, {report.orphan_temp_files} leftover temp files removed"
    )
    for label, problem in report.problems:
        print(f"corrupt: {label}: {problem} (moved to {layout.data / 'quarantine'}; refetched on next use)")
    return 0 if report.corrupt == 0 else 1


def _human(size_bytes: int) -> str:
    size, unit = float(size_bytes), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{size_bytes} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def cmd_coverage(args: argparse.Namespace) -> int:
    from vfs.commands.coverage import run_coverage  # lazy

    return run_coverage(_load(args), as_json=args.json)


def cmd_provenance(args: argparse.Namespace) -> int:
    from vfs.commands.coverage import run_provenance  # lazy

    return run_provenance(_load(args), as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from vfs.demo.run import run_demo  # lazy

    return run_demo(workdir=Path(args.workdir) if args.workdir else None, keep=args.keep)


def cmd_hub_emulator(args: argparse.Namespace) -> int:
    from vfs.hub.emulator import serve_forever  # lazy

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
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-resolve the revision on the Hub even when the shared cache holds the cluster's pin",
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("prefetch", help="warm the cache: fetch selected videos and annotations in parallel")
    p.add_argument("--config", "-c")
    p.add_argument("--dirs", nargs="+", metavar="DIR", help="repo directories (globs) or video path prefixes")
    p.add_argument("--paths-from", metavar="FILE", help="mount paths to fetch, one per line ('-': stdin)")
    p.add_argument("--dry-run", action="store_true", help="print what would be fetched and its size")
    p.add_argument("--jobs", "-j", type=int, default=4, help="files fetched in parallel (default 4)")
    p.add_argument("--mount", metavar="MOUNTPOINT", help="prefetch through this running mount of the config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prefetch)

    p = sub.add_parser("yaml", help="print a LLaVA-NeXT data YAML with json_path entries inside the mount")
    p.add_argument("--config", "-c")
    p.add_argument("--mount", required=True, metavar="MOUNTPOINT", help="where the dataset is mounted")
    p.add_argument("--available-only", action="store_true", help="point at .vfs/available/ (filtered) files")
    p.add_argument("--sampling-strategy", default="all", help="all, first:N, end:N or random:N (N or N%%)")
    p.add_argument("--dirs", nargs="+", metavar="DIR", help="only these repo directories (globs)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the YAML here instead of stdout")
    p.set_defaults(func=cmd_yaml)

    p = sub.add_parser("verify-cache", help="check every cached entry offline; quarantine bad ones")
    p.add_argument("--config", "-c")
    p.set_defaults(func=cmd_verify_cache)

    p = sub.add_parser("coverage", help="wanted, available and missing videos per directory, source, dataset")
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser("provenance", help="per wanted path: where it is served from, its dataset and terms")
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tab-separated lines")
    p.set_defaults(func=cmd_provenance)

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
    p.add_argument(
        "--cdn-bytes-per-s",
        type=float,
        default=None,
        metavar="RATE",
        help="pace every CDN response to RATE bytes/s, like a CDN connection (default: unlimited)",
    )
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
