"""The mount snapshot (vfs.tree.snapshot): the persisted tree must be the in-memory one, node for node; its
explainer must give the same guidance as the in-memory availability; it must go stale exactly when its
inputs change; and a mount must start from it, rebuild a bad one and survive one it cannot write.

The demo repo is indexed once for the module with the real indexer against the Hub emulator; upstream roots
are staged by the tests (real files), and mounts are real FUSE mounts of the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO_ID
from tests.core.test_coverage import stage_upstreams, upstream_toml
from tests.mounting import Mount, write_config
from vfs.catalog.catalog import CatalogDir, load_catalog_offline
from vfs.commands.index import index_async
from vfs.config import Config, load_config
from vfs.demo.dataset import video_bytes
from vfs.layout import CacheLayout
from vfs.refs import UpstreamDirRef, UpstreamRef, VirtualRef
from vfs.tree.namespace import ROOT_INO, Namespace, NamespaceView, Node
from vfs.tree.snapshot import (
    NO_STATS,
    Snapshot,
    build_snapshot,
    open_snapshot,
    snapshot_key,
)

pytestmark = pytest.mark.allow_log(r"skipped video", r"records skipped")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, demo, _session_hub):
    work = tmp_path_factory.mktemp("snapshot")
    cfg_path = write_config(
        work / "base.toml", endpoint=_session_hub.endpoint, repo=REPO_ID, cache_dir=work / "cache"
    )
    trio.run(lambda: index_async(load_config(cfg_path), jobs=2, progress=False))
    return work, cfg_path.read_text()


def config(indexed, name: str, extra: str = "") -> Config:
    work, base = indexed
    path = work / f"{name}.toml"
    path.write_text(base + extra)
    return load_config(path)


def backdate(root: Path) -> None:
    """Move every directory's mtime out of the racy window, as if staged long ago."""
    past = time.time() - 3600
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (past, past))


def build(cfg: Config) -> tuple[Namespace, object, Snapshot]:
    layout = CacheLayout(cfg.cache.dir)
    ns, plan, path = build_snapshot(cfg, layout, load_catalog_offline(cfg), stats=NO_STATS)
    assert path is not None
    return ns, plan, Snapshot(path, cfg)


def walk(ns, node: Node) -> list[tuple[str, int, int, bool, int]]:
    """Every entry below ``node`` with its readdir offset, depth first."""
    out = []
    for _name, child, offset in ns.entries(node, 0):
        out.append((ns.path_of(child), child.ino, child.size, child.is_dir, offset))
        if child.is_dir:
            out += walk(ns, child)
    return out


def same_ref(a: object, b: object) -> bool:
    if isinstance(a, VirtualRef) or isinstance(b, VirtualRef):
        assert isinstance(a, VirtualRef) and isinstance(b, VirtualRef)
        return a.dynamic == b.dynamic and (a.dynamic or a.render() == b.render())
    return a == b


UPSTREAM_EXTRA = '[mount]\nviews = ["merged", "repo", "per_directory"]\nexclude = ["nextqa"]\n\n'


@pytest.mark.parametrize("variant", ["plain", "upstreams"])
def test_the_snapshot_is_the_tree_it_was_built_from(indexed, demo, tmp_path, variant) -> None:
    extra = ""
    if variant == "upstreams":
        stage_upstreams(tmp_path / "up", demo)
        extra = UPSTREAM_EXTRA + upstream_toml(tmp_path / "up")
    cfg = config(indexed, f"tree-{variant}", extra)
    ns, _, snap = build(cfg)
    lazy = snap.namespace(
        {
            "revision": VirtualRef(lambda: (snap.commit + "\n").encode()),
            "coverage.json": next(n.ref for n in ns.nodes() if n.name == "coverage.json"),  # type: ignore[misc]
            "stats.json": NO_STATS,
        }
    )
    assert (len(lazy), lazy.file_count, lazy.total_bytes) == (len(ns), ns.file_count, ns.total_bytes)
    root = lazy.get(ROOT_INO)
    assert root is not None and root.is_dir
    # readdir: the same entries, in the same order, with the same offsets, all the way down
    assert walk(lazy, root) == walk(ns, ns.get(ROOT_INO))

    def upstream_entries(view: NamespaceView, ino: int) -> list[tuple[int, object]]:
        node = view.get(ino)
        assert node is not None
        return [
            (c.ino, c.ref)
            for _, c, _ in view.entries(node, 0)
            if isinstance(c.ref, UpstreamRef | UpstreamDirRef)
        ]

    # listed entries carry their upstream refs too (readdirplus shows their owners)
    for node in ns.nodes():
        if node.is_dir:
            assert upstream_entries(lazy, node.ino) == upstream_entries(ns, node.ino)
    upstream_kinds: set[type] = set()
    for node in ns.nodes():
        got = lazy.get(node.ino)
        assert got is not None
        assert (got.parent, got.name, got.size, got.is_dir) == (
            node.parent,
            node.name,
            node.size,
            node.is_dir,
        )
        assert same_ref(lazy.ref_of(got), ns.ref_of(node))
        if isinstance(node.ref, UpstreamRef | UpstreamDirRef):  # what its owner and mode come from
            assert got.ref == node.ref
            upstream_kinds.add(type(node.ref))
        parent = lazy.get(node.parent)
        assert parent is not None
        if node.ino != ROOT_INO:
            found = lazy.child(parent, node.name)
            assert found is not None and found.ino == node.ino
    assert upstream_kinds == ({UpstreamRef, UpstreamDirRef} if variant == "upstreams" else set())
    # a listing resumed at an offset, names that are not there, and names SQLite cannot hold
    big = max((n for n in ns.nodes() if n.is_dir), key=lambda n: len(list(ns.entries(n, 0))))
    resumed = [(name, c.ino, off) for name, c, off in lazy.entries(lazy.get(big.ino), 2)]
    assert resumed and resumed == [(name, c.ino, off) for name, c, off in ns.entries(big, 2)]
    assert lazy.child(root, "nope") is None and lazy.child(root, "bad\udcff") is None
    assert lazy.get(len(ns) + 10) is None
    snap.close()


