"""The mount snapshot: the tree a mount shows, and what its guidance needs, persisted in SQLite.

Building the tree of the full dataset from the catalog (180K members, 430K wanted rows), the upstream roots
and the views takes seconds and hundreds of MB of Python objects. A snapshot keeps the result on disk, so a
later mount with the same inputs is ready in a fraction of a second and holds in memory only the entries the
kernel asks about (bench/RESULTS.md, "Scale").

- ``write_snapshot`` persists an in-memory ``Namespace`` (every node with its source) and the per-path facts
  guidance needs (``vfs.tree.availability.PathFacts``), plus the coverage report, in one file, written to a
  temp name
  and renamed into place.
- ``open_snapshot`` opens the snapshot for the current inputs, or returns None when there is none or it is
  stale, and the daemon builds one.
- ``SnapshotNamespace`` serves the tree lazily: one indexed point query per first lookup, one ordered range
  scan per listed directory, each kept in bounded LRU caches (cachetools). ``SnapshotExplainer`` answers
  lookup misses from the ``facts`` table with the same logic as the in-memory ``Availability``.

When a snapshot is current, and what stays stable: docs/design.md, "The mount snapshot".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from vfs.catalog.catalog import CatalogData, CatalogDir
from vfs.config import Config
from vfs.durable import replacing
from vfs.errors import IntegrityError, no_space_error
from vfs.layout import CacheLayout
from vfs.refs import HubFileRef, LocalFileRef, MemberRef, Ref, UpstreamDirRef, UpstreamRef, VirtualRef
from vfs.sources.upstream import Upstreams
from vfs.tree.availability import Availability, Explainer, PathFacts
from vfs.tree.namespace import ROOT_INO, Namespace, Node
from vfs.tree.plan import MountPlan, plan_mount
from vfs.tree.reports import prune_available
from vfs.tree.view import build_view

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "snapshot-v2"  # v2: directories keep their upstream counterpart
RACY_WINDOW_S = 2.0
STATS_FILE = "stats.json"  # the one dynamic .vfs/ file, bound by the daemon
# What that file says in a tree built without a daemon (``index``, the tests' cores).
NO_STATS = VirtualRef(lambda: b"{}\n", dynamic=True)
KEEP_SNAPSHOTS = 4  # per repo: the newest few, so switching between two configs does not rebuild each time

# ``nodes.kind``: a directory, or the kind of ref a file has
K_DIR, K_MEMBER, K_HUB, K_UPSTREAM, K_LOCAL, K_VIRTUAL = range(6)
# The columns of an upstream row that a node carries from the start (owner and mode come from its real
# path); NULL for every other row, so a listing of shard members builds no strings it would throw away.
_UPSTREAM_COLUMNS = ", ".join(
    f"CASE WHEN kind IN ({K_DIR}, {K_UPSTREAM}) THEN {column} END" for column in ("a", "b", "c")
)

# Bounds of what a mount keeps in memory: nodes and refs of recently used inodes, and the sorted listings
# of recently listed directories (by entries: one 100K-entry directory fits).
NODE_CACHE = 65_536
REF_CACHE = 16_384
LISTING_CACHE_ENTRIES = 262_144

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes(ino INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name TEXT NOT NULL,
                   size INTEGER NOT NULL, kind INTEGER NOT NULL, a TEXT, b TEXT, c TEXT, d TEXT, n INTEGER);
CREATE TABLE facts(path TEXT PRIMARY KEY, available INTEGER NOT NULL, wanted INTEGER NOT NULL,
                   reason TEXT, shard TEXT, escaped TEXT, unindexed TEXT) WITHOUT ROWID;
"""
_INDEX = "CREATE UNIQUE INDEX nodes_by_parent ON nodes(parent, name)"

_Row = tuple[int, int, str, int, int, str | None, str | None, str | None, str | None, int | None]


class SnapshotError(IntegrityError):
    """A snapshot file that cannot be read (corrupt, truncated, another format)."""


