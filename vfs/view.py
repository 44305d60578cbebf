"""Builds the namespace a mount shows from a catalog and the configured views.

Views (``[mount] views``):
- ``repo``: every file of the repo at its repo path (annotation JSONs, shards, README), so a data YAML can
  point into the mount.
- ``merged``: every available video at its annotation path (``academic_source/...``,
  ``liwei_youtube_videos/...``): what LLaVA-NeXT's ``video_folder`` expects.
- ``per_directory``: the same videos again under ``<data_source>/<video>``, the layout several third-party
  loaders use.
Only available files are listed, so ``ls`` and ``find | wc -l`` measure coverage. ``.vfs/`` holds the
mount's own files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from vfs.catalog.catalog import CatalogData
from vfs.namespace import Namespace, NamespaceBuilder, PathConflict
from vfs.sources.refs import VirtualRef

log = logging.getLogger(__name__)

VFS_DIR = ".vfs"


def build_view(
    catalog: CatalogData,
    *,
    views: tuple[str, ...] = ("merged", "repo"),
    extra_files: dict[str, VirtualRef] | None = None,
) -> Namespace:
    builder = NamespaceBuilder()
    conflicts = 0

    def add(path: str, size: int, ref: object) -> None:
        nonlocal conflicts
        if path == VFS_DIR or path.startswith(VFS_DIR + "/"):
            conflicts += 1
            return
        try:
            builder.add_file(path, size, ref)
        except PathConflict as exc:
            conflicts += 1
            log.warning("not shown: %s (%s)", path, exc)

    if "repo" in views:
        for f in catalog.files:
            add(f.path, f.size, f)
    if "merged" in views:
        for path, member in catalog.members.items():
            add(path, member.size, member)
    if "per_directory" in views:
        for row in catalog.wanted:
            member = catalog.members.get(row.path)
            if member is not None:
                add(f"{row.data_source}/{row.path}", member.size, member)

    builder.add_dir(VFS_DIR)
    revision = (catalog.commit + "\n").encode()
    builder.add_file(f"{VFS_DIR}/revision", len(revision), VirtualRef(lambda: revision))
    for name, ref in (extra_files or {}).items():
        data_len = 0 if ref.dynamic else len(ref.render())
        builder.add_file(f"{VFS_DIR}/{name}", data_len, ref)
    if conflicts:
        log.warning("%d catalog paths collide with other entries and are not shown", conflicts)
    return builder.build()


def json_file(render: Callable[[], object], *, dynamic: bool = False) -> VirtualRef:
    return VirtualRef(
        lambda: (json.dumps(render(), indent=1, sort_keys=True) + "\n").encode(), dynamic=dynamic
    )
