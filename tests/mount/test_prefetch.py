"""``llava-vfs prefetch``: dry runs that fetch nothing, a warm cache that makes reading every video cost
(almost) nothing from the Hub, resumability, selections, and prefetching beside (and through) a running mount.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ID
from tests.mounting import Mount, cli, write_config
from vfs.cache.store import CacheStore
from vfs.commands.prefetch import run_prefetch
from vfs.config import load_config
from vfs.errors import ConfigError

pytestmark = pytest.mark.allow_log(r"skipped video", r"records skipped")


@pytest.fixture
def template(indexed_demo_cache: Path) -> Path:
    return indexed_demo_cache


@pytest.fixture
def node(tmp_path: Path, template: Path, hub) -> Path:
    """A config whose cache is a fresh copy of the indexed template; the Hub log is reset."""
    shutil.copytree(template, tmp_path / "cache")
    hub.reset_log()
    return write_config(
        tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache"
    )


def parse_dry_run(stdout: str) -> tuple[dict[str, tuple[int, str]], str]:
    lines = stdout.strip().splitlines()
    rows = {}
    for line in lines[:-1]:
        size, source, path = line.split("\t")
        rows[path] = (int(size), source)
    return rows, lines[-1]


def annotation_sizes(demo) -> dict[str, int]:
    return {a: (demo.root / a).stat().st_size for a in demo.annotation_files}


def test_dry_run_lists_what_it_would_fetch_and_fetches_nothing(node: Path, demo, hub) -> None:
    result = cli("prefetch", "--config", str(node), "--dry-run")
    assert result.returncode == 0, result.stderr
    rows, summary = parse_dry_run(result.stdout)
    expected = {v: demo.videos[v].size for v in demo.videos} | annotation_sizes(demo)
    assert {p: size for p, (size, _) in rows.items()} == expected
    assert {source for _, source in rows.values()} == {"hub"}
    total = sum(expected.values())
    assert summary.startswith(f"would fetch {len(expected)} files, {total} bytes")
    assert "0 of" in summary and "already cached" in summary
    assert hub.request_count() == 0  # a dry run never talks to the Hub


@pytest.mark.fuse
def test_after_prefetch_reading_every_video_costs_nothing(node: Path, demo, hub, tmp_path: Path) -> None:
    video_bytes = sum(v.size for v in demo.videos.values())
    result = cli("prefetch", "--config", str(node), "--jobs", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    files = len(demo.videos) + len(demo.annotation_files)
    assert f"prefetched {files} files" in result.stdout, result.stdout
    assert "0 already cached; 0 failed" in result.stdout
    fetched = hub.bytes_sent()
    assert fetched >= video_bytes  # it really downloaded the videos

    # resumable and idempotent: nothing left to do
    hub.reset_log()
    again = cli("prefetch", "--config", str(node))
    assert again.returncode == 0 and "prefetched 0 files (0 bytes)" in again.stdout, again.stdout
    assert f"{files} already cached" in again.stdout
    assert hub.request_count() == 0
    rows, summary = parse_dry_run(cli("prefetch", "--config", str(node), "--dry-run").stdout)
    assert rows == {} and summary.startswith("would fetch 0 files, 0 bytes")

    with Mount(node, tmp_path / "mnt") as m:
        hub.reset_log()
        for path, video in demo.videos.items():
            assert hashlib.sha256((m.mountpoint / path).read_bytes()).hexdigest() == video.sha256, path
        for path in demo.annotation_files:
            assert (m.mountpoint / path).read_bytes() == (demo.root / path).read_bytes()
        served = hub.bytes_sent()
    print(f"prefetch: {fetched} bytes; then reading every video: {served} bytes for {video_bytes}")
    assert served <= 0.01 * video_bytes


def test_dirs_and_paths_from_choose_what_to_warm(node: Path, demo, hub, tmp_path: Path) -> None:
    config = load_config(node)
    youtube = {v for v in demo.videos if v.startswith("liwei_youtube_videos/")}
    assert youtube
    out = io.StringIO()
    assert run_prefetch(config, dirs=["*_youtube_v0_1"], progress=False, out=out) == 0
    youtube_annotations = [a for a in demo.annotation_files if a.startswith("0_30_s_youtube_v0_1/")]
    assert f"prefetched {len(youtube) + len(youtube_annotations)} files" in out.getvalue()

    out = io.StringIO()
    run_prefetch(config, dry=True, out=out)
    rows, _ = parse_dry_run(out.getvalue())
    assert set(rows) == (set(demo.videos) - youtube) | (set(demo.annotation_files) - set(youtube_annotations))

    # a merged-tree prefix works as well as a repo directory
    charades = {v for v in demo.videos if v.startswith("academic_source/Charades/")}
    out = io.StringIO()
    run_prefetch(config, dirs=["academic_source/Charades"], dry=True, out=out)
    assert set(parse_dry_run(out.getvalue())[0]) == charades

    listing = tmp_path / "paths.txt"
    some = sorted(set(demo.videos) - youtube)[:2]
    listing.write_text(f"# two videos and a typo\n{some[0]}\n/{some[1]}\n\nacademic_source/nope.mp4\n")
    hub.reset_log()
    out = io.StringIO()
    assert run_prefetch(config, paths_from=str(listing), progress=False, out=out) == 1  # the typo
    assert "prefetched 2 files" in out.getvalue()
    assert hub.bytes_sent() >= sum(demo.videos[p].size for p in some)

    with pytest.raises(ConfigError) as info:
        run_prefetch(config, dirs=["no_such_dir"], dry=True)
    assert info.value.exit_code == 2 and "no_such_dir" in str(info.value)
    with pytest.raises(ConfigError):
        run_prefetch(config, jobs=0)


@pytest.mark.fuse
def test_prefetch_beside_a_running_mount_goes_through_it(node: Path, demo, hub, tmp_path: Path) -> None:
    nextqa = [v for v in demo.videos if v.startswith("NextQA/")]
    youtube = [v for v in demo.videos if v.startswith("liwei_youtube_videos/")]
    assert nextqa and youtube
    with Mount(node, tmp_path / "mnt") as m:
        # the mount owns the cache: prefetch finds it and warms through it
        auto = cli("prefetch", "--config", str(node), "--dirs", "0_30_s_nextqa")
        assert auto.returncode == 0, auto.stdout + auto.stderr
        assert f"belongs to the running mount at {m.mountpoint}" in auto.stderr
        assert f"prefetched through {m.mountpoint} {len(nextqa) + 2} files" in auto.stdout

        explicit = cli(
            "prefetch", "--config", str(node), "--mount", str(m.mountpoint), "--dirs", "0_30_s_youtube_v0_1"
        )
        assert explicit.returncode == 0, explicit.stdout + explicit.stderr
        assert f"prefetched through {m.mountpoint} {len(youtube) + 3} files" in explicit.stdout

        dry = cli("prefetch", "--config", str(node), "--dry-run")  # needs no lock
        rows, _ = parse_dry_run(dry.stdout)
        assert dry.returncode == 0 and not set(rows) & set(nextqa + youtube), dry.stderr

        hub.reset_log()
        for path in nextqa + youtube:
            assert hashlib.sha256((m.mountpoint / path).read_bytes()).hexdigest() == demo.videos[path].sha256
        assert hub.bytes_sent() == 0  # warmed by the prefetches through the mount

        not_mounted = cli("prefetch", "--config", str(node), "--mount", str(tmp_path))
        assert not_mounted.returncode == 3 and "not a mounted" in not_mounted.stderr

    # another owner that is not a mount (here: this test process): one clear line, exit 3
    with CacheStore(tmp_path / "cache" / "data", max_size_bytes=1 << 30):
        refused = cli("prefetch", "--config", str(node))
    assert refused.returncode == 3, refused.stderr
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "in use by another process" in message and "--mount" in message


def test_prefetch_publishes_to_the_shared_cache_for_other_nodes(
    tmp_path: Path, template: Path, demo, hub
) -> None:
    share = tmp_path / "share"
    configs = []
    for name in ("a", "b"):
        shutil.copytree(template, tmp_path / name)
        cfg = write_config(
            tmp_path / f"{name}.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / name
        )
        cfg.write_text(cfg.read_text().replace("[cache]\n", f'[cache]\nshared_dir = "{share}"\n'))
        configs.append(load_config(cfg))
    hub.reset_log()
    assert run_prefetch(configs[0], progress=False, out=io.StringIO()) == 0
    from_hub = hub.bytes_sent()
    assert from_hub >= sum(v.size for v in demo.videos.values())

    out = io.StringIO()
    run_prefetch(configs[1], dry=True, out=out)  # the second node would take everything from the share
    rows, _ = parse_dry_run(out.getvalue())
    assert {source for path, (_, source) in rows.items() if path in demo.videos} == {"shared"}
    hub.reset_log()
    out = io.StringIO()
    assert run_prefetch(configs[1], progress=False, out=out) == 0
    assert hub.bytes_sent() == 0, out.getvalue()
    assert f"{len(demo.videos) + len(demo.annotation_files)} from the shared cache" in out.getvalue()


def test_prefetch_on_a_fresh_node_indexes_first(tmp_path: Path, demo, hub) -> None:
    cfg = write_config(tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "cache")
    no_index = cli("prefetch", "--config", str(cfg), "--dry-run")  # a dry run never indexes
    assert no_index.returncode == 4 and "llava-vfs index" in no_index.stderr
    result = cli("prefetch", "--config", str(cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running `llava-vfs index` first" in result.stderr
    assert f"prefetched {len(demo.videos) + len(demo.annotation_files)} files" in result.stdout
    rows, summary = parse_dry_run(cli("prefetch", "--config", str(cfg), "--dry-run").stdout)
    assert rows == {} and summary.startswith("would fetch 0 files")
