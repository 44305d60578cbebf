"""Availability, coverage and provenance: which wanted video is served from where, and why the rest is absent.

``compute_availability(config, catalog)`` joins the catalog (wanted paths, shard members, repo files), the
upstream roots (``vfs.sources.upstream``) and ``[mount] exclude`` into one ``Availability``:
- ``served``: every file the merged view shows, with its source (shard member, upstream file, hub file);
- ``dirs``: upstream directories served whole (LLaVA-Hound frame directories);
- ``absent``: every wanted path that cannot be read, with the reason (``vfs.guidance`` REASON_*).

Precedence for one path: an excluded dataset is never served; else the upstream file when the path lies
under a configured prefix and the root has it (unless that entry says ``prefer = "shard"``), else the shard
member, else a repo file at that path, else the upstream file (``prefer = "shard"`` without a shard copy).

From it: ``coverage_report`` (``llava-vfs coverage``, ``.vfs/coverage.json``), ``iter_provenance``
(``llava-vfs provenance``), ``write_missing_tsv`` (``.vfs/missing.tsv``), ``build_available_annotations``
(``.vfs/available/<repo path>``: each annotation file reduced to the records whose video can be read,
streamed with ``write_filtered``, built at index time and cached under a key of the annotation's content id
and the exact set of its available paths, so a changed upstream root or exclude list rebuilds it), and
``plan_mount`` which the daemon (or ``index``, for the first mount) calls to build a mount snapshot
(``vfs.snapshot``).

Invariants:
- ``total.wanted`` is the number of distinct ``video`` paths across the included annotation files
  (LLaVA-Hound frame directories included), and ``wanted = available + missing``.
- Everything here that touches the disk is blocking: the daemon runs it in worker threads
  (``plan_mount``); the CLI calls it directly. Nothing here contacts the Hub.
- Derived files are published atomically (temp file, fsync, rename) under the cache's ``annotations/``
  directory, named by what they were derived from, so a mount never serves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from vfs.catalog.annotations import AnnotationError, malformed_hint, normalise_video_path, write_filtered
from vfs.catalog.catalog import CatalogData, CatalogDir, CatalogError, WantedRow
from vfs.config import Config
from vfs.durable import publish
from vfs.errors import ConfigError
from vfs.guidance import (
    REASON_ESCAPES_ROOT,
    REASON_EXCLUDED,
    REASON_MALFORMED,
    REASON_NO_SOURCE,
    REASON_NOT_IN_ROOT,
    REASON_NOT_INDEXED,
    REASON_NOT_WANTED,
    REASON_UNKNOWN,
    REASON_UNREADABLE,
    REGISTRY,
    DatasetInfo,
    Miss,
    absent_message,
    dataset_for_path,
    is_dataset_ancestor,
)
from vfs.hub.client import is_commit_sha
from vfs.layout import CacheLayout
from vfs.refs import HubFileRef, LocalFileRef, MemberRef, UpstreamRef, json_file
from vfs.sources.upstream import Resolution, UpstreamDir, Upstreams

if TYPE_CHECKING:
    from vfs.refs import VirtualRef

log = logging.getLogger(__name__)

__all__ = [
    "KIND_HUB",
    "KIND_SHARD",
    "KIND_UPSTREAM",
    "Availability",
    "Explainer",
    "MountPlan",
    "PathFacts",
    "Served",
    "build_available_annotations",
    "compute_availability",
    "coverage_report",
    "iter_provenance",
    "load_catalog_offline",
    "log_coverage",
    "plan_mount",
    "render_coverage_table",
    "run_coverage",
    "run_provenance",
    "write_missing_tsv",
]

KIND_SHARD = "shard"
KIND_UPSTREAM = "upstream"
KIND_HUB = "hub"
OTHER = "other"
# Bumped when the filtering rule or output format changes, so cached filtered files are rebuilt.
FILTER_FORMAT = "available-v1"
MISSING_SAMPLE_PER_REASON = 10
MISSING_SAMPLE_MAX = 100
PRUNE_AFTER_S = 7 * 86400
MISSING_FORMAT = "missing-v1"


@dataclass(frozen=True, slots=True)
class Served:
    """How one file of the merged view is served."""

    kind: str  # KIND_SHARD, KIND_UPSTREAM or KIND_HUB
    size: int
    ref: MemberRef | UpstreamRef | HubFileRef


def _is_shard(path: str) -> bool:
    return path.endswith((".tar.gz", ".tgz"))


def _label(row: WantedRow) -> str:
    """The data_source directory a wanted row counts under (llava_hound records name none)."""
    return row.data_source or row.annotation.split("/", 1)[0]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class PathFacts:
    """What guidance needs to know about one path the catalog or the upstream roots name."""

    available: bool
    wanted: bool
    reason: str | None  # why a wanted path is absent (None when available or not wanted)
    shard: str | None  # the shard holding it, if any
    escaped: str | None  # the refused real path of an upstream entry that resolves outside its root
    unindexed: tuple[str, ...] = ()  # not-yet-indexed shards that may hold it
    denied: bool = False  # the daemon could not list a directory where its upstream copy would be


class Explainer:
    """Turns a lookup miss into guidance from per-path facts and a few mount-wide ones.

    Two sources of facts share this logic: ``Availability`` (in memory, computed from the catalog) and
    ``vfs.snapshot.SnapshotExplainer`` (queried from a persisted mount snapshot)."""

    config: Config
    upstreams: Upstreams
    indexed: bool
    data_sources: frozenset[str]
    wanted_tops: frozenset[str]  # first components of wanted paths (academic_source, ...)

    def facts(self, path: str) -> PathFacts | None:
        raise NotImplementedError

    def excluded(self, path: str) -> DatasetInfo | None:
        if not self.config.mount.exclude:
            return None
        dataset = dataset_for_path(path)
        if dataset is not None and dataset.name in self.config.mount.exclude:
            return dataset
        return None

    def miss(self, path: str, *, wanted: bool = True) -> Miss:
        """The reason and guidance for an absent path (a wanted one, or any path below a known family)."""
        facts = self.facts(path)
        reason = facts.reason if wanted and facts is not None else None
        if reason is None:
            reason = self._reason(path, facts, wanted=False)
        dataset = dataset_for_path(path)
        matched = self.upstreams.rule_for(path)
        rule = matched[0] if matched else None
        expected: list[str] = []
        if reason == REASON_ESCAPES_ROOT:
            expected = [(facts.escaped if facts is not None else None) or "?"]
        elif rule is not None:
            expected = rule.expected(path)
        text = absent_message(
            path,
            reason,
            dataset=dataset,
            upstream_name=rule.name if rule else None,
            expected=expected,
            unindexed_shards=list(facts.unindexed) if facts is not None else [],
            shard=facts.shard if facts is not None else None,
            malformed=malformed_hint(path),
            config_file=str(self.config.source) if self.config.source else None,
            wanted=wanted and facts is not None and facts.wanted,
        )
        return Miss(path, reason, dataset.name if dataset else None, text)

    def _reason(self, path: str, facts: PathFacts | None, *, wanted: bool) -> str:
        if self.excluded(path) is not None:
            return REASON_EXCLUDED
        if wanted and malformed_hint(path) is not None:
            return REASON_MALFORMED
        if facts is not None and facts.escaped is not None:
            return REASON_ESCAPES_ROOT
        if facts is not None and facts.denied:
            return REASON_UNREADABLE
        if self.upstreams.rule_for(path) is not None:
            return REASON_NOT_IN_ROOT
        if facts is not None and facts.unindexed:
            return REASON_NOT_INDEXED
        if not self.indexed:
            return REASON_NOT_INDEXED
        if dataset_for_path(path) is not None:
            return REASON_NO_SOURCE if wanted else REASON_NOT_WANTED
        return REASON_UNKNOWN if wanted else REASON_NOT_WANTED

    def explain(self, path: str) -> Miss | None:
        """For ``MissReporter``: the guidance for a lookup miss, or None for lookups that are not about
        dataset paths. Runs on the trio thread: dictionary lookups, or one indexed point query of the
        snapshot (the kernel caches the negative entry, so each path costs this once per timeout)."""
        if path == ".vfs" or path.startswith(".vfs/"):
            return None
        first, _, rest = path.partition("/")
        if rest and first in self.data_sources and "per_directory" in self.config.mount.views:
            inner = self.explain(rest)
            if inner is not None:
                return Miss(path, inner.reason, inner.dataset, inner.guidance)
        facts = self.facts(path)
        if facts is not None and facts.reason is not None and facts.wanted:
            return self.miss(path)
        if facts is not None and facts.available:
            return None
        if not self.indexed and (dataset_for_path(path) is not None or is_dataset_ancestor(path)):
            return self.miss(path, wanted=False)
        if dataset_for_path(path) is not None:
            return self.miss(path, wanted=False)
        if first in self.wanted_tops or (not rest and is_dataset_ancestor(path)):
            return self.miss(path, wanted=False)
        return None


@dataclass
class Availability(Explainer):
    config: Config
    catalog: CatalogData
    upstreams: Upstreams
    resolution: Resolution
    wanted: dict[str, list[WantedRow]]  # distinct wanted path -> its rows (annotation files, data_sources)
    served: dict[str, Served] = field(default_factory=dict)
    dirs: dict[str, UpstreamDir] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # wanted path -> reason
    excluded_served: int = 0  # non-wanted files hidden by [mount] exclude
    unindexed_shards: dict[str, list[str]] = field(default_factory=dict)  # directory -> shards
    data_sources: frozenset[str] = frozenset()
    wanted_tops: frozenset[str] = frozenset()  # first components of wanted paths (academic_source, ...)

    @property
    def indexed(self) -> bool:  # type: ignore[override]
        return self.catalog.indexed

    # -- queries --------------------------------------------------------------------------------------
    def is_available(self, path: str) -> bool:
        return path in self.served or path in self.dirs

    def kind_of(self, path: str) -> str | None:
        served = self.served.get(path)
        if served is not None:
            return served.kind
        return KIND_UPSTREAM if path in self.dirs else None

    def facts(self, path: str) -> PathFacts | None:
        available = self.is_available(path)
        rows = self.wanted.get(path)
        member = self.catalog.members.get(path)
        escaped = self.resolution.escaped.get(path)
        if not available and rows is None and member is None and escaped is None:
            return None
        return PathFacts(
            available=available,
            wanted=rows is not None,
            reason=self.absent.get(path),
            shard=member.shard_path if member is not None else None,
            escaped=escaped,
            unindexed=tuple(self._unindexed_for(rows)) if rows else (),
        )

    def all_facts(self) -> Iterator[tuple[str, PathFacts]]:
        """The facts of every path that has some (what a mount snapshot persists), in path order."""
        paths = {*self.wanted, *self.served, *self.dirs, *self.catalog.members, *self.resolution.escaped}
        for path in sorted(paths):
            facts = self.facts(path)
            assert facts is not None  # every path of the set has some
            yield path, facts

    def _unindexed_for(self, rows: list[WantedRow]) -> list[str]:
        if not self.unindexed_shards:  # the usual case: every shard indexed
            return []
        shards: list[str] = []
        for directory in dict.fromkeys(
            d for row in rows for d in (row.annotation.split("/", 1)[0], row.data_source)
        ):
            shards += self.unindexed_shards.get(directory, [])
        return list(dict.fromkeys(shards))


def compute_availability(
    config: Config, catalog: CatalogData, *, upstreams: Upstreams | None = None
) -> Availability:
    """Blocking (stats the upstream roots): join catalog, upstream roots and exclusions. Thread only."""
    ups = upstreams if upstreams is not None else Upstreams(config.upstreams)
    wanted: dict[str, list[WantedRow]] = defaultdict(list)
    for row in catalog.wanted:
        wanted[row.path].append(row)
    wanted = dict(wanted)
    forward = list(wanted)
    if ups:
        forward += [p for p in catalog.members if p not in wanted and ups.rule_for(p) is not None]
    resolution = ups.resolve(forward) if ups else Resolution()
    av = Availability(config=config, catalog=catalog, upstreams=ups, resolution=resolution, wanted=wanted)
    av.data_sources = frozenset(_label(row) for rows in wanted.values() for row in rows)
    av.wanted_tops = frozenset(p.split("/", 1)[0] for p in wanted)

    indexed = {s.path for s in catalog.shards}
    for f in catalog.files:
        if _is_shard(f.path) and f.path not in indexed and "/" in f.path:
            av.unindexed_shards.setdefault(f.path.split("/", 1)[0], []).append(f.path)

    files_by_path = {f.path: f for f in catalog.files}
    prefer_shard = {r.name for r in ups.rules if r.prefer == "shard"}

    def choose(path: str) -> Served | None:
        upstream = resolution.files.get(path) or resolution.extras.get(path)
        member = catalog.members.get(path)
        if upstream is not None and (member is None or upstream.rule not in prefer_shard):
            return Served(KIND_UPSTREAM, upstream.size, upstream.ref())
        if member is not None:
            return Served(KIND_SHARD, member.size, member)
        hub = files_by_path.get(path) if path in wanted else None
        if hub is not None:
            return Served(KIND_HUB, hub.size, hub)
        return None

    for path in dict.fromkeys([*catalog.members, *resolution.files, *resolution.extras, *wanted]):
        if av.excluded(path) is not None:
            if path not in wanted and path in catalog.members:
                av.excluded_served += 1
            continue
        served = choose(path)
        if served is not None:
            av.served[path] = served
        elif path in resolution.dirs:
            av.dirs[path] = resolution.dirs[path]
    for path, rows in wanted.items():
        if not av.is_available(path):
            facts = PathFacts(
                available=False,
                wanted=True,
                reason=None,
                shard=None,
                escaped=resolution.escaped.get(path),
                unindexed=tuple(av._unindexed_for(rows)),
                denied=path in resolution.denied,
            )
            av.absent[path] = av._reason(path, facts, wanted=True)
    return av


# --------------------------------------------------------------------------------------------- reports


def coverage_report(av: Availability) -> dict[str, object]:
    """The ``coverage --json`` object (also ``.vfs/coverage.json``)."""
    by_directory: dict[str, Counter[str]] = defaultdict(Counter)
    by_dataset: dict[str, Counter[str]] = defaultdict(Counter)
    by_source: Counter[str] = Counter({KIND_SHARD: 0, KIND_UPSTREAM: 0, KIND_HUB: 0})
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
            "shard": counts[KIND_SHARD],
            "upstream": counts[KIND_UPSTREAM],
            "hub": counts[KIND_HUB],
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
                source=KIND_UPSTREAM,
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
        tmp = directory / f".{final.name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"path\treason\tguidance\n")
                for path in ordered:
                    miss = av.miss(path)
                    line = f"{_tsv_field(path)}\t{miss.reason}\t{_tsv_field(miss.guidance)}\n"
                    fh.write(line.encode("utf-8", "surrogateescape"))
            publish(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
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

    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            kept, dropped = write_filtered(fin, fout, keep, file_label=label)
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
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


# --------------------------------------------------------------------------------------------- the mount


@dataclass
class MountPlan:
    """What a mount is built from: availability, the coverage report and the ``.vfs/`` entries."""

    availability: Availability
    report: dict[str, object]
    entries: dict[str, tuple[int, object]]  # .vfs/ relative name -> (size, ref)
    complete: bool = True  # False when a derived file could not be written (full disk): do not persist


def plan_mount(config: Config, layout: CacheLayout, catalog: CatalogData) -> MountPlan:
    """Blocking (thread only): resolve upstreams, build the ``.vfs/`` reports and filtered annotations."""

    av = compute_availability(config, catalog)
    report = coverage_report(av)
    coverage_ref: VirtualRef = json_file(lambda: report)
    entries: dict[str, tuple[int, object]] = {"coverage.json": (len(coverage_ref.render()), coverage_ref)}
    # The derived files are a convenience: a full disk must not keep the videos from being served.
    available: dict[str, LocalFileRef] = {}
    complete = True
    try:
        available = build_available_annotations(av, layout)
        missing = write_missing_tsv(av, layout.annotations / "reports")
        entries["missing.tsv"] = (missing.size, missing)
    except OSError as exc:
        complete = False
        log.error("could not write .vfs/missing.tsv or .vfs/available/ under %s: %s", layout.annotations, exc)
    for repo_path, ref in available.items():
        entries[f"available/{repo_path}"] = (ref.size, ref)
    return MountPlan(av, report, entries, complete)


def log_coverage(report: dict[str, object], config: Config) -> None:
    """The one INFO line a mount logs about what it serves."""
    total = report["total"]
    reasons = report["missing_by_reason"]
    assert isinstance(total, dict) and isinstance(reasons, dict)
    log.info(
        "coverage: %d wanted, %d available, %d missing (%s); upstream roots: %s",
        total["wanted"],
        total["available"],
        total["missing"],
        ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none",
        ", ".join(f"{u.name}={u.root}" for u in config.upstreams) or "none",
    )


# --------------------------------------------------------------------------------------------- the CLI


def load_catalog_offline(config: Config) -> CatalogData:
    """The catalog of the configured revision, from the cache only (no Hub): exit 4 when there is none."""

    catalogs = CatalogDir(CacheLayout(config.cache.dir).catalog, config.hub.repo)
    revision = config.hub.revision
    commit = revision if is_commit_sha(revision) else catalogs.read_pins().get(revision)
    if commit is None or not catalogs.exists(commit):
        raise ConfigError(
            f"no catalog of {config.hub.repo}@{revision} in {config.cache.dir}: run `llava-vfs index` first",
            4,
        )
    try:
        return catalogs.read(commit)
    except CatalogError as exc:
        raise ConfigError(f"{exc}; run `llava-vfs index` again", 3) from None


def run_coverage(config: Config, *, as_json: bool, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    av = compute_availability(config, load_catalog_offline(config))
    report = coverage_report(av)
    if as_json:
        out.write(json.dumps(report, indent=1, sort_keys=False) + "\n")
    else:
        out.write(render_coverage_table(report))
    return 0


def run_provenance(config: Config, *, as_json: bool, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    av = compute_availability(config, load_catalog_offline(config))
    if as_json:
        # Streamed item by item: the full dataset has about 180K wanted paths.
        out.write(json.dumps({"repo": av.catalog.repo, "commit": av.catalog.commit})[:-1] + ', "paths": [\n')
        for i, item in enumerate(iter_provenance(av)):
            out.write(("" if i == 0 else ",\n") + json.dumps(item, sort_keys=True))
        out.write("\n]}\n")
        return 0
    out.write("path\tsource\tfrom\tdataset\tterms\n")
    for item in iter_provenance(av):
        if item["source"] == KIND_SHARD:
            origin = f"{item['shard']}#{item['member']}@{item['offset']}"
        elif item["source"] == KIND_UPSTREAM:
            origin = str(item.get("upstream_file") or item.get("upstream_dir"))
        elif item["source"] == KIND_HUB:
            origin = str(item["hub_file"])
        else:
            origin = f"{item['reason']}: {item['guidance']}"
        out.write(
            f"{item['path']}\t{item['source']}\t{origin}\t"
            f"{item['dataset'] or OTHER}\t{item['terms'] or '-'}\n"
        )
    return 0
