"""The local persistent cache: verified, immutable byte strings ("entries") under string keys.

Responsibility
    Keep entries whose keys name what they were derived from (``blk/<lfs sha256>/<block index>``,
    ``mem/<shard sha256>/<member offset>``), hand out read-only fds on them, hold the total under a
    byte quota with LRU eviction, and never hand out bytes that were not verified. The API is
    synchronous and thread-safe; the async daemon calls it through ``trio.to_thread.run_sync``.

The on-disk layout and its crash-safety argument: docs/design.md, "The local cache".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vfs.cache.entry import (
    FORMAT_VERSION,
    HEX,
    BadEntry,
    encode_key,
    encode_trailer,
    entry_file_bytes,
    entry_name,
    normalise_sha256,
    read_trailer,
    sha256_of_prefix,
)
from vfs.cache.space import DiskSpace
from vfs.config import MinFree
from vfs.durable import fsync_dir
from vfs.errors import NO_SPACE_ERRNOS, ConfigError, FetchError, IntegrityError

log = logging.getLogger(__name__)

# Quarantined files are for diagnosis only; keep a few so a rotting disk cannot fill itself up.
_QUARANTINE_KEEP = 8
# Recency survives restarts through the mtime; touching it at most once a second per entry keeps
# repeated opens from turning into a stream of metadata writes.
_TOUCH_GRANULARITY_NS = 1_000_000_000
NO_MIN_FREE = MinFree()  # a store opened without a limit on free space (tests, verify-cache)
# A write that meets ENOSPC evicts and tries again at most this many times before the entry is given up.
_ENOSPC_RETRIES = 3


class CacheFull(FetchError):
    """The cache's file system ran out of space (or quota) while writing an entry; nothing was published."""


class CacheLocked(ConfigError):
    """Another live process owns this cache root."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=3)


@dataclass
class CacheStats:
    """Counters since start; updated under the store's lock, read without it (plain ints)."""

    hits: int = 0
    misses: int = 0
    publishes: int = 0
    evictions: int = 0
    evictions_for_space: int = 0  # of those, evicted to keep [cache] min_free free or after an ENOSPC
    quarantined: int = 0
    bytes_written: int = 0  # content bytes of published entries


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`CacheStore.verify_all`."""

    ok: int
    corrupt: int  # each was moved to quarantine/
    orphan_temp_files: int  # swept at start plus any found by the check
    ok_bytes: int = 0  # whole-file bytes of the good entries
    problems: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (key or file name, problem)


def entry_file(root: Path, key: str) -> Path:
    """Where ``key``'s entry lives under a store's ``root``: for a look that must not open the store (which
    takes its lock), such as ``prefetch --dry-run`` beside a running mount."""
    name = entry_name(key)
    return root / f"entries-v{FORMAT_VERSION}" / name[:2] / name[2:4] / name


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_path(path: Path) -> None:
    """Remove a file or a whole directory (only ever called on paths inside the root)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


