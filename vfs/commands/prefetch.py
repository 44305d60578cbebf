"""``llava-vfs prefetch``: warm the cache before training, with parallel fetches and a progress bar.

What is selected: every video the mount would serve from a shard (upstream-served and excluded videos
need no download), plus the annotation JSONs of the included directories; ``--dirs`` narrows that to
repo directories (``0_30_s_academic_v0_1``, globs allowed) or merged-tree prefixes
(``academic_source/Charades``); ``--paths-from FILE`` takes exact mount paths (video paths or repo paths),
one per line, ``-`` for stdin. Without an index of the config (a fresh node), ``llava-vfs index`` runs
first: warming needs to know which shard holds which video.

How: the same ``Sources`` machinery as the daemon (single-flight fetches, verification, atomic publish,
the shared tier before the Hub and publishing to it after), ``--jobs`` files at a time. Resumable and
idempotent: what the cache already holds is skipped, so an interrupted run continues where it stopped.
``--dry-run`` fetches nothing and prints every file it would fetch, its size and where it would come from.

The cache lock: ``vfs.cache.store`` lets one process own a cache dir, so a prefetch cannot open the cache
while a mount of the same config runs. Then it prefetches through that mount instead (found among the
running llava-vfs mounts by the cache dir its ``.vfs/stats.json`` names, and said so on stderr), as
``--mount MOUNTPOINT`` does explicitly: opening a video through the mount fetches it whole into the
mount's cache, and Hub files are read to the end. Another owner (a second prefetch) is exit 3 with a
message saying what to do.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import trio
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vfs.cache.shared import open_shared_cache
from vfs.cache.store import CacheFull, CacheLocked, CacheStore, entry_file
from vfs.cache.tier import SharedTier
from vfs.catalog.catalog import CatalogData, CatalogDir, load_catalog_offline
from vfs.catalog.share import restore_from_share
from vfs.commands.index import run_index
from vfs.commands.output import human_size
from vfs.config import Config
from vfs.daemon import build_sources, open_cache_store, open_client, resolve_token
from vfs.errors import ConfigError, VfsError
from vfs.layout import CacheLayout
from vfs.mountinfo import mounts
from vfs.refs import HubFileRef, MemberRef
from vfs.tree.availability import compute_availability

if TYPE_CHECKING:
    from vfs.hub.client import HubClient
    from vfs.sources.opener import Sources

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Item:
    """One file to warm: its path in the mount, where its bytes come from, its size."""

    path: str
    ref: MemberRef | HubFileRef
    size: int


@dataclass
class Selection:
    items: list[Item]
    unknown: list[str] = field(default_factory=list)  # --paths-from lines that name no fetchable file


@dataclass
class PrefetchReport:
    selected: int = 0
    selected_bytes: int = 0
    cached: int = 0  # already in the cache, skipped
    fetched: int = 0
    fetched_bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    hub_bytes: int = 0  # bytes received from the Hub (0 through --mount: the mount counts its own)
    shared_hits: int = 0
    elapsed_s: float = 0.0
    no_room: str | None = None  # the cache ran out of room: prefetching stopped there


# -- the catalog ---------------------------------------------------------------------------------------


def local_catalog(config: Config) -> CatalogData:
    """The catalog of the configured revision from this node's cache (or the shared tier), no Hub.

    ``ConfigError`` exit 4 when there is none (run ``llava-vfs index``), 3 when it is unreadable.
    """

    catalogs = CatalogDir(CacheLayout(config.cache.dir).catalog, config.hub.repo)
    try:
        restore_from_share(config, catalogs)
    except OSError as exc:  # a local problem writing the restored pin or catalog: say so, go on without
        log.warning("could not restore the catalog from the shared cache: %s", exc)
    return load_catalog_offline(config)


def catalog_for_prefetch(config: Config, *, dry: bool, progress: bool) -> CatalogData:
    """The indexed catalog; without one (and online, and not a dry run), ``llava-vfs index`` runs first:
    warming needs to know which shard holds which video."""
    try:
        catalog: CatalogData | None = local_catalog(config)
    except ConfigError as exc:
        if exc.exit_code != 4 or dry or config.hub.offline:
            raise
        catalog = None
    if catalog is not None and (catalog.indexed or dry or config.hub.offline):
        return catalog

    print(
        "llava-vfs prefetch: this config has no index yet; running `llava-vfs index` first", file=sys.stderr
    )
    if run_index(config, progress=progress) != 0:
        print("llava-vfs prefetch: index reported errors; prefetching what it indexed", file=sys.stderr)
    return local_catalog(config)


# -- selection -----------------------------------------------------------------------------------------


def servable_members(config: Config, catalog: CatalogData) -> dict[str, MemberRef]:
    """Video path -> member, for every video the mount serves from a shard (honours upstreams, exclude)."""
    av = compute_availability(config, catalog)
    return {path: served.ref for path, served in av.served.items() if isinstance(served.ref, MemberRef)}


def _directory_of(item_path: str, ref: MemberRef | HubFileRef) -> str:
    repo_path = ref.shard_path if isinstance(ref, MemberRef) else ref.path
    return repo_path.split("/", 1)[0]


def select(
    config: Config,
    catalog: CatalogData,
    *,
    dirs: Iterable[str] | None = None,
    paths: Iterable[str] | None = None,
) -> Selection:
    """What to warm, sorted by path. ``ConfigError`` exit 2 for a ``--dirs`` that matches nothing."""
    members = servable_members(config, catalog)
    files = {f.path: f for f in catalog.files}
    if paths is not None:
        items: list[Item] = []
        unknown: list[str] = []
        seen: set[str] = set()
        for raw in paths:
            path = raw.strip().lstrip("/")
            if not path or path.startswith("#") or path in seen:
                continue
            seen.add(path)
            member = members.get(path)
            if member is None and "/" in path:  # the per-directory view: <data_source>/<video>
                member = members.get(path.split("/", 1)[1])
            if member is not None:
                items.append(Item(path, member, member.size))
            elif path in files and not path.endswith((".tar.gz", ".tgz")):
                items.append(Item(path, files[path], files[path].size))
            else:
                unknown.append(path)
        return Selection(items, unknown)

    annotation_paths = [row[0] for row in catalog.annotations]
    candidates = [Item(p, m, m.size) for p, m in members.items()]
    candidates += [Item(p, files[p], files[p].size) for p in annotation_paths if p in files]
    patterns = tuple(dirs or ())
    if patterns:
        chosen = []
        for item in candidates:
            directory = _directory_of(item.path, item.ref)
            if any(
                fnmatch.fnmatchcase(directory, pat) or item.path.startswith(pat.rstrip("/") + "/")
                for pat in patterns
            ):
                chosen.append(item)
        for pat in patterns:
            if not any(
                fnmatch.fnmatchcase(_directory_of(i.path, i.ref), pat)
                or i.path.startswith(pat.rstrip("/") + "/")
                for i in candidates
            ):
                directories = sorted({_directory_of(i.path, i.ref) for i in candidates})
                raise ConfigError(
                    f"--dirs {pat!r} matches no indexed directory or video path prefix; directories: "
                    + ", ".join(directories[:20])
                    + (" ..." if len(directories) > 20 else ""),
                    2,
                )
        candidates = chosen
    candidates.sort(key=lambda i: i.path)
    return Selection(candidates)


def read_paths(source: str) -> list[str]:
    try:
        if source == "-":
            return sys.stdin.read().splitlines()
        return Path(source).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as exc:
        raise ConfigError(f"--paths-from {source}: {exc.strerror or exc}", 2) from None


# -- what is cached --------------------------------------------------------------------------------------


def cache_keys(item: Item, block_size: int) -> list[str]:
    if isinstance(item.ref, MemberRef):
        return [item.ref.cache_key]
    return [item.ref.block_key(block_size, i) for i in range(item.ref.block_count(block_size))]


def cached_on_disk(layout: CacheLayout, key: str) -> bool:
    """Whether ``key`` has an entry file, without owning the cache (dry runs may run beside a mount)."""
    return entry_file(layout.data, key).is_file()


# -- running ---------------------------------------------------------------------------------------------


def llava_vfs_mounts() -> list[str]:
    """Mountpoints of running llava-vfs filesystems, for messages."""
    return [m.mountpoint for m in mounts() if m.fstype == "fuse.llava-vfs"]


def mount_owning_cache(config: Config) -> Path | None:
    """The running llava-vfs mount whose cache is this config's (its ``.vfs/stats.json`` says), if any."""
    wanted = os.path.realpath(CacheLayout(config.cache.dir).data)
    for mountpoint in llava_vfs_mounts():
        try:
            stats = json.loads((Path(mountpoint) / ".vfs" / "stats.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stats, dict) and os.path.realpath(str(stats.get("cache_dir", ""))) == wanted:
            return Path(mountpoint)
    return None


def open_cache_for_prefetch(config: Config) -> CacheStore | Path:
    """This config's cache, owned by this process; or, when a running mount owns it, that mountpoint.

    ``ConfigError`` exit 3 when another process (not a mount we can find) owns the cache.
    """

    layout = CacheLayout(config.cache.dir)
    layout.create()
    try:
        return open_cache_store(config)
    except CacheLocked:
        owner = mount_owning_cache(config)
        if owner is not None:
            return owner
        mounts = llava_vfs_mounts()
        running = f" (llava-vfs mounts here: {', '.join(mounts)})" if mounts else ""
        raise ConfigError(
            f"cache dir {config.cache.dir} is in use by another process (a running `llava-vfs mount` of "
            f"this config, or another prefetch){running}: stop it, or prefetch through the mount with "
            "`llava-vfs prefetch --config FILE --mount MOUNTPOINT`",
            3,
        ) from None


class _Bar:
    """A rich progress bar over bytes and files; a no-op when disabled."""

    def __init__(self, *, enabled: bool, total_bytes: int, total_files: int, label: str) -> None:
        self._progress = None
        self._task = None
        self._files = 0
        self._total_files = total_files
        if enabled:
            self._progress = Progress(
                TextColumn(label),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[files]}"),
                console=None,
            )
            self._task = self._progress.add_task(label, total=total_bytes, files=f"0/{total_files} files")

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def done(self, size: int) -> None:
        self._files += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=size, files=f"{self._files}/{self._total_files} files")


