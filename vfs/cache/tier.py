"""The shared cache tier's on-disk format (``SharedTier``): a directory on the cluster filesystem
(``[cache] shared_dir``) that every node reads before the Hub and writes after it, so the Hub serves each
byte about once for the whole cluster. The daemon's view of it is ``vfs.cache.shared``, the indexer's
``vfs.cache.index_share``.

Responsibility
    Publish what a node fetched or derived -- shard members, Hub-file blocks, shard indexes, annotation
    JSONs, repo listings, catalogs and revision pins -- where other nodes find them, and copy them back
    into a node's own cache, verified. Lookup order for bytes: local cache, shared tier, Hub.

The layout and the rules that make it safe with many writers: docs/design.md, "The shared tier".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from vfs.errors import IntegrityError
from vfs.hub.client import RepoFile, is_commit_sha
from vfs.targz.shard_index import ShardIndex

if TYPE_CHECKING:
    from vfs.cache.store import CacheStore

log = logging.getLogger("vfs.cache.shared")  # one log for the shared tier, whichever module writes it

SHARED_FORMAT_DIR = "llava-vfs-shared-v1"
_MAGIC = b"LVVFSSH1"
TRAILER_BYTES = 32 + len(_MAGIC)  # sha256 digest + magic after the content
_COPY_CHUNK_BYTES = 1 << 20
# Shared files are readable by every node whatever the local umask (index runs with 077); who may use the
# share at all is decided by the permissions of shared_dir itself, which the administrator sets.
SHARED_FILE_MODE = 0o644
SHARED_DIR_MODE = 0o755
_TEMP_MAX_AGE_S = 3600.0  # a live writer keeps its temp file's mtime fresh; older ones are leftovers
_KEY_RE = re.compile(r"^(mem|blk)/([0-9a-f]{40}|[0-9a-f]{64})((?:/[0-9]{1,20})+)$")
_DIGEST_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class SharedCorrupt(IntegrityError):
    """A file in the shared tier failed verification; it is ignored (and replaced by the next publish)."""


@dataclass
class SharedStats:
    """Counters since start; plain ints updated under the tier's lock, read without it."""

    hits: int = 0  # entries and files copied from the share
    misses: int = 0  # lookups that found nothing
    corrupt: int = 0  # files that failed verification
    publishes: int = 0  # entries and files written to the share
    publish_skipped: int = 0  # publishes not done: already there, share down, or too many pending
    errors: int = 0  # I/O errors and timeouts on the share
    bytes_read: int = 0  # content bytes copied from the share
    bytes_written: int = 0  # content bytes written to the share


