"""``llava-vfs index --export DIR``: the pinned commit's shard indexes as a portable directory (indexes keyed
by their shard's sha256, a manifest, a dataset card), refreshed in place, never written over a directory
that holds something else; and indexes placed from an export spare a node streaming any shard."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.conftest import REPO_ID
from tests.mounting import cli, write_config
from vfs.targz.shard_index import FORMAT_VERSION, ShardIndex


def test_export_writes_every_shard_index_with_a_manifest_and_a_card(tmp_path: Path, hub, demo) -> None:
    cfg = write_config(tmp_path / "a.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "a")
    export = tmp_path / "export"
    done = cli("index", "--config", str(cfg), "--no-progress", "--export", str(export))
    assert done.returncode == 0, done.stderr
    assert f"exported {len(demo.shards)} shard indexes" in done.stdout

    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["repo"] == REPO_ID and manifest["commit"] == hub.head()
    assert manifest["format"] == "llava-vfs-index-export-v1"
    assert manifest["index_format_version"] == FORMAT_VERSION
    assert sorted(s["path"] for s in manifest["shards"]) == sorted(demo.shards)
    for entry in manifest["shards"]:
        index_file = export / entry["index"]
        assert hashlib.sha256(index_file.read_bytes()).hexdigest() == entry["index_sha256"]
        index = ShardIndex.load(index_file, expected_sha256=entry["sha256"])
        assert len(index.members) == entry["members"]
    assert len(list((export / "indexes").iterdir())) == len(demo.shards)
    card = (export / "README.md").read_text()
    assert card.startswith("---\n") and hub.head() in card

    stale = export / "indexes" / f"{'0' * 64}.idx"  # a shard no longer in the commit
    stale.write_bytes(b"old")
    again = cli("index", "--config", str(cfg), "--no-progress", "--export", str(export))
    assert again.returncode == 0, again.stderr  # an export is refreshed in place
    assert not stale.exists() and len(list((export / "indexes").iterdir())) == len(demo.shards)

    # A node that places the exported indexes streams no shard to index.
    cfg_b = write_config(tmp_path / "b.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "b")
    for entry in manifest["shards"]:
        dest = tmp_path / "b" / "index" / entry["sha256"][:2] / f"{entry['sha256']}.idx"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export / entry["index"], dest)
    hub.reset_log()
    done = cli("index", "--config", str(cfg_b), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "(0 built now, 0 bytes read)" in done.stdout
    assert not [r for r in hub.requests if r.origin == "cdn" and r.file in demo.shards]


def test_export_refuses_a_directory_that_holds_other_files(tmp_path: Path, hub) -> None:
    cfg = write_config(tmp_path / "a.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=tmp_path / "a")
    export = tmp_path / "home"
    export.mkdir()
    (export / "thesis.tex").write_text("precious")
    done = cli("index", "--config", str(cfg), "--no-progress", "--export", str(export))
    assert done.returncode == 3
    assert "indexed " not in done.stdout  # refused before the pass, not after it
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("llava-vfs: error: --export") and "choose an empty directory" in line
    assert sorted(p.name for p in export.iterdir()) == ["thesis.tex"]