async def _prefetch_direct(
    config: Config,
    catalog: CatalogData,
    cache: CacheStore,
    todo: list[Item],
    report: PrefetchReport,
    *,
    jobs: int,
    progress: bool,
) -> None:

    client: HubClient | None = None
    try:
        async with AsyncExitStack() as stack:
            if not config.hub.offline:
                client = await stack.enter_async_context(open_client(config, await resolve_token(config)))
            async with trio.open_nursery() as nursery:
                sources = build_sources(
                    config,
                    commit=catalog.commit,
                    cache=cache,
                    client=client,
                    nursery=nursery,
                    shared=await open_shared_cache(config, nursery),
                )
                await _fetch_all(sources, todo, report, jobs=jobs, progress=progress)
                await sources.tiers.drain(timeout_s=600.0)
                shared = sources.tiers.tier("shared")
                report.shared_hits = shared.stats.hits if shared is not None else 0
                nursery.cancel_scope.cancel()
    finally:
        if client is not None:
            report.hub_bytes = client.stats.bytes_received
        cache.close()


async def _fetch_all(
    sources: Sources, todo: list[Item], report: PrefetchReport, *, jobs: int, progress: bool
) -> None:
    limiter = trio.CapacityLimiter(jobs)
    total_bytes = sum(i.size for i in todo)
    with _Bar(enabled=progress, total_bytes=total_bytes, total_files=len(todo), label="prefetching") as bar:

        async def one(item: Item) -> None:
            async with limiter:
                try:
                    if isinstance(item.ref, MemberRef):
                        fd = await sources.member_fd(item.ref)
                        os.close(fd)
                    else:
                        for index in range(item.ref.block_count(sources.block_size)):
                            await sources.hub_block(item.ref, index)
                        if not sources.is_cached(item.ref):  # served, but the cache had no room for it
                            raise CacheFull(f"cache {sources.cache.root} has no room for {item.path}")
                except CacheFull as exc:  # the rest would not fit either: stop, say so once
                    report.no_room = str(exc)
                    workers.cancel_scope.cancel()
                    return
                except VfsError as exc:
                    report.failed.append((item.path, str(exc)))
                    log.warning("prefetch: %s: %s", item.path, exc)
                else:
                    report.fetched += 1
                    report.fetched_bytes += item.size
                bar.done(item.size)

        async with trio.open_nursery() as workers:
            for item in todo:
                workers.start_soon(one, item)


