"""``llava-vfs index --export DIR``: the shard indexes of the pinned commit as a portable directory.

DIR holds ``indexes/<shard sha256>.idx`` for every indexed shard, ``manifest.json`` (the source repo and
commit, the tool and index format versions, and per shard its path, size, sha256 and the sha256 of its
index file) and ``README.md``, a dataset card, so DIR can be uploaded as is as a Hub dataset repo. Every
file is published whole (temp file, rename); an export refreshed for a newer commit replaces the
manifest and removes the indexes no shard of it names. A directory that holds other things is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from vfs.catalog.catalog import CatalogData
from vfs.durable import replacing, write_atomic
from vfs.errors import ConfigError
from vfs.layout import index_path
from vfs.targz.shard_index import FORMAT_VERSION

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "llava-vfs-index-export-v1"


@dataclass(frozen=True)
class ExportReport:
    shards: int
    index_bytes: int


def export_indexes(dest: Path, data: CatalogData, index_dir: Path) -> ExportReport:
    """Blocking: write the export of ``data``'s shard indexes (found under ``index_dir``) to ``dest``."""
    check_destination(dest)
    indexes = dest / "indexes"
    indexes.mkdir(parents=True, exist_ok=True)
    shards = []
    total = 0
    for shard in sorted(data.shards, key=lambda s: s.path):
        src = index_path(index_dir, shard.sha256)
        target = indexes / f"{shard.sha256}.idx"
        with replacing(target) as tmp:
            shutil.copyfile(src, tmp)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        total += target.stat().st_size
        shards.append(
            {
                "path": shard.path,
                "size": shard.size,
                "sha256": shard.sha256,
                "members": shard.members,
                "index": f"indexes/{target.name}",
                "index_sha256": digest,
            }
        )
    keep = {entry["index"] for entry in shards}
    for stale in indexes.glob("*.idx"):
        if f"indexes/{stale.name}" not in keep:
            stale.unlink()
    manifest = {
        "format": MANIFEST_FORMAT,
        "repo": data.repo,
        "commit": data.commit,
        "tool": "llava-video-vfs",
        "tool_version": _tool_version(),
        "index_format_version": FORMAT_VERSION,
        "shards": shards,
    }
    write_atomic(dest / "README.md", _card(data, len(shards), total).encode())
    write_atomic(dest / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return ExportReport(shards=len(shards), index_bytes=total)


def check_destination(dest: Path) -> None:
    """``ConfigError`` (exit 3) unless ``dest`` is absent, empty, or an earlier export: checked before the
    index pass, so a mistake costs no pass."""
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--export {dest} is not a directory", 3)
    if dest.is_dir() and any(dest.iterdir()):
        try:
            fmt = json.loads((dest / MANIFEST).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt != MANIFEST_FORMAT:
            raise ConfigError(
                f"--export {dest} holds other files and no llava-vfs export: choose an empty directory", 3
            )


def _tool_version() -> str:
    try:
        return metadata.version("llava-video-vfs")
    except metadata.PackageNotFoundError:
        return "unknown"


def _card(data: CatalogData, shards: int, total: int) -> str:
    return f"""---
license: other
tags:
- llava-video-vfs
- seek-index
pretty_name: Shard seek indexes of {data.repo}
---

# Shard seek indexes of `{data.repo}` at `{data.commit[:12]}`

{shards} seek indexes ({total} bytes), one per `.tar.gz` shard of
[`{data.repo}`](https://huggingface.co/datasets/{data.repo}) at commit `{data.commit}`, written by
`llava-vfs index --export`. With them, `llava-vfs` serves any video of the dataset by a ranged download of
that video alone, without first streaming every shard to index it.

Each index is `indexes/<sha256 of its shard>.idx`; `manifest.json` lists the shards, their sizes and
sha256, and the sha256 of each index file. An index is used only for a shard whose sha256 matches; it
holds no video bytes, only offsets, member names and sizes and sha256s, and deflate windows.

To use them, place each file as `<cache dir>/index/<first two hex digits of its name>/<name>` before
running `llava-vfs index`: the index pass loads an index whose recorded shard sha256 matches instead of
streaming that shard. A member served is checked against the length and sha256 its index records, so an
index is as trustworthy as its publisher: the checks catch accidents, not a deliberate forgery.
"""