@pytest.mark.parametrize("views", ['["merged", "repo"]', '["merged", "per_directory"]', '["repo"]'])
def test_the_snapshot_explains_misses_like_the_availability(indexed, demo, tmp_path, views) -> None:
    stage_upstreams(tmp_path / "up", demo)
    cfg = config(
        indexed,
        "explain",
        f'[mount]\nviews = {views}\nexclude = ["nextqa"]\n\n' + upstream_toml(tmp_path / "up"),
    )
    _, plan, snap = build(cfg)
    av = plan.availability  # type: ignore[attr-defined]
    lazy = snap.explainer()
    catalog = av.catalog
    probes = {*av.wanted, *catalog.members, *av.served, *av.resolution.escaped}
    probes |= {f"{row.data_source}/{row.path}" for row in catalog.wanted}
    probes |= {
        "academic_source/Charades/NOPE1.mp4",
        "academic_source/ego4d/nope.mp4",
        "academic_source",
        "academic_source/NoSuchDataset/x.mp4",
        "liwei_youtube_videos/videos/youtube_video_2024/ytb_nope.mp4",
        ".Trash-0",
        ".vfs/nope",
        "README.txt",
        "academic_source/Charades/bad\udcff.mp4",
    }
    differing = [p for p in sorted(probes) if lazy.explain(p) != av.explain(p)]
    assert differing == []
    absent = [p for p in probes if av.explain(p) is not None]
    assert absent  # the comparison covered real guidance, not only Nones
    snap.close()


def test_a_snapshot_goes_stale_when_an_upstream_root_changes(indexed, demo, tmp_path) -> None:
    served = stage_upstreams(tmp_path / "up", demo)
    backdate(tmp_path / "up")
    cfg = config(indexed, "stale", upstream_toml(tmp_path / "up"))
    _, _, snap = build(cfg)
    snap.close()
    assert open_snapshot(snap.path, cfg) is not None  # nothing changed
    charades = tmp_path / "up" / "charades" / "Charades_v1_480"
    (charades / "ZZNEW.mp4").write_bytes(b"new")
    assert open_snapshot(snap.path, cfg) is None  # a file added
    _, _, snap = build(cfg)
    snap.close()
    assert open_snapshot(snap.path, cfg) is None  # rebuilt, but the change is too recent to trust
    backdate(tmp_path / "up")
    _, _, snap = build(cfg)
    snap.close()
    assert open_snapshot(snap.path, cfg) is not None
    victim = next(p for p in served if p.startswith("academic_source/Charades/"))
    (charades / victim.rsplit("/", 1)[1]).unlink()
    assert open_snapshot(snap.path, cfg) is None  # a file removed


@pytest.mark.skipif(os.geteuid() != 0, reason="a directory refused to root needs a capability bound")
def test_a_snapshot_goes_stale_when_a_refused_directory_can_be_listed(indexed, demo, tmp_path) -> None:
    """A chmod, or a capability the daemon gains, changes no mtime: a directory the build could not list
    is tried again at every start. The build runs as root bounded to no capability (setpriv), which may
    not list a 0700 directory of another user; root with its capabilities then may."""
    stage_upstreams(tmp_path / "up", demo)
    clips = tmp_path / "up" / "ego4d" / "v2" / "clips"
    os.chown(clips, 4000, 4000)
    clips.chmod(0o700)
    backdate(tmp_path / "up")
    cfg = config(indexed, "refused", upstream_toml(tmp_path / "up"))
    assert cfg.source is not None
    script = (
        "import logging, sys\n"
        "from vfs.config import load_config\n"
        "from vfs.catalog.catalog import load_catalog_offline\n"
        "from vfs.layout import CacheLayout\n"
        "from vfs.tree.snapshot import NO_STATS, build_snapshot, open_snapshot\n"
        "logging.disable(logging.WARNING)\n"
        "cfg = load_config(sys.argv[1])\n"
        "layout = CacheLayout(cfg.cache.dir)\n"
        "_, plan, path = build_snapshot(cfg, layout, load_catalog_offline(cfg), stats=NO_STATS)\n"
        "assert plan.availability.resolution.denied_dirs, 'the build was not refused'\n"
        "print(path, open_snapshot(path, cfg) is not None)\n"
    )
    done = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", script, str(cfg.source)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    path, current = done.stdout.split()
    assert current == "True", "still refused: still current"
    assert open_snapshot(Path(path), cfg) is None, "listable now: rebuilt"


