"""Helpers for the fault, crash and hostile-input tests: configs with short retry budgets, an indexed
cache built once and cloned per test, an in-process harness over the real core, and checks on the cache
directory.

Nothing here fakes a component: the harness runs the real ``HubClient`` against a running ``HubEmulator``,
the real ``CacheStore``, shard indexes and ``FsCore``; mounts run the real daemon (``tests.mounting``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.mounting import cli, write_config
from vfs.cache.store import CacheStore
from vfs.catalog.catalog import CatalogData, CatalogDir
from vfs.config import load_config
from vfs.core import FsCore
from vfs.daemon import build_core, build_sources
from vfs.hub.client import HubClient
from vfs.layout import CacheLayout
from vfs.sources.opener import Sources
from vfs.tree.snapshot import NO_STATS, build_namespace

# Short budgets so a persistent fault ends in EIO within seconds (the defaults are 8 retries / 120 s).
RETRY_DEADLINE_S = 2.0
FAST_HUB_KEYS = (
    f"max_retries = 6\nretry_deadline_s = {RETRY_DEADLINE_S}\nconnect_timeout_s = 1.0\nread_timeout_s = 1.0\n"
)
# What a reader that got EIO makes the daemon log (the error boundary, one line per failed call).
EIO_LOGS = (r"^open: ", r"gave up after", r"sha256 .* expected", r"corrupt compressed data")
RETRY_LOGS = (r"retry \d+/\d+", r"refetching \(attempt")
SKIPPED = (r"skipped video", r"records skipped")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_cfg(
    path: Path,
    *,
    endpoint: str,
    repo: str,
    cache_dir: Path,
    hub_keys: str = FAST_HUB_KEYS,
    block_size: str = "64KiB",
    max_size: str = "1GiB",
    min_free: str = "0",
    extra: str = "",
) -> Path:
    """A config like ``tests.mounting.write_config``, with extra ``[hub]`` keys (retry budget, token)."""
    path.write_text(
        f'[hub]\nrepo = "{repo}"\nendpoint = "{endpoint}"\nrevision = "main"\n{hub_keys}\n'
        f'[cache]\ndir = "{cache_dir}"\nblock_size = "{block_size}"\nmax_size = "{max_size}"\n'
        f'min_free = "{min_free}"\n\n{extra}'
    )
    return path


def run_index(cfg: Path, *args: str, expect: int = 0) -> str:
    """``llava-vfs index`` in a subprocess; returns stdout + stderr."""
    result = cli("index", "--config", str(cfg), "--no-progress", *args)
    out = result.stdout + result.stderr
    assert result.returncode == expect, out
    assert "Traceback" not in out, out
    return out


_TEMPLATES: dict[tuple[str, str], Path] = {}


def indexed_cache(workdir: Path, endpoint: str, repo: str, dest: Path) -> Path:
    """A cache dir at ``dest`` holding the catalog and shard indexes of the repo at ``endpoint``.

    The index is built once per (endpoint, repo) with the real CLI into ``workdir`` and copied per test:
    indexing is the slow part and every reliability test starts from the same indexed state.
    """
    key = (endpoint, repo)
    template = _TEMPLATES.get(key)
    if template is None or not template.exists():
        template = workdir / f"template-{len(_TEMPLATES)}"
        cfg = write_cfg(
            workdir / f"template-{len(_TEMPLATES)}.toml", endpoint=endpoint, repo=repo, cache_dir=template
        )
        run_index(cfg)
        _TEMPLATES[key] = template
    shutil.copytree(template, dest, symlinks=True)
    return dest


def cache_temp_files(cache_dir: Path) -> list[Path]:
    """Files in the cache store's temp directory (in-progress writes, or leftovers of a crash)."""
    tmp = cache_dir / "data" / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


def cache_entries(cache_dir: Path) -> list[Path]:
    entries = cache_dir / "data" / "entries-v1"
    return sorted(p for p in entries.rglob("*") if p.is_file()) if entries.is_dir() else []