def _through_mount_one(mountpoint: Path, item: Item) -> bool:
    """Blocking: warm one file through the mount; True if it was fetched, False if already cached."""
    path = mountpoint / item.path
    try:
        if os.getxattr(path, "user.vfs.cached") == b"1":
            return False
    except OSError:
        pass  # no xattr support in the way: just read it
    # Opening a shard member through the mount fetches it whole; a Hub file is fetched block by block as
    # it is read, so read it to the end (the kernel page cache absorbs it).
    with open(path, "rb", buffering=0) as fh:
        if isinstance(item.ref, HubFileRef):
            while fh.read(8 << 20):
                pass
    return True


async def _prefetch_through_mount(
    mountpoint: Path, todo: list[Item], report: PrefetchReport, *, jobs: int, progress: bool
) -> None:
    limiter = trio.CapacityLimiter(jobs)
    with _Bar(
        enabled=progress,
        total_bytes=sum(i.size for i in todo),
        total_files=len(todo),
        label="prefetching through the mount",
    ) as bar:

        async def one(item: Item) -> None:
            try:
                fetched = await trio.to_thread.run_sync(_through_mount_one, mountpoint, item, limiter=limiter)
            except OSError as exc:
                report.failed.append((item.path, exc.strerror or str(exc)))
                log.warning("prefetch: %s: %s", item.path, exc.strerror or exc)
            else:
                if fetched:
                    report.fetched += 1
                    report.fetched_bytes += item.size
                else:
                    report.cached += 1
            bar.done(item.size)

        async with trio.open_nursery() as nursery:
            for item in todo:
                nursery.start_soon(one, item)


