"""Fetch latencies by kind and tier, kept where the fetches run and read by ``vfs.metrics`` at scrape time."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

# From a cache-speed copy of a small block to a multi-GB member over a slow link.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


@dataclass
class _Series:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    sum_s: float = 0.0


class FetchTimings:
    """Latency of completed fetches by ``kind`` (member, block) and ``tier`` (hub, shared).

    ``observe`` runs on the trio thread and ``snapshot`` in the scrape thread; the lock is held for a few
    list operations only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}

    def observe(self, kind: str, tier: str, seconds: float) -> None:
        slot = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
        with self._lock:
            series = self._series.get((kind, tier))
            if series is None:
                series = self._series[(kind, tier)] = _Series()
            series.counts[slot] += 1
            series.sum_s += seconds

    def snapshot(self) -> dict[tuple[str, str], tuple[list[int], float]]:
        """Per (kind, tier): per-bucket counts (the last one is +Inf only) and the sum of seconds."""
        with self._lock:
            return {key: (list(s.counts), s.sum_s) for key, s in self._series.items()}