class EntryWriter:
    """Writes one entry into a temp file; :meth:`commit` verifies and publishes it atomically.

    Use as a context manager: leaving it without a commit (or with an exception) removes the temp file.
    One writer belongs to one thread.
    """

    def __init__(
        self, store: CacheStore, key: str, size: int, sha256: str | None, *, prehashed: bool = False
    ) -> None:
        # Pure computation only: the temp file is created on __enter__ (or the first write), so the
        # writer can be constructed on the trio thread and entered in a worker thread.
        if size < 0:
            raise ValueError(f"entry size must be >= 0, got {size}")
        self.key = key
        self.size = size
        self._store = store
        self._name = entry_name(key)
        self._file_bytes = entry_file_bytes(encode_key(key), size)
        self._expected_sha256 = normalise_sha256(sha256)
        if prehashed and self._expected_sha256 is None:
            raise ValueError("prehashed needs the sha256 the caller verified")
        # A caller that already verified these exact bytes against ``sha256`` (the member extractor
        # does) spares a second pass of hashing over every byte; the trailer records the same digest.
        self._hasher = None if prehashed else hashlib.sha256()
        self._written_bytes = 0
        self._done = False
        self._fd = -1
        self._tmp_path: Path | None = None

    def __enter__(self) -> EntryWriter:
        self._ensure_tmp()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            if exc_type is None:
                log.debug("cache writer for %r left without commit; discarded", self.key)
            self.abort()

    @property
    def written_bytes(self) -> int:
        return self._written_bytes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; more bytes than the declared size is an IntegrityError (nothing published)."""
        self._ensure_tmp()
        view = memoryview(data).cast("B")
        if self._written_bytes + view.nbytes > self.size:
            self.abort()
            raise IntegrityError(
                f"cache entry {self.key!r}: more than the expected {self.size} bytes written"
            )
        if self._hasher is not None:
            self._hasher.update(view)
        self._write_all(view)
        self._written_bytes += view.nbytes

    def commit(self) -> None:
        """Check length (and sha256 if given), then publish: fsync, rename into place, fsync the dir."""
        self._ensure_tmp()
        if self._written_bytes != self.size:
            self.abort()
            raise IntegrityError(
                f"cache entry {self.key!r}: {self._written_bytes} bytes written, expected {self.size}"
            )
        digest = self._hasher.hexdigest() if self._hasher is not None else self._expected_sha256
        assert digest is not None
        if self._expected_sha256 is not None and digest != self._expected_sha256:
            self.abort()
            raise IntegrityError(
                f"cache entry {self.key!r}: content sha256 {digest}, expected {self._expected_sha256}"
            )
        self._write_all(memoryview(encode_trailer(self.key, self.size, digest)))
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
        os.close(self._fd)
        self._fd = -1
        self._done = True
        assert self._tmp_path is not None
        self._store._publish_tmp(self._tmp_path, self._name, self.key, self.size)

    def abort(self) -> None:
        """Discard the temp file (idempotent)."""
        self._done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp_path is not None:
            _unlink_quietly(self._tmp_path)
            self._store._release_tmp(self._tmp_path)

    def _ensure_tmp(self) -> None:
        if self._done:
            raise ValueError(f"cache writer for {self.key!r} is already committed or aborted")
        if self._fd >= 0:
            return
        self._store._reserve(self.key, self._file_bytes)
        self._tmp_path = self._store._new_tmp_path(self._name, "tmp")
        try:
            self._fd = os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.abort()
            if exc.errno in NO_SPACE_ERRNOS:
                raise self._store._cache_full(self.key, exc) from exc
            raise

    def _write_all(self, view: memoryview) -> None:
        retries = 0
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                # The disk filled under us (another program): evict, and try again while that frees room.
                left = self._file_bytes - self._written_bytes
                if (
                    exc.errno in NO_SPACE_ERRNOS
                    and retries < _ENOSPC_RETRIES
                    and self._store._make_room_after_enospc(left)
                ):
                    retries += 1
                    continue
                self._fail(exc)
            view = view[n:]

    def _fail(self, exc: OSError) -> None:
        self.abort()
        if exc.errno in NO_SPACE_ERRNOS:
            raise self._store._cache_full(self.key, exc) from exc
        raise exc


class CacheStore:
    """A directory of verified entries with an LRU byte quota. Thread-safe; see the module docstring."""

    def __init__(self, root: Path, *, max_size_bytes: int, min_free: MinFree = NO_MIN_FREE) -> None:
        if max_size_bytes <= 0:
            raise ValueError(f"max_size_bytes must be > 0, got {max_size_bytes}")
        self.root = Path(root)
        self.max_size_bytes = max_size_bytes
        self.stats = CacheStats()
        self._entries_dir = self.root / f"entries-v{FORMAT_VERSION}"
        self._tmp_dir = self.root / "tmp"
        self._quarantine_dir = self.root / "quarantine"
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # entry name -> file bytes; oldest first
        self._total_bytes = 0
        self._verified: set[str] = set()
        self._verifying: dict[str, threading.Event] = {}
        self._active_tmp: set[str] = set()  # temp/trash file names in use by this process
        self._evict_listeners: list[Callable[[str], None]] = []
        self._lock_fd = -1
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = self._take_root_lock()
            for sub in (self._entries_dir, self._tmp_dir, self._quarantine_dir):
                sub.mkdir(mode=0o700, exist_ok=True)
            self._space = DiskSpace(self.root, min_free)
        except OSError as exc:
            self.close()
            raise ConfigError(
                f"cache dir {self.root} is unusable: {exc.strerror or exc}", exit_code=3
            ) from exc
        self._swept_temp_files = self._sweep_tmp()
        self._remove_other_versions()
        self._rebuild()
        with self._lock:
            trash, _ = self._evict_locked(self._space.shortfall(0))
        self._unlink_trash(trash)
        log.info(
            "cache %s: %d entries, %d bytes (max %d); %d bytes free on its filesystem (keeps %d free); "
            "%d temp files swept",
            self.root,
            len(self._lru),
            self._total_bytes,
            self.max_size_bytes,
            self._space.free_bytes,
            self._space.min_free_bytes,
            self._swept_temp_files,
        )
        if max_size_bytes > self._space.filesystem_bytes:
            keeps = self._space.min_free_bytes
            log.warning(
                "cache %s: max_size (%d bytes) is larger than its filesystem (%d bytes): %s is the limit "
                "that rules",
                self.root,
                max_size_bytes,
                self._space.filesystem_bytes,
                f"the free space it keeps, min_free ({min_free}, {keeps} bytes)," if keeps else "free space",
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the root lock so another process may own the root (process exit releases it too).

        The lock is a POSIX record lock, held per process: closing any store of this process on the
        same root releases it for all of them. Do not use the store after closing it.
        """
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------

    def lookup(self, key: str, *, size: int, sha256: str | None = None) -> int | None:
        """An O_RDONLY fd on ``key``'s verified entry (the caller closes it), or None if absent or bad."""
        if size < 0:
            raise ValueError(f"entry size must be >= 0, got {size}")
        key_bytes = encode_key(key)
        name = hashlib.sha256(key_bytes).hexdigest()
        expected_sha256 = normalise_sha256(sha256)
        expected_file_bytes = entry_file_bytes(key_bytes, size)
        path = self._entry_path(name)
        while True:
            with self._lock:
                if name in self._verified:
                    event = None
                    break
                pending = self._verifying.get(name)
                if pending is None:
                    event = threading.Event()
                    self._verifying[name] = event
                    break
            pending.wait()  # another thread is verifying this entry: use its verdict
        verified = False
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._note_miss(name, path)
                return None
            try:
                st = os.fstat(fd)
                problem = None
                if st.st_size != expected_file_bytes:
                    problem = (
                        f"file is {st.st_size} bytes, expected {expected_file_bytes} "
                        f"({size} content + {expected_file_bytes - size} trailer)"
                    )
                elif event is not None:
                    problem = self._check_content(fd, st.st_size, key, size, expected_sha256)
                if problem is None:
                    self._note_hit(name, path, st, fd)
            except BaseException:
                os.close(fd)
                raise
            if problem is not None:
                os.close(fd)
                self._quarantine(name, path, st, key, problem)
                with self._lock:
                    self.stats.misses += 1
                return None
            verified = True
            return fd
        finally:
            if event is not None:
                with self._lock:
                    del self._verifying[name]
                    if verified:
                        self._verified.add(name)
                event.set()

    def writer(
        self, key: str, *, size: int, sha256: str | None = None, prehashed: bool = False
    ) -> EntryWriter:
        """A context manager that writes ``size`` bytes for ``key`` and publishes them on commit().

        ``prehashed``: the caller verifies the bytes against ``sha256`` itself before commit(), so the
        writer records that digest instead of hashing every byte a second time.
        """
        return EntryWriter(self, key, size, sha256, prehashed=prehashed)

    def publish(self, key: str, data: bytes, *, sha256: str | None = None) -> None:
        """Write and publish ``data`` as ``key``'s entry in one call."""
        with self.writer(key, size=len(data), sha256=sha256) as entry:
            entry.write(data)
            entry.commit()

    def contains(self, key: str) -> bool:
        """Whether an entry for ``key`` is indexed (not yet verified if it predates this process)."""
        name = entry_name(key)
        with self._lock:
            return name in self._lru

    def size_bytes(self) -> int:
        """Bytes of all entry files (content and trailers)."""
        with self._lock:
            return self._total_bytes

    def entry_count(self) -> int:
        with self._lock:
            return len(self._lru)

    def add_evict_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(entry file name)`` on every eviction, under the store's lock (keep it short):
        whoever keeps fds of entries closes them, so an evicted entry's blocks are freed."""
        self._evict_listeners.append(listener)

    @property
    def free_bytes(self) -> int:
        """Free bytes on the cache's filesystem: the estimate between statvfs calls (``vfs.cache.space``)."""
        return self._space.free_bytes

    @property
    def min_free_bytes(self) -> int:
        """The free space the cache keeps on its filesystem (``[cache] min_free``), in bytes."""
        return self._space.min_free_bytes

    def path_of(self, key: str) -> Path:
        """Where ``key``'s entry lives (whether or not it exists): for diagnostics and xattrs."""
        return self._entry_path(entry_name(key))

    def verify_all(self) -> VerifyReport:
        """Check every entry on disk in full; quarantine bad ones; sweep orphan temp files."""
        ok = corrupt = ok_bytes = 0
        problems: list[tuple[str, str]] = []
        for path in list(self._iter_entry_files()):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # evicted meanwhile
            label = path.name
            try:
                st = os.fstat(fd)
                try:
                    trailer = read_trailer(fd, st.st_size)
                    label = trailer.key
                    if entry_name(trailer.key) != path.name:
                        raise BadEntry(f"trailer key {trailer.key!r} does not belong in file {path.name}")
                    problem = self._check_content(fd, st.st_size, trailer.key, trailer.size, None)
                except BadEntry as exc:
                    problem = str(exc)
            finally:
                os.close(fd)
            if problem is None:
                ok += 1
                ok_bytes += st.st_size
                with self._lock:
                    if path.name in self._lru:
                        self._verified.add(path.name)
            else:
                corrupt += 1
                problems.append((label, problem))
                self._quarantine(path.name, path, st, label, problem)
        orphans = self._swept_temp_files + self._sweep_tmp()
        return VerifyReport(
            ok=ok, corrupt=corrupt, orphan_temp_files=orphans, ok_bytes=ok_bytes, problems=tuple(problems)
        )

    # -- verification ----------------------------------------------------------------------------

    def _check_content(
        self, fd: int, file_bytes: int, key: str, size: int, expected_sha256: str | None
    ) -> str | None:
        """The problem with the entry open on ``fd``, or None if it is good. Reads the whole content."""
        try:
            trailer = read_trailer(fd, file_bytes)
            if trailer.key != key:
                raise BadEntry(f"trailer names key {trailer.key!r}")
            if trailer.size != size:
                raise BadEntry(f"trailer records {trailer.size} content bytes, expected {size}")
            if expected_sha256 is not None and trailer.sha256 != expected_sha256:
                raise BadEntry(f"recorded sha256 {trailer.sha256}, expected {expected_sha256}")
            actual = sha256_of_prefix(fd, size)
            if actual != trailer.sha256:
                raise BadEntry(f"content sha256 {actual}, recorded {trailer.sha256}")
        except BadEntry as exc:
            return str(exc)
        return None

    def _quarantine(self, name: str, path: Path, st: os.stat_result, label: str, problem: str) -> None:
        """Move the bad file ``st`` out of the entries (unless a good publish replaced it) and warn once."""
        moved_to: Path | None = None
        with self._lock:
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
                moved_to = self._quarantine_dir / f"{time.time_ns():020d}-{name}"
                os.replace(path, moved_to)
                self._forget_locked(name)
                self.stats.quarantined += 1
        if moved_to is not None:
            log.warning("cache entry %r is corrupt (%s); moved to %s", label, problem, moved_to)
            self._prune_quarantine()
        else:
            log.warning("cache entry %r is corrupt (%s); already replaced or removed", label, problem)

    def _prune_quarantine(self) -> None:
        try:
            names = sorted(os.listdir(self._quarantine_dir))
        except FileNotFoundError:
            return
        for stale in names[:-_QUARANTINE_KEEP]:
            _remove_path(self._quarantine_dir / stale)

    # -- accounting (callers hold no lock unless the name ends in _locked) ------------------------

    def _note_hit(self, name: str, path: Path, st: os.stat_result, fd: int) -> None:
        with self._lock:
            self.stats.hits += 1
            file_bytes = self._lru.get(name)
            if file_bytes is None:
                # Not indexed: placed by hand, or evicted while we verified (then the path is gone and
                # the reader keeps its fd without the entry being re-indexed).
                self._index_if_current_locked(name, path, st)
            elif file_bytes <= self.max_size_bytes:
                self._lru.move_to_end(name)
        if time.time_ns() - st.st_mtime_ns > _TOUCH_GRANULARITY_NS:
            try:
                os.utime(fd)
            except OSError as exc:  # recency after a restart is a nicety, never a reason to fail a read
                log.debug("cache: cannot touch %s: %s", path, exc)

    def _note_miss(self, name: str, path: Path) -> None:
        with self._lock:
            self.stats.misses += 1
            if name in self._lru and not os.path.lexists(path):
                self._forget_locked(name)  # removed behind our back

    def _index_if_current_locked(self, name: str, path: Path, st: os.stat_result) -> None:
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return
        if (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
            self._add_locked(name, st.st_size)

    def _add_locked(self, name: str, file_bytes: int) -> None:
        self._lru[name] = file_bytes
        self._total_bytes += file_bytes
        if file_bytes > self.max_size_bytes:
            self._lru.move_to_end(name, last=False)  # over the quota by itself: first to go

    def _forget_locked(self, name: str) -> None:
        file_bytes = self._lru.pop(name, None)
        if file_bytes is not None:
            self._total_bytes -= file_bytes
        self._verified.discard(name)

    def _evict_locked(self, space_needed: int = 0) -> tuple[list[Path], int]:
        """Rename LRU entries out of place until within the quota and, for ``min_free``, until
        ``space_needed`` bytes are freed (or none are left). The trash, for the caller to unlink once the
        lock is released, and the bytes freed."""
        trash: list[Path] = []
        freed = 0
        while self._lru and (self._total_bytes > self.max_size_bytes or freed < space_needed):
            for_space = self._total_bytes <= self.max_size_bytes
            name, file_bytes = next(iter(self._lru.items()))
            self._forget_locked(name)
            target = self._new_tmp_path_locked(name, "evicted")
            try:
                os.replace(self._entry_path(name), target)
            except FileNotFoundError:
                self._active_tmp.discard(target.name)
                continue
            for listener in self._evict_listeners:
                listener(name)
            freed += file_bytes
            self.stats.evictions += 1
            self.stats.evictions_for_space += for_space
            trash.append(target)
            log.debug("cache: evicted %s%s", name, " for space" if for_space else "")
        self._space.freed(freed)
        return trash, freed

    def _reserve(self, key: str, file_bytes: int) -> None:
        """Make room for a new entry of ``file_bytes`` under ``min_free`` (evicting), or raise CacheFull
        before anything is written or downloaded."""
        with self._lock:
            need = self._space.shortfall(file_bytes)
            trash, freed = self._evict_locked(need)
            room = freed >= need
            if room:
                self._space.written(file_bytes)
            free = self._space.free_bytes
        self._unlink_trash(trash)
        if not room:
            raise self._no_room(key, f"{free} bytes free, min_free keeps {self._space.min_free_bytes}")

    def _make_room_after_enospc(self, left: int) -> bool:
        """A write met ENOSPC: look again and evict for the ``left`` bytes still to write; whether
        anything was freed (worth trying the write again)."""
        with self._lock:
            self._space.refresh()
            trash, freed = self._evict_locked(max(self._space.shortfall(left), left))
        self._unlink_trash(trash)
        return freed > 0

    def _unlink_trash(self, trash: list[Path]) -> None:
        for path in trash:
            _unlink_quietly(path)  # frees the blocks unless a reader still holds an fd
            self._release_tmp(path)

    # -- publishing ------------------------------------------------------------------------------

    def _new_tmp_path(self, name: str, suffix: str) -> Path:
        with self._lock:
            return self._new_tmp_path_locked(name, suffix)

    def _new_tmp_path_locked(self, name: str, suffix: str) -> Path:
        tmp_name = f"{name}.{uuid.uuid4().hex}.{suffix}"
        self._active_tmp.add(tmp_name)
        return self._tmp_dir / tmp_name

    def _release_tmp(self, path: Path) -> None:
        with self._lock:
            self._active_tmp.discard(path.name)

    def _publish_tmp(self, tmp_path: Path, name: str, key: str, size: int) -> None:
        """Move a complete, fsynced temp file into place, fsync the directory, account and evict."""
        final = self._entry_path(name)
        try:
            self._ensure_dir(final.parent)
            file_bytes = os.stat(tmp_path).st_size
            with self._lock:
                os.replace(tmp_path, final)  # metadata only: safe under the lock, keeps index == disk
                self._active_tmp.discard(tmp_path.name)
                self._forget_locked(name)  # a concurrent writer of the same key may have published
                if file_bytes > self.max_size_bytes:
                    # Over the quota by itself: evict for the others only, then index it at the cold
                    # end, so it is served now and is the first to go on the next publish.
                    trash, _ = self._evict_locked()
                    self._add_locked(name, file_bytes)
                else:
                    self._add_locked(name, file_bytes)
                    trash, _ = self._evict_locked()  # never reaches the new entry: it alone fits
                self._verified.add(name)  # its length and sha256 were checked while writing
                self.stats.publishes += 1
                self.stats.bytes_written += size
        except OSError as exc:
            _unlink_quietly(tmp_path)
            self._release_tmp(tmp_path)
            if exc.errno in NO_SPACE_ERRNOS:
                raise self._cache_full(key, exc) from exc
            raise
        fsync_dir(final.parent)
        self._unlink_trash(trash)
        log.debug("cache: published %r (%d bytes) as %s", key, size, name)

    def _ensure_dir(self, directory: Path) -> None:
        """Create the fan-out directories of an entry, fsyncing each parent that gained one."""
        for level in (directory.parent, directory):
            try:
                os.mkdir(level, 0o700)
            except FileExistsError:
                continue
            fsync_dir(level.parent)

    def _cache_full(self, key: str, exc: OSError) -> CacheFull:
        with self._lock:
            self._space.refresh()
        return self._no_room(key, f"{exc.strerror}, {self._space.free_bytes} bytes free")

    def _no_room(self, key: str, why: str) -> CacheFull:
        """The error for an entry the cache has no room for, with nothing left to evict. Its callers
        decide what the reader sees (``vfs.sources``: served uncached, one WARNING a minute), so this is
        only DEBUG."""
        log.debug("cache %s is out of space (%s) writing %r; entry not cached", self.root, why, key)
        return CacheFull(f"cache {self.root} is out of space ({why})")

    # -- start-up --------------------------------------------------------------------------------

    def _take_root_lock(self) -> int:
        # lockf (POSIX record lock) excludes other processes but not this one, so a process may open the
        # same root again (a restart within one test process); flock would refuse that.
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise CacheLocked(f"cache dir {self.root} is in use by another process") from exc
            raise
        return fd

    def _sweep_tmp(self) -> int:
        """Remove temp files no live writer of this process owns (at start: all of them)."""
        swept = 0
        for entry in os.scandir(self._tmp_dir):
            with self._lock:
                if entry.name in self._active_tmp:
                    continue
            _remove_path(Path(entry.path))
            swept += 1
            log.debug("cache: swept leftover temp file %s", entry.name)
        return swept

    def _remove_other_versions(self) -> None:
        for entry in os.scandir(self.root):
            if (
                entry.name.startswith("entries-v")
                and entry.name != self._entries_dir.name
                and entry.is_dir(follow_symlinks=False)
            ):
                log.info("cache: removing entries of another format version: %s", entry.path)
                shutil.rmtree(entry.path)

    def _iter_entry_files(self) -> Iterator[Path]:
        """Every well-named entry file; anything else in the entries tree is quarantined."""
        for level1 in os.scandir(self._entries_dir):
            if not (_is_fanout(level1.name) and level1.is_dir(follow_symlinks=False)):
                self._quarantine_stray(Path(level1.path))
                continue
            for level2 in os.scandir(level1.path):
                if not (_is_fanout(level2.name) and level2.is_dir(follow_symlinks=False)):
                    self._quarantine_stray(Path(level2.path))
                    continue
                prefix = level1.name + level2.name
                for item in os.scandir(level2.path):
                    if (
                        len(item.name) == 64
                        and set(item.name) <= HEX
                        and item.name.startswith(prefix)
                        and item.is_file(follow_symlinks=False)
                    ):
                        yield Path(item.path)
                    else:
                        self._quarantine_stray(Path(item.path))

    def _quarantine_stray(self, path: Path) -> None:
        target = self._quarantine_dir / f"{time.time_ns():020d}-stray-{path.name}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        log.warning("cache: %s is not a cache entry; moved to %s", path, target)
        self._prune_quarantine()

    def _rebuild(self) -> None:
        """Index what is on disk by stat alone (no hashing); recency from the mtime."""
        found: list[tuple[int, str, int]] = []
        for path in self._iter_entry_files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((st.st_mtime_ns, path.name, st.st_size))
        found.sort()
        with self._lock:
            for _mtime_ns, name, file_bytes in found:
                self._add_locked(name, file_bytes)

    def _entry_path(self, name: str) -> Path:
        return self._entries_dir / name[:2] / name[2:4] / name  # as entry_file lays it out


def _is_fanout(name: str) -> bool:
    return len(name) == 2 and set(name) <= HEX
