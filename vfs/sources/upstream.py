"""Upstream passthrough: annotation paths served from local copies of the original datasets.

An ``[[upstream]]`` entry (``name``, ``prefix``, ``root``, optional ``pattern`` and ``prefer``) maps the
annotation paths under ``prefix`` to files under ``root``. Known names carry the mapping rules of
DATASET.md section 5 (``vfs.datasets``); a custom entry maps ``prefix/<rest>`` to ``root/<rest>``, and a
``pattern`` such as ``"videos/{rest}"`` overrides the rules of either. Every candidate is tried in order
and the first regular file wins (llava_hound and custom entries may also map to a directory, served with
the regular files it holds, such as JPEG frames).

Besides the wanted paths, the directory that holds a known dataset's files is enumerated once, so an
upstream file that no annotation names (an "upstream-only" video) is listed and served at the path its
dataset's annotations would give it (``DatasetInfo.extras``).

Invariants:
- Nothing outside a root is ever served. Every hit is resolved with ``realpath`` (directories once,
  symlinked entries one by one) and refused unless it lies inside ``realpath(root)``; ``rest`` comes from
  ``normalise_video_path`` (no ``..``), and configured patterns are checked the same way. At open time the
  path is opened with ``O_NOFOLLOW``, and the opened fd's own path (``/proc/self/fd``) is checked against the
  root again, so a symlink swapped in after start-up cannot escape either.
- A file is served with the size seen at start-up; an upstream file whose size changed since then is
  refused at open (ESTALE) rather than served with a wrong ``st_size``.
- Resolution only makes blocking ``stat``/``scandir`` calls: callers run it in a worker thread, never on
  the trio thread. Reads are ``pread`` on an fd per open handle, in a worker thread (``FdHandle``).
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import re
import stat
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import trio

from vfs.access import Caller, check_real_chain, owner_of
from vfs.config import UpstreamConfig
from vfs.datasets import REGISTRY, DatasetInfo, Extras, under
from vfs.errors import NotFound, RemoteChanged, VfsError
from vfs.refs import LocalFileRef, UpstreamRef
from vfs.sources.base import FdHandle

log = logging.getLogger(__name__)

__all__ = [
    "Resolution",
    "UpstreamDir",
    "UpstreamFile",
    "UpstreamRule",
    "Upstreams",
    "inside",
    "open_local",
    "open_upstream",
]

# Upper bound on the entries enumerated per root for upstream-only files: a root is the user's, and a
# mis-configured one (``/``) must not stall the start-up forever.
MAX_EXTRA_ENTRIES = 2_000_000


# --------------------------------------------------------------------------------------------- the rules


def inside(real_path: str, root_real: str) -> bool:
    """Whether a resolved path is the resolved root or lies below it."""
    return real_path == root_real or real_path.startswith(root_real.rstrip("/") + "/")


class UpstreamRule:
    """One configured ``[[upstream]]`` entry with its mapping rules."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.root = str(config.root)
        self.root_real = os.path.realpath(config.root)
        self.pattern = config.pattern
        self.prefer = config.prefer
        self.dataset: DatasetInfo | None = REGISTRY.get(config.name) if config.known else None
        aliases = self.dataset.aliases if self.dataset is not None else ()
        self.prefixes: tuple[str, ...] = (config.prefix, *(a for a in aliases if a != config.prefix))
        self.allows_dirs = self.dataset is None or self.dataset.frames

    def __repr__(self) -> str:
        return f"UpstreamRule({self.name!r}, prefixes={self.prefixes!r}, root={self.root!r})"

    def match(self, path: str) -> tuple[str, str] | None:
        """``(prefix, rest)`` when ``path`` lies strictly below one of this rule's prefixes."""
        for prefix in self.prefixes:
            if path.startswith(prefix + "/") and len(path) > len(prefix) + 1:
                return prefix, path[len(prefix) + 1 :]
        return None

    def candidates(self, rest: str) -> list[str]:
        """Relative paths under ``root`` to try, in order."""
        if self.pattern is not None:
            return [self.pattern.replace("{rest}", rest)]
        rules = self.dataset.candidates if self.dataset is not None else None
        return rules(rest) if rules is not None else [rest]

    def expected(self, path: str) -> list[str]:
        """The local paths where ``path`` would be looked for (for guidance)."""
        matched = self.match(path)
        if matched is None:
            return []
        return [os.path.join(self.root, c) for c in self.candidates(matched[1])]

    def extras(self) -> Extras | None:
        if self.pattern is not None or self.dataset is None:
            template = self.pattern or "{rest}"
            head, _, tail = template.partition("{rest}")
            if head and not head.endswith("/"):
                return None  # "foo{rest}": no directory to enumerate
            return Extras((head.rstrip("/"),), None, re.compile(r".+"), suffix=tail)
        return self.dataset.extras


