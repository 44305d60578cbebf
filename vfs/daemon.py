"""Wiring: config -> Hub client -> pinned commit -> catalog -> namespace -> FUSE mount, and shutdown.

``serve`` runs in the foreground inside one trio run. One root nursery owns every task (fetches,
signal handling); ``pyfuse3.main`` serves until the mount is unmounted or SIGTERM/SIGINT arrives, and
then the filesystem is unmounted cleanly (exit 0). Readiness is one line on stdout and ``READY=1`` on
``NOTIFY_SOCKET`` when set.

Start-up problems are ``ConfigError``s with documented exit codes (see ``vfs.errors``); nothing is
mounted when one is raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyfuse3
import trio
from huggingface_hub import get_token

from vfs.access import HubOwnership
from vfs.cache.shared import SharedCache, open_shared_cache
from vfs.cache.store import CacheStore
from vfs.catalog.catalog import CatalogData, CatalogDir, CatalogError
from vfs.catalog.share import restore_from_share_async
from vfs.config import Config, MountConfig
from vfs.core import FsCore, MissListener
from vfs.errors import ConfigError, FetchError, VfsError, exception_leaves
from vfs.fuse_ops import Operations
from vfs.guidance import Miss, MissReporter
from vfs.hub.client import HubAccessError, HubClient, is_commit_sha
from vfs.layout import CacheLayout
from vfs.metrics import metrics_server
from vfs.mountinfo import mounts
from vfs.refs import HubFileRef, VirtualRef, json_file
from vfs.sources.opener import Sources
from vfs.tree.namespace import NamespaceView
from vfs.tree.plan import log_coverage
from vfs.tree.snapshot import (
    STATS_FILE,
    Snapshot,
    SnapshotError,
    build_snapshot,
    open_snapshot,
    snapshot_key,
    snapshot_path,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


def sd_notify(message: str) -> None:
    """Send a systemd notification when ``NOTIFY_SOCKET`` is set (no-op otherwise)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)


async def resolve_token(config: Config) -> str | None:
    if config.hub.token is not None:
        return config.hub.token

    return await trio.to_thread.run_sync(get_token)


def open_client(config: Config, token: str | None) -> HubClient:
    hub = config.hub
    return HubClient(
        endpoint=hub.endpoint,
        repo_id=hub.repo,
        token=token,
        max_retries=hub.max_retries,
        retry_deadline_s=hub.retry_deadline_s,
        connect_timeout_s=hub.connect_timeout_s,
        read_timeout_s=hub.read_timeout_s,
    )


async def pinned_commit(config: Config, catalogs: CatalogDir, client: HubClient | None) -> str:
    """The commit to serve: a sha given in the config, else the pin left by index, else resolve and pin."""
    revision = config.hub.revision
    if is_commit_sha(revision):
        return revision
    pinned = catalogs.read_pins().get(revision)
    if pinned is not None:
        return pinned
    if client is None:
        raise ConfigError(
            f"revision {revision!r} of {config.hub.repo} was never pinned and the Hub is offline; "
            "run `llava-vfs index` while online",
            4,
        )
    commit = await hub_call(client.resolve_commit(revision), config)
    await trio.to_thread.run_sync(catalogs.pin, revision, commit)
    return commit


async def hub_call(coro: Awaitable[T], config: Config) -> T:
    """Await a start-up Hub call, turning its failures into one-line ConfigErrors (exit 4)."""
    try:
        return await coro
    except HubAccessError as exc:
        raise ConfigError(f"{config.hub.repo} at {config.hub.endpoint}: {exc}", 4) from None
    except (FetchError, OSError) as exc:
        raise ConfigError(f"cannot reach the Hub at {config.hub.endpoint}: {exc}", 4) from None


