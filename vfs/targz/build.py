"""Building a shard index: one streamed pass over a ``.tar.gz`` shard, inflating it with zlib's own
block boundaries in view (``vfs.targz.zran``), parsing tar headers as they pass, hashing every member, and
keeping a checkpoint (with the window it needs) before each member. The format is ``vfs.targz.shard_index``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from vfs.targz import zran
from vfs.targz.shard_index import (
    TAR_BLOCK_BYTES,
    TAR_BUFSIZE_BYTES,
    Checkpoint,
    CorruptShard,
    Member,
    ShardIndex,
    StoredWindow,
    normalize_member_path,
)

logger = logging.getLogger(__name__)


class _BackgroundHasher:
    """sha256 of the compressed shard on a second core: hashlib releases the GIL for large updates, so
    hashing overlaps inflation and tar parsing in the calling thread. A bounded queue gives backpressure."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="shard-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        """Stop the thread and return the digest of everything passed to ``update``."""
        self.close()
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


@dataclass(slots=True)
class _PendingMember:
    """A member whose data the scanner has not yet inflated to the end: hashed and located on the fly."""

    path: str
    offset: int
    size: int
    checkpoint: int
    cmp_end: int = -1
    hashed_bytes: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)

    def set_cmp_end(self, cmp_end: int) -> None:
        self.cmp_end = cmp_end

    def feed(self, data: memoryview) -> None:
        self.hasher.update(data)  # releases the GIL for large views
        self.hashed_bytes += len(data)


@dataclass(slots=True)
class _Stats:
    skipped_hostile: int = 0
    skipped_other: int = 0
    duplicates: int = 0
    started_s: float = field(default_factory=time.monotonic)


