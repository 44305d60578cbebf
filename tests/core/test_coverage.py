"""Coverage, provenance, exclusion and the filtered annotations (vfs.tree), on the demo dataset.

The demo repo is indexed once for the module with the real indexer against the Hub emulator; each test then
joins that catalog with its own upstream roots and ``[mount] exclude``. Truth comes from the demo manifest.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO_ID
from tests.mounting import cli, write_config
from vfs.catalog.annotations import normalise_video_path
from vfs.catalog.catalog import CatalogDir, load_catalog_offline
from vfs.commands.index import index_async
from vfs.config import load_config
from vfs.demo.dataset import video_bytes
from vfs.layout import CacheLayout
from vfs.refs import MemberRef, UpstreamRef
from vfs.tree.availability import compute_availability
from vfs.tree.reports import (
    build_available_annotations,
    coverage_report,
    iter_provenance,
    render_coverage_table,
    write_missing_tsv,
)

pytestmark = pytest.mark.allow_log(r"skipped video", r"records skipped")

CHARADES = "academic_source/Charades/"
EGO4D = "academic_source/ego4d/"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, demo, _session_hub):
    """(work dir, base config text) of a cache holding the demo's catalog and filtered annotations."""
    work = tmp_path_factory.mktemp("coverage")
    cfg_path = write_config(
        work / "base.toml", endpoint=_session_hub.endpoint, repo=REPO_ID, cache_dir=work / "cache"
    )
    trio.run(lambda: index_async(load_config(cfg_path), jobs=2, progress=False))
    return work, cfg_path.read_text()


def config(indexed, name: str, extra: str = ""):
    work, base = indexed
    path = work / f"{name}.toml"
    path.write_text(base + extra)
    return load_config(path)