def test_a_snapshot_goes_stale_when_a_derived_file_is_gone(indexed) -> None:
    cfg = config(indexed, "derived")
    _, plan, snap = build(cfg)
    snap.close()
    assert open_snapshot(snap.path, cfg) is not None
    missing_tsv = plan.entries["missing.tsv"][1]  # type: ignore[attr-defined]
    os.unlink(missing_tsv.path)
    assert open_snapshot(snap.path, cfg) is None


def test_the_key_covers_every_input(indexed, tmp_path) -> None:
    base = config(indexed, "k0")
    catalogs = CatalogDir(CacheLayout(base.cache.dir).catalog, base.hub.repo)
    commit = catalogs.read_pins()["main"]
    db = catalogs.db_path(commit)
    key = snapshot_key(base, db)
    assert snapshot_key(config(indexed, "k0"), db) == key
    others = [
        config(indexed, "k1", '[mount]\nviews = ["merged"]\n'),
        config(indexed, "k2", '[mount]\nexclude = ["charades"]\n'),
        config(indexed, "k3", f'[[upstream]]\nname = "charades"\nroot = "{tmp_path}"\n'),
    ]
    keys = {snapshot_key(c, db) for c in others}
    assert key not in keys and len(keys) == 3
    # a cache dir copied whole (times kept) keeps its snapshots; a catalog written again gets new ones
    copy = tmp_path / db.name
    shutil.copy2(db, copy)
    assert snapshot_key(base, copy) == key
    catalogs.write(catalogs.read(commit))
    assert snapshot_key(base, db) != key


@pytest.mark.allow_log(r"cannot be read")
def test_a_corrupt_snapshot_is_rebuilt(indexed, caplog) -> None:
    cfg = config(indexed, "corrupt")
    _, _, snap = build(cfg)
    snap.close()
    snap.path.write_bytes(b"not a database" * 100)
    assert open_snapshot(snap.path, cfg) is None
    assert any("cannot be read" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------- mounts


@pytest.mark.fuse
def test_a_mount_starts_from_the_snapshot_index_built(
    indexed_demo_cache, demo, _session_hub, tmp_path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(indexed_demo_cache, cache)
    cfg = write_config(tmp_path / "t.toml", endpoint=_session_hub.endpoint, repo=REPO_ID, cache_dir=cache)
    path = next(p for p in sorted(demo.videos) if p in demo.wanted)
    with Mount(cfg, tmp_path / "mnt") as m:
        assert (m.mountpoint / path).read_bytes() == video_bytes(demo, path)
        coverage = json.loads((m.mountpoint / ".vfs" / "coverage.json").read_text())
        assert coverage["total"]["available"] == len(demo.wanted & demo.videos.keys())
        assert (m.mountpoint / ".vfs" / "revision").read_text().strip() == _session_hub.head()
    assert "building the mount snapshot" not in m.log()  # index built it for this config
    # another view setting: the first mount builds its snapshot, the next one starts from it
    cfg.write_text(cfg.read_text() + '\n[mount]\nviews = ["merged", "per_directory"]\n')
    for expect_build in (True, False):
        with Mount(cfg, tmp_path / "mnt") as m:
            assert (m.mountpoint / path).read_bytes() == video_bytes(demo, path)
        assert ("building the mount snapshot" in m.log()) is expect_build


@pytest.mark.fuse
def test_a_mount_serves_from_memory_when_its_snapshot_cannot_be_written(
    indexed_demo_cache, demo, _session_hub, tmp_path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(indexed_demo_cache, cache)
    snapshots = next((cache / "catalog").iterdir()) / "snapshots"
    shutil.rmtree(snapshots, ignore_errors=True)
    snapshots.write_text("a file where the snapshot directory should be")
    cfg = write_config(tmp_path / "t.toml", endpoint=_session_hub.endpoint, repo=REPO_ID, cache_dir=cache)
    path = next(p for p in sorted(demo.videos) if p in demo.wanted)
    with Mount(
        cfg, tmp_path / "mnt", allow_log=(r"could not persist the mount snapshot", r"missing academic_source")
    ) as m:
        assert (m.mountpoint / path).read_bytes() == video_bytes(demo, path)
        assert not (m.mountpoint / "academic_source" / "Charades" / "NOPE.mp4").exists()
    assert "serving from memory" in m.log()