class _Builder:
    def __init__(
        self,
        read: Callable[[int], bytes],
        shard_sha256: str | None,
        shard_size: int | None,
        progress: Callable[[int], None] | None,
        shard_name: str,
    ) -> None:
        self._read = read
        self._expected_sha256 = shard_sha256.lower() if shard_sha256 else None
        self._expected_size = shard_size
        self._progress = progress
        self._name = shard_name
        self._hasher = _BackgroundHasher()
        self._consumed = 0
        self._checkpoints: list[Checkpoint] = []
        self._windows: list[StoredWindow] = []
        self._members: list[_PendingMember] = []
        self._by_path: dict[str, int] = {}
        self._stats = _Stats()

    def _pull(self, size: int) -> bytes:
        chunk = self._read(size)
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)  # the hasher thread must not see a buffer the reader reuses
        if chunk:
            self._hasher.update(chunk)
            self._consumed += len(chunk)
            if self._expected_size is not None and self._consumed > self._expected_size:
                raise CorruptShard(f"shard {self._name}: more than the expected {self._expected_size} bytes")
            if self._progress is not None:
                self._progress(self._consumed)
        return chunk

    def build(self) -> ShardIndex:
        scanner = zran.GzipScanner(self._pull)
        try:
            try:
                # Stream mode only calls read(); typeshed's file protocol for fileobj asks for more.
                fileobj = cast(BinaryIO, scanner)
                with tarfile.open(fileobj=fileobj, mode="r|", bufsize=TAR_BUFSIZE_BYTES) as tf:
                    self._add_checkpoint(scanner, 0)  # the stream start
                    for info in tf:
                        self._entry(scanner, info)
                        # tf.offset is where tarfile will read the next header: nothing before it matters.
                        scanner.forget_before(tf.offset)
                    tar_end = tf.offset
                self._check_tail(scanner, tar_end)
            except zran.ZlibError as e:
                raise CorruptShard(f"shard {self._name}: invalid gzip data: {e}") from e
            except tarfile.TarError as e:
                raise CorruptShard(
                    f"shard {self._name}: invalid tar at uncompressed offset ~{scanner.out_offset}: {e}"
                ) from e
        finally:
            scanner.close()
            self._hasher.close()
        return self._finish(scanner)

    def _add_checkpoint(self, scanner: zran.GzipScanner, offset: int) -> int:
        boundary, window = scanner.checkpoint_at(offset)
        if self._checkpoints and self._checkpoints[-1].cmp_bit_offset == boundary.cmp_bit_offset:
            return len(self._checkpoints) - 1
        index = len(self._checkpoints)
        self._checkpoints.append(Checkpoint(boundary.cmp_bit_offset, boundary.out_offset, len(window)))
        self._windows.append(StoredWindow.raw(window))
        # Replaced by the sparse window (unread bytes zeroed) once 32 KiB past the checkpoint are inflated.
        scanner.request_sparse_window(boundary, window, functools.partial(self._set_window, index))
        return index

    def _set_window(self, index: int, window: bytes) -> None:
        self._windows[index] = StoredWindow.encode(window)

    def _entry(self, scanner: zran.GzipScanner, info: tarfile.TarInfo) -> None:
        if not info.isreg():
            self._stats.skipped_other += 1
            logger.debug(
                "shard %s: skipping non-regular entry %r (type %r)", self._name, info.name, info.type
            )
            return
        if info.sparse is not None:
            self._stats.skipped_hostile += 1
            logger.warning(
                "shard %s: skipping member %r: sparse files are not supported", self._name, info.name
            )
            return
        try:
            path = normalize_member_path(info.name)
        except ValueError as e:
            self._stats.skipped_hostile += 1
            logger.warning("shard %s: skipping member %r: %s", self._name, info.name, e)
            return
        checkpoint = self._add_checkpoint(scanner, info.offset_data)
        pending = _PendingMember(path, info.offset_data, info.size, checkpoint)
        if info.size == 0:
            pending.cmp_end = self._checkpoints[checkpoint].fetch_start
        else:
            data_end = info.offset_data + info.size
            scanner.on_output_reaches(data_end, pending.set_cmp_end)
            # The member's bytes are hashed as zlib produces them; tarfile then skips over them.
            scanner.tap(info.offset_data, data_end, pending.feed)
            # Nothing before the member's end will be asked about again: memory stays bounded while
            # tarfile streams through the data.
            scanner.forget_before(data_end)
        previous = self._by_path.get(path)
        if previous is not None:
            # Tar semantics: a later entry replaces an earlier one of the same path.
            self._stats.duplicates += 1
            logger.warning("shard %s: member %r appears more than once; the last copy wins", self._name, path)
        self._by_path[path] = len(self._members)
        self._members.append(pending)

    def _check_tail(self, scanner: zran.GzipScanner, tar_end: int) -> None:
        """After the last header: only zeros (end-of-archive blocks, record padding) to the end."""
        zeros = 0
        for chunk in scanner.drain(tar_end):
            if chunk.count(0) != len(chunk):
                first_nonzero = len(chunk) - len(chunk.lstrip(bytes(1)))
                raise CorruptShard(
                    f"shard {self._name}: non-zero data after the tar's end at uncompressed offset "
                    f"{tar_end + zeros + first_nonzero} (damaged header?)"
                )
            zeros += len(chunk)
        if zeros < TAR_BLOCK_BYTES:
            raise CorruptShard(
                f"shard {self._name}: tar archive lacks its end-of-archive block (truncated before gzip "
                f"member end?)"
            )

    def _finish(self, scanner: zran.GzipScanner) -> ShardIndex:
        if self._expected_size is not None and self._consumed != self._expected_size:
            raise CorruptShard(f"shard {self._name}: {self._consumed} bytes, expected {self._expected_size}")
        actual_sha256 = self._hasher.hexdigest()
        if self._expected_sha256 is not None and actual_sha256 != self._expected_sha256:
            raise CorruptShard(
                f"shard {self._name}: sha256 {actual_sha256}, expected {self._expected_sha256}"
            )
        live = sorted(self._by_path.values())
        members = []
        for i in live:
            p = self._members[i]
            if p.size and (p.cmp_end < 0 or p.hashed_bytes != p.size):  # pragma: no cover - drained
                raise AssertionError(f"member {p.path!r} was not inflated to its end")
            members.append(Member(p.path, p.offset, p.size, p.hasher.hexdigest(), p.checkpoint, p.cmp_end))
        index = ShardIndex(
            shard_sha256=actual_sha256,
            shard_size=self._consumed,
            checkpoints=self._checkpoints,
            members=members,
            windows=self._windows,
        )
        elapsed_s = max(time.monotonic() - self._stats.started_s, 1e-9)
        logger.info(
            "indexed shard %s: %d members, %d checkpoints, %d gzip member(s), %.1f MB compressed, "
            "%.1f MB uncompressed in %.1f s (%.0f MB/s); skipped %d unsafe, %d non-regular, %d duplicate",
            self._name,
            len(members),
            len(self._checkpoints),
            scanner.gzip_members,
            self._consumed / 1e6,
            scanner.out_offset / 1e6,
            elapsed_s,
            scanner.out_offset / 1e6 / elapsed_s,
            self._stats.skipped_hostile,
            self._stats.skipped_other,
            self._stats.duplicates,
        )
        return index


def build_shard_index(
    read: Callable[[int], bytes],
    *,
    shard_sha256: str | None,
    shard_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    shard_name: str | None = None,
) -> ShardIndex:
    """Index a ``.tar.gz`` shard in one sequential pass over its compressed bytes.

    ``read(n)`` is a blocking pull of up to ``n`` compressed bytes (``b""`` at EOF): a file's ``read``, or a
    bridge from an async HTTP stream in another thread. ``progress(compressed_bytes_consumed)`` is called
    after every pull. The shard's sha256 is computed over the bytes read and checked against
    ``shard_sha256`` when given (and ``shard_size`` likewise); ``shard_name`` only labels log lines and
    errors. Raises ``CorruptShard`` for a mismatch, a truncated or invalid gzip stream or tar archive.
    Blocking and CPU-bound: call it from a worker thread.
    """
    name = shard_name or (shard_sha256[:16] if shard_sha256 else "<unnamed>")
    return _Builder(read, shard_sha256, shard_size, progress, name).build()