# --------------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """A regular file under a root that serves annotation path ``path``."""

    path: str
    rule: str
    real_path: str
    size: int
    root_real: str

    def ref(self) -> UpstreamRef:
        return UpstreamRef(self.rule, self.real_path, self.size, self.root_real)


@dataclass(frozen=True, slots=True)
class UpstreamDir:
    """A directory under a root (llava_hound frames) served as ``path``: ``files`` are (name, real, size)."""

    path: str
    rule: str
    real_path: str
    files: tuple[tuple[str, str, int], ...]
    root_real: str

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.files)


@dataclass
class Resolution:
    """What the upstream roots hold, for the wanted paths and beyond."""

    files: dict[str, UpstreamFile] = field(default_factory=dict)
    dirs: dict[str, UpstreamDir] = field(default_factory=dict)
    extras: dict[str, UpstreamFile] = field(default_factory=dict)  # upstream files no wanted path names
    escaped: dict[str, str] = field(default_factory=dict)  # wanted path -> the refused real path
    escaped_by_rule: Counter[str] = field(default_factory=Counter)
    # wanted path -> a directory where it could be that the daemon may not list (EACCES to readers)
    denied: dict[str, str] = field(default_factory=dict)
    denied_dirs: set[str] = field(default_factory=set)  # every directory the daemon could not list
    stats_calls: int = 0
    # every directory listed (or found absent), by real path, with its mtime (None: absent): a mount snapshot
    # built from this resolution stays valid while these are unchanged (vfs.tree.snapshot)
    listed: dict[str, int | None] = field(default_factory=dict)

    def note_listed(self, real_dir: str) -> None:
        try:
            self.listed[real_dir] = os.stat(real_dir).st_mtime_ns
        except OSError:
            self.listed[real_dir] = None

    def found(self, path: str) -> UpstreamFile | UpstreamDir | None:
        return self.files.get(path) or self.dirs.get(path) or self.extras.get(path)


_ESCAPED = "escaped"
_UNLISTED = object()


@dataclass(frozen=True, slots=True)
class _Listing:
    real_dir: str
    entries: dict[str, os.DirEntry[str]]
    inside: bool  # the resolved directory lies inside the root