def snapshot_key(config: Config, catalog_db: Path) -> str:
    """The digest of every input a snapshot is built from, except upstream contents (checked at open)."""
    st = catalog_db.stat()
    inputs = {
        "format": SNAPSHOT_FORMAT,
        # not the inode: a cache copied to another node (or restored from the shared tier) stays valid
        "catalog": [catalog_db.name, st.st_size, st.st_mtime_ns],
        "views": list(config.mount.views),
        "exclude": sorted(config.mount.exclude),
        "upstreams": [repr(u) for u in config.upstreams],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def snapshot_path(catalogs: CatalogDir, commit: str, key: str) -> Path:
    return catalogs.dir / "snapshots" / f"{commit}-{key}.sqlite"


# --------------------------------------------------------------------------------------------- writing


def _encode(node: Node, ns: Namespace, cache_root: Path) -> _Row:
    ref = node.ref
    base = (node.ino, node.parent, node.name, node.size)
    if node.is_dir:
        if isinstance(ref, UpstreamDirRef):
            return (*base, K_DIR, ref.dataset, ref.real_path, ref.root, None, None)
        return (*base, K_DIR, None, None, None, None, None)
    if isinstance(ref, MemberRef):
        _check_size(node, ref.size)
        return (*base, K_MEMBER, ref.shard_path, ref.shard_sha256, ref.member_path, ref.sha256, ref.offset)
    if isinstance(ref, HubFileRef):
        _check_size(node, ref.size)
        return (*base, K_HUB, ref.path, ref.blob_id, ref.lfs_sha256, None, None)
    if isinstance(ref, UpstreamRef):
        _check_size(node, ref.size)
        return (*base, K_UPSTREAM, ref.dataset, ref.real_path, ref.root, None, None)
    if isinstance(ref, LocalFileRef):
        _check_size(node, ref.size)
        path = Path(ref.path)
        inside = path.is_relative_to(cache_root)
        return (
            *base,
            K_LOCAL,
            str(path.relative_to(cache_root)) if inside else ref.path,
            None,
            None,
            None,
            None,
        )
    if isinstance(ref, VirtualRef):
        # rendered in memory by the daemon: stored by its name below .vfs/, bound again at open
        name = ns.path_of(node).partition("/")[2]
        return (*base, K_VIRTUAL, name, None, None, None, 1 if ref.dynamic else 0)
    raise TypeError(f"cannot persist a node with a {type(ref).__name__}")


def _check_size(node: Node, size: int) -> None:
    if node.size != size:
        raise ValueError(f"node {node.name!r} is {node.size} bytes but its source says {size}")


def write_snapshot(
    dest: Path,
    ns: Namespace,
    availability: Availability,
    report: Mapping[str, object],
    *,
    videos: int,
    cache_root: Path,
) -> Path:
    """Blocking: persist a built namespace and its guidance facts at ``dest`` (temp file, fsync, rename)."""
    started_ns = time.time_ns()
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with replacing(dest) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=OFF")
            con.execute("PRAGMA synchronous=OFF")  # durability comes from the fsync and rename below
            con.executescript(_SCHEMA)
            con.executemany(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_encode(n, ns, cache_root) for n in ns.nodes()),
            )
            con.execute(_INDEX)
            con.executemany(
                "INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        path,
                        int(f.available),
                        int(f.wanted),
                        f.reason,
                        f.shard,
                        f.escaped,
                        json.dumps(f.unindexed) if f.unindexed else None,
                    )
                    for path, f in availability.all_facts()
                ),
            )
            meta = {
                "format": SNAPSHOT_FORMAT,
                "commit": availability.catalog.commit,
                "built_ns": str(started_ns),
                "nodes": str(len(ns)),
                "file_count": str(ns.file_count),
                "total_bytes": str(ns.total_bytes),
                "videos": str(videos),
                "indexed": "1" if availability.indexed else "0",
                "data_sources": json.dumps(sorted(availability.data_sources)),
                "wanted_tops": json.dumps(sorted(availability.wanted_tops)),
                "upstream_dirs": json.dumps(availability.resolution.listed, sort_keys=True),
                "upstream_denied": json.dumps(sorted(availability.resolution.denied_dirs)),
                "report": json.dumps(report, sort_keys=True),
            }
            con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            con.commit()
        finally:
            con.close()
    _prune(dest)
    return dest