@dataclass
class MountTree:
    """What a mount serves: its tree, the guidance for misses in it and its coverage report."""

    namespace: NamespaceView
    explain: Callable[[str], Miss | None]
    report: dict[str, object]
    commit: str
    videos: int
    snapshot: Snapshot | None  # None when serving from memory (the snapshot could not be written)


async def load_tree(
    config: Config, layout: CacheLayout, client: HubClient | None, *, stats: VirtualRef
) -> MountTree:
    """The tree of the pinned commit: from its mount snapshot when one is current (a fraction of a second at
    full scale), else built from the catalog and persisted; a first mount without ``index`` lists the repo."""
    catalogs = CatalogDir(layout.catalog, config.hub.repo)
    await restore_from_share_async(config, catalogs)  # the cluster's pin and catalog, if none locally
    commit = await pinned_commit(config, catalogs, client)
    if catalogs.exists(commit):
        path = snapshot_path(catalogs, commit, snapshot_key(config, catalogs.db_path(commit)))
        snap = await trio.to_thread.run_sync(open_snapshot, path, config)
        if snap is not None:
            return await _tree_of(snap, config, stats)
    catalog = await _read_catalog(config, catalogs, commit, client)
    log.info("building the mount snapshot of %s@%s", config.hub.repo, commit[:12])
    ns, plan, written = await trio.to_thread.run_sync(
        lambda: build_snapshot(config, layout, catalog, stats=stats)
    )
    if written is not None:
        try:
            snap = await trio.to_thread.run_sync(Snapshot, written, config)
        except SnapshotError as exc:
            log.warning("%s; serving from memory", exc)
        else:
            del ns, plan, catalog  # the whole catalog in Python objects: hand it back before serving
            await trio.to_thread.run_sync(release_memory)
            return await _tree_of(snap, config, stats)
    log_coverage(plan.report, config)
    return MountTree(ns, plan.availability.explain, plan.report, commit, len(catalog.members), None)


