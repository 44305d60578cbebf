"""Availability: which wanted video is served from where, and why the rest is absent.

``compute_availability(config, catalog)`` joins the catalog (wanted paths, shard members, repo files), the
upstream roots (``vfs.sources.upstream``) and ``[mount] exclude`` into one ``Availability``:
- ``served``: every file the merged view shows, with its source (shard member, upstream file, hub file);
- ``dirs``: upstream directories served whole (LLaVA-Hound frame directories);
- ``absent``: every wanted path that cannot be read, with the reason (``vfs.guidance`` REASON_*).

Precedence for one path: an excluded dataset is never served; else the upstream file when the path lies
under a configured prefix and the root has it (unless that entry says ``prefer = "shard"``), else the shard
member, else a repo file at that path, else the upstream file (``prefer = "shard"`` without a shard copy).

``Explainer`` turns a lookup miss into guidance, from an ``Availability`` in memory or from a mount snapshot
(``vfs.tree.snapshot.SnapshotExplainer``). ``total.wanted`` is the number of distinct ``video`` paths across
the included annotation files (LLaVA-Hound frame directories included), and ``wanted = available +
missing``. Nothing here contacts the Hub; resolving upstream roots blocks (worker threads in the daemon).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vfs.catalog.annotations import malformed_hint
from vfs.catalog.catalog import CatalogData, WantedRow
from vfs.config import Config
from vfs.datasets import DatasetInfo, dataset_for_path, is_dataset_ancestor
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
    Miss,
    absent_message,
)
from vfs.refs import HubFileRef, MemberRef, UpstreamRef
from vfs.sources.upstream import Resolution, UpstreamDir, Upstreams

if TYPE_CHECKING:
    pass


__all__ = [
    "Availability",
    "Explainer",
    "PathFacts",
    "Served",
    "compute_availability",
]

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

    size: int
    ref: MemberRef | UpstreamRef | HubFileRef

    @property
    def kind(self) -> str:
        """Where it is served from: ``shard``, ``upstream`` or ``hub`` (the ref's kind)."""
        return self.ref.kind


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
    ``vfs.tree.snapshot.SnapshotExplainer`` (queried from a persisted mount snapshot)."""

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
        return UpstreamRef.kind if path in self.dirs else None

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
            return Served(upstream.size, upstream.ref())
        if member is not None:
            return Served(member.size, member)
        hub = files_by_path.get(path) if path in wanted else None
        if hub is not None:
            return Served(hub.size, hub)
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