def stage_upstreams(root: Path, demo) -> dict[str, bytes]:
    """A Charades root (packed videos with changed bytes, plus upstream-only IDs) and an Ego4D root holding
    one of the clips that no shard has. Returns the bytes each annotation path must be served with."""
    if root.exists():
        shutil.rmtree(root)
    served: dict[str, bytes] = {}
    for path in sorted(p for p in demo.videos if p.startswith(CHARADES)):
        data = video_bytes(demo, path) + b"upstream copy"
        dest = root / "charades" / "Charades_v1_480" / path.rsplit("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        served[path] = data
    for name in ("ZZUP1", "ZZUP2"):
        data = f"upstream-only {name}".encode() * 100
        (root / "charades" / "Charades_v1_480" / f"{name}.mp4").write_bytes(data)
        served[f"{CHARADES}{name}.mp4"] = data
    ego = sorted(p for p in demo.unpacked if p.startswith(EGO4D))[0]
    dest = root / "ego4d" / "v2" / "clips" / ego.rsplit("/", 1)[1]
    dest.parent.mkdir(parents=True)
    dest.write_bytes(video_bytes(demo, ego))
    served[ego] = dest.read_bytes()
    return served


def upstream_toml(root: Path, *, prefer: str = "upstream") -> str:
    return (
        f'[[upstream]]\nname = "charades"\nroot = "{root / "charades"}"\nprefer = "{prefer}"\n\n'
        f'[[upstream]]\nname = "ego4d"\nroot = "{root / "ego4d"}"\n\n'
    )


def test_totals_match_the_truth_without_upstreams(indexed, demo) -> None:
    cfg = config(indexed, "plain")
    av = compute_availability(cfg, load_catalog_offline(cfg))
    report = coverage_report(av)
    available = demo.wanted & demo.videos.keys()
    assert report["total"] == {
        "wanted": len(demo.wanted),
        "available": len(available),
        "missing": len(demo.absent),
    }
    assert report["by_source"] == {"shard": len(available), "upstream": 0, "hub": 0}
    assert set(av.absent) == demo.absent
    by_dir = report["by_directory"]
    assert sum(d["wanted"] for d in by_dir.values()) >= len(demo.wanted)  # a path may be in two directories
    assert by_dir["llava_hound"] == {"wanted": 4, "available": 0, "missing": 4}
    for counts in [*by_dir.values(), *report["by_dataset"].values()]:
        assert counts["wanted"] == counts["available"] + counts["missing"]
    assert sum(d["wanted"] for d in report["by_dataset"].values()) == len(demo.wanted)
    reasons = report["missing_by_reason"]
    assert reasons == {"no_source": len(demo.absent) - 1, "malformed": 1}
    assert {s["reason"] for s in report["missing_sample"]} == {"no_source", "malformed"}
    table = render_coverage_table(report)
    assert f"total: {len(demo.wanted)} wanted, {len(available)} available" in table and "ego4d" in table


def test_upstream_wins_unless_prefer_shard(indexed, demo, tmp_path: Path) -> None:
    served = stage_upstreams(tmp_path / "up", demo)
    cfg = config(indexed, "up", upstream_toml(tmp_path / "up"))
    av = compute_availability(cfg, load_catalog_offline(cfg))
    for path, data in served.items():
        s = av.served[path]
        assert s.kind == UpstreamRef.kind and isinstance(s.ref, UpstreamRef), path
        assert Path(s.ref.real_path).read_bytes() == data and s.size == len(data)
    report = coverage_report(av)
    packed_wanted = demo.wanted & demo.videos.keys()
    charades = {p for p in packed_wanted if p.startswith(CHARADES)}
    assert report["total"]["available"] == len(packed_wanted) + 1  # + the staged ego4d clip
    assert report["by_source"]["upstream"] == len(charades) + 1
    assert report["upstream_only"] == {"charades": 2}
    assert report["by_dataset"]["charades"]["upstream_root"] == str(tmp_path / "up" / "charades")
    ego_missing = {p for p in demo.absent if p.startswith(EGO4D)} - served.keys()
    assert {p for p, r in av.absent.items() if r == "not_in_upstream_root"} == ego_missing
    guidance = av.miss(sorted(ego_missing)[0]).guidance
    assert (
        f"expected at {tmp_path / 'up' / 'ego4d' / 'v2' / 'clips'}/" in guidance
        and "ego4d-data.org" in guidance
    )

    shard_first = config(indexed, "shardfirst", upstream_toml(tmp_path / "up", prefer="shard"))
    av2 = compute_availability(shard_first, load_catalog_offline(shard_first))
    for path in charades:
        assert av2.served[path].kind == MemberRef.kind and isinstance(av2.served[path].ref, MemberRef)
    assert av2.served[f"{CHARADES}ZZUP1.mp4"].kind == UpstreamRef.kind  # no shard copy: upstream still serves


def test_exclude_hides_even_packed_videos(indexed, demo) -> None:
    cfg = config(indexed, "exclude", '[mount]\nexclude = ["nextqa"]\n')
    av = compute_availability(cfg, load_catalog_offline(cfg))
    nextqa = {p for p in demo.wanted if p.startswith(("academic_source/NextQA/", "NextQA/"))}
    assert nextqa and all(av.absent[p] == "excluded" for p in nextqa)
    assert not any(p.startswith(("academic_source/NextQA/", "NextQA/")) for p in av.served)
    miss = av.miss(sorted(nextqa)[0])
    assert "excluded by configuration" in miss.guidance and ".tar.gz holds it" in miss.guidance
    report = coverage_report(av)
    assert (
        report["by_dataset"]["nextqa"]["excluded"] is True
        and report["by_dataset"]["nextqa"]["available"] == 0
    )
    assert report["total"]["missing"] == len(demo.absent) + len(nextqa)


def test_provenance_lists_every_wanted_path(indexed, demo, tmp_path: Path) -> None:
    served = stage_upstreams(tmp_path / "up", demo)
    cfg = config(indexed, "prov", upstream_toml(tmp_path / "up"))
    catalog = load_catalog_offline(cfg)
    rows = list(iter_provenance(compute_availability(cfg, catalog)))
    assert [r["path"] for r in rows] == sorted(demo.wanted)
    for row in rows:
        path = row["path"]
        if path in served:
            assert row["source"] == "upstream" and Path(row["upstream_file"]).read_bytes() == served[path]
        elif path in demo.videos:
            member = catalog.members[path]
            assert row["source"] == "shard" and row["shard"] == demo.videos[path].shard
            assert (row["member"], row["offset"], row["sha256"]) == (
                member.member_path,
                member.offset,
                demo.videos[path].sha256,
            )
        else:
            assert row["source"] == "absent" and row["reason"] and row["guidance"]
        assert row["annotations"] and row["records"] >= 1
    ego = next(r for r in rows if r["path"].startswith(EGO4D))
    assert ego["dataset"] == "ego4d" and ego["terms"] == "Ego4D licence"


def test_filtered_annotations_hold_exactly_the_available_records(indexed, demo, tmp_path: Path) -> None:
    work, _ = indexed
    layout = CacheLayout(work / "cache")
    built_at_index = sorted((layout.annotations / "available").rglob("*.json"))
    assert len(built_at_index) == len(demo.annotation_files)  # `index` built one per annotation file
    served = stage_upstreams(tmp_path / "up", demo)
    cfg = config(indexed, "filt", upstream_toml(tmp_path / "up"))
    av = compute_availability(cfg, load_catalog_offline(cfg))
    refs = build_available_annotations(av, layout)
    assert set(refs) == set(demo.annotation_files)
    readable = (demo.wanted & demo.videos.keys()) | served.keys()
    kept_total = 0
    for repo_path, ref in refs.items():
        expected = readable_records(json.loads((demo.root / repo_path).read_text()), readable)
        got = json.loads(Path(ref.path).read_text())
        assert got == expected, repo_path
        assert Path(ref.path).stat().st_size == ref.size
        kept_total += len(got)
    assert kept_total > 0
    # The same availability again reuses the cached files; another one gets its own.
    assert build_available_annotations(av, layout) == refs
    plain = config(indexed, "plain2")
    other = build_available_annotations(compute_availability(plain, load_catalog_offline(plain)), layout)
    changed = {k for k in refs if other[k].path != refs[k].path}
    # Upstream copies of packed videos change no record's availability; the staged ego4d clip does.
    assert changed == {
        k
        for k in refs
        if json.loads(Path(refs[k].path).read_text()) != json.loads(Path(other[k].path).read_text())
    }
    assert changed and all(Path(refs[k].path).exists() for k in changed)  # a running mount may serve it


def test_missing_tsv_has_a_row_per_missing_path(indexed, demo, tmp_path: Path) -> None:
    cfg = config(indexed, "tsv")
    av = compute_availability(cfg, load_catalog_offline(cfg))
    ref = write_missing_tsv(av, tmp_path / "reports")
    lines = Path(ref.path).read_text().splitlines()
    assert lines[0] == "path\treason\tguidance"
    rows = [line.split("\t") for line in lines[1:]]
    assert {r[0] for r in rows} == demo.absent and all(len(r) == 3 and r[2] for r in rows)
    assert write_missing_tsv(av, tmp_path / "reports") == ref  # content-addressed: same name, same bytes


def test_lookup_explanations(indexed, demo) -> None:
    cfg = config(indexed, "explain", '[mount]\nviews = ["merged", "per_directory"]\n')
    catalog = load_catalog_offline(cfg)
    av = compute_availability(cfg, catalog)
    made_up = av.explain("academic_source/Charades/NOPE1.mp4")
    assert made_up is not None and made_up.dataset == "charades" and "prior.allenai.org" in made_up.guidance
    assert (
        av.explain(".Trash-0") is None
        and av.explain(".vfs/nope") is None
        and av.explain("README.txt") is None
    )
    ego = sorted(p for p in demo.absent if p.startswith(EGO4D))[0]
    row = next(w for w in catalog.wanted if w.path == ego)
    per_dir = av.explain(f"{row.data_source}/{ego}")
    assert per_dir is not None and per_dir.reason == "no_source" and "ego4d-data.org" in per_dir.guidance
    # A shard of the record's directory that is not indexed: the guidance names it and the index command.
    shard = next(s for s in catalog.shards if s.directory == row.data_source)
    partial = dataclasses.replace(
        catalog,
        shards=[s for s in catalog.shards if s.path != shard.path],
        members={p: m for p, m in catalog.members.items() if m.shard_path != shard.path},
    )
    av2 = compute_availability(cfg, partial)
    unindexed = [p for p, r in av2.absent.items() if r == "shard_not_indexed"]
    # Every absent path of that directory may be in that shard: ego4d's too, and the shard's own members.
    assert ego in unindexed and any(catalog.members.get(p, None) for p in unindexed)
    guidance = av2.miss(unindexed[0]).guidance
    assert shard.path in guidance and "llava-vfs index --config" in guidance


def test_cli_works_offline_from_the_catalog(indexed, demo, tmp_path: Path) -> None:
    work, base = indexed
    dead = base.replace(base.split('endpoint = "')[1].split('"')[0], "http://127.0.0.1:9")  # nothing listens
    cfg = tmp_path / "offline.toml"
    cfg.write_text(dead)
    out = cli("coverage", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["total"] == {
        "wanted": len(demo.wanted),
        "available": len(demo.wanted & demo.videos.keys()),
        "missing": len(demo.absent),
    }
    table = cli("coverage", "--config", str(cfg))
    assert table.returncode == 0 and "total:" in table.stdout and "directory" in table.stdout
    prov = cli("provenance", "--config", str(cfg), "--json")
    assert prov.returncode == 0, prov.stderr
    assert len(json.loads(prov.stdout)["paths"]) == len(demo.wanted)
    tsv = cli("provenance", "--config", str(cfg))
    assert len(tsv.stdout.splitlines()) == len(demo.wanted) + 1
    empty = tmp_path / "empty.toml"
    empty.write_text(dead.replace(str(work / "cache"), str(tmp_path / "nocache")))
    none = cli("coverage", "--config", str(empty), "--json")
    assert none.returncode == 4 and "llava-vfs index" in none.stderr and len(none.stderr.splitlines()) == 1
    assert CatalogDir(CacheLayout(work / "cache").catalog, REPO_ID).read_pins()


def readable_records(records: list[dict], readable: set[str]) -> list[dict]:
    """The reference answer for a filtered annotation: the records whose valid video path is readable."""
    expected = []
    for record in records:
        try:
            if normalise_video_path(record.get("video")) in readable:
                expected.append(record)
        except ValueError:
            pass
    return expected
