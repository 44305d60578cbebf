"""Builds the namespace a mount shows from a catalog, the availability of its videos and the configured views.

Views (``[mount] views``):
- ``repo``: every file of the repo at its repo path (annotation JSONs, shards, README), so a data YAML can
  point into the mount.
- ``merged``: every available video at its annotation path (``academic_source/...``,
  ``liwei_youtube_videos/...``): what LLaVA-NeXT's ``video_folder`` expects: the shard members, upstream
  files and directories and repo files the ``Availability`` (``vfs.tree.availability``) chose.
- ``per_directory``: the same videos again under ``<data_source>/<video>``, the layout several third-party
  loaders use.
Only available files are listed, so ``ls`` and ``find -type f | wc -l`` measure coverage. The directories
of every wanted path exist even when its video is absent (directories only): the kernel resolves a path
one component at a time, so only then does the lookup of an absent video reach the daemon with its full
path, and its guidance can name it. ``.vfs/`` holds the mount's own files.
"""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING, cast

from vfs.catalog.catalog import CatalogData
from vfs.datasets import REGISTRY
from vfs.refs import FileRef, Ref, UpstreamDirRef, UpstreamRef, VirtualRef
from vfs.sources.upstream import inside
from vfs.tree.namespace import Namespace, NamespaceBuilder, PathConflict

if TYPE_CHECKING:
    from vfs.sources.upstream import UpstreamDir
    from vfs.tree.availability import Availability

log = logging.getLogger(__name__)

VFS_DIR = ".vfs"


def build_view(
    catalog: CatalogData,
    *,
    views: tuple[str, ...] = ("merged", "repo"),
    extra_files: dict[str, VirtualRef] | None = None,
    availability: Availability,
    entries: dict[str, tuple[int, FileRef]] | None = None,
) -> Namespace:
    """The namespace of one mount. ``extra_files`` (in-memory) and ``entries`` (``(size, ref)``) are
    ``.vfs/`` files by their name below ``.vfs/``."""
    builder = NamespaceBuilder()
    conflicts = 0

    def add(path: str, size: int, ref: FileRef) -> None:
        nonlocal conflicts
        if path == VFS_DIR or path.startswith(VFS_DIR + "/"):
            conflicts += 1
            return
        try:
            builder.add_file(path, size, ref)
        except PathConflict as exc:
            conflicts += 1
            log.warning("not shown: %s (%s)", path, exc)

    def add_dir(path: str) -> None:
        if not path or path == VFS_DIR or path.startswith(VFS_DIR + "/"):
            return
        try:
            builder.add_dir(path)
        except PathConflict as exc:
            log.debug("no directory %s for absent paths below it (%s)", path, exc)

    def add_frames(path: str, directory: UpstreamDir) -> None:
        add_dir(path)
        for name, real_path, size in directory.files:
            add(f"{path}/{name}", size, UpstreamRef(directory.rule, real_path, size, directory.root_real))

    av = availability
    if "merged" in views:
        for path, served in av.served.items():
            add(path, served.size, served.ref)
        for path, directory in av.dirs.items():
            add_frames(path, directory)
        for parent in dict.fromkeys(path.rpartition("/")[0] for path in av.absent):
            add_dir(parent)
        for prefix in skeleton_prefixes(av):
            add_dir(prefix)
    if "repo" in views:
        for f in catalog.files:
            if av.excluded(f.path) is None:
                add(f.path, f.size, f)
    if "per_directory" in views:
        seen_parents: set[str] = set()
        for row in catalog.wanted:
            label = row.data_source or row.annotation.split("/", 1)[0]
            target = f"{label}/{row.path}"
            chosen = av.served.get(row.path)
            if chosen is not None:
                add(target, chosen.size, chosen.ref)
            elif row.path in av.dirs:
                add_frames(target, av.dirs[row.path])
            elif (parent := target.rpartition("/")[0]) not in seen_parents:
                seen_parents.add(parent)
                add_dir(parent)

    builder.add_dir(VFS_DIR)
    revision = (catalog.commit + "\n").encode()
    builder.add_file(f"{VFS_DIR}/revision", len(revision), VirtualRef(lambda: revision))
    for name, ref in (extra_files or {}).items():
        data_len = 0 if ref.dynamic else len(ref.render())
        builder.add_file(f"{VFS_DIR}/{name}", data_len, ref)
    for name, (size, entry_ref) in (entries or {}).items():
        builder.add_file(f"{VFS_DIR}/{name}", size, entry_ref)
    if conflicts:
        log.warning("%d catalog paths collide with other entries and are not shown", conflicts)
    builder.fold_dirs(upstream_dir_ref)
    return builder.build()


def upstream_dir_ref(children: list[Ref | None]) -> UpstreamDirRef | None:
    """The real counterpart of a directory whose every entry comes from one upstream root: the one real
    directory that holds its entries, else that root; None for anything else (a Hub or mixed directory,
    or an empty one), which shows the ``[mount]`` owner and ``dir_mode``."""
    if not children or not all(isinstance(ref, UpstreamRef | UpstreamDirRef) for ref in children):
        return None
    refs = cast(list[UpstreamRef | UpstreamDirRef], children)
    first = refs[0]
    if any(ref.dataset != first.dataset or ref.root != first.root for ref in refs):
        return None
    holders = {posixpath.dirname(ref.real_path) for ref in refs}
    real = holders.pop() if len(holders) == 1 else first.root
    if first.root and not inside(real, first.root):
        real = first.root  # never a directory above the root: its chain is not the dataset's to show
    return UpstreamDirRef(first.dataset, real, first.root)


def skeleton_prefixes(av: Availability) -> list[str]:
    """Dataset directories that exist even with nothing available in them (``academic_source/ego4d``), so a
    lookup below them reaches the daemon with the file's own name: every known family's prefix under a
    top-level directory the annotations use, and every configured upstream prefix."""
    prefixes = [r.prefixes[0] for r in av.upstreams.rules]
    for dataset in REGISTRY.values():
        prefixes += [p for p in dataset.prefixes if p.split("/", 1)[0] in av.wanted_tops]
    return list(dict.fromkeys(prefixes))
