"""Where things live under ``[cache] dir``. The daemon owns these subdirectories and nothing outside them.

data/         verified bytes (``vfs.cache.store.CacheStore``): Hub-file blocks and shard members
index/        shard indexes, one per shard, named by the shard's LFS sha256
catalog/      per-commit catalogs and the revision pins, per repo
annotations/  downloaded annotation JSONs (verified), named by content id; filtered copies
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def index_path(index_dir: Path, shard_sha256: str) -> Path:
    """Where the index of the shard with this LFS sha256 lives under ``index/``."""
    return index_dir / shard_sha256[:2] / f"{shard_sha256}.idx"


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations"

    def create(self) -> None:
        for path in (self.root, self.data, self.index, self.catalog, self.annotations):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