def check_mount(mountpoint: Path, catalog: CatalogData) -> None:
    if not os.path.ismount(mountpoint):
        raise ConfigError(f"--mount {mountpoint} is not a mounted filesystem", 3)
    try:
        served = (mountpoint / ".vfs" / "revision").read_text().strip()
    except OSError:
        raise ConfigError(f"--mount {mountpoint} is not a llava-vfs mount (no .vfs/revision)", 3) from None
    if served != catalog.commit:
        raise ConfigError(
            f"--mount {mountpoint} serves commit {served[:12]}, "
            f"but this config's catalog is {catalog.commit[:12]}",
            3,
        )


def dry_run(config: Config, selection: Selection, out: TextIO) -> PrefetchReport:
    """Print what a real run would fetch: ``size<TAB>source<TAB>path`` per file, then a summary."""

    layout = CacheLayout(config.cache.dir)
    # not prepare(): a dry run creates nothing, not even the share's directories
    tier = SharedTier(config.cache.shared_dir) if config.cache.shared_dir is not None else None
    bs = config.cache.block_size_bytes
    report = PrefetchReport(
        selected=len(selection.items), selected_bytes=sum(i.size for i in selection.items)
    )
    from_shared = 0
    for item in selection.items:
        keys = cache_keys(item, bs)
        if all(cached_on_disk(layout, k) for k in keys):
            report.cached += 1
            continue
        source = "hub"
        if (
            tier is not None
            and isinstance(item.ref, MemberRef)
            and tier.has_entry(item.ref.cache_key, item.size)
        ):
            source = "shared"
            from_shared += 1
        report.fetched += 1
        report.fetched_bytes += item.size
        out.write(f"{item.size}\t{source}\t{item.path}\n")
    out.write(
        f"would fetch {report.fetched} files, {report.fetched_bytes} bytes "
        f"({human_size(report.fetched_bytes)}): "
        f"{report.fetched - from_shared} from the Hub, {from_shared} from the shared cache; "
        f"{report.cached} of {report.selected} already cached\n"
    )
    return report