class _Scanner:
    """Blocking directory listings under one root, each directory resolved and listed once."""

    def __init__(self, rule: UpstreamRule, resolution: Resolution) -> None:
        self.rule = rule
        self.res = resolution
        self._dirs: dict[str, _Listing | None] = {}
        self._denied: dict[str, str] = {}  # relative directory -> its real path, for listings refused
        self._denied_logged = False

    def denied(self, rel: str) -> str | None:
        """The directory the daemon was refused while looking for ``rel`` (its folder, or ``rel`` itself
        as a directory of frames), or None."""
        return self._denied.get(rel.rpartition("/")[0]) or self._denied.get(rel)

    def listing(self, rel_dir: str) -> _Listing | None:
        """The entries of ``root/rel_dir`` by name, or None when it is not a listable directory."""
        cached = self._dirs.get(rel_dir, _UNLISTED)
        if cached is not _UNLISTED:
            return cached  # type: ignore[return-value]
        result: _Listing | None = None
        real_dir = os.path.realpath(os.path.join(self.rule.root_real, rel_dir))
        self.res.stats_calls += 1
        self.res.note_listed(real_dir)  # before the listing: a change during it invalidates the snapshot
        try:
            with os.scandir(real_dir) as it:
                # A directory outside the root is listed only to tell "refused" from "absent" in guidance.
                result = _Listing(real_dir, {e.name: e for e in it}, inside(real_dir, self.rule.root_real))
        except (FileNotFoundError, NotADirectoryError):
            result = None
        except PermissionError as exc:
            self.res.denied_dirs.add(real_dir)
            self._denied[rel_dir] = real_dir
            if not self._denied_logged:
                self._denied_logged = True
                log.warning(
                    "%s upstream: cannot list %s: %s; its files are not served. Give the daemon "
                    "CAP_DAC_READ_SEARCH (the shipped systemd unit does), or run it as a user in the "
                    "directory's group",
                    self.rule.name,
                    real_dir,
                    exc.strerror,
                )
            result = None
        self._dirs[rel_dir] = result
        return result

    def entry(self, rel: str) -> tuple[str, os.stat_result] | str | None:
        """``(real path, stat)`` of ``root/rel`` (symlinks followed), ``_ESCAPED`` or None."""
        folder, _, name = rel.rpartition("/")
        listed = self.listing(folder)
        if listed is None:
            return None
        entry = listed.entries.get(name)
        if entry is None:
            return None
        if not listed.inside:
            return _ESCAPED
        return self.resolve_entry(listed.real_dir, entry)

    def resolve_entry(
        self, real_dir: str, entry: os.DirEntry[str]
    ) -> tuple[str, os.stat_result] | str | None:
        """``(real path, stat)`` of an entry listed in the resolved directory ``real_dir`` (in the root)."""
        self.res.stats_calls += 1
        try:
            if entry.is_symlink():
                real = os.path.realpath(os.path.join(real_dir, entry.name))
                if not inside(real, self.rule.root_real):
                    return _ESCAPED
                return real, os.stat(real)
            return os.path.join(real_dir, entry.name), entry.stat(follow_symlinks=False)
        except OSError:
            return None  # vanished or unreadable between the listing and the stat

    def file(self, rel: str) -> UpstreamFile | str | None:
        hit = self.entry(rel)
        if hit is None or isinstance(hit, str):
            return hit
        real, st = hit
        if not stat.S_ISREG(st.st_mode):
            return None
        return UpstreamFile("", self.rule.name, real, st.st_size, self.rule.root_real)

    def directory(self, rel: str) -> UpstreamDir | str | None:
        hit = self.entry(rel)
        if hit is None or isinstance(hit, str):
            return hit
        real, st = hit
        if not stat.S_ISDIR(st.st_mode):
            return None
        listed = self.listing(rel)
        if listed is None or not listed.inside:
            return None
        files: list[tuple[str, str, int]] = []
        for name in sorted(listed.entries):
            if name.startswith("."):
                continue
            child = self.file(f"{rel}/{name}" if rel else name)
            if isinstance(child, UpstreamFile):
                files.append((name, child.real_path, child.size))
        if not files:
            return None
        return UpstreamDir("", self.rule.name, real, tuple(files), self.rule.root_real)

    def walk_files(self, top: str, depth: int | None) -> Iterator[tuple[str, UpstreamFile]]:
        """``(path below top, file)`` for the regular files under ``root/top``, breadth first, to ``depth``
        levels. Not cached (a custom root may hold millions of files); symlinks are resolved and checked."""
        start = self.listing(top)
        if start is None or not start.inside:
            return
        queue: deque[tuple[str, str, int]] = deque([("", start.real_dir, 1)])
        seen = 0
        while queue:
            rel, real_dir, level = queue.popleft()
            self.res.note_listed(real_dir)
            try:
                with os.scandir(real_dir) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > MAX_EXTRA_ENTRIES:
                    log.warning(
                        "%s upstream: stopped listing %s after %d entries; "
                        "upstream-only files beyond are not shown",
                        self.rule.name,
                        self.rule.root,
                        MAX_EXTRA_ENTRIES,
                    )
                    return
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)  # a real directory: inside its parent
                except OSError:
                    continue
                if is_dir:
                    if depth is None or level < depth:
                        queue.append((child, os.path.join(real_dir, entry.name), level + 1))
                    continue
                hit = self.resolve_entry(real_dir, entry)
                if hit is None or isinstance(hit, str) or not stat.S_ISREG(hit[1].st_mode):
                    continue
                yield child, UpstreamFile("", self.rule.name, hit[0], hit[1].st_size, self.rule.root_real)


