"""The cluster's pin and catalog through the shared tier (``[cache] shared_dir``): a node with no pin or
catalog of its own takes the ones another node published, so every node serves the same commit.

The tier itself (``vfs.cache.shared``) stores files; what a catalog is, and how to check one, is known
here. Everything but ``restore_from_share_async`` blocks.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import trio

from vfs.cache.shared import START_TIMEOUT_S
from vfs.cache.tier import SharedTier
from vfs.catalog.catalog import SCHEMA_VERSION, CatalogDir
from vfs.config import Config
from vfs.errors import IntegrityError
from vfs.hub.client import is_commit_sha

log = logging.getLogger(__name__)


def verify_catalog(path: Path, *, repo: str, commit: str) -> None:
    """A light check of a catalog database: readable, this schema version, this repo and commit."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta"))
            con.execute("SELECT count(*) FROM members").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise IntegrityError(f"not a readable catalog: {exc}") from None
    if meta.get("version") != SCHEMA_VERSION or meta.get("commit") != commit or meta.get("repo") != repo:
        raise IntegrityError(
            f"catalog of version {meta.get('version')!r}, repo {meta.get('repo')!r}, commit "
            f"{meta.get('commit')!r}; expected {SCHEMA_VERSION!r}, {repo!r}, {commit!r}"
        )


def restore_catalog(
    tier: SharedTier | None, catalogs: CatalogDir, revision: str, configs: tuple[str, ...] = ()
) -> str | None:
    """Make the local catalog dir hold the cluster's pin and catalog when it has none of its own.

    A revision with no local pin takes the shared pin (so every node serves the same commit); a pinned
    commit with no local catalog gets the shared one. Returns the commit it found, if any. Blocking.
    """
    if tier is None:
        return None
    commit: str | None = revision if is_commit_sha(revision) else catalogs.read_pins().get(revision)
    if commit is None:
        commit = tier.read_pin(catalogs.repo, revision)
        if commit is None:
            return None
        catalogs.pin(revision, commit)
        log.info("revision %r of %s pinned to %s by the shared cache", revision, catalogs.repo, commit)
    if not catalogs.exists(commit):
        src = tier.catalog_path(catalogs.repo, commit, configs)
        if tier.fetch_file(
            src, catalogs.db_path(commit), lambda p: verify_catalog(p, repo=catalogs.repo, commit=commit)
        ):
            log.info("catalog of %s@%s copied from the shared cache", catalogs.repo, commit[:12])
    return commit


def restore_from_share(config: Config, catalogs: CatalogDir) -> str | None:
    """``restore_catalog`` for the configured shared tier (no-op without one). Blocking."""
    if config.cache.shared_dir is None:
        return None
    tier = SharedTier(config.cache.shared_dir)
    return restore_catalog(tier, catalogs, config.hub.revision, config.hub.configs)


async def restore_from_share_async(config: Config, catalogs: CatalogDir) -> None:
    """``restore_from_share`` in a worker thread, given up (with one WARNING) if the share hangs."""
    if config.cache.shared_dir is None:
        return
    with trio.move_on_after(START_TIMEOUT_S):
        await trio.to_thread.run_sync(restore_from_share, config, catalogs, abandon_on_cancel=True)
        return
    log.warning(
        "shared cache %s: no answer within %.0fs while looking for the cluster's pin and catalog; "
        "going on without them",
        config.cache.shared_dir,
        START_TIMEOUT_S,
    )
