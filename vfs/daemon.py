"""Wiring: config -> Hub client -> pinned commit -> catalog -> namespace -> FUSE mount, and shutdown.

``serve`` runs in the foreground inside one trio run. One root nursery owns every task (fetches,
signal handling); ``pyfuse3.main`` serves until the mount is unmounted or SIGTERM/SIGINT arrives, and
then the filesystem is unmounted cleanly (exit 0). Readiness is one line on stdout and ``READY=1`` on
``NOTIFY_SOCKET`` when set.

Start-up problems are ``ConfigError``s with documented exit codes (see ``vfs.errors``); nothing is
mounted when one is raised.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pyfuse3
import trio

from vfs.cache.store import CacheStore
from vfs.catalog.catalog import CatalogData, CatalogDir, CatalogError
from vfs.config import Config
from vfs.core import FsCore
from vfs.errors import ConfigError, FetchError, VfsError
from vfs.fuse_ops import Operations
from vfs.hub.client import HubAccessError, HubClient
from vfs.layout import CacheLayout
from vfs.sources.opener import Sources
from vfs.view import build_view, json_file

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")


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
    from huggingface_hub import get_token

    return await trio.to_thread.run_sync(get_token)


def open_client(config: Config, token: str | None) -> HubClient:
    return HubClient(endpoint=config.hub.endpoint, repo_id=config.hub.repo, token=token)


async def pinned_commit(config: Config, catalogs: CatalogDir, client: HubClient | None) -> str:
    """The commit to serve: a sha given in the config, else the pin left by index, else resolve and pin."""
    revision = config.hub.revision
    if SHA_RE.match(revision):
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


async def hub_call(coro, config: Config):  # type: ignore[no-untyped-def]
    """Await a start-up Hub call, turning its failures into one-line ConfigErrors (exit 4)."""
    try:
        return await coro
    except HubAccessError as exc:
        raise ConfigError(f"{config.hub.repo} at {config.hub.endpoint}: {exc}", 4) from None
    except (FetchError, OSError) as exc:
        raise ConfigError(f"cannot reach the Hub at {config.hub.endpoint}: {exc}", 4) from None


async def load_catalog(config: Config, layout: CacheLayout, client: HubClient | None) -> CatalogData:
    """The catalog of the pinned commit; a first mount without ``index`` lists the repo and saves it."""
    catalogs = CatalogDir(layout.catalog, config.hub.repo)
    commit = await pinned_commit(config, catalogs, client)
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
    from vfs.sources.refs import HubFileRef

    data = CatalogData(
        repo=config.hub.repo,
        commit=commit,
        files=[HubFileRef(f.path, f.size, f.blob_id, f.lfs_sha256) for f in files],
    )
    await trio.to_thread.run_sync(catalogs.write, data)
    return data


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint} does not exist", 3)
    if not mountpoint.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a directory", 3)
    if os.path.ismount(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is busy: something is already mounted there", 5)


async def serve(config: Config, mountpoint: Path, *, max_tasks: int = 64) -> None:
    check_mountpoint(mountpoint)
    layout = CacheLayout(config.cache.dir)
    await trio.to_thread.run_sync(layout.create)
    cache = await trio.to_thread.run_sync(
        lambda: CacheStore(layout.data, max_size_bytes=config.cache.max_size_bytes)
    )
    async with AsyncExitStack() as stack:
        client: HubClient | None = None
        if not config.hub.offline:
            token = await resolve_token(config)
            client = await stack.enter_async_context(open_client(config, token))
        catalog = await load_catalog(config, layout, client)
        async with trio.open_nursery() as nursery:
            sources = Sources(
                commit=catalog.commit,
                cache=cache,
                index_dir=layout.index,
                block_size=config.cache.block_size_bytes,
                nursery=nursery,
                client=client,
            )
            core_box: list[FsCore] = []
            stats_ref = json_file(lambda: live_stats(core_box[0], cache, client), dynamic=True)
            namespace = build_view(catalog, views=config.mount.views, extra_files={"stats.json": stats_ref})
            core = FsCore(namespace, sources)
            core_box.append(core)
            ops = Operations(
                core,
                entry_timeout_s=config.mount.entry_timeout_s,
                attr_timeout_s=config.mount.attr_timeout_s,
                negative_timeout_s=config.mount.negative_timeout_s,
                mtime_ns=time.time_ns(),
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
                nursery.start_soon(_terminate_on_signal)
                print(
                    f"llava-vfs: serving {config.hub.repo}@{catalog.commit[:12]} at {mountpoint} "
                    f"({namespace.file_count} files, {len(catalog.members)} videos)",
                    flush=True,
                )
                sd_notify("READY=1")
                await pyfuse3.main(min_tasks=4, max_tasks=max_tasks)
            finally:
                sd_notify("STOPPING=1")
                pyfuse3.close(unmount=True)
                nursery.cancel_scope.cancel()
        log.info("unmounted %s", mountpoint)


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def live_stats(core: FsCore, cache: CacheStore, client: HubClient | None) -> dict[str, object]:
    stats = core.stats
    out: dict[str, object] = {
        "lookups": stats.lookups,
        "misses": stats.misses,
        "opens": stats.opens,
        "reads": stats.reads,
        "bytes_served": stats.bytes_served,
        "errors": dict(stats.errors),
        "open_handles": core.open_handles,
        "fetches_in_flight": core.sources.fetches_in_flight,
        "cache": {"bytes": cache.size_bytes(), "entries": cache.entry_count(), **vars(cache.stats)},
    }
    if client is not None:
        out["hub"] = vars(client.stats)
    return out


def run(config: Config, mountpoint: Path) -> int:
    """Blocking entry point for the CLI: 0 after a clean unmount."""
    try:
        trio.run(serve, config, mountpoint)
    except ConfigError:
        raise
    except VfsError as exc:
        print(f"llava-vfs: error: {exc}", file=sys.stderr)
        return 1
    return 0
