"""How the demo writes a shard's tar and gzip layers so that they vary as real-world shards do (GNU, PAX and
USTAR headers, ``./`` prefixes, directory entries, gzip levels, two concatenated gzip streams) and stay
byte-identical from one build to the next (fixed times and owners, gzip header without name or time).
"""

from __future__ import annotations

import gzip
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Final

_TAR_MTIME: Final = 1_717_200_000  # 2024-06-01: fixed, so shards are byte-identical across builds
TAR_FORMATS: Final = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
_FORMAT_CYCLE: Final = ("ustar", "gnu", "pax")
_GZIP_LEVEL_CYCLE: Final = (6, 1, 9)


class GzipSink:
    """A write-only file for tarfile that gzips into ``raw``; at ``split_at`` (an uncompressed offset) it
    ends the gzip stream and starts a second one, as a shard made of concatenated gzip members."""

    def __init__(self, raw: BinaryIO, level: int, split_at: int | None) -> None:
        self._raw = raw
        self._level = level
        self._split_at = split_at
        self._position = 0
        self.streams = 1
        self._gzip = self._new_stream()

    def _new_stream(self) -> gzip.GzipFile:
        # filename="" and mtime=0: no build path or time in the header, so builds are byte-identical.
        return gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=self._level, mtime=0)

    def split_at(self, offset: int) -> None:
        """End the current gzip stream once ``offset`` uncompressed bytes have been written."""
        self._split_at = offset

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        size = len(view)
        split = self._split_at
        if split is not None and self._position < split < self._position + size:
            head = split - self._position
            self._gzip.write(view[:head])
            self._gzip.close()
            self._gzip = self._new_stream()
            self.streams += 1
            self._gzip.write(view[head:])
            self._split_at = None
        else:
            self._gzip.write(view)
        self._position += size
        return size

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._gzip.close()


@dataclass(frozen=True)
class Flavour:
    tar_format: str
    gzip_level: int
    dot_slash: bool
    dir_entries: bool
    two_streams: bool


def flavour_of(directory_index: int, shard_index: int, global_index: int) -> Flavour:
    # The format depends on the directory too, so each directory's shards differ from each other and the
    # long perception_test names land in both a USTAR shard (prefix split) and a GNU one (LongLink).
    return Flavour(
        tar_format=_FORMAT_CYCLE[(directory_index + shard_index) % len(_FORMAT_CYCLE)],
        gzip_level=_GZIP_LEVEL_CYCLE[global_index % len(_GZIP_LEVEL_CYCLE)],
        dot_slash=global_index % 2 == 1,
        dir_entries=global_index % 4 in (0, 1),
        two_streams=global_index == 1,
    )


def tarinfo(name: str, flavour: Flavour, *, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 1000
    info.uname = info.gname = "liwei"
    info.mtime = _TAR_MTIME
    if flavour.tar_format == "pax":
        # GNU tar --format=pax records sub-second times in an extended header for every member.
        info.mtime = _TAR_MTIME + 0.25
        info.pax_headers = {"atime": f"{_TAR_MTIME}.5", "ctime": f"{_TAR_MTIME}.75"}
    return info