def loose_permissions(root: Path) -> list[str]:
    """Everything under ``root`` (inclusive) that another user could read, write or enter."""
    loose = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(root.parent)}")
    return loose


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def read_file(path: Path) -> bytes | OSError:
    """The whole file, or the OSError the read raised (for "exact bytes or an error" checks)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        return exc


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------- in-process


@dataclass
class Harness:
    """The real core over a cloned cache: ``read_all`` opens, reads and releases like a reader would."""

    core: FsCore
    sources: Sources
    client: HubClient
    cache: CacheStore
    data: CatalogData

    async def read_all(self, path: str, chunk: int = 1 << 17) -> bytes:
        core = self.core
        node = core.ns.resolve(path)
        assert node is not None, path
        fh, _ = await core.open(node.ino, os.O_RDONLY)
        try:
            out = bytearray()
            while True:
                data = await core.read(fh, len(out), chunk)
                if not data:
                    return bytes(out)
                out += data
        finally:
            await core.release(fh)


@asynccontextmanager
async def core_harness(
    cache_dir: Path,
    endpoint: str,
    repo: str,
    *,
    max_size_bytes: int = 1 << 30,
    block_size: int = 64 * 1024,
    token: str | None = None,
    **client_kw: float,
) -> AsyncIterator[Harness]:
    """The daemon's core (``build_core`` over the tree ``build_namespace`` plans) with a HubClient of short
    retry budgets and a CacheStore, over an indexed cache dir."""
    config = load_config(
        write_config(
            cache_dir.with_name(cache_dir.name + ".toml"),
            endpoint=endpoint,
            repo=repo,
            cache_dir=cache_dir,
            block_size=str(block_size),
            max_size=str(max_size_bytes),
        )
    )
    layout = CacheLayout(cache_dir)
    catalogs = CatalogDir(layout.catalog, repo)
    commit = catalogs.read_pins()["main"]
    data = catalogs.read(commit)
    settings: dict[str, float] = {
        "max_retries": 6,
        "retry_deadline_s": RETRY_DEADLINE_S,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.2,
    }
    settings.update(client_kw)
    max_retries = int(settings.pop("max_retries"))
    cache = CacheStore(layout.data, max_size_bytes=max_size_bytes)
    try:
        async with (
            HubClient(
                endpoint=endpoint, repo_id=repo, token=token, max_retries=max_retries, **settings
            ) as client,
            trio.open_nursery() as nursery,
        ):
            sources = build_sources(config, commit=data.commit, cache=cache, client=client, nursery=nursery)
            namespace, _ = build_namespace(config, layout, data, stats=NO_STATS)
            core = build_core(config, namespace, sources)
            yield Harness(core=core, sources=sources, client=client, cache=cache, data=data)
            nursery.cancel_scope.cancel()
    finally:
        cache.close()


# -- full disks ----------------------------------------------------------------------------------------

# The summary WARNING of files served uncached (the cache had no room).
UNCACHED_WARNING = r"served \d+ files \(\d+ bytes\) uncached"

# Another process that fills a filesystem: writes FILE until ENOSPC, then (with --hold) keeps it full,
# re-filling whatever space appears, until its stdin closes.
FILLER = r"""
import os, select, sys
path, hold = sys.argv[1], len(sys.argv) > 2
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
chunk = b"\xa5" * 4096
def fill():
    while True:
        try:
            os.write(fd, chunk)
        except OSError:
            return
fill()
print("full", flush=True)
while hold and not select.select([sys.stdin], [], [], 0.01)[0]:
    fill()
"""


class Filler:
    """``with Filler(dir):`` another process fills ``dir``'s filesystem (and, with ``hold``, keeps it full
    while the block runs); ``free()`` gives the space back."""

    def __init__(self, directory: Path, *, hold: bool = False, leave_bytes: int = 0) -> None:
        self.path = directory / "filler.bin"
        self.hold = hold
        self.leave_bytes = leave_bytes  # given back at once: a nearly full disk rather than a full one
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Filler:
        args = [sys.executable, "-c", FILLER, str(self.path)] + (["hold"] if self.hold else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "full"
        if self.leave_bytes:
            os.truncate(self.path, max(0, self.path.stat().st_size - self.leave_bytes))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def free(self) -> None:
        self.stop()
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc_info: object) -> None:
        self.free()


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (tmpfs of ``size``) mounted at ``directory`` for the block."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr!r}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(directory)], check=False)
