"""Shard index: which members a ``.tar.gz`` shard holds, and how to extract one from a small ranged download.

This module holds the index and its file format. One sequential pass over a shard (``vfs.targz.build``:
streamed from the network or read from a file) builds a ``ShardIndex``: every regular member's normalised
path, uncompressed offset, size and sha256, plus ONE checkpoint per member at the last deflate block
boundary at or before the member's data (and one at the stream start). Uniform checkpoint spacing
(indexed_gzip, rapidgzip, ratarmount) costs spacing/2 of over-read per member on average; with a checkpoint
right before each member, fetching a member downloads its own compressed bytes plus less than one deflate
block (tens of KiB). ``fetch_range`` gives the compressed byte range to download; ``MemberExtractor``
(``vfs.targz.extract``) inflates exactly that range into the member's bytes and verifies length and sha256
before anything may be served.

Windows are sparse: a checkpoint's 32 KiB dictionary keeps only the bytes that inflating from it actually
reads (``zran.sparsify_window``), the rest is zeroed and the window stored zlib-compressed. Video data is
nearly incompressible, so few bytes are read (none at all in stored blocks; 0-11 bytes per checkpoint were
measured on H.264 mp4 members) and an index costs a few dozen bytes per member instead of 32 KiB.

Tar parsing is the standard library's ``tarfile`` in stream mode (GNU, pax, ustar and v7 headers, long
names, ``./`` prefixes); member data is hashed straight from zlib's output while tarfile skips over it.
The deflate mechanics are in ``vfs.targz.zran``.

Invariants:

* A member is a regular, non-sparse file with a safe path; anything else is skipped (hostile or unusable
  names with one WARNING naming the shard and the member; directories, links and devices silently).
* Building fails with ``CorruptShard`` (naming the problem) rather than returning a partial index: on a
  truncated or invalid gzip stream (every gzip member's CRC-32 is checked), an invalid tar, non-zero data
  after the tar's end, a size or sha256 different from the expected ones.
* ``MemberExtractor.finish`` raises ``IntegrityError`` unless exactly ``size`` bytes with the recorded
  sha256 came out; bytes returned by ``feed`` are unverified until then.
* ``load`` never returns an index it has not checked: magic, version, sizes and the metadata sha256;
  each window carries a CRC-32 checked when it is read. Any mismatch raises ``CorruptIndex``.

On-disk format (version 1; all integers little-endian)::

    header    64 bytes, struct "<8sHHIQQ32s":
                magic         8s    b"VFSSHIDX"
                version       u16   1
                header_size   u16   64
                flags         u32   0 (reserved)
                meta_size     u64   bytes of the metadata block following the header
                windows_size  u64   bytes of the window region following the metadata block
                checksum      32s   sha256 over header[0:32] + the metadata block
    metadata  meta_size bytes, zlib-compressed; inflates to:
                "<32sQII"              shard sha256 (raw 32 bytes), shard size in compressed bytes,
                                       checkpoint count C, member count M
                C x "<QQIQIIB"         cmp_bit_offset, out_offset, window_size, window_pos,
                                       window_stored_size, window_crc32, window_codec
                M x "<QQQI32sI"        offset, size, cmp_end, checkpoint, sha256 (raw), path_size
                paths                  the members' UTF-8 paths concatenated in table order
    windows   windows_size bytes: checkpoint i's window at window_pos (relative to the region start),
              window_stored_size bytes, codec 0 = raw, 1 = zlib; window_crc32 is over the window itself
              (window_size bytes; bytes that resuming never reads are zero).

``window(i)`` reads one window with one ``pread``. Everything else is header plus metadata, about 70 bytes
per member plus its path before compression, so loading 1,000 members takes a few milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vfs.durable import publish
from vfs.errors import IntegrityError
from vfs.targz import zran

MAGIC = b"VFSSHIDX"
FORMAT_VERSION = 1

_HEADER = struct.Struct("<8sHHIQQ32s")
_META_HEAD = struct.Struct("<32sQII")
_CHECKPOINT = struct.Struct("<QQIQIIB")
_MEMBER = struct.Struct("<QQQI32sI")
_CODEC_RAW = 0
_CODEC_ZLIB = 1

TAR_BUFSIZE_BYTES = 64 * 1024  # tarfile's read unit: large enough for speed, small to copy per header
TAR_BLOCK_BYTES = 512
_MAX_NAME_PART_BYTES = 255  # NAME_MAX on Linux


class CorruptShard(IntegrityError):
    """The shard's bytes are not a complete, valid gzip-compressed tar, or not the expected bytes."""


