"""The indexer's view of the shared tier (``IndexShare``): shard indexes, annotation JSONs and repo
listings that another node already derived, taken before deriving them again, and published after.
Awaited inline: ``index`` is a batch job."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from vfs.cache.shared import open_tier
from vfs.cache.tier import (
    SharedTier,
    digest,
    listing_from_json,
    listing_to_json,
    verify_content_id,
    verify_shard_index,
)
from vfs.errors import IntegrityError
from vfs.hub.client import RepoFile, is_commit_sha

if TYPE_CHECKING:
    from vfs.config import Config

log = logging.getLogger("vfs.cache.shared")


class IndexShare:
    """What ``llava-vfs index`` takes from and gives to the share. A no-op when no tier is configured.

    With a tier, ``index`` joins the cluster: it uses the shared pin of the revision (unless ``refresh``),
    the shared listing of the commit, annotation JSONs and shard indexes from the share, and publishes
    whatever it had to build, then the catalog and the pin, so a second node fetches almost nothing.
    """

    def __init__(
        self, tier: SharedTier | None, repo: str, *, configs: tuple[str, ...] = (), refresh: bool = False
    ) -> None:
        self.tier = tier
        self.repo = repo
        self.configs = configs
        self.refresh = refresh

    @classmethod
    async def open(cls, config: Config, *, refresh: bool = False) -> IndexShare:
        tier = await trio.to_thread.run_sync(open_tier, config)
        return cls(tier, config.hub.repo, configs=config.hub.configs, refresh=refresh)

    async def commit(self, revision: str, resolve: Callable[[], Awaitable[str]]) -> str:
        if self.tier is not None and not self.refresh and not is_commit_sha(revision):
            tier = self.tier
            pinned = await trio.to_thread.run_sync(lambda: tier.read_pin(self.repo, revision))
            if pinned is not None:
                log.info(
                    "revision %r: using the cluster's pin %s from the shared cache (--refresh re-resolves)",
                    revision,
                    pinned,
                )
                return pinned
        return await resolve()

    async def files(self, commit: str, list_files: Callable[[], Awaitable[list[RepoFile]]]) -> list[RepoFile]:
        tier = self.tier
        if tier is None:
            return await list_files()
        path = tier.catalog_dir(self.repo) / f"{digest(commit)}.files.json"
        data = await trio.to_thread.run_sync(lambda: tier.read_small(path, 1 << 30))
        if data is not None:
            try:
                return listing_from_json(data, self.repo, commit)
            except IntegrityError as exc:
                tier.report_corrupt(path, str(exc))
        files = await list_files()
        payload = listing_to_json(self.repo, commit, files)
        # replaces a bad one
        await trio.to_thread.run_sync(lambda: tier.publish_payload(path, payload, replace=True))
        return files

    async def annotation(self, f: RepoFile, dest: Path, download: Callable[[], Awaitable[None]]) -> None:
        """Make ``dest`` hold the verified annotation ``f``: from the share, else downloaded and published."""
        tier = self.tier
        if tier is None:
            await download()
            return
        src = tier.annotation_path(f.content_id)

        def verify(p: Path) -> None:
            verify_content_id(p, size=f.size, content_id=f.content_id, is_lfs=f.lfs_sha256 is not None)

        if await trio.to_thread.run_sync(lambda: tier.fetch_file(src, dest, verify)):
            return
        await download()
        await trio.to_thread.run_sync(lambda: tier.publish_file(dest, src))

    async def fetch_shard_index(self, shard_sha256: str, dest: Path) -> bool:
        tier = self.tier
        if tier is None:
            return False
        return await trio.to_thread.run_sync(
            lambda: tier.fetch_file(
                tier.index_path(shard_sha256), dest, lambda p: verify_shard_index(p, shard_sha256)
            )
        )

    async def publish_shard_index(self, shard_sha256: str, src: Path) -> None:
        tier = self.tier
        if tier is not None:
            await trio.to_thread.run_sync(lambda: tier.publish_file(src, tier.index_path(shard_sha256)))

    async def publish_catalog(self, db_path: Path, commit: str, revision: str) -> None:
        """Publish the catalog of ``commit`` (the file at ``db_path``) and pin ``revision`` to it for the
        whole cluster."""
        tier = self.tier
        if tier is None:
            return

        def publish() -> None:
            dest = tier.catalog_path(self.repo, commit, self.configs)
            tier.publish_file(db_path, dest, replace=True)
            if not is_commit_sha(revision) and tier.write_pin(self.repo, revision, commit):
                log.info("shared cache: %s pinned to %s for the cluster", revision, commit)

        await trio.to_thread.run_sync(publish)