def run_prefetch(
    config: Config,
    *,
    dirs: list[str] | None = None,
    paths_from: str | None = None,
    dry: bool = False,
    jobs: int = 4,
    mountpoint: Path | None = None,
    progress: bool = True,
    out: TextIO | None = None,
) -> int:
    """The CLI entry point: 0 when all selected files are cached now, 1 if some failed or were unknown."""
    out = out or sys.stdout
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}", 2)
    catalog = catalog_for_prefetch(config, dry=dry, progress=progress)
    paths = read_paths(paths_from) if paths_from is not None else None
    selection = select(config, catalog, dirs=dirs, paths=paths)
    for path in selection.unknown[:20]:
        print(
            f"llava-vfs prefetch: not in the catalog (absent, excluded or misspelled): {path}",
            file=sys.stderr,
        )
    if len(selection.unknown) > 20:
        print(f"llava-vfs prefetch: ... {len(selection.unknown) - 20} more unknown paths", file=sys.stderr)
    total_bytes = sum(i.size for i in selection.items)
    if total_bytes > config.cache.max_size_bytes:
        print(
            f"llava-vfs prefetch: warning: the selection ({human_size(total_bytes)}) is larger than "
            f"cache.max_size ({human_size(config.cache.max_size_bytes)}): the cache will evict the first "
            "files to fit the last",
            file=sys.stderr,
        )
    if dry:
        dry_run(config, selection, out)
        return 1 if selection.unknown else 0

    report = PrefetchReport(selected=len(selection.items), selected_bytes=total_bytes)
    started = time.monotonic()
    cache = None
    if mountpoint is None:
        opened = open_cache_for_prefetch(config)
        if isinstance(opened, Path):
            print(
                f"llava-vfs prefetch: the cache of this config belongs to the running mount at {opened}; "
                "prefetching through it",
                file=sys.stderr,
            )
            mountpoint = opened
        else:
            cache = opened
    if cache is None:
        assert mountpoint is not None
        through = mountpoint
        check_mount(through, catalog)
        trio.run(
            lambda: _prefetch_through_mount(through, selection.items, report, jobs=jobs, progress=progress)
        )
    else:
        layout = CacheLayout(config.cache.dir)
        bs = config.cache.block_size_bytes
        todo = [i for i in selection.items if not all(cached_on_disk(layout, k) for k in cache_keys(i, bs))]
        report.cached = len(selection.items) - len(todo)
        direct = cache
        trio.run(
            lambda: _prefetch_direct(config, catalog, direct, todo, report, jobs=jobs, progress=progress)
        )
    report.elapsed_s = time.monotonic() - started
    via = f" through {mountpoint}" if mountpoint is not None else ""
    hub = "" if mountpoint is not None else f"; {report.hub_bytes} bytes from the Hub"
    shared = f", {report.shared_hits} from the shared cache" if report.shared_hits else ""
    out.write(
        f"prefetched{via} {report.fetched} files ({report.fetched_bytes} bytes) in {report.elapsed_s:.1f}s"
        f"{shared}{hub}; {report.cached} already cached; {len(report.failed)} failed\n"
    )
    for path, problem in report.failed[:20]:
        out.write(f"failed: {path}: {problem}\n")
    if report.no_room is not None:
        out.write(
            f"stopped: {report.no_room}; free space on the cache's disk, or lower [cache] min_free, and run "
            "prefetch again (it skips what is cached)\n"
        )
    return 1 if report.failed or selection.unknown or report.no_room is not None else 0


def main(args: argparse.Namespace, config: Config) -> int:
    return run_prefetch(
        config,
        dirs=args.dirs,
        paths_from=args.paths_from,
        dry=args.dry_run,
        jobs=args.jobs,
        mountpoint=Path(args.mount) if args.mount else None,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