class CorruptIndex(IntegrityError):
    """An index file is truncated, damaged, of an unknown version, or for another shard."""


@dataclass(frozen=True, slots=True)
class Member:
    path: str  # normalised relative path as in the tar
    offset: int  # uncompressed offset of the member's data in the tar stream
    size: int  # bytes
    sha256: str  # hex of the member's bytes
    checkpoint: int  # index into ShardIndex.checkpoints: the last block boundary <= offset
    cmp_end: int  # compressed byte offset (exclusive) up to which one must download to inflate through
    # offset+size


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A resume point: a deflate block boundary (or the start of a gzip member's deflate data)."""

    cmp_bit_offset: int  # bit offset in the compressed shard where the block starts
    out_offset: int  # uncompressed offset of the block's first byte
    window_size: int  # bytes of dictionary needed: 32 KiB, less near a gzip member's start

    @property
    def fetch_start(self) -> int:
        """First compressed byte to download (the one holding the block's first bit)."""
        return self.cmp_bit_offset // 8


def normalize_member_path(name: str) -> str:
    """The safe relative form of a tar member name, or ``ValueError`` saying why it is refused.

    Strips ``./`` prefixes and ``.`` parts, collapses ``//``; refuses absolute paths, ``..``, NUL and other
    control characters, parts longer than 255 bytes, and names that are not valid UTF-8.
    """
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValueError("control character (NUL, newline, ...) in name")
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        raise ValueError("empty path")
    if ".." in parts:
        raise ValueError("'..' component")
    try:
        encoded_parts = [part.encode("utf-8") for part in parts]
    except UnicodeEncodeError:
        raise ValueError("name is not valid UTF-8") from None
    if any(len(part) > _MAX_NAME_PART_BYTES for part in encoded_parts):
        raise ValueError(f"a path component is longer than {_MAX_NAME_PART_BYTES} bytes")
    return "/".join(parts)


class StoredWindow(NamedTuple):
    """A window as kept in memory and on disk: codec, stored bytes, CRC-32 of the window itself."""

    codec: int
    stored: bytes
    crc32: int

    @classmethod
    def encode(cls, window: bytes) -> StoredWindow:
        # Sparse windows are mostly zeros and shrink to a few dozen bytes; a window that does not
        # compress (it happens when many of its bytes are read) is kept raw.
        packed = zlib.compress(window, 6) if window else b""
        if len(packed) < len(window):
            return cls(_CODEC_ZLIB, packed, zlib.crc32(window))
        return cls(_CODEC_RAW, window, zlib.crc32(window))

    @classmethod
    def raw(cls, window: bytes) -> StoredWindow:
        """Without trying to compress (a full window about to be replaced by its sparse form)."""
        return cls(_CODEC_RAW, window, zlib.crc32(window))


class ShardIndex:
    """The members of one shard and the checkpoints to extract each from a ranged download.

    Built by ``build_shard_index`` (windows in memory, compressed) or read by ``load`` (windows read from
    the file on demand). Immutable after construction; safe to share between threads (``window`` opens
    the file per call).
    """

    def __init__(
        self,
        *,
        shard_sha256: str,
        shard_size: int,
        checkpoints: Sequence[Checkpoint],
        members: Sequence[Member],
        windows: Sequence[bytes | StoredWindow] | None = None,
        _file: tuple[Path, int, list[tuple[int, int, int, int]]] | None = None,
    ) -> None:
        if (windows is None) == (_file is None):
            raise ValueError("an index needs its windows in memory or a file to read them from")
        if windows is not None and len(windows) != len(checkpoints):
            raise ValueError("one window per checkpoint")
        self.shard_sha256 = shard_sha256
        self.shard_size = shard_size
        self.checkpoints: list[Checkpoint] = list(checkpoints)
        self.members: list[Member] = list(members)
        self._by_path = {m.path: m for m in self.members}
        self._windows: list[StoredWindow] | None = None
        if windows is not None:
            self._windows = [w if isinstance(w, StoredWindow) else StoredWindow.encode(w) for w in windows]
        # (path, offset of the window region, per checkpoint (position in the region, stored size, codec,
        # CRC-32)): a loaded index reads each window on demand.
        self._file = _file
        self._index_size_bytes: int | None = None

    def __repr__(self) -> str:
        return (
            f"ShardIndex(shard_sha256={self.shard_sha256[:12]}..., members={len(self.members)}, "
            f"checkpoints={len(self.checkpoints)})"
        )

    def member(self, path: str) -> Member | None:
        return self._by_path.get(path)

    def fetch_range(self, member: Member) -> tuple[int, int]:
        """Compressed ``[start, end)`` to download for ``member`` (empty, start == end, if it is empty)."""
        return self.checkpoints[member.checkpoint].fetch_start, member.cmp_end

    def window(self, checkpoint: int) -> bytes:
        """The dictionary for ``checkpoint``, CRC-checked (a blocking disk read for a loaded index)."""
        return self._decode_window(checkpoint, self._stored_window(checkpoint))

    def _stored_window(self, checkpoint: int) -> StoredWindow:
        if self._windows is not None:
            return self._windows[checkpoint]
        assert self._file is not None
        path, region_offset, locations = self._file
        position, size, codec, crc = locations[checkpoint]
        try:
            with open(path, "rb") as f:
                stored = os.pread(f.fileno(), size, region_offset + position)
        except OSError as e:
            raise CorruptIndex(f"index {path}: cannot read window {checkpoint}: {e}") from e
        if len(stored) != size:
            raise CorruptIndex(f"index {path}: window {checkpoint} truncated")
        return StoredWindow(codec, stored, crc)

    def _decode_window(self, checkpoint: int, entry: StoredWindow) -> bytes:
        where = f"index {self._file[0]}" if self._file else "in-memory index"
        try:
            window = zlib.decompress(entry.stored) if entry.codec == _CODEC_ZLIB else entry.stored
        except zlib.error as e:
            raise CorruptIndex(f"{where}: window {checkpoint} does not inflate: {e}") from e
        if len(window) != self.checkpoints[checkpoint].window_size or zlib.crc32(window) != entry.crc32:
            raise CorruptIndex(f"{where}: window {checkpoint} fails its CRC-32")
        return window

    @property
    def index_size_bytes(self) -> int:
        """Size of the serialised index (the file's size once saved or loaded)."""
        if self._index_size_bytes is None:
            self._index_size_bytes = sum(len(piece) for piece in self._encode())
        return self._index_size_bytes

    # -- persistence ----------------------------------------------------------------------------------

    def _encode(self) -> list[bytes]:
        """The file's bytes as pieces: header, metadata block, windows."""
        window_pieces: list[bytes] = []
        checkpoint_rows: list[bytes] = []
        position = 0
        for i, cp in enumerate(self.checkpoints):
            entry = self._stored_window(i)
            checkpoint_rows.append(
                _CHECKPOINT.pack(
                    cp.cmp_bit_offset,
                    cp.out_offset,
                    cp.window_size,
                    position,
                    len(entry.stored),
                    entry.crc32,
                    entry.codec,
                )
            )
            window_pieces.append(entry.stored)
            position += len(entry.stored)
        paths = [m.path.encode("utf-8") for m in self.members]
        member_rows = [
            _MEMBER.pack(m.offset, m.size, m.cmp_end, m.checkpoint, bytes.fromhex(m.sha256), len(p))
            for m, p in zip(self.members, paths, strict=True)
        ]
        meta_raw = b"".join(
            [
                _META_HEAD.pack(
                    bytes.fromhex(self.shard_sha256),
                    self.shard_size,
                    len(self.checkpoints),
                    len(self.members),
                ),
                *checkpoint_rows,
                *member_rows,
                *paths,
            ]
        )
        meta = zlib.compress(meta_raw, 6)
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, _HEADER.size, 0, len(meta), position, b"")[:32]
        checksum = hashlib.sha256(head + meta).digest()
        return [head + checksum, meta, *window_pieces]

    def save(self, path: Path) -> None:
        """Write atomically: a temp file in the same directory, published by ``vfs.durable.publish``."""
        path = Path(path)
        pieces = self._encode()
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    for piece in pieces:
                        f.write(piece)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        publish(tmp, path, synced=True)
        self._index_size_bytes = sum(len(piece) for piece in pieces)

    @classmethod
    def load(cls, path: Path, *, expected_sha256: str | None = None) -> ShardIndex:
        """Read and check an index file; ``CorruptIndex`` on any damage or a different shard sha256.

        A missing file raises ``FileNotFoundError``: not built yet is not the same as damaged.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                file_size = os.fstat(f.fileno()).st_size
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    raise CorruptIndex(f"index {path}: truncated header ({file_size} bytes)")
                magic, version, header_size, _flags, meta_size, windows_size, checksum = _HEADER.unpack(
                    header
                )
                if magic != MAGIC:
                    raise CorruptIndex(f"index {path}: not a shard index (bad magic {magic!r})")
                if version != FORMAT_VERSION or header_size != _HEADER.size:
                    raise CorruptIndex(f"index {path}: unsupported format version {version}")
                expected_size = _HEADER.size + meta_size + windows_size
                if file_size != expected_size:
                    raise CorruptIndex(
                        f"index {path}: {file_size} bytes, the header says {expected_size} (truncated?)"
                    )
                meta = f.read(meta_size)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise CorruptIndex(f"index {path}: cannot read: {e}") from e
        if len(meta) != meta_size or hashlib.sha256(header[:32] + meta).digest() != checksum:
            raise CorruptIndex(f"index {path}: metadata checksum mismatch")
        try:
            return cls._decode(
                path,
                zlib.decompress(meta),
                _HEADER.size + meta_size,
                windows_size,
                file_size,
                expected_sha256,
            )
        except (zlib.error, struct.error, UnicodeDecodeError, ValueError, IndexError) as e:
            # Only reachable if the checksum matched bytes this code did not write: still refuse.
            raise CorruptIndex(f"index {path}: malformed metadata: {e}") from e

    @classmethod
    def _decode(
        cls,
        path: Path,
        meta: bytes,
        region_offset: int,
        windows_size: int,
        file_size: int,
        expected_sha256: str | None,
    ) -> ShardIndex:
        view = memoryview(meta)
        shard_sha_raw, shard_size, n_checkpoints, n_members = _META_HEAD.unpack_from(view, 0)
        shard_sha256 = shard_sha_raw.hex()
        if expected_sha256 is not None and shard_sha256 != expected_sha256.lower():
            raise CorruptIndex(f"index {path} is for shard {shard_sha256}, expected {expected_sha256}")
        pos = _META_HEAD.size
        checkpoints: list[Checkpoint] = []
        locations: list[tuple[int, int, int, int]] = []
        end = pos + n_checkpoints * _CHECKPOINT.size
        for bit_offset, out_offset, window_size, w_pos, w_stored, w_crc, codec in _CHECKPOINT.iter_unpack(
            view[pos:end]
        ):
            if w_pos + w_stored > windows_size or window_size > zran.WINDOW_SIZE or codec > _CODEC_ZLIB:
                raise ValueError("window entry out of range")
            checkpoints.append(Checkpoint(bit_offset, out_offset, window_size))
            locations.append((w_pos, w_stored, codec, w_crc))
        pos = end
        end = pos + n_members * _MEMBER.size
        rows = list(_MEMBER.iter_unpack(view[pos:end]))
        pos = end
        members: list[Member] = []
        for offset, size, cmp_end, checkpoint, sha_raw, path_size in rows:
            member_path = bytes(view[pos : pos + path_size]).decode("utf-8")
            pos += path_size
            if checkpoints[checkpoint].out_offset > offset or cmp_end > shard_size:
                raise ValueError(f"member {member_path!r} points outside its shard")
            members.append(Member(member_path, offset, size, sha_raw.hex(), checkpoint, cmp_end))
        if pos != len(meta):
            raise ValueError("trailing bytes in the metadata")
        index = cls(
            shard_sha256=shard_sha256,
            shard_size=shard_size,
            checkpoints=checkpoints,
            members=members,
            _file=(path, region_offset, locations),
        )
        index._index_size_bytes = file_size
        return index
