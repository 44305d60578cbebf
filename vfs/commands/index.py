"""``llava-vfs index``: pin the revision, read the annotations, index the shards, write the catalog.

Steps, each resumable and idempotent (re-running after an interruption redoes only what is missing):
1. resolve the configured revision to a commit sha and list the repo at that commit;
2. download each included annotation JSON (verified against its LFS sha256 / blob id, kept under
   ``annotations/<content id>.json``) and stream-parse it for the ``video`` paths it wants, skipping and
   counting hostile or malformed records;
3. for each included shard without an index, one sequential streamed pass builds its seek index
   (``vfs.targz.shard_index``), saved under its LFS sha256 so a re-uploaded shard is never confused
   with the old one; ``--jobs`` shards at a time, each over several ranged connections
   (``vfs.hub.parallel``), at most ``--connections`` in all, inflated in order in its own thread;
4. write the per-commit catalog and pin the revision to the commit.

The network stays on the trio thread (async client); inflating, hashing and parsing run in threads.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vfs.cache.index_share import IndexShare
from vfs.catalog.annotations import AnnotationError, annotation_kind, iter_video_records, video_directory
from vfs.catalog.catalog import CatalogData, CatalogDir, ShardInfo, WantedRow
from vfs.catalog.export import ExportReport, check_destination, export_indexes
from vfs.config import Config
from vfs.daemon import hub_call, open_client, resolve_token
from vfs.errors import ConfigError, FetchError, IntegrityError, VfsError, exception_leaves, no_space_error
from vfs.hub.client import HubClient, RepoFile
from vfs.hub.parallel import download_in_order
from vfs.layout import CacheLayout, index_path
from vfs.refs import HubFileRef, MemberRef
from vfs.targz.build import build_shard_index
from vfs.targz.shard_index import CorruptShard, ShardIndex
from vfs.tree.snapshot import index_artifacts

if TYPE_CHECKING:
    from rich.progress import TaskID

log = logging.getLogger(__name__)

MAX_RECORD_WARNINGS_PER_FILE = 50


@dataclass
class IndexReport:
    commit: str = ""
    annotation_files: int = 0
    records: int = 0
    bad_records: int = 0
    wanted: int = 0
    shards: int = 0
    shards_built: int = 0
    shard_bytes_read: int = 0
    members: int = 0
    index_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    exported: ExportReport | None = None


# Ranged connections to the CDN the whole index pass may hold at once (``--connections``).
DEFAULT_CONNECTIONS = 8


def default_jobs(connections: int) -> int:
    """Shards indexed at once: one per core (each shard's inflate is sequential, in its own thread; zlib
    runs without the GIL), and no more than gives each shard two connections of the budget."""
    return max(1, min(os.cpu_count() or 1, connections // 2))


def included_directories(files: list[RepoFile], patterns: tuple[str, ...]) -> set[str]:
    dirs = {f.path.split("/", 1)[0] for f in files if "/" in f.path}
    if not patterns:
        return dirs
    return {d for d in dirs if any(fnmatch.fnmatchcase(d, p) for p in patterns)}


def is_shard(path: str) -> bool:
    return path.endswith((".tar.gz", ".tgz"))


class _ChannelReader:
    """A blocking ``read(n)`` over a trio channel of chunks, for the index builder's worker thread."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        self._receive = receive
        self._buffer = memoryview(b"")
        self._eof = False

    def read(self, n: int) -> bytes:
        if not self._buffer and not self._eof:
            try:
                self._buffer = memoryview(trio.from_thread.run(self._receive.receive))
            except trio.EndOfChannel:
                self._eof = True
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(out)