class Upstreams:
    """The configured upstream entries; ``resolve`` maps wanted paths to the files their roots hold."""

    def __init__(self, configs: Iterable[UpstreamConfig]) -> None:
        self.rules: tuple[UpstreamRule, ...] = tuple(UpstreamRule(c) for c in configs)
        # Longest prefix first; a configured prefix beats a built-in alias of the same length.
        self._by_prefix: list[tuple[str, int, UpstreamRule]] = sorted(
            ((p, i, r) for r in self.rules for i, p in enumerate(r.prefixes)),
            key=lambda item: (-len(item[0]), item[1]),
        )

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(self, path: str) -> tuple[UpstreamRule, str] | None:
        """The rule whose prefix (longest first) ``path`` lies below, with the rest of the path."""
        for prefix, _, rule in self._by_prefix:
            if path.startswith(prefix + "/") and len(path) > len(prefix) + 1:
                return rule, path[len(prefix) + 1 :]
        return None

    def covers(self, path: str) -> UpstreamRule | None:
        """The rule whose prefix ``path`` is, or lies below."""
        for prefix, _, rule in self._by_prefix:
            if under(path, prefix):
                return rule
        return None

    def resolve(self, wanted: Iterable[str], *, extras: bool = True) -> Resolution:
        """Blocking: find each wanted path under its root, then list upstream-only files. Thread only."""
        res = Resolution()
        scanners = {rule.name: _Scanner(rule, res) for rule in self.rules}
        wanted_set: set[str] = set()
        for path in wanted:
            wanted_set.add(path)
            matched = self.rule_for(path)
            if matched is None:
                continue
            rule, rest = matched
            scanner = scanners[rule.name]
            denied: str | None = None
            for candidate in rule.candidates(rest):
                hit: UpstreamFile | UpstreamDir | str | None = scanner.file(candidate)
                if hit is None and rule.allows_dirs:
                    hit = scanner.directory(candidate)
                if hit is None:
                    denied = denied or scanner.denied(candidate)
                    continue
                if isinstance(hit, str):
                    res.escaped.setdefault(path, os.path.join(rule.root, candidate))
                    res.escaped_by_rule[rule.name] += 1
                    continue
                if isinstance(hit, UpstreamFile):
                    res.files[path] = UpstreamFile(path, hit.rule, hit.real_path, hit.size, hit.root_real)
                else:
                    res.dirs[path] = UpstreamDir(path, hit.rule, hit.real_path, hit.files, hit.root_real)
                res.escaped.pop(path, None)
                break
            else:
                if denied is not None and path not in res.escaped:
                    res.denied[path] = denied
        if extras:
            for rule in self.rules:
                self._extras(rule, scanners[rule.name], wanted_set, res)
        for name, count in sorted(res.escaped_by_rule.items()):
            log.warning(
                "%s upstream: %d entries under %s resolve (through symlinks) outside the root; refused",
                name,
                count,
                next(r.root for r in self.rules if r.name == name),
            )
        return res

    def _extras(self, rule: UpstreamRule, scanner: _Scanner, wanted: set[str], res: Resolution) -> None:
        spec = rule.extras()
        if spec is None:
            return
        for folder in spec.folders:
            listed = scanner.listing(folder)
            if listed is None or not listed.inside:
                continue
            for rel, hit in scanner.walk_files(folder, spec.depth):
                if spec.suffix:
                    if not rel.endswith(spec.suffix) or len(rel) == len(spec.suffix):
                        continue
                    rest = rel[: -len(spec.suffix)]
                else:
                    rest = rel
                if not spec.rest_re.fullmatch(rest):
                    continue
                path = f"{rule.prefixes[0]}/{rest}"
                if path in wanted or path in res.extras:
                    continue
                owner = self.rule_for(path)
                if owner is None or owner[0] is not rule:
                    continue  # a more specific entry owns this path
                res.extras[path] = UpstreamFile(path, hit.rule, hit.real_path, hit.size, hit.root_real)
            return  # only the first folder that exists


# --------------------------------------------------------------------------------------------- serving


class UpstreamAccessError(VfsError):
    """An upstream file that cannot be opened as catalogued; carries the errno of the cause."""

    log_level = logging.WARNING

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class UpstreamReadError(UpstreamAccessError):
    """A read of an open upstream file failed (the reader gets the cause's errno, usually EIO)."""

    log_level = logging.ERROR