def _prune(keep: Path) -> None:
    """Drop all but the newest ``KEEP_SNAPSHOTS`` snapshots of the repo (and stray temp files)."""
    try:
        entries = [p for p in keep.parent.iterdir() if p.name.endswith(".sqlite") or p.name.endswith(".tmp")]
        stale = [p for p in entries if p.name.endswith(".tmp") and time.time() - p.stat().st_mtime > 3600]
        snaps = sorted(
            (p for p in entries if p.name.endswith(".sqlite")), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for path in stale + [p for p in snaps[KEEP_SNAPSHOTS:] if p != keep]:
            path.unlink(missing_ok=True)
    except OSError as exc:  # housekeeping only
        log.debug("could not prune old snapshots next to %s: %s", keep, exc)


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Listing:
    """One directory's children in sorted order (parallel lists: names for bisect, the rest for nodes)."""

    names: list[str]
    inos: list[int]
    sizes: list[int]
    dirs: list[bool]
    upstream: list[UpstreamRef | UpstreamDirRef | None]  # what each entry's owner and mode come from

    def __len__(self) -> int:
        return len(self.names)


def _upstream_ref(
    size: int, kind: int, a: str | None, b: str | None, c: str | None
) -> UpstreamRef | UpstreamDirRef | None:
    """The ref of an upstream file or directory row (None for any other row). A node carries it from the
    moment it is loaded: its owner and mode come from the real path (``NamespaceView``)."""
    if kind == K_UPSTREAM:
        assert a is not None and b is not None and c is not None
        return UpstreamRef(a, b, size, c)
    if kind == K_DIR and a is not None:
        assert b is not None and c is not None
        return UpstreamDirRef(a, b, c)
    return None


def _storable(text: str) -> bool:
    """Whether ``text`` can be a stored name: names the kernel hands over that are not UTF-8 arrive with
    surrogate escapes (``os.fsdecode``), which SQLite refuses; the catalog never holds such a path."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# A directory node of a snapshot never has its children in memory: ``SnapshotNamespace`` looks them up.
# The empty mapping only marks the node as a directory (``Node.is_dir``); nothing adds to it.
_LAZY_CHILDREN: dict[str, int] = {}


class Snapshot:
    """An open snapshot: its namespace, its miss explainer and its coverage report.

    The SQLite connection is used from the trio thread only (it may be opened in a worker thread, hence
    ``check_same_thread=False``); every query is an indexed point lookup or one directory's range scan on a
    local, read-only file."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        try:
            self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.meta = dict(self._con.execute("SELECT key, value FROM meta"))
            if self.meta.get("format") != SNAPSHOT_FORMAT:
                raise SnapshotError(f"{path}: a snapshot of another format")
            self.report: dict[str, object] = json.loads(self.meta["report"])
        except (sqlite3.Error, KeyError, ValueError) as exc:
            raise SnapshotError(f"{path}: {exc}") from exc
        self.commit = self.meta["commit"]
        self.videos = int(self.meta["videos"])
        self.config = config

    def stale_reason(self) -> str | None:
        """Why this snapshot no longer matches the disk (None when it does). Blocking: a few stats."""
        built_ns = int(self.meta["built_ns"])
        racy_ns = built_ns - int(RACY_WINDOW_S * 1e9)
        for real_dir, recorded in json.loads(self.meta["upstream_dirs"]).items():
            try:
                now: int | None = os.stat(real_dir).st_mtime_ns
            except OSError:
                now = None
            if now != recorded:
                return f"upstream directory {real_dir} changed"
            if now is not None and now >= racy_ns:
                return f"upstream directory {real_dir} changed while the snapshot was built"
        for real_dir in json.loads(self.meta["upstream_denied"]):
            # A chmod or a new capability changes no mtime: a directory the build could not list is
            # tried again, and the tree is rebuilt once the daemon may list it.
            with contextlib.suppress(OSError), os.scandir(real_dir):
                return f"upstream directory {real_dir} can be listed now"
        for stored, size in self._con.execute("SELECT a, size FROM nodes WHERE kind = ?", (K_LOCAL,)):
            path = self.config.cache.dir / stored  # relative to the cache dir, or absolute
            try:
                if os.stat(path).st_size != size:
                    return f"{path} changed"
            except OSError:
                return f"{path} is gone"
        return None

    def namespace(self, virtual: Mapping[str, VirtualRef]) -> SnapshotNamespace:
        return SnapshotNamespace(self._con, self.meta, virtual, self.config.cache.dir)

    def explainer(self) -> SnapshotExplainer:
        return SnapshotExplainer(self._con, self.meta, self.config)

    def close(self) -> None:
        self._con.close()


def open_snapshot(path: Path, config: Config) -> Snapshot | None:
    """Blocking: the snapshot at ``path`` when it exists and is current, else None (the caller builds one)."""
    if not path.exists():
        return None
    try:
        snap = Snapshot(path, config)
        reason = snap.stale_reason()
    except (SnapshotError, sqlite3.Error, OSError) as exc:
        log.warning("mount snapshot %s cannot be read (%s); rebuilding it", path, exc)
        return None
    if reason is not None:
        log.info("mount snapshot %s is stale (%s); rebuilding it", path.name, reason)
        snap.close()
        return None
    return snap


class SnapshotNamespace:
    """A ``NamespaceView`` over a snapshot: nodes, refs and listings loaded on first use, kept in LRUs."""

    def __init__(
        self,
        con: sqlite3.Connection,
        meta: Mapping[str, str],
        virtual: Mapping[str, VirtualRef],
        cache_root: Path,
    ) -> None:
        self._con = con
        self._virtual = virtual
        self._cache_root = cache_root
        self._count = int(meta["nodes"])
        self.file_count = int(meta["file_count"])
        self.total_bytes = int(meta["total_bytes"])
        self._nodes: LRUCache[int, Node] = LRUCache(maxsize=NODE_CACHE)
        self._refs: LRUCache[int, Ref] = LRUCache(maxsize=REF_CACHE)
        self._listings: LRUCache[int, _Listing] = LRUCache(maxsize=LISTING_CACHE_ENTRIES, getsizeof=len)

    def __len__(self) -> int:
        return self._count

    def _node(
        self,
        ino: int,
        parent: int,
        name: str,
        size: int,
        kind: int,
        a: str | None,
        b: str | None,
        c: str | None,
    ) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            is_dir = kind == K_DIR
            upstream = _upstream_ref(size, kind, a, b, c)
            node = Node(ino, parent, name, size, upstream, _LAZY_CHILDREN if is_dir else None)
            self._nodes[ino] = node
        return node

    def get(self, ino: int) -> Node | None:
        node = self._nodes.get(ino)
        if node is not None:
            return node
        row = self._con.execute(
            f"SELECT parent, name, size, kind, {_UPSTREAM_COLUMNS} FROM nodes WHERE ino = ?", (ino,)
        ).fetchone()
        if row is None:
            return None
        return self._node(ino, *row)

    def child(self, parent: Node, name: str) -> Node | None:
        if not parent.is_dir:
            return None
        listing = self._listings.get(parent.ino)
        if listing is not None:
            i = bisect_left(listing.names, name)
            if i == len(listing.names) or listing.names[i] != name:
                return None
            node = self._nodes.get(listing.inos[i])
            if node is None:
                node = Node(
                    listing.inos[i],
                    parent.ino,
                    name,
                    listing.sizes[i],
                    listing.upstream[i],
                    _LAZY_CHILDREN if listing.dirs[i] else None,
                )
                self._nodes[node.ino] = node
            return node
        if not _storable(name):
            return None
        row = self._con.execute(
            f"SELECT ino, size, kind, {_UPSTREAM_COLUMNS} FROM nodes WHERE parent = ? AND name = ?",
            (parent.ino, name),
        ).fetchone()
        if row is None:
            return None
        ino, size, kind, a, b, c = row
        return self._node(ino, parent.ino, name, size, kind, a, b, c)

    def _listing(self, ino: int) -> _Listing:
        listing = self._listings.get(ino)
        if listing is None:
            rows = self._con.execute(
                f"SELECT name, ino, size, kind, {_UPSTREAM_COLUMNS} FROM nodes WHERE parent = ? AND ino != ?"
                " ORDER BY name",
                (ino, ROOT_INO),
            ).fetchall()
            listing = _Listing(
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] == K_DIR for r in rows],
                [_upstream_ref(r[2], r[3], r[4], r[5], r[6]) for r in rows],
            )
            if len(listing) <= LISTING_CACHE_ENTRIES:
                self._listings[ino] = listing
        return listing

    def entries(self, node: Node, start: int) -> Iterator[tuple[str, Node, int]]:
        if not node.is_dir:
            return
        listing = self._listing(node.ino)
        names, inos, sizes, dirs, upstream = (
            listing.names,
            listing.inos,
            listing.sizes,
            listing.dirs,
            listing.upstream,
        )
        parent = node.ino
        # readdirplus hands every entry's attributes to the kernel: transient nodes, not cached here
        for pos in range(start, len(names)):
            children = _LAZY_CHILDREN if dirs[pos] else None
            entry = Node(inos[pos], parent, names[pos], sizes[pos], upstream[pos], children)
            yield names[pos], entry, pos + 1

    def ref_of(self, node: Node) -> Ref | None:
        if node.ref is not None or node.is_dir:
            return node.ref  # upstream refs are loaded with the node; other directories have none
        cached = self._refs.get(node.ino)
        if cached is not None:
            return cached
        row = self._con.execute(
            "SELECT size, kind, a, b, c, d, n FROM nodes WHERE ino = ?", (node.ino,)
        ).fetchone()
        ref = None if row is None else self._decode(*row)
        if ref is not None:
            self._refs[node.ino] = ref
        return ref

    def _decode(
        self, size: int, kind: int, a: str | None, b: str | None, c: str | None, d: str | None, n: int | None
    ) -> Ref | None:
        if kind == K_MEMBER:
            assert a is not None and b is not None and c is not None and d is not None and n is not None
            return MemberRef(a, b, c, n, size, d)
        if kind == K_HUB:
            assert a is not None and b is not None
            return HubFileRef(a, size, b, c)
        if kind == K_UPSTREAM:
            return _upstream_ref(size, kind, a, b, c)
        if kind == K_LOCAL:
            assert a is not None
            return LocalFileRef(str(self._cache_root / a), size)
        if kind == K_VIRTUAL:
            return self._virtual.get(a or "")
        return None

    def path_of(self, node: Node) -> str:
        parts: list[str] = []
        while node.ino != ROOT_INO:
            parts.append(node.name)
            parent = self.get(node.parent)
            if parent is None:
                break
            node = parent
        return "/".join(reversed(parts))


