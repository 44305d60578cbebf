"""What an ``Availability`` is reported as: ``coverage_report`` (``llava-vfs coverage``,
``.vfs/coverage.json``), ``iter_provenance`` (``llava-vfs provenance``), ``write_missing_tsv``
(``.vfs/missing.tsv``) and ``build_available_annotations`` (``.vfs/available/<repo path>``: each annotation
file reduced to the records whose video can be read, streamed with ``write_filtered``, cached under a key of
the annotation's content id and the exact set of its available paths, so a changed upstream root or exclude
list rebuilds it).

Derived files are published atomically under the cache's ``annotations/`` directory, named by what they were
derived from, so a mount never serves a half-written one. Everything here that touches the disk blocks.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vfs.catalog.annotations import AnnotationError, normalise_video_path, write_filtered
from vfs.datasets import REGISTRY, dataset_for_path
from vfs.durable import replacing
from vfs.layout import CacheLayout
from vfs.refs import HubFileRef, LocalFileRef, MemberRef, UpstreamRef
from vfs.tree.availability import (
    FILTER_FORMAT,
    MISSING_FORMAT,
    MISSING_SAMPLE_MAX,
    MISSING_SAMPLE_PER_REASON,
    OTHER,
    PRUNE_AFTER_S,
    Availability,
    _label,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

__all__ = [
    "build_available_annotations",
    "coverage_report",
    "iter_provenance",
    "render_coverage_table",
    "write_missing_tsv",
]


def coverage_report(av: Availability) -> dict[str, object]:
    """The ``coverage --json`` object (also ``.vfs/coverage.json``)."""
    by_directory: dict[str, Counter[str]] = defaultdict(Counter)
    by_dataset: dict[str, Counter[str]] = defaultdict(Counter)
    by_source: Counter[str] = Counter({MemberRef.kind: 0, UpstreamRef.kind: 0, HubFileRef.kind: 0})
    reasons: Counter[str] = Counter()
    for path, rows in av.wanted.items():
        kind = av.kind_of(path)
        state = "available" if kind is not None else "missing"
        for label in dict.fromkeys(_label(r) for r in rows):
            by_directory[label]["wanted"] += 1
            by_directory[label][state] += 1
        dataset = dataset_for_path(path)
        counts = by_dataset[dataset.name if dataset else OTHER]
        counts["wanted"] += 1
        counts[state] += 1
        if kind is not None:
            by_source[kind] += 1
            counts[kind] += 1
        else:
            reasons[av.absent[path]] += 1
    roots = {r.name: r for r in av.upstreams.rules}
    datasets: dict[str, object] = {}
    for name, counts in sorted(by_dataset.items()):
        info = REGISTRY.get(name)
        rule = roots.get(name)
        datasets[name] = {
            "wanted": counts["wanted"],
            "available": counts["available"],
            "missing": counts["missing"],
            "shard": counts[MemberRef.kind],
            "upstream": counts[UpstreamRef.kind],
            "hub": counts[HubFileRef.kind],
            "title": info.title if info else None,
            "where": info.where if info else None,
            "terms": info.terms if info else None,
            "upstream_root": rule.root if rule else None,
            "excluded": name in av.config.mount.exclude,
        }
    extras = Counter(f.rule for f in av.resolution.extras.values() if f.path in av.served)
    total_available = sum(by_source.values())
    return {
        "repo": av.catalog.repo,
        "commit": av.catalog.commit,
        "indexed": av.catalog.indexed,
        "total": {
            "wanted": len(av.wanted),
            "available": total_available,
            "missing": len(av.wanted) - total_available,
        },
        "by_directory": {k: _counts(v) for k, v in sorted(by_directory.items())},
        "by_source": dict(by_source),
        "by_dataset": datasets,
        "missing_by_reason": dict(reasons.most_common()),
        "missing_sample": _missing_sample(av),
        "upstreams": [
            {"name": r.name, "prefixes": list(r.prefixes), "root": r.root, "prefer": r.prefer}
            for r in av.upstreams.rules
        ],
        "upstream_only": dict(sorted(extras.items())),
        "excluded": list(av.config.mount.exclude),
        "annotation_files": len(av.catalog.annotations),
        "rejected_records": len(av.catalog.bad_records),
    }


def _counts(counter: Counter[str]) -> dict[str, int]:
    return {"wanted": counter["wanted"], "available": counter["available"], "missing": counter["missing"]}


def _missing_sample(av: Availability) -> list[dict[str, object]]:
    taken: Counter[str] = Counter()
    sample: list[dict[str, object]] = []
    for path in sorted(av.absent):
        reason = av.absent[path]
        if taken[reason] >= MISSING_SAMPLE_PER_REASON:
            continue
        taken[reason] += 1
        miss = av.miss(path)
        sample.append({"path": path, "reason": reason, "dataset": miss.dataset, "guidance": miss.guidance})
        if len(sample) >= MISSING_SAMPLE_MAX:
            break
    return sample


def render_coverage_table(report: dict[str, object]) -> str:
    """A readable text table of a coverage report."""
    lines: list[str] = []
    total = report["total"]
    assert isinstance(total, dict)

    def pct(available: int, wanted: int) -> str:
        return f"{100.0 * available / wanted:5.1f}%" if wanted else "    -"

    def table(title: str, rows: dict[str, dict[str, int]]) -> None:
        width = max([len(title), *(len(k) for k in rows)])
        lines.append(f"{title:<{width}}  {'wanted':>8}  {'available':>9}  {'missing':>8}  {'cover':>6}")
        for key, c in rows.items():
            lines.append(
                f"{key:<{width}}  {c['wanted']:>8}  {c['available']:>9}  {c['missing']:>8}  "
                f"{pct(c['available'], c['wanted']):>6}"
            )
        lines.append("")

    lines.append(f"coverage of {report['repo']}@{str(report['commit'])[:12]}")
    lines.append(
        f"total: {total['wanted']} wanted, {total['available']} available, {total['missing']} missing "
        f"({pct(total['available'], total['wanted']).strip()})"
    )
    if not report.get("indexed"):
        lines.append("the catalog is not indexed yet: run `llava-vfs index` to see videos and coverage")
    lines.append("")
    by_directory = report["by_directory"]
    assert isinstance(by_directory, dict)
    table("directory", by_directory)
    by_dataset = report["by_dataset"]
    assert isinstance(by_dataset, dict)
    table("dataset", by_dataset)
    by_source = report["by_source"]
    assert isinstance(by_source, dict)
    lines.append("served from: " + ", ".join(f"{k} {v}" for k, v in by_source.items()))
    for name, info in by_dataset.items():
        if info.get("upstream_root"):
            lines.append(f"  upstream {name}: {info['upstream_root']}")
        if info.get("excluded"):
            lines.append(f"  {name}: excluded by [mount] exclude")
    reasons = report["missing_by_reason"]
    assert isinstance(reasons, dict)
    if reasons:
        lines.append("missing by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
        lines.append("")
        lines.append("sample of missing paths:")
        sample = report["missing_sample"]
        assert isinstance(sample, list)
        seen: set[str] = set()
        for item in sample:
            if item["reason"] in seen:
                continue  # one example per reason keeps the table readable; --json has more
            seen.add(item["reason"])
            lines.append(f"  {item['path']}")
            lines.append(f"    {item['reason']}: {item['guidance']}")
    return "\n".join(lines) + "\n"


def iter_provenance(av: Availability) -> Iterator[dict[str, object]]:
    """Per wanted path (sorted): where it is served from, or why it is absent, and its dataset and terms."""
    for path in sorted(av.wanted):
        rows = av.wanted[path]
        dataset = dataset_for_path(path)
        item: dict[str, object] = {
            "path": path,
            "dataset": dataset.name if dataset else None,
            "title": dataset.title if dataset else None,
            "terms": dataset.terms if dataset else None,
            "where": dataset.where if dataset else None,
            "excluded": bool(dataset and dataset.name in av.config.mount.exclude),
            "data_sources": sorted({_label(r) for r in rows}),
            "annotations": sorted({r.annotation for r in rows}),
            "records": sum(r.records for r in rows),
        }
        served = av.served.get(path)
        directory = av.dirs.get(path)
        if served is not None:
            item["source"] = served.kind
            item["size"] = served.size
            ref = served.ref
            if isinstance(ref, MemberRef):
                item.update(
                    shard=ref.shard_path,
                    shard_sha256=ref.shard_sha256,
                    member=ref.member_path,
                    offset=ref.offset,
                    sha256=ref.sha256,
                )
            elif isinstance(ref, UpstreamRef):
                item.update(upstream=ref.dataset, upstream_file=ref.real_path)
            else:
                item.update(hub_file=ref.path)
        elif directory is not None:
            item.update(
                source=UpstreamRef.kind,
                upstream=directory.rule,
                upstream_dir=directory.real_path,
                files=len(directory.files),
                size=directory.size,
            )
        else:
            miss = av.miss(path)
            item.update(source="absent", reason=miss.reason, guidance=miss.guidance)
        yield item


def _tsv_field(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_missing_tsv(av: Availability, directory: Path) -> LocalFileRef:
    """Blocking: ``path<TAB>reason<TAB>guidance`` for every absent wanted path, sorted by path.

    Named by a digest of everything its text is derived from (commit, config file, upstream entries,
    exclusions, each absent path with its reason), so an unchanged mount reuses it instead of rewriting
    a file that can reach 100 MB at full scale, and two mounts never overwrite each other's.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = hashlib.sha256(f"{MISSING_FORMAT}\n{av.catalog.commit}\n{av.config.source}\n".encode())
    for r in av.upstreams.rules:
        key.update(f"{r.name}\0{r.prefixes}\0{r.root}\0{r.pattern}\0{r.prefer}\n".encode())
    key.update(f"{av.config.mount.exclude}\n".encode())
    ordered = sorted(av.absent)
    for path in ordered:
        key.update(
            f"{path}\0{av.absent[path]}\0{av.resolution.escaped.get(path, '')}\n".encode(
                "utf-8", "surrogateescape"
            )
        )
    final = directory / f"missing-{key.hexdigest()[:32]}.tsv"
    if not final.exists():
        with replacing(final) as tmp, open(tmp, "wb") as fh:
            fh.write(b"path\treason\tguidance\n")
            for path in ordered:
                miss = av.miss(path)
                line = f"{_tsv_field(path)}\t{miss.reason}\t{_tsv_field(miss.guidance)}\n"
                fh.write(line.encode("utf-8", "surrogateescape"))
    return LocalFileRef(str(final), final.stat().st_size)