class DaemonCannotRead(UpstreamAccessError):
    """The daemon itself may not open an upstream file (EACCES for the caller). Logged as a WARNING the
    first time per path, with the fix; at DEBUG after that, so a data loader's retries do not flood."""

    _warned: ClassVar[set[str]] = set()

    def __init__(self, real_path: str) -> None:
        super().__init__(
            f"the daemon may not read {real_path}: give it CAP_DAC_READ_SEARCH (the shipped systemd unit "
            "does; docs/cluster.md, 'Multi-user nodes'), or run it as a user in the file's group",
            _errno.EACCES,
        )
        if real_path in self._warned:
            self.log_level = logging.DEBUG
        else:
            self._warned.add(real_path)


class UpstreamVanished(NotFound):
    """An upstream file that was there at start-up and is gone now (ENOENT)."""

    log_level = logging.WARNING


class UpstreamChanged(RemoteChanged):
    """An upstream file whose size changed since start-up: its ``st_size`` would lie (ESTALE)."""

    log_level = logging.WARNING


def open_checked(real_path: str, root_real: str, size: int, caller: Caller | None = None) -> int:
    """Blocking: open an upstream file read-only, re-checking that it is the regular file that was
    resolved at start-up, inside its root, with the same size, and, for a ``caller`` (an ``allow_other``
    mount), that they could open it at its real path. Returns the fd (caller closes it)."""
    try:
        # O_NOFOLLOW: the resolved path has no symlink as its last component; one swapped in since is refused.
        # O_NONBLOCK: a FIFO swapped in cannot hang the open.
        fd = os.open(real_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UpstreamVanished(f"{real_path} vanished from its upstream root since start-up") from None
    except OSError as exc:
        if exc.errno == _errno.ELOOP:
            raise UpstreamAccessError(
                f"{real_path} became a symlink since start-up; refused", _errno.EACCES
            ) from None
        if exc.errno in (_errno.EACCES, _errno.EPERM):
            raise DaemonCannotRead(real_path) from None
        raise UpstreamAccessError(f"{real_path}: {exc.strerror}", exc.errno or _errno.EIO) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UpstreamAccessError(f"{real_path} is no longer a regular file; refused", _errno.EACCES)
        if root_real:
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if not inside(opened, root_real):
                raise UpstreamAccessError(
                    f"{real_path} now resolves to {opened}, outside the root {root_real}; refused",
                    _errno.EACCES,
                )
        if st.st_size != size:
            raise UpstreamChanged(
                f"{real_path} changed size since start-up ({size} -> {st.st_size} bytes); restart the mount"
            )
        if caller is not None and root_real:
            check_real_chain(real_path, root_real, caller, owner_of(st))
    except BaseException:
        os.close(fd)
        raise
    return fd


class UpstreamHandle(FdHandle):
    """``FdHandle`` whose read errors keep their errno (EIO from a failing disk) instead of a traceback."""

    def __init__(self, fd: int, ref: UpstreamRef, limiter: trio.CapacityLimiter) -> None:
        super().__init__(fd, ref.size, limiter)
        self._path = ref.real_path

    async def read(self, offset: int, size: int) -> bytes:
        try:
            return await super().read(offset, size)
        except OSError as exc:
            raise UpstreamReadError(
                f"{self._path}: read failed: {exc.strerror}", exc.errno or _errno.EIO
            ) from None


async def open_upstream(
    ref: UpstreamRef, limiter: trio.CapacityLimiter, caller: Caller | None = None
) -> UpstreamHandle:
    """Open an upstream file for one handle (the open and its checks run in a worker thread)."""
    fd = await trio.to_thread.run_sync(
        open_checked, ref.real_path, ref.root, ref.size, caller, limiter=limiter
    )
    return UpstreamHandle(fd, ref, limiter)


async def open_local(ref: LocalFileRef, limiter: trio.CapacityLimiter) -> FdHandle:
    """Open one of the daemon's own derived files (published before the mount started)."""
    fd = await trio.to_thread.run_sync(open_checked, ref.path, "", ref.size, limiter=limiter)
    return FdHandle(fd, ref.size, limiter)