def release_memory() -> None:
    """Collect, then return free heap pages to the OS: glibc keeps them otherwise, and a daemon that built
    a snapshot of the full dataset would hold several hundred MB it no longer uses. Best effort."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def _tree_of(snap: Snapshot, config: Config, stats: VirtualRef) -> MountTree:
    report = snap.report
    revision = (snap.commit + "\n").encode()
    namespace = snap.namespace(
        {
            "revision": VirtualRef(lambda: revision),
            "coverage.json": json_file(lambda: report),
            STATS_FILE: stats,
        }
    )
    explainer = await trio.to_thread.run_sync(snap.explainer)  # resolves the upstream roots' real paths
    log_coverage(report, config)
    return MountTree(namespace, explainer.explain, report, snap.commit, snap.videos, snap)


async def _read_catalog(
    config: Config, catalogs: CatalogDir, commit: str, client: HubClient | None
) -> CatalogData:
    """The catalog of ``commit``, read whole; a first mount without ``index`` lists the repo and saves it."""
    if catalogs.exists(commit):
        try:
            return await trio.to_thread.run_sync(catalogs.read, commit)
        except CatalogError as exc:
            if client is None:
                raise ConfigError(str(exc), 3) from None
            log.warning("%s; rebuilding it from the Hub listing", exc)
    if client is None:
        raise ConfigError(f"no catalog for commit {commit} and the Hub is offline", 4)
    files = await hub_call(client.list_files(commit), config)

    data = CatalogData(
        repo=config.hub.repo,
        commit=commit,
        files=[HubFileRef(f.path, f.size, f.blob_id, f.lfs_sha256) for f in files],
    )
    await trio.to_thread.run_sync(catalogs.write, data)
    return data


def open_cache_store(config: Config) -> CacheStore:
    """Blocking: the local cache as this config sets it up (quota, free space it keeps)."""
    return CacheStore(
        CacheLayout(config.cache.dir).data,
        max_size_bytes=config.cache.max_size_bytes,
        min_free=config.cache.min_free,
    )


def build_sources(
    config: Config,
    *,
    commit: str,
    cache: CacheStore,
    client: HubClient | None,
    nursery: trio.Nursery,
    shared: SharedCache | None = None,
) -> Sources:
    """The sources of bytes for ``commit`` as this config sets them up: the one place the daemon, ``prefetch``
    and the tests get them from. Fetches run in ``nursery`` (a service nursery, not a reader's task)."""
    return Sources(
        commit=commit,
        cache=cache,
        index_dir=CacheLayout(config.cache.dir).index,
        block_size=config.cache.block_size_bytes,
        nursery=nursery,
        client=client,
        lower_tiers=() if shared is None else (shared,),
        uncached_max_bytes=config.cache.uncached_max_bytes,
        # one blocking pread per reader whose bytes are not in memory: as many as dataloaders read
        disk_threads=DISK_THREADS,
    )


def build_core(
    config: Config, namespace: NamespaceView, sources: Sources, *, on_miss: MissListener | None = None
) -> FsCore:
    """The filesystem core over a tree, as this config sets it up (owners and modes, the per-user check)."""
    return FsCore(
        namespace,
        sources,
        on_miss=on_miss,
        ownership=hub_ownership(config.mount),
        check_callers=config.mount.allow_other,
    )


def hub_ownership(mount: MountConfig) -> HubOwnership:
    """What every entry the Hub serves shows: ``[mount] uid, gid, file_mode, dir_mode``, the ids defaulting
    to the daemon's own."""
    return HubOwnership(
        os.getuid() if mount.uid is None else mount.uid,
        os.getgid() if mount.gid is None else mount.gid,
        mount.file_mode,
        mount.dir_mode,
    )


def check_allow_other(
    allow_other: bool, *, euid: int | None = None, fuse_conf: Path = Path("/etc/fuse.conf")
) -> None:
    """``allow_other`` for a non-root user needs ``user_allow_other`` in /etc/fuse.conf: say so up front."""
    if not allow_other or (os.geteuid() if euid is None else euid) == 0:
        return
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError:
        lines = []
    if not any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines):
        raise ConfigError(
            f"[mount] allow_other is set but {fuse_conf} does not enable `user_allow_other`, which FUSE "
            "requires for non-root users: add that line (as root), or run the mount as root, or unset "
            "allow_other",
            5,
        )


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint} does not exist", 3)
    if not mountpoint.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a directory", 3)
    if os.path.ismount(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is busy: something is already mounted there", 5)


# Each FUSE request in flight holds one pyfuse3 worker task until it is answered, and an open of a cold
# video waits for its download. With few workers, a burst of cold opens (many dataloader workers on a
# slow Hub) would leave none for lookup/getattr/readdir and cache hits. Workers are trio tasks, started
# only when all are busy and retired when idle; each holds a lazily touched receive buffer.
MAX_FUSE_TASKS = 512
# Worker threads for cache-file reads that miss the page cache (and cache writes). With fewer threads than
# readers, cached reads queue behind each other instead of keeping the disk busy (bench/RESULTS.md).
DISK_THREADS = 64


async def serve(config: Config, mountpoint: Path, *, max_tasks: int = MAX_FUSE_TASKS) -> None:
    check_mountpoint(mountpoint)
    check_allow_other(config.mount.allow_other)
    layout = CacheLayout(config.cache.dir)
    await trio.to_thread.run_sync(layout.create)
    cache = await trio.to_thread.run_sync(lambda: open_cache_store(config))
    async with AsyncExitStack() as stack:
        client: HubClient | None = None
        if not config.hub.offline:
            token = await resolve_token(config)
            client = await stack.enter_async_context(open_client(config, token))
        core_box: list[FsCore] = []
        reporter_box: list[MissReporter] = []
        stats_ref = json_file(
            lambda: {**live_stats(core_box[0], cache, client), "missing": reporter_box[0].snapshot()},
            dynamic=True,
        )
        tree = await load_tree(config, layout, client, stats=stats_ref)
        if tree.snapshot is not None:
            stack.callback(tree.snapshot.close)
        reporter = MissReporter(tree.explain)
        reporter_box.append(reporter)
        metrics = stack.enter_context(metrics_server(config, commit=tree.commit))  # binds [metrics] port
        async with trio.open_nursery() as nursery:
            fetches: trio.Nursery = await nursery.start(_fetch_nursery)
            sources = build_sources(
                config,
                commit=tree.commit,
                cache=cache,
                client=client,
                nursery=fetches,
                shared=await open_shared_cache(config, nursery),
            )
            namespace = tree.namespace
            core = build_core(config, namespace, sources, on_miss=reporter.on_miss)
            core_box.append(core)
            if metrics is not None:
                report = tree.report
                metrics.attach(
                    core=core, cache=cache, client=client, sources=sources, coverage=lambda: report
                )
            ops = Operations(
                core,
                entry_timeout_s=config.mount.entry_timeout_s,
                attr_timeout_s=config.mount.attr_timeout_s,
                negative_timeout_s=config.mount.negative_timeout_s,
                mtime_ns=time.time_ns(),
                xattrs=config.mount.xattrs,
            )
            options = set(pyfuse3.default_options)
            options |= {"fsname=llava-vfs", "subtype=llava-vfs", "ro"}
            if config.mount.allow_other:
                options.add("allow_other")
            try:
                pyfuse3.init(ops, str(mountpoint), options)
            except RuntimeError as exc:
                hint = ""
                if config.mount.allow_other:
                    hint = " (allow_other needs `user_allow_other` in /etc/fuse.conf for non-root users)"
                raise ConfigError(f"cannot mount {mountpoint}: {exc}{hint}", 5) from None
            try:
                nursery.start_soon(_tune_once_initialised, mountpoint)
                nursery.start_soon(_terminate_on_signal, fetches.cancel_scope)
                nursery.start_soon(reporter.run)
                print(
                    f"llava-vfs: serving {config.hub.repo}@{tree.commit[:12]} at {mountpoint} "
                    f"({namespace.file_count} files, {tree.videos} videos)",
                    flush=True,
                )
                sd_notify("READY=1")
                await pyfuse3.main(min_tasks=4, max_tasks=max_tasks)
            finally:
                sd_notify("STOPPING=1")
                pyfuse3.close(unmount=True)
                await sources.tiers.drain()  # shielded, bounded: let queued publishes finish
                nursery.cancel_scope.cancel()
        log.info("unmounted %s", mountpoint)


# A readahead window of 1 MiB instead of the default 128 KiB: reads reach the daemon as requests of up to
# 1 MiB (the max_pages limit) instead of 128 KiB, an eighth of the requests, so a cache file's disk reads are
# large. Set after INIT (``_tune_once_initialised``), which caps it otherwise. Measured on this machine
# (bench/RESULTS.md, A/B runs): against 128 KiB, 16 readers of cached videos went from 0.42x to 0.79x native
# disk and 64 from 0.42x to 0.66x; 4 MiB did about as well with 16 readers but worse with 64 (0.53x), and
# cost hot re-reads (0.47-0.61x against 0.60-0.65x at 1 MiB and 128 KiB). More background requests let
# several readers' readahead reach the daemon at once (needs fusectl at /sys/fs/fuse/connections). Both
# are root-only sysfs knobs.
READ_AHEAD_KB = 1024
MAX_BACKGROUND = 64


def _mount_device(mountpoint: Path) -> tuple[int, int] | None:
    """``(major, minor)`` of the mount at ``mountpoint``, from /proc/self/mountinfo (never touching the mount,
    whose requests nobody serves yet)."""
    target = os.path.abspath(mountpoint)  # not realpath: an lstat of the mountpoint would deadlock here
    found = [m.device for m in mounts() if m.mountpoint == target]
    return found[-1] if found else None  # the last match is the topmost mount


def tune_kernel(mountpoint: Path) -> None:
    """Best effort: raise the mount's readahead window and the connection's background request limit."""
    device = _mount_device(mountpoint)
    if device is None:
        log.debug("kernel tuning skipped: %s not found in /proc/self/mountinfo", mountpoint)
        return
    major, minor = device
    for knob, value in (
        (f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", READ_AHEAD_KB),
        (f"/sys/fs/fuse/connections/{minor}/max_background", MAX_BACKGROUND),
    ):
        try:
            with open(knob, "w") as f:
                f.write(f"{value}\n")
            log.debug("set %s = %d", knob, value)
        except OSError as exc:  # not root, or a kernel without the knob: the defaults still work
            log.debug("could not set %s = %d: %s", knob, value, exc)


async def _tune_once_initialised(mountpoint: Path) -> None:
    """``tune_kernel`` once the kernel has processed the FUSE INIT reply: INIT caps the mount's readahead
    window at what libfuse offered (128 KiB), undoing any earlier setting. A stat through the mount
    returns only after INIT (it waits for the daemon to answer it, so it runs in a worker thread)."""
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint)
    except OSError as exc:
        log.debug("kernel tuning skipped: stat of %s failed: %s", mountpoint, exc)
        return
    await trio.to_thread.run_sync(tune_kernel, mountpoint)


async def _fetch_nursery(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    """The nursery the downloads readers wait on run in, cancellable on its own at shutdown."""
    async with trio.open_nursery() as fetches:
        task_status.started(fetches)
        await trio.sleep_forever()


async def _terminate_on_signal(fetches: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            # pyfuse3.main returns only once every request in flight is answered; a reader waiting on a
            # stalled download would hold the shutdown for as long as the retry budget lasts. Cancel the
            # downloads: their readers get EIO now, nothing partial is ever published.
            fetches.cancel()
            return


def live_stats(core: FsCore, cache: CacheStore, client: HubClient | None) -> dict[str, object]:
    stats = core.stats
    out: dict[str, object] = {
        "lookups": stats.lookups,
        "getattrs": stats.getattrs,
        "misses": stats.misses,
        "opens": stats.opens,
        "reads": stats.reads,
        "bytes_served": stats.bytes_served,
        "errors": dict(stats.errors),
        "open_handles": core.open_handles,
        "fetches_in_flight": core.sources.fetches_in_flight,
        "cache": {
            "bytes": cache.size_bytes(),
            "entries": cache.entry_count(),
            "free_bytes": cache.free_bytes,
            "min_free_bytes": cache.min_free_bytes,
            **vars(cache.stats),
        },
        "uncached": vars(core.sources.uncached.stats),
    }
    if client is not None:
        out["hub"] = vars(client.stats)
    for tier in core.sources.tiers.lower:
        out[tier.name] = {**vars(tier.stats), "pending": tier.pending_publishes}
    out["cache_dir"] = str(cache.root)  # lets `prefetch` find the running mount that owns a cache
    return out


def run(config: Config, mountpoint: Path) -> int:
    """Blocking entry point for the CLI: 0 after a clean unmount."""
    os.umask(0o077)  # everything the daemon writes under the cache dir is private to its user
    try:
        trio.run(serve, config, mountpoint)
    except BaseExceptionGroup as group:
        # A start-up error raised inside a nursery arrives wrapped: surface it as the one line it is.
        leaves = exception_leaves(group)
        for leaf in leaves:
            if isinstance(leaf, ConfigError):
                raise leaf from None
        if leaves and all(isinstance(leaf, VfsError) for leaf in leaves):
            print(f"llava-vfs: error: {leaves[0]}", file=sys.stderr)
            return 1
        raise
    except ConfigError:
        raise
    except VfsError as exc:
        print(f"llava-vfs: error: {exc}", file=sys.stderr)
        return 1
    return 0