class SnapshotExplainer(Explainer):
    """Guidance for lookup misses from a snapshot's ``facts`` table (one indexed query per missed path)."""

    def __init__(self, con: sqlite3.Connection, meta: Mapping[str, str], config: Config) -> None:
        self._con = con
        self.config = config
        self.upstreams = Upstreams(config.upstreams)
        self.indexed = meta.get("indexed") == "1"
        self.data_sources = frozenset(json.loads(meta["data_sources"]))
        self.wanted_tops = frozenset(json.loads(meta["wanted_tops"]))

    def facts(self, path: str) -> PathFacts | None:
        if not _storable(path):
            return None
        row = self._con.execute(
            "SELECT available, wanted, reason, shard, escaped, unindexed FROM facts WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        available, wanted, reason, shard, escaped, unindexed = row
        return PathFacts(
            available=bool(available),
            wanted=bool(wanted),
            reason=reason,
            shard=shard,
            escaped=escaped,
            unindexed=tuple(json.loads(unindexed)) if unindexed else (),
        )


# --------------------------------------------------------------------------------------------- building


def build_namespace(
    config: Config, layout: CacheLayout, catalog: CatalogData, *, stats: VirtualRef
) -> tuple[Namespace, MountPlan]:
    """Blocking (thread only): plan the mount and build the tree it shows, in memory (``stats`` is the live
    ``.vfs/stats.json``). What a mount serves when no snapshot can be written, and what the tests mount."""
    plan = plan_mount(config, layout, catalog)
    ns = build_view(
        catalog,
        views=config.mount.views,
        extra_files={STATS_FILE: stats},
        availability=plan.availability,
        entries=plan.entries,
    )
    return ns, plan


def build_snapshot(
    config: Config, layout: CacheLayout, catalog: CatalogData, *, stats: VirtualRef, strict: bool = False
) -> tuple[Namespace, MountPlan, Path | None]:
    """Blocking (thread only): plan the mount, build its namespace and persist it as a snapshot.

    Returns the in-memory namespace and plan too, so a mount whose snapshot cannot be written (full disk,
    read-only cache) still serves from memory; the path is None then. ``strict`` (``index``): a full disk
    is raised instead, for the one-line exit it is there."""
    ns, plan = build_namespace(config, layout, catalog, stats=stats)
    catalogs = CatalogDir(layout.catalog, config.hub.repo)
    if not plan.complete:
        return ns, plan, None
    try:
        path = snapshot_path(catalogs, catalog.commit, snapshot_key(config, catalogs.db_path(catalog.commit)))
        write_snapshot(
            path, ns, plan.availability, plan.report, videos=len(catalog.members), cache_root=layout.root
        )
    except (OSError, sqlite3.Error) as exc:
        if strict and no_space_error(exc) is not None:
            raise
        log.warning(
            "could not persist the mount snapshot under %s (%s); serving from memory", catalogs.dir, exc
        )
        return ns, plan, None
    return ns, plan, path


def index_artifacts(config: Config, layout: CacheLayout, catalog: CatalogData) -> bool:
    """Blocking, for ``llava-vfs index``: build the filtered annotations and the mount snapshot for this
    config, so the first mount after an index starts fast. True when the snapshot was written."""
    _, plan, path = build_snapshot(config, layout, catalog, stats=NO_STATS, strict=True)
    prune_available(
        layout, {str(ref.path) for _, ref in plan.entries.values() if isinstance(ref, LocalFileRef)}
    )
    return path is not None