# --------------------------------------------------------------------------------- filtered annotations


def _available_key(content_id: str, available: list[str]) -> str:
    digest = hashlib.sha256(f"{FILTER_FORMAT}\n{content_id}\n".encode())
    for path in available:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:32]


def build_available_annotations(av: Availability, layout: CacheLayout) -> dict[str, LocalFileRef]:
    """Blocking: for each included annotation file whose verified local copy exists, the filtered copy
    holding only the records whose video is available (built once per content and availability)."""
    files = {f.path: f for f in av.catalog.files}
    paths_of: dict[str, set[str]] = defaultdict(set)
    for path, rows in av.wanted.items():
        for row in rows:
            paths_of[row.annotation].add(path)
    out: dict[str, LocalFileRef] = {}
    for repo_path, *_ in av.catalog.annotations:
        ref = files.get(repo_path)
        if ref is None:
            continue
        src = layout.annotations / f"{ref.content_id}.json"
        if not src.exists():
            log.info(
                "%s: no local copy to filter (run `llava-vfs index`); .vfs/available/ omits it", repo_path
            )
            continue
        available = sorted(p for p in paths_of.get(repo_path, ()) if av.is_available(p))
        folder = layout.annotations / "available" / ref.content_id
        final = folder / f"{_available_key(ref.content_id, available)}.json"
        if not final.exists():
            try:
                _filter_one(src, final, set(available), repo_path)
            except AnnotationError as exc:
                log.error("%s: cannot build its filtered copy: %s", repo_path, exc)
                continue
        out[repo_path] = LocalFileRef(str(final), final.stat().st_size)
    return out


def _filter_one(src: Path, final: Path, available: set[str], label: str) -> None:
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def keep(record: dict) -> bool:  # type: ignore[type-arg]
        try:
            return normalise_video_path(record.get("video")) in available
        except ValueError:
            return False

    with replacing(final) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        kept, dropped = write_filtered(fin, fout, keep, file_label=label)
    log.info("%s: filtered copy keeps %d records, drops %d", label, kept, dropped)


def prune_available(layout: CacheLayout, keep: set[str]) -> None:
    """Drop filtered annotation copies other than ``keep`` once they are a week old.

    Copies of other availabilities (another upstream root or exclude list) may still be served by a mount
    started from them long ago, so never right away."""
    cutoff = time.time() - PRUNE_AFTER_S
    for old in (layout.annotations / "available").glob("*/*.json"):
        try:
            if str(old) not in keep and old.stat().st_mtime < cutoff:
                old.unlink()
        except FileNotFoundError:
            pass