class _Breaker:
    """After a failure, stop using the share for ``retry_after_s``; one WARNING per outage."""

    def __init__(self, what: str, retry_after_s: float) -> None:
        self.what = what
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._in_outage = False
        self._lock = threading.Lock()

    def usable(self) -> bool:
        with self._lock:
            return time.monotonic() >= self._down_until

    def failed(self, root: Path, problem: str) -> None:
        with self._lock:
            first = not self._in_outage
            self._in_outage = True
            self._down_until = time.monotonic() + self.retry_after_s
        consequence = (
            "reads use only the local cache and the Hub" if self.what == "read" else "not publishing"
        )
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "shared cache %s: %s failed (%s); %s for the next %.0fs",
            root,
            self.what,
            problem,
            consequence,
            self.retry_after_s,
        )

    def succeeded(self, root: Path) -> None:
        with self._lock:
            recovered = self._in_outage
            self._in_outage = False
        if recovered:
            log.info("shared cache %s: %s works again", root, self.what)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems refuse fsync on directories; the rename stands
        log.debug("fsync of directory %s: %s", path, exc)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask: other nodes (other users) must be able to read."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, SHARED_DIR_MODE)
        except FileExistsError:
            continue  # another node made it meanwhile
        os.chmod(directory, SHARED_DIR_MODE)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class SharedTier:
    """The blocking, thread-safe half: paths, formats, verification, atomic publishing, breakers.

    Every method returns a miss (``None`` / ``False``) instead of raising for a problem on the share;
    errors of the *local* side (the local cache out of space, say) propagate to the caller.
    """

    def __init__(self, shared_dir: Path, *, retry_after_s: float = 30.0) -> None:
        self.shared_dir = Path(shared_dir)
        self.root = self.shared_dir / SHARED_FORMAT_DIR
        self.stats = SharedStats()
        self._read = _Breaker("read", retry_after_s)
        self._write = _Breaker("write", retry_after_s)
        self._lock = threading.Lock()
        self._host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
        self._made_dirs: set[Path] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def prepare(self) -> bool:
        """Create the top directories and sweep stale temp files; False (one WARNING) if the share is down."""
        try:
            for sub in ("tmp", "data", "index", "annotations", "catalog"):
                _makedirs(self.root / sub)
            swept = self._sweep_tmp()
        except OSError as exc:
            self._read.failed(self.root, f"start: {exc}")
            self._write.failed(self.root, f"start: {exc}")
            return False
        log.info("shared cache %s ready (%d stale temp files swept)", self.root, swept)
        return True

    def _sweep_tmp(self) -> int:
        swept = 0
        now = time.time()
        for entry in os.scandir(self.root / "tmp"):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > _TEMP_MAX_AGE_S:
                    os.unlink(entry.path)
                    swept += 1
            except FileNotFoundError:
                continue  # another node swept it first
        return swept

    def readable(self) -> bool:
        return self._read.usable()

    def writable(self) -> bool:
        return self._write.usable()

    def note_timeout(self, what: str, timeout_s: float, *, write: bool = False) -> None:
        """Called by the async facade when a call on the share exceeded its deadline."""
        with self._lock:
            self.stats.errors += 1
        (self._write if write else self._read).failed(self.root, f"{what}: no answer within {timeout_s:.0f}s")

    # -- paths -----------------------------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        """``mem/<sha>/<offset>`` or ``blk/<id>/<block size>/<index>`` -> its file (keys are checked)."""
        match = _KEY_RE.match(key)
        if match is None:
            raise ValueError(f"not a shareable cache key: {key!r}")
        kind, digest, rest = match.groups()
        return self.root / "data" / kind / digest[:2] / digest / rest.lstrip("/")

    def index_path(self, shard_sha256: str) -> Path:
        return self.root / "index" / shard_sha256[:2] / f"{digest(shard_sha256)}.idx"

    def annotation_path(self, content_id: str) -> Path:
        return self.root / "annotations" / f"{digest(content_id)}.json"

    def catalog_dir(self, repo: str) -> Path:
        return self.root / "catalog" / repo.replace("/", "--")

    def catalog_path(self, repo: str, commit: str, configs: tuple[str, ...]) -> Path:
        """The shared catalog of ``commit`` built for the directory selection ``configs``."""
        selection = (
            hashlib.sha256(json.dumps(sorted(configs)).encode()).hexdigest()[:16] if configs else "all"
        )
        return self.catalog_dir(repo) / f"{digest(commit)}.{selection}.sqlite"

    def pin_path(self, repo: str, revision: str) -> Path:
        return self.catalog_dir(repo) / "pins" / quote(revision, safe="")

    # -- entries (members and blocks) ------------------------------------------------------------

    def copy_into(self, cache: CacheStore, key: str, size: int, sha256: str | None) -> bool:
        """Copy ``key`` from the share into the local cache, verified; False on a miss or a bad file.

        ``sha256`` is what the catalog recorded (members); the digest stored with the entry must match
        it, and the local cache writer checks the content against it before publishing.
        """
        if not self._read.usable():
            return False
        path = self.entry_path(key)
        fd = self._open_for_read(path)
        if fd is None:
            return False
        try:
            recorded = self._check_entry(fd, path, size, sha256)
            if recorded is None:
                return False
            with cache.writer(key, size=size, sha256=recorded) as writer:
                offset = 0
                while offset < size:
                    chunk = self._pread(fd, path, min(_COPY_CHUNK_BYTES, size - offset), offset)
                    if chunk is None:
                        return False
                    if not chunk:
                        self.report_corrupt(path, f"ends at {offset} of {size} content bytes", fd)
                        return False
                    writer.write(chunk)
                    offset += len(chunk)
                try:
                    writer.commit()
                except IntegrityError as exc:
                    self.report_corrupt(path, str(exc), fd)
                    return False
        finally:
            os.close(fd)
        self._hit(size)
        return True

    def read_entry(self, key: str, size: int) -> bytes | None:
        """The verified content of a (small) entry, or None: for Hub-file blocks."""
        if not self._read.usable():
            return None
        path = self.entry_path(key)
        fd = self._open_for_read(path)
        if fd is None:
            return None
        try:
            recorded = self._check_entry(fd, path, size, None)
            if recorded is None:
                return None
            data = self._pread(fd, path, size, 0)
            if data is None:
                return None
            if len(data) != size or hashlib.sha256(data).hexdigest() != recorded:
                self.report_corrupt(path, "content does not match its recorded sha256", fd)
                return None
        finally:
            os.close(fd)
        self._hit(size)
        return data

    def publish_bytes(self, key: str, data: bytes, *, replace: bool = False) -> bool:
        """Publish ``data`` as ``key`` (skipped if already there, unless ``replace``)."""
        path = self.entry_path(key)
        trailer = hashlib.sha256(data).digest() + _MAGIC
        return self._publish(
            path, len(data) + TRAILER_BYTES, lambda fd: write_all(fd, data + trailer), replace=replace
        )

    def publish_from_cache(self, cache: CacheStore, key: str, size: int, sha256: str | None) -> bool:
        """Publish the local cache entry of ``key`` (skipped if evicted meanwhile or already shared)."""
        try:
            src = os.open(cache.path_of(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.note_skipped()
            return False
        try:
            if os.fstat(src).st_size < size:  # a local entry is content + trailer; shorter is not ours
                self.note_skipped()
                return False

            def write(fd: int) -> None:
                hasher = hashlib.sha256()
                offset = 0
                while offset < size:
                    chunk = os.pread(src, min(_COPY_CHUNK_BYTES, size - offset), offset)
                    if not chunk:
                        raise IntegrityError(f"local cache entry {key!r} ends at {offset} of {size} bytes")
                    hasher.update(chunk)
                    write_all(fd, chunk)
                    offset += len(chunk)
                digest = hasher.hexdigest()
                if sha256 is not None and digest != sha256:
                    raise IntegrityError(f"local cache entry {key!r} has sha256 {digest}, expected {sha256}")
                write_all(fd, bytes.fromhex(digest) + _MAGIC)

            return self._publish(self.entry_path(key), size + TRAILER_BYTES, write)
        finally:
            os.close(src)

    def has_entry(self, key: str, size: int) -> bool:
        """Whether the share holds ``key`` with the right size (a stat; for dry runs)."""
        if not self._read.usable():
            return False
        try:
            return os.stat(self.entry_path(key)).st_size == size + TRAILER_BYTES
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._read_failed(f"stat: {exc}")
            return False

    def _check_entry(self, fd: int, path: Path, size: int, sha256: str | None) -> str | None:
        """The recorded sha256 hex of the entry open on ``fd`` if its size and trailer are right."""
        try:
            st = os.fstat(fd)
        except OSError as exc:
            self._read_failed(f"stat {path}: {exc}")
            return None
        if st.st_size != size + TRAILER_BYTES:
            self.report_corrupt(path, f"{st.st_size} bytes, expected {size + TRAILER_BYTES}", fd)
            return None
        trailer = self._pread(fd, path, TRAILER_BYTES, size)
        if trailer is None:
            return None
        if len(trailer) != TRAILER_BYTES or trailer[32:] != _MAGIC:
            self.report_corrupt(path, "no shared-entry trailer", fd)
            return None
        recorded = trailer[:32].hex()
        if sha256 is not None and recorded != sha256.lower():
            self.report_corrupt(path, f"recorded sha256 {recorded}, the catalog says {sha256}", fd)
            return None
        return recorded

    # -- whole files (indexes, annotations, listings, catalogs, pins) ----------------------------

    def fetch_file(self, src: Path, dest: Path, verify: Callable[[Path], None]) -> bool:
        """Copy ``src`` (in the share) to ``dest`` (local) if ``verify(temp copy)`` passes; False if not.

        ``verify`` raises ``IntegrityError`` (or ``ValueError``) for a bad file. ``dest`` is replaced
        atomically and only with verified bytes.
        """
        if not self._read.usable():
            return False
        fd = self._open_for_read(src)
        if fd is None:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.shared.tmp")
        copied = 0
        try:
            with open(tmp, "wb") as out:
                while True:
                    chunk = self._read_chunk(fd, src, copied)
                    if chunk is None:
                        return False
                    if not chunk:
                        break
                    out.write(chunk)
                    copied += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            try:
                verify(tmp)
            except (IntegrityError, ValueError) as exc:
                self.report_corrupt(src, str(exc), fd)
                return False
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._hit(copied)
        return True

    def publish_payload(self, dest: Path, payload: bytes, *, replace: bool = False) -> bool:
        """Publish the small file ``payload`` at ``dest`` (skipped if there, unless ``replace``)."""
        return self._publish(dest, len(payload), lambda fd: write_all(fd, payload), replace=replace)

    def publish_file(self, src: Path, dest: Path, *, replace: bool = False) -> bool:
        """Publish the local file ``src`` at ``dest`` in the share (skipped if there, unless ``replace``)."""
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            return False

        def write(fd: int) -> None:
            with open(src, "rb") as fh:
                while chunk := fh.read(_COPY_CHUNK_BYTES):
                    write_all(fd, chunk)

        return self._publish(dest, size, write, replace=replace)

    def read_small(self, path: Path, limit_bytes: int = 1 << 20) -> bytes | None:
        if not self._read.usable():
            return None
        fd = self._open_for_read(path)
        if fd is None:
            return None
        try:
            data = self._pread(fd, path, limit_bytes, 0)
        finally:
            os.close(fd)
        return data

    def read_pin(self, repo: str, revision: str) -> str | None:
        data = self.read_small(self.pin_path(repo, revision), 4096)
        if data is None:
            return None
        commit = data.decode("ascii", "replace").strip()
        if not is_commit_sha(commit):
            self.report_corrupt(self.pin_path(repo, revision), f"not a commit sha: {commit[:60]!r}")
            return None
        return commit

    def write_pin(self, repo: str, revision: str, commit: str) -> bool:
        if not is_commit_sha(commit):
            raise ValueError(f"not a commit sha: {commit!r}")
        data = (commit + "\n").encode()
        return self._publish(
            self.pin_path(repo, revision), len(data), lambda fd: write_all(fd, data), replace=True
        )

    # -- internals -------------------------------------------------------------------------------

    def _open_for_read(self, path: Path) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            with self._lock:
                self.stats.misses += 1
            return None
        except OSError as exc:
            self._read_failed(f"open {path}: {exc}")
            return None
        self._read.succeeded(self.root)
        return fd

    def _pread(self, fd: int, path: Path, size: int, offset: int) -> bytes | None:
        try:
            return os.pread(fd, size, offset)
        except OSError as exc:
            self._read_failed(f"read {path}: {exc}")
            return None

    def _read_chunk(self, fd: int, path: Path, offset: int) -> bytes | None:
        return self._pread(fd, path, _COPY_CHUNK_BYTES, offset)

    def _read_failed(self, problem: str) -> None:
        with self._lock:
            self.stats.errors += 1
        self._read.failed(self.root, problem)

    def report_corrupt(self, path: Path, problem: str, fd: int | None = None) -> None:
        """Count and report a bad file; remove it if ``fd`` (open on it) shows it was not replaced since.

        Removing it lets the next publish of the good bytes (which skips files that are already there)
        repair the share; the inode check keeps a good copy another node just renamed into place.
        """
        with self._lock:
            self.stats.corrupt += 1
        if fd is not None:
            with contextlib.suppress(OSError):
                opened, current = os.fstat(fd), os.stat(path)
                if (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
                    os.unlink(path)
        log.warning(
            "shared cache file %s is unusable (%s); ignoring it, the Hub serves it instead", path, problem
        )

    def _hit(self, size: int) -> None:
        with self._lock:
            self.stats.hits += 1
            self.stats.bytes_read += size

    def note_skipped(self) -> None:
        with self._lock:
            self.stats.publish_skipped += 1

    def _publish(self, dest: Path, size: int, write: Callable[[int], None], *, replace: bool = False) -> bool:
        """Write a temp file with ``write(fd)`` (exactly ``size`` bytes), fsync, rename to ``dest``."""
        if not self._write.usable():
            self.note_skipped()
            return False
        try:
            if not replace and os.stat(dest).st_size == size:
                self.note_skipped()  # another node (or this one) published it already
                return False
        except FileNotFoundError:
            pass
        except OSError as exc:
            return self._write_failed(f"stat {dest}: {exc}")
        tmp = self.root / "tmp" / f"{self._host}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SHARED_FILE_MODE)
        except OSError as exc:
            return self._write_failed(f"create {tmp}: {exc}")
        renamed = False
        try:
            try:
                os.fchmod(fd, SHARED_FILE_MODE)
                write(fd)
                written = os.fstat(fd).st_size
                if written != size:
                    raise IntegrityError(f"wrote {written} bytes for {dest.name}, expected {size}")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._make_dirs(dest.parent)
            os.replace(tmp, dest)
            renamed = True
            _fsync_dir(dest.parent)
        except IntegrityError as exc:
            log.warning("shared cache: not publishing %s: %s", dest, exc)
            return False
        except OSError as exc:
            return self._write_failed(f"write {dest}: {exc}")
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        with self._lock:
            self.stats.publishes += 1
            self.stats.bytes_written += size
        self._write.succeeded(self.root)
        log.debug("shared cache: published %s (%d bytes)", dest, size)
        return True

    def _make_dirs(self, directory: Path) -> None:
        if directory in self._made_dirs:
            return
        _makedirs(directory)
        with self._lock:
            if len(self._made_dirs) > 100_000:
                self._made_dirs.clear()
            self._made_dirs.add(directory)

    def _write_failed(self, problem: str) -> bool:
        with self._lock:
            self.stats.errors += 1
        self._write.failed(self.root, problem)
        return False


def digest(value: str) -> str:
    if not _DIGEST_RE.match(value):
        raise ValueError(f"not a hex digest: {value!r}")
    return value


# -- verification helpers for whole files ------------------------------------------------------------


def verify_content_id(path: Path, *, size: int, content_id: str, is_lfs: bool) -> None:
    """Raise ``IntegrityError`` unless ``path`` holds ``size`` bytes hashing to ``content_id``."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise IntegrityError(f"{actual_size} bytes, the listing says {size}")
    hasher = hashlib.sha256() if is_lfs else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_CHUNK_BYTES):
            hasher.update(chunk)
    if hasher.hexdigest() != content_id:
        raise IntegrityError(f"checksum {hasher.hexdigest()}, expected {content_id}")


def verify_shard_index(path: Path, shard_sha256: str) -> None:

    # the key is the LFS sha256, or the git blob id of a shard stored without LFS
    ShardIndex.load(path, expected_sha256=shard_sha256 if len(shard_sha256) == 64 else None)


def listing_to_json(repo: str, commit: str, files: list[RepoFile]) -> bytes:
    rows = [[f.path, f.size, f.blob_id, f.lfs_sha256] for f in files]
    return json.dumps({"repo": repo, "commit": commit, "files": rows}, separators=(",", ":")).encode()


def listing_from_json(data: bytes, repo: str, commit: str) -> list[RepoFile]:

    try:
        obj = json.loads(data)
        if obj["repo"] != repo or obj["commit"] != commit:
            raise ValueError(f"listing of {obj['repo']}@{obj['commit']}")
        files = []
        for path, size, blob_id, lfs in obj["files"]:
            if not (
                isinstance(path, str) and isinstance(size, int) and size >= 0 and isinstance(blob_id, str)
            ):
                raise ValueError(f"bad row for {path!r}")
            if lfs is not None and not (isinstance(lfs, str) and re.fullmatch(r"[0-9a-f]{64}", lfs)):
                raise ValueError(f"bad LFS sha256 for {path!r}")
            files.append(RepoFile(path=path, size=size, blob_id=blob_id, lfs_sha256=lfs))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"not a listing: {exc}") from None
    return files


def iter_shared_files(tier: SharedTier) -> Iterator[Path]:
    """Every file under the shared root except temp files (diagnostics and tests)."""
    for dirpath, _dirs, files in os.walk(tier.root):
        if Path(dirpath).name == "tmp":
            continue
        for name in files:
            yield Path(dirpath) / name
