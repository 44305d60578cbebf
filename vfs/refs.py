"""Refs: the small immutable records a namespace node keeps to say where its bytes come from.

They are data, plus what follows from it alone: the cache keys their bytes are stored under and the
checksum a Hub file is verified against. Persisted in the catalog, and cheap to hold 180K of in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from vfs.errors import IntegrityError


@dataclass(frozen=True, slots=True)
class HubFileRef:
    """A file of the repo at the pinned commit, read lazily block by block."""

    kind: ClassVar[str] = "hub"

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None

    @property
    def content_id(self) -> str:
        return self.lfs_sha256 or self.blob_id

    @property
    def source(self) -> str:
        """What ``user.vfs.source`` says: where the bytes come from."""
        return f"hub:{self.path}"

    def block_key(self, block_size: int, index: int) -> str:
        """The cache key of block ``index`` when the file is cached in blocks of ``block_size``."""
        return f"blk/{self.content_id}/{block_size}/{index}"

    def block_count(self, block_size: int) -> int:
        """How many blocks of ``block_size`` the file is cached in (an empty file is one empty block)."""
        return max(1, -(-self.size // block_size))

    def check_whole(self, data: bytes) -> None:
        """Raise ``IntegrityError`` unless ``data`` is the whole file the listing describes (blocking:
        it hashes every byte)."""
        if self.lfs_sha256 is not None:
            ok = hashlib.sha256(data).hexdigest() == self.lfs_sha256
        else:
            ok = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == self.blob_id
        if not ok:
            raise IntegrityError(f"{self.path}: checksum does not match the Hub listing")


@dataclass(frozen=True, slots=True)
class MemberRef:
    """A member of a ``.tar.gz`` shard, fetched whole on first open and served from the cache."""

    kind: ClassVar[str] = "shard"

    shard_path: str
    shard_sha256: str
    member_path: str
    offset: int
    size: int
    sha256: str

    @property
    def cache_key(self) -> str:
        return f"mem/{self.shard_sha256}/{self.offset}"

    @property
    def source(self) -> str:
        return f"shard:{self.shard_path}#{self.member_path}@{self.offset}"


@dataclass(frozen=True, slots=True)
class UpstreamRef:
    """A file under a configured upstream root (already resolved and checked to stay inside it).

    ``root`` is the resolved root: opening re-checks that the file still lies inside it.
    """

    kind: ClassVar[str] = "upstream"

    dataset: str
    real_path: str
    size: int
    root: str = ""

    @property
    def source(self) -> str:
        return f"upstream:{self.dataset}:{self.real_path}"


@dataclass(frozen=True, slots=True)
class UpstreamDirRef:
    """A directory that exists only for one upstream dataset: it shows the owner and mode of ``real_path``,
    its real counterpart (the directory holding what it lists, or the dataset's root)."""

    kind: ClassVar[str] = "upstream"

    dataset: str
    real_path: str
    root: str

    @property
    def source(self) -> str:
        return f"upstream:{self.dataset}:{self.real_path}"


@dataclass(frozen=True, slots=True)
class LocalFileRef:
    """A file the daemon derived and keeps under its cache dir (``.vfs/available/...``, ``missing.tsv``),
    published atomically before the mount starts and served with ``pread``."""

    kind: ClassVar[str] = "local"

    path: str
    size: int

    @property
    def source(self) -> str:
        return f"local:{self.path}"


@dataclass(frozen=True, slots=True)
class VirtualRef:
    """A ``.vfs/`` file rendered in memory; ``dynamic`` ones are re-rendered at every open."""

    kind: ClassVar[str] = "virtual"

    render: Callable[[], bytes]
    dynamic: bool = False

    @property
    def source(self) -> str:
        return "virtual"


# What a file's node holds: where its bytes come from. ``Sources.open`` dispatches on it, in one place.
FileRef = HubFileRef | MemberRef | UpstreamRef | LocalFileRef | VirtualRef
# What any node holds: a file's ref, or what a directory shows the owner and mode of (None: the setting).
Ref = FileRef | UpstreamDirRef


def json_file(render: Callable[[], object], *, dynamic: bool = False) -> VirtualRef:
    """A ``.vfs/`` file holding ``render()`` as indented, key-sorted JSON."""
    return VirtualRef(
        lambda: (json.dumps(render(), indent=1, sort_keys=True) + "\n").encode(), dynamic=dynamic
    )
