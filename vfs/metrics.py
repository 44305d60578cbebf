"""Prometheus metrics: ``[metrics] port = N`` serves the text format at ``http://<host>:N/metrics``.

Responsibility: expose the daemon's live counters -- ``FsCore.stats``, ``HubClient.stats``,
``CacheStore.stats``, the shared tier's ``SharedStats``, ``Sources.fetches_in_flight`` and the fetch
latencies in ``FetchTimings`` -- plus the mount's coverage, every series prefixed ``llava_vfs_``.

Design: one custom collector (``VfsCollector``) in a private ``CollectorRegistry`` reads the counters at
scrape time, so the hot paths only bump plain ints (no metric objects, no locks on the trio thread except
the tiny one in ``FetchTimings.observe``). The HTTP server is ``prometheus_client``'s own, in a daemon
thread; it only reads. ``MetricsServer`` is a context manager: the daemon starts it before mounting (a
port that cannot be bound is a one-line start-up error, exit 3, and nothing is mounted) and stops it on
shutdown.

Invariants: reads from the scrape thread are of plain ints and of dicts copied in one C call
(``dict(counter)``), so a scrape never blocks or breaks the filesystem; counters only ever grow.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from vfs.errors import ConfigError
from vfs.sources.timings import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from vfs.cache.store import CacheStore
    from vfs.config import Config
    from vfs.core import FsCore
    from vfs.hub.client import HubClient
    from vfs.sources.opener import Sources

log = logging.getLogger(__name__)

PREFIX = "llava_vfs_"


class VfsCollector:
    """Reads the live counters at scrape time. Any object not attached is None (its family is omitted)."""

    def __init__(self, *, info: dict[str, str] | None = None) -> None:
        self._info = info or {}
        self.attach()  # nothing live yet: ``attach`` points it at the daemon's objects once they exist

    def attach(
        self,
        *,
        core: FsCore | None = None,
        cache: CacheStore | None = None,
        client: HubClient | None = None,
        sources: Sources | None = None,
        coverage: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Point the collector at the live objects (the server may already be serving: it then reports
        what is attached so far)."""
        self._core, self._cache, self._client = core, cache, client
        self._sources, self._coverage = sources, coverage

    def describe(self) -> list[Any]:
        # An empty describe() keeps the registry from calling collect() at registration time.
        return []

    def collect(self) -> Iterator[Any]:
        # lazy: only a mount with [metrics] port loads prometheus_client (start-up time)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        if self._info:
            info = GaugeMetricFamily(
                PREFIX + "info", "The repo and commit served (value 1)", labels=sorted(self._info)
            )
            info.add_metric([self._info[k] for k in sorted(self._info)], 1)
            yield info

        yield gauge(
            "hub_online", "1 when a Hub client is configured, 0 when offline", int(self._client is not None)
        )
        if self._client is not None:
            hub = self._client.stats
            yield counter(
                "hub_requests", "HTTP requests sent to the Hub and its CDN, retries included", hub.requests
            )
            yield counter("hub_resolves", "File resolves (/resolve HEADs) sent to the Hub", hub.resolves)
            yield counter(
                "hub_received_bytes", "Response body bytes received from the Hub and CDN", hub.bytes_received
            )
            yield counter("hub_retries", "Hub requests retried after a transient failure", hub.retries)
            yield counter("hub_rate_limited", "429 answers from the Hub", hub.rate_limited)
            yield counter("hub_errors", "Hub calls that failed after their retries", hub.errors)

        if self._cache is not None:
            cs = self._cache.stats
            yield counter("cache_hits", "Local cache lookups that found a verified entry", cs.hits)
            yield counter("cache_misses", "Local cache lookups that found nothing usable", cs.misses)
            yield counter(
                "cache_evictions",
                "Local cache entries evicted to stay within max_size and min_free",
                cs.evictions,
            )
            yield counter(
                "cache_evictions_for_space",
                "Of those, evicted to keep [cache] min_free free on the cache's disk, or after an ENOSPC",
                cs.evictions_for_space,
            )
            yield gauge(
                "cache_free_bytes",
                "Free bytes on the cache's filesystem (estimated between statvfs calls)",
                self._cache.free_bytes,
            )
            yield gauge(
                "cache_min_free_bytes",
                "Free space the cache keeps ([cache] min_free)",
                self._cache.min_free_bytes,
            )
            yield counter("cache_publishes", "Entries published into the local cache", cs.publishes)
            yield counter("cache_quarantined", "Local cache entries that failed verification", cs.quarantined)
            yield counter(
                "cache_written_bytes", "Content bytes published into the local cache", cs.bytes_written
            )
            yield gauge(
                "cache_size_bytes", "Bytes of the local cache's entry files", self._cache.size_bytes()
            )
            yield gauge(
                "cache_max_size_bytes",
                "The local cache's quota ([cache] max_size)",
                self._cache.max_size_bytes,
            )
            yield gauge("cache_entries", "Entries in the local cache", self._cache.entry_count())

        if self._sources is not None:
            yield gauge(
                "fetches_in_flight",
                "Fetches (members, blocks, indexes) in progress",
                self._sources.fetches_in_flight,
            )
            uncached = self._sources.uncached.stats
            yield counter(
                "uncached_serves",
                "Opens (and Hub-file blocks) served from memory because the cache had no room",
                uncached.serves,
            )
            yield counter("uncached_bytes", "Bytes fetched to be served uncached", uncached.bytes)
            yield gauge(
                "uncached_held_bytes", "Bytes held in memory for open uncached files", uncached.held_bytes
            )
            yield counter("uncached_waits", "Opens that waited for [cache] uncached_max", uncached.waits)
            shared = self._sources.tiers.tier("shared")
            yield gauge(
                "shared_configured", "1 when a shared cache tier is configured", int(shared is not None)
            )
            if shared is not None:
                st = shared.stats
                yield counter("shared_hits", "Entries and files copied from the shared tier", st.hits)
                yield counter("shared_misses", "Shared tier lookups that found nothing", st.misses)
                yield counter("shared_corrupt", "Shared tier files that failed verification", st.corrupt)
                yield counter(
                    "shared_publishes", "Entries and files published to the shared tier", st.publishes
                )
                yield counter(
                    "shared_publish_skipped",
                    "Publishes skipped (already there, share down, queue full)",
                    st.publish_skipped,
                )
                yield counter("shared_errors", "I/O errors and timeouts on the shared tier", st.errors)
                yield counter("shared_read_bytes", "Content bytes copied from the shared tier", st.bytes_read)
                yield counter(
                    "shared_written_bytes", "Content bytes written to the shared tier", st.bytes_written
                )
                yield gauge(
                    "shared_pending_publishes",
                    "Publishes queued for the shared tier",
                    shared.pending_publishes,
                )
            hist = HistogramMetricFamily(
                PREFIX + "fetch_duration_seconds",
                "Time to fetch, verify and cache one member or block, by kind and by the tier that served it",
                labels=["kind", "tier"],
            )
            for (kind, tier), (counts, sum_s) in sorted(self._sources.timings.snapshot().items()):
                buckets, running = [], 0
                for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), counts, strict=True):
                    running += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
                hist.add_metric([kind, tier], buckets, sum_s)
            yield hist

        if self._core is not None:
            fs = self._core.stats
            yield counter("lookups", "Name lookups answered", fs.lookups)
            yield counter("lookup_misses", "Name lookups of absent paths (ENOENT)", fs.misses)
            yield counter("opens", "Files opened", fs.opens)
            yield counter("reads", "Read requests answered", fs.reads)
            yield counter("served_bytes", "Bytes returned to readers", fs.bytes_served)
            yield gauge("open_handles", "Files open now", self._core.open_handles)
            errors = CounterMetricFamily(
                PREFIX + "errors", "Filesystem calls that failed, by errno", labels=["errno"]
            )
            for name, n in sorted(dict(fs.errors).items()):
                errors.add_metric([name], n)
            yield errors

        if self._coverage is not None:
            yield from self._coverage_families(self._coverage())

    def _coverage_families(self, report: dict[str, Any]) -> Iterator[Any]:
        # lazy: only a mount with [metrics] port loads prometheus_client (start-up time)
        from prometheus_client.core import GaugeMetricFamily

        total = report.get("total") or {}
        for state in ("wanted", "available", "missing"):
            yield GaugeMetricFamily(
                PREFIX + f"videos_{state}",
                f"Distinct annotated video paths: {state}",
                value=int(total.get(state, 0)),
            )
        for state in ("wanted", "available", "missing"):
            family = GaugeMetricFamily(
                PREFIX + f"directory_videos_{state}",
                f"Annotated video paths per data_source directory: {state}",
                labels=["directory"],
            )
            for directory, counts in sorted((report.get("by_directory") or {}).items()):
                family.add_metric([directory], int(counts.get(state, 0)))
            yield family
        sources = GaugeMetricFamily(
            PREFIX + "videos_available_by_source", "Available video paths by source kind", labels=["source"]
        )
        for kind, n in sorted((report.get("by_source") or {}).items()):
            sources.add_metric([kind], int(n))
        yield sources


