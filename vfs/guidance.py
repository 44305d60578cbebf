"""The guidance given for absent paths (the dataset families it names are ``vfs.datasets``).

LLaVA-NeXT drops a sample silently when its video is missing, so the filesystem is the loud one: the first
lookup of an absent path logs one WARNING line that names the path, the dataset it belongs to (name, where
to get it, its terms) and what to do (the local path it was expected at under the configured root, the
``[[upstream]]`` lines to add, the index command, or "malformed record").

Responsibility:
- ``absent_message``: the one-line guidance for one absent path, from plain facts gathered by the caller
  (``vfs.tree.availability``), so the texts are testable without a mount.
- ``MissReporter``: logs a miss once per path, at most ``burst`` individual lines per dataset and interval,
  and then one summary line per dataset and interval, so a million misses do not flood the log.

Invariants:
- ``MissReporter.on_miss`` runs on the trio thread from ``FsCore.lookup``: it never blocks (no I/O besides
  logging) and never raises. Its state is only touched on that thread.
- The set of paths already logged is bounded (``max_tracked``); beyond it misses are still counted.
- Messages are one line: annotation paths are validated (no control characters), so nothing a record
  holds can forge a log line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from vfs.datasets import DatasetInfo

log = logging.getLogger(__name__)

__all__ = [
    "Miss",
    "MissReporter",
    "absent_message",
    "upstream_snippet",
]

UPSTREAM_BYTES_NOTE = "upstream copies may differ from the packed ones (re-encoded or trimmed)"


def upstream_snippet(dataset: DatasetInfo) -> str:
    """The config lines to add, on one line: ``[[upstream]] name = "ego4d" root = "/path/to/ego4d"``."""
    return f'[[upstream]] name = "{dataset.name}" root = "/path/to/{dataset.name}"'


# --------------------------------------------------------------------------------------------- messages

# Why a wanted path is absent. Stable strings: they appear in coverage.json and missing.tsv.
REASON_EXCLUDED = "excluded"
REASON_MALFORMED = "malformed"
REASON_NOT_IN_ROOT = "not_in_upstream_root"
REASON_ESCAPES_ROOT = "escapes_upstream_root"
REASON_UNREADABLE = "upstream_unreadable"  # the daemon may not list where it would be: EACCES, not ENOENT
REASON_NOT_INDEXED = "shard_not_indexed"
REASON_NO_SOURCE = "no_source"
REASON_NOT_WANTED = "not_wanted"
REASON_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Miss:
    """An absent path with its reason, dataset family (None: unknown family) and one-line guidance."""

    path: str
    reason: str
    dataset: str | None
    guidance: str


def absent_message(
    path: str,
    reason: str,
    *,
    dataset: DatasetInfo | None,
    upstream_name: str | None = None,
    expected: Iterable[str] = (),
    unindexed_shards: Iterable[str] = (),
    shard: str | None = None,
    malformed: str | None = None,
    config_file: str | None = None,
    wanted: bool = True,
) -> str:
    """The guidance for one absent path (without the path itself, which the log line adds).

    ``expected`` are the local paths looked at under the configured root (first = the main one);
    ``unindexed_shards`` the shards of the record's directory that are not indexed yet; ``shard`` the
    shard that holds an excluded path.
    """
    config_arg = f" --config {config_file}" if config_file else ""
    parts: list[str] = []
    if reason == REASON_EXCLUDED:
        held = f" (shard {shard} holds it)" if shard else ""
        name = dataset.name if dataset else "?"
        parts.append(
            f"excluded by configuration: [mount] exclude lists {name!r}, so it is not served{held}; "
            "remove it from [mount] exclude only if your terms allow this dataset"
        )
    elif reason == REASON_MALFORMED:
        parts.append(malformed or "malformed record: no such video can exist")
    elif reason == REASON_NOT_INDEXED:
        shards = sorted(unindexed_shards)
        if shards:
            shown = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
            parts.append(
                f"not in any indexed shard; it may be in {shown}, not indexed yet: "
                f"run `llava-vfs index{config_arg}`"
            )
        else:
            parts.append(
                f"the shards of this revision are not indexed yet, so no video is served: "
                f"run `llava-vfs index{config_arg}`"
            )
    elif reason in (REASON_NOT_IN_ROOT, REASON_ESCAPES_ROOT, REASON_UNREADABLE):
        paths = list(expected)
        where = paths[0] if paths else "?"
        also = (
            f" (also looked at {', '.join(paths[1:4])}{', ...' if len(paths) > 4 else ''})"
            if len(paths) > 1
            else ""
        )
        if reason == REASON_ESCAPES_ROOT:
            parts.append(
                f"found under the {upstream_name} root but it resolves (through a symlink) outside the root, "
                f"so it is refused: {where}"
            )
        elif reason == REASON_UNREADABLE:
            parts.append(
                f"the daemon may not list the {upstream_name} directories where it would be, so readers get "
                f"'Permission denied': expected at {where}{also}; give the daemon CAP_DAC_READ_SEARCH (the "
                "shipped systemd unit does) or run it as a user in the directory's group, then restart it"
            )
        else:
            parts.append(
                f"not in any shard and not found under the {upstream_name} root: expected at {where}{also}"
            )
    elif reason in (REASON_NO_SOURCE, REASON_NOT_WANTED):
        lead = (
            "no shard of this revision holds it"
            if wanted
            else "no included annotation file names it and no shard holds it"
        )
        if dataset is not None and dataset.configurable:
            parts.append(
                f"{lead} and no {dataset.name} upstream root is configured; get the dataset and add "
                f"{upstream_snippet(dataset)} to the config (layout under root: {dataset.layout}; "
                f"{UPSTREAM_BYTES_NOTE})"
            )
        elif dataset is not None:
            parts.append(f"{lead}; {dataset.title} exist only in {dataset.where}")
        else:
            parts.append(f"{lead} and no upstream dataset is known for it")
    else:
        parts.append("no shard or upstream dataset holds it")
    if dataset is not None and dataset.note and reason not in (REASON_MALFORMED, REASON_EXCLUDED):
        parts.append(dataset.note)
    if dataset is not None:
        parts.append(f"dataset: {dataset.describe()}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------- the reporter


@dataclass
class _DatasetCounts:
    lookups: int = 0  # every miss that reached the daemon, repeats included
    distinct: int = 0  # first misses of a path
    logged: int = 0  # first misses logged individually
    reasons: Counter[str] = field(default_factory=Counter)


class MissReporter:
    """Logs absent paths once each, rate-limited per dataset, with a periodic per-dataset summary.

    ``explain(path)`` returns the ``Miss`` for a path worth a warning, or None for lookups that are not
    about dataset paths (``.Trash``, editor probes); those are logged at DEBUG only.
    """

    def __init__(
        self,
        explain: Callable[[str], Miss | None],
        *,
        interval_s: float = 60.0,
        burst: int = 100,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._explain = explain
        self.interval_s = interval_s
        self.burst = burst
        self.max_tracked = max_tracked
        self._clock = clock
        self._seen: set[str] = set()
        self._window: dict[str, _DatasetCounts] = {}  # since the last summary
        self._totals: dict[str, _DatasetCounts] = {}  # since start, for stats.json
        self._window_start = clock()

    def on_miss(self, path: str) -> str | None:
        """Record one lookup miss and return its reason (None: not a dataset path). Trio thread; never
        raises."""
        try:
            return self._on_miss(path)
        except Exception:  # a reporting bug must never turn a miss into EIO
            log.exception("could not report the miss of %r", path)
            return None

    def _on_miss(self, path: str) -> str | None:
        miss = self._explain(path)
        if miss is None:
            log.debug("lookup miss: %s", path)
            return None
        if self._clock() - self._window_start >= self.interval_s:
            self.flush()
        key = miss.dataset or "other"
        window = self._window.setdefault(key, _DatasetCounts())
        total = self._totals.setdefault(key, _DatasetCounts())
        window.lookups += 1
        total.lookups += 1
        if path in self._seen:
            return miss.reason
        if len(self._seen) < self.max_tracked:
            self._seen.add(path)
        window.distinct += 1
        total.distinct += 1
        window.reasons[miss.reason] += 1
        total.reasons[miss.reason] += 1
        if window.logged < self.burst:
            window.logged += 1
            total.logged += 1
            log.warning("missing %s: %s", path, miss.guidance)
        return miss.reason

    def flush(self) -> list[str]:
        """Log (and return) one summary line per dataset with misses since the last summary."""
        now = self._clock()
        elapsed_s = now - self._window_start
        lines: list[str] = []
        for key, counts in sorted(self._window.items()):
            repeats = counts.lookups - counts.distinct
            suppressed = counts.distinct - counts.logged
            if repeats == 0 and suppressed == 0:
                continue  # every miss of the window was already logged on its own line
            reasons = ", ".join(f"{r} {n}" for r, n in counts.reasons.most_common()) or "repeats only"
            line = (
                f"missing summary for {key} over the last {elapsed_s:.0f}s: {counts.lookups} lookup misses, "
                f"{counts.distinct} new absent paths ({counts.logged} logged individually, "
                f"{suppressed} not), "
                f"{repeats} repeats of paths already reported; reasons: {reasons}; "
                "every absent path is in .vfs/missing.tsv"
            )
            log.warning("%s", line)
            lines.append(line)
        self._window.clear()
        self._window_start = now
        return lines

    async def run(self) -> None:
        """Flush a summary every ``interval_s`` until cancelled (a task of the daemon's nursery)."""
        while True:
            await trio.sleep(self.interval_s)
            self.flush()

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Totals per dataset since start, for ``.vfs/stats.json``."""
        return {
            key: {
                "lookups": c.lookups,
                "distinct": c.distinct,
                "logged": c.logged,
                "reasons": dict(c.reasons),
            }
            for key, c in sorted(self._totals.items())
        }