async def index_shard(
    client: HubClient,
    commit: str,
    shard: RepoFile,
    dest: Path,
    progress: Callable[[int], None] | None = None,
    budget: trio.CapacityLimiter | None = None,
) -> ShardIndex:
    """Stream a shard once and build, save and return its index.

    LFS shards are verified against their sha256 by the builder; a shard stored as a regular git file
    (a small one, in a mirror without LFS rules) is verified against its git blob id instead.
    """
    send, receive = trio.open_memory_channel[bytes](8)

    async def pump() -> None:
        # Several ranged connections, handed on in order: one CDN connection is slower than the inflate.
        await download_in_order(client, commit, shard.path, 0, shard.size, send, budget=budget)

    reader = _ChannelReader(receive)
    read = reader.read if shard.lfs_sha256 else _BlobCheckingReader(reader.read, shard).read
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                index = await trio.to_thread.run_sync(
                    lambda: build_shard_index(
                        read,
                        shard_sha256=shard.lfs_sha256,
                        shard_size=shard.size,
                        progress=progress,
                        shard_name=shard.path,
                    )
                )
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _one_error(group) from None
    await trio.to_thread.run_sync(lambda: dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700))
    await trio.to_thread.run_sync(index.save, dest)
    return index


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The typed error a caller should see from a shard's pump + builder nursery: the download's failure
    if it failed (the builder then only saw the stream end), else the builder's verdict. Never a group:
    a group would escape every ``except IntegrityError`` and reach the user as a traceback."""
    leaves = exception_leaves(group)
    for kind in (FetchError, VfsError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return group


class _BlobCheckingReader:
    """Wraps a blocking ``read`` and checks the git blob sha1 of everything read at EOF."""

    def __init__(self, read: Callable[[int], bytes], shard: RepoFile) -> None:
        self._read = read
        self._shard = shard
        self._sha1 = hashlib.sha1(b"blob %d\0" % shard.size)

    def read(self, n: int) -> bytes:
        data = self._read(n)
        if data:
            self._sha1.update(data)
        elif self._sha1.hexdigest() != self._shard.blob_id:
            raise CorruptShard(f"{self._shard.path}: bytes do not match the git blob id of the listing")
        return data


def parse_annotation(
    path: Path, repo_path: str, directory: str | None, report: IndexReport, data: CatalogData
) -> None:
    """Blocking: stream one annotation file into ``data.wanted`` and ``data.bad_records``."""
    counts: Counter[tuple[str, str]] = Counter()
    records = bad = 0
    with open(path, "rb") as fh:
        for rec in iter_video_records(fh, file_label=repo_path):
            records += 1
            if rec.path is None:
                bad += 1
                raw = repr(rec.raw_video)[:200]
                data.bad_records.append((repo_path, rec.index, raw, rec.problem or "rejected"))
                if bad <= MAX_RECORD_WARNINGS_PER_FILE:
                    log.warning("%s record %d: skipped video %s: %s", repo_path, rec.index, raw, rec.problem)
                continue
            source = (
                rec.data_source if isinstance(rec.data_source, str) and rec.data_source else (directory or "")
            )
            counts[(rec.path, source)] += 1
    if bad > MAX_RECORD_WARNINGS_PER_FILE:
        log.warning(
            "%s: %d records skipped in all (first %d shown)", repo_path, bad, MAX_RECORD_WARNINGS_PER_FILE
        )
    data.wanted.extend(WantedRow(p, s, repo_path, n) for (p, s), n in counts.items())
    data.annotations.append((repo_path, directory, records, bad))
    report.records += records
    report.bad_records += bad


async def build_catalog(
    config: Config,
    layout: CacheLayout,
    client: HubClient,
    *,
    jobs: int | None = None,
    connections: int = DEFAULT_CONNECTIONS,
    progress: bool = False,
    share: IndexShare | None = None,
) -> tuple[CatalogData, IndexReport]:
    report = IndexReport()
    # The shared cache tier (if any) supplies the cluster's pin, the listing, annotations and indexes.
    share = share or IndexShare(None, config.hub.repo)
    resolve = functools.partial(client.resolve_commit, config.hub.revision)
    commit = await share.commit(config.hub.revision, resolve)
    report.commit = commit
    files = await share.files(commit, functools.partial(client.list_files, commit))
    dirs = included_directories(files, config.hub.configs)
    if config.hub.configs and not dirs:
        raise ConfigError(
            f"hub.configs {list(config.hub.configs)} match no directory of {config.hub.repo}", 2
        )
    data = CatalogData(
        repo=config.hub.repo,
        commit=commit,
        indexed=True,
        files=[HubFileRef(f.path, f.size, f.blob_id, f.lfs_sha256) for f in files],
    )
    annotations = [f for f in files if annotation_kind(f.path) and f.path.split("/", 1)[0] in dirs]
    shards = sorted(
        (f for f in files if is_shard(f.path) and f.path.split("/", 1)[0] in dirs), key=lambda f: f.path
    )

    for f in annotations:
        local = layout.annotations / f"{f.content_id}.json"
        if not local.exists():
            await share.annotation(f, local, functools.partial(client.download_file, commit, f, local))
        try:
            await trio.to_thread.run_sync(
                parse_annotation, local, f.path, video_directory(f.path), report, data
            )
        except AnnotationError as exc:
            log.error("%s", exc)
            report.errors.append(str(exc))
        report.annotation_files += 1
    report.wanted = len({w.path for w in data.wanted})

    bar = _Progress(enabled=progress, total=sum(s.size for s in shards))
    limiter = trio.CapacityLimiter(jobs or default_jobs(connections))
    budget = trio.CapacityLimiter(connections)
    indexes: dict[str, ShardIndex] = {}

    async def one(shard: RepoFile) -> None:
        dest = index_path(layout.index, shard.content_id)
        if not dest.exists():
            await share.fetch_shard_index(shard.content_id, dest)
        if dest.exists():
            try:
                indexes[shard.path] = await trio.to_thread.run_sync(
                    lambda: ShardIndex.load(dest, expected_sha256=shard.lfs_sha256)
                )
                bar.advance(shard.size, done=True)
                return
            except IntegrityError as exc:
                log.warning("%s: %s; rebuilding", dest, exc)
        async with limiter:
            try:
                indexes[shard.path] = await index_shard(
                    client, commit, shard, dest, progress=bar.callback(), budget=budget
                )
            except (IntegrityError, FetchError) as exc:  # this shard only: the others are still indexed
                log.error("%s: %s", shard.path, exc)
                report.errors.append(f"{shard.path}: {exc}")
                return
            report.shards_built += 1
            await share.publish_shard_index(shard.content_id, dest)
            report.shard_bytes_read += shard.size
            bar.shard_done()

    with bar:
        async with trio.open_nursery() as nursery:
            for shard in shards:
                nursery.start_soon(one, shard)

    for shard in shards:
        index = indexes.get(shard.path)
        if index is None:
            continue
        data.shards.append(
            ShardInfo(
                shard.path,
                shard.content_id,
                shard.size,
                shard.path.split("/", 1)[0],
                len(index.members),
                index.index_size_bytes,
            )
        )
        report.index_bytes += index.index_size_bytes
        for m in index.members:
            if m.path in data.members:
                log.debug("%s also in %s; keeping %s", m.path, shard.path, data.members[m.path].shard_path)
                continue
            data.members[m.path] = MemberRef(shard.path, shard.content_id, m.path, m.offset, m.size, m.sha256)
    report.shards = len(data.shards)
    report.members = len(data.members)
    return data, report


class _Progress:
    """A rich progress bar over compressed shard bytes (bytes, rate, ETA, shards done); a no-op when off."""

    def __init__(self, *, enabled: bool, total: int) -> None:
        self._enabled = enabled
        self._total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._done = 0

    def __enter__(self) -> _Progress:
        if self._enabled:
            self._progress = Progress(
                TextColumn("indexing shards"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[shards]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task("index", total=self._total, shards="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def callback(self) -> Callable[[int], None]:
        last = [0]

        def update(consumed: int) -> None:
            self.advance(consumed - last[0])
            last[0] = consumed

        return update

    def advance(self, n: int, *, done: bool = False) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n)
        if done:
            self.shard_done()

    def shard_done(self) -> None:
        self._done += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, shards=f"{self._done} shards done")


async def index_async(
    config: Config,
    *,
    jobs: int | None = None,
    connections: int = DEFAULT_CONNECTIONS,
    progress: bool,
    refresh: bool = False,
    export: Path | None = None,
) -> IndexReport:

    if config.hub.offline:
        raise ConfigError("index needs the Hub, but offline mode is on (HF_HUB_OFFLINE or hub.offline)", 4)
    layout = CacheLayout(config.cache.dir)
    await trio.to_thread.run_sync(layout.create)
    token = await resolve_token(config)
    share = await IndexShare.open(config, refresh=refresh)
    async with open_client(config, token) as client:
        data, report = await hub_call(
            build_catalog(
                config, layout, client, jobs=jobs, connections=connections, progress=progress, share=share
            ),
            config,
        )
    catalogs = CatalogDir(layout.catalog, config.hub.repo)
    await trio.to_thread.run_sync(catalogs.write, data)
    await trio.to_thread.run_sync(catalogs.pin, config.hub.revision, data.commit)
    await share.publish_catalog(catalogs.db_path(data.commit), data.commit, config.hub.revision)
    # .vfs/available/ files and the mount snapshot, so the first mount starts fast
    await trio.to_thread.run_sync(index_artifacts, config, layout, data)
    if export is not None and not report.errors:
        report.exported = await trio.to_thread.run_sync(export_indexes, export, data, layout.index)
    return report


def run_index(
    config: Config,
    *,
    jobs: int | None = None,
    connections: int = DEFAULT_CONNECTIONS,
    progress: bool = True,
    refresh: bool = False,
    export: Path | None = None,
) -> int:
    os.umask(0o077)  # catalogs, indexes and annotation copies are private to the user, like the cache
    if connections < 1 or (jobs is not None and jobs < 1):
        raise ConfigError("--jobs and --connections must be at least 1", 2)
    if export is not None:
        check_destination(export)
    try:
        report = trio.run(
            lambda: index_async(
                config, jobs=jobs, connections=connections, progress=progress, refresh=refresh, export=export
            )
        )
    except BaseException as exc:
        full = no_space_error(exc)
        if full is None:
            raise
        raise ConfigError(_no_space_message(config, full), 3) from None
    print(
        f"indexed {config.hub.repo}@{report.commit[:12]}: {report.annotation_files} annotation files, "
        f"{report.records} records ({report.bad_records} skipped), {report.wanted} wanted videos; "
        f"{report.shards} shards ({report.shards_built} built now, {report.shard_bytes_read} bytes read), "
        f"{report.members} videos packed, index {report.index_bytes} bytes"
    )
    if report.exported is not None:
        print(
            f"exported {report.exported.shards} shard indexes ({report.exported.index_bytes} bytes) of "
            f"{config.hub.repo}@{report.commit[:12]} to {export}"
        )
    for err in report.errors:
        print(f"error: {err}")
    return 1 if report.errors else 0


def main(args: argparse.Namespace, config: Config) -> int:
    return run_index(
        config,
        jobs=args.jobs,
        connections=args.connections,
        progress=not args.no_progress,
        refresh=args.refresh,
        export=Path(args.export) if args.export else None,
    )


def _no_space_message(config: Config, exc: BaseException) -> str:
    """One line: where the disk is full, how full, and what to do. Every file ``index`` writes is
    published whole or not at all (temp file, rename), so a rerun after freeing space completes."""
    where = Path(exc.filename) if isinstance(exc, OSError) and exc.filename else config.cache.dir
    probe = where if where.is_dir() else where.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
        free = f"{st.f_bavail * st.f_frsize} bytes free"
    except OSError:
        free = "free space unknown"
    return (
        f"no space left writing {where} ({free}): nothing was left half-written; free some space on that "
        "filesystem, or set [cache] dir elsewhere, and run `llava-vfs index` again"
    )