def registry_for(collector: VfsCollector) -> CollectorRegistry:
    # lazy: only a mount with [metrics] port loads prometheus_client (start-up time)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


def render(collector: VfsCollector) -> str:
    """The text exposition of one scrape (tests, debugging)."""
    # lazy: only a mount with [metrics] port loads prometheus_client (start-up time)
    from prometheus_client import generate_latest

    return generate_latest(registry_for(collector)).decode()


class MetricsServer:
    """``with MetricsServer(host, port, collector):`` serves ``/metrics`` from a daemon thread."""

    def __init__(self, host: str, port: int, collector: VfsCollector) -> None:
        self.host = host
        self.port = port
        self._registry = registry_for(collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        # lazy: only a mount with [metrics] port loads prometheus_client (start-up time)
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self._registry)
        except OSError as exc:
            raise ConfigError(
                f"[metrics] cannot serve on {self.host}:{self.port}: {exc.strerror or exc}"
                " (is another llava-vfs mount or exporter using that port?)",
                3,
            ) from None
        self.port = self._server.server_address[1]
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metrics_server(config: Config, *, commit: str) -> contextlib.AbstractContextManager[VfsCollector | None]:
    """The daemon's metrics endpoint as a context manager yielding its collector (``attach`` the live
    objects once they exist); entering binds the port (``ConfigError`` exit 3 when it cannot), leaving stops
    the server. Yields None when ``[metrics] port`` is unset.

    Entered before the daemon opens its nursery, so a taken port is a plain one-line start-up error.
    """
    if config.metrics.port is None:
        return contextlib.nullcontext()
    collector = VfsCollector(info={"repo": config.hub.repo, "commit": commit})
    return _serving(MetricsServer(config.metrics.host, config.metrics.port, collector), collector)


@contextlib.contextmanager
def _serving(server: MetricsServer, collector: VfsCollector) -> Iterator[VfsCollector]:
    with server:
        yield collector
