"""Prometheus metrics: live counters read at scrape time, every series ``llava_vfs_``-prefixed, served on
``[metrics] port`` by the daemon (and a clear start-up error when the port is taken)."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli, write_config
from vfs.cache.store import CacheStore
from vfs.core import FsCore
from vfs.errors import ConfigError
from vfs.hub.client import HubClient
from vfs.metrics import MetricsServer, VfsCollector, render
from vfs.sources.opener import Sources
from vfs.tree.namespace import NamespaceBuilder

pytestmark = pytest.mark.allow_log(r"skipped video", r"records skipped")


def scrape_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name + sorted labels -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_collector_reads_live_counters(tmp_path: Path) -> None:
    cache = CacheStore(tmp_path / "cache", max_size_bytes=1 << 20)
    client = HubClient(endpoint="http://127.0.0.1:9", repo_id=REPO_ID, token=None)  # never opened
    async with trio.open_nursery() as nursery:
        sources = Sources(
            commit="0" * 40,
            cache=cache,
            index_dir=tmp_path / "idx",
            block_size=1 << 16,
            nursery=nursery,
            client=client,
        )
        core = FsCore(NamespaceBuilder().build(), sources)
        report = {
            "total": {"wanted": 10, "available": 7, "missing": 3},
            "by_directory": {"d1": {"wanted": 10}},
        }
        collector = VfsCollector(info={"repo": REPO_ID})
        collector.attach(core=core, cache=cache, client=client, sources=sources, coverage=lambda: report)
        before = render(collector)
        names = {f.name for f in text_string_to_metric_families(before)}
        assert names and all(n.startswith("llava_vfs_") for n in names), names
        first = scrape_text(before)
        assert value(first, "llava_vfs_hub_requests_total") == 0
        assert value(first, "llava_vfs_videos_missing") == 3
        assert value(first, "llava_vfs_directory_videos_wanted", directory="d1") == 10
        assert value(first, "llava_vfs_directory_videos_available", directory="d1") == 0

        # the hot paths bump plain counters; the next scrape sees them
        client.stats.requests += 3
        client.stats.bytes_received += 12345
        cache.publish("blk/" + "a" * 40 + "/65536/0", b"x" * 1000)
        core.stats.errors["EIO"] += 2
        sources.timings.observe("member", "hub", 0.3)
        sources.timings.observe("member", "hub", 7.0)
        sources.timings.observe("block", "shared", 0.001)
        report["total"]["missing"] = 2
        after = scrape_text(render(collector))
        assert value(after, "llava_vfs_hub_requests_total") == 3
        assert value(after, "llava_vfs_hub_received_bytes_total") == 12345
        assert value(after, "llava_vfs_cache_publishes_total") == 1
        assert value(after, "llava_vfs_cache_size_bytes") > 1000
        assert value(after, "llava_vfs_errors_total", errno="EIO") == 2
        assert value(after, "llava_vfs_videos_missing") == 2
        hist = {"kind": "member", "tier": "hub"}
        assert value(after, "llava_vfs_fetch_duration_seconds_bucket", le="0.25", **hist) == 0
        assert value(after, "llava_vfs_fetch_duration_seconds_bucket", le="0.5", **hist) == 1
        assert value(after, "llava_vfs_fetch_duration_seconds_bucket", le="+Inf", **hist) == 2
        assert value(after, "llava_vfs_fetch_duration_seconds_count", **hist) == 2
        assert value(after, "llava_vfs_fetch_duration_seconds_sum", **hist) == pytest.approx(7.3)
        assert value(after, "llava_vfs_fetch_duration_seconds_count", kind="block", tier="shared") == 1
        assert value(after, "llava_vfs_fetches_in_flight") == 0
        assert value(after, "llava_vfs_shared_configured") == 0
        nursery.cancel_scope.cancel()
    cache.close()


def test_the_server_serves_metrics_and_refuses_a_taken_port() -> None:
    port = free_port()
    with MetricsServer("127.0.0.1", port, VfsCollector(info={"repo": REPO_ID, "commit": "c" * 40})):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        assert value(scrape_text(text), "llava_vfs_info", repo=REPO_ID, commit="c" * 40) == 1
        with pytest.raises(ConfigError) as info:
            MetricsServer("127.0.0.1", port, VfsCollector()).start()
        assert info.value.exit_code == 3 and f"127.0.0.1:{port}" in str(info.value)
    with pytest.raises(urllib.error.URLError):  # stopped: the port is free again
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.fixture
def template(indexed_demo_cache: Path) -> Path:
    return indexed_demo_cache


@pytest.mark.fuse
def test_a_mount_serves_metrics_on_the_configured_port(tmp_path: Path, template: Path, demo, hub) -> None:
    shutil.copytree(template, tmp_path / "cache")
    port = free_port()
    cfg = write_config(
        tmp_path / "c.toml",
        endpoint=hub.endpoint,
        repo=REPO_ID,
        cache_dir=tmp_path / "cache",
        extra=f"[metrics]\nport = {port}\n",
    )
    video = sorted(demo.videos)[0]
    with Mount(cfg, tmp_path / "mnt") as m:
        (m.mountpoint / video).read_bytes()
        (m.mountpoint / demo.annotation_files[0]).read_bytes()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        coverage = json.loads((m.mountpoint / ".vfs" / "coverage.json").read_text())
        commit = (m.mountpoint / ".vfs" / "revision").read_text().strip()
        # a second mount of another cache on the same port: one line, exit 3, nothing mounted
        other = write_config(
            tmp_path / "o.toml",
            endpoint=hub.endpoint,
            repo=REPO_ID,
            cache_dir=tmp_path / "other",
            extra=f"[metrics]\nport = {port}\n",
        )
        (tmp_path / "mnt2").mkdir()
        clash = cli("mount", "--config", str(other), str(tmp_path / "mnt2"))
        assert clash.returncode == 3 and f"127.0.0.1:{port}" in clash.stderr, clash.stderr
        assert not (tmp_path / "mnt2").is_mount()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert all(n.startswith("llava_vfs_") for n in names), names
    samples = scrape_text(text)
    assert value(samples, "llava_vfs_info", repo=REPO_ID, commit=commit) == 1
    assert value(samples, "llava_vfs_hub_received_bytes_total") >= demo.videos[video].size
    assert value(samples, "llava_vfs_hub_requests_total") >= 2
    assert value(samples, "llava_vfs_cache_misses_total") >= 1
    assert value(samples, "llava_vfs_cache_publishes_total") >= 2
    assert value(samples, "llava_vfs_fetch_duration_seconds_count", kind="member", tier="hub") == 1
    assert value(samples, "llava_vfs_fetch_duration_seconds_count", kind="block", tier="hub") >= 1
    assert value(samples, "llava_vfs_opens_total") >= 2
    assert value(samples, "llava_vfs_served_bytes_total") >= demo.videos[video].size
    for state in ("wanted", "available", "missing"):
        assert value(samples, f"llava_vfs_videos_{state}") == coverage["total"][state]
