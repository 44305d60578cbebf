"""The filesystem logic, testable without the kernel.

``FsCore`` answers lookup, getattr, readdir, open, read, release and extended attributes over an
immutable tree (a ``NamespaceView``: in memory, or a mount snapshot loaded lazily) and the ``Sources``
that serve bytes. It returns domain objects (``Node``, ``bytes``) and raises ``vfs.errors`` types; the
pyfuse3 adapter (``vfs.fuse_ops``) converts both and is the one error boundary.

Its invariants: docs/design.md, "The core".
"""

from __future__ import annotations

import errno as _errno
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import trio

from vfs.access import Caller, HubOwnership, Owner, real_owner
from vfs.errors import IsADirectory, NoAttribute, NotFound, PermissionDenied, ReadOnly
from vfs.guidance import REASON_UNREADABLE
from vfs.refs import UpstreamDirRef, UpstreamRef
from vfs.sources.base import Handle
from vfs.sources.opener import Sources
from vfs.tree.namespace import NamespaceView, Node

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
XATTR_SOURCE = "user.vfs.source"
XATTR_CACHED = "user.vfs.cached"


@dataclass
class CoreStats:
    lookups: int = 0
    getattrs: int = 0
    misses: int = 0
    opens: int = 0
    reads: int = 0
    bytes_served: int = 0
    errors: Counter[str] = field(default_factory=Counter)


# Told every lookup miss; returns why the path is absent (``vfs.guidance`` REASON_*), or None.
MissListener = Callable[[str], str | None]


class FsCore:
    def __init__(
        self,
        namespace: NamespaceView,
        sources: Sources,
        *,
        on_miss: MissListener | None = None,
        ownership: HubOwnership | None = None,
        check_callers: bool = False,
    ) -> None:
        """``ownership``: what non-upstream entries show (default: the daemon's ids, 0o444 and 0o555).
        ``check_callers``: an ``allow_other`` mount, whose upstream opens check the caller's access to
        the real path; a single-user mount leaves that to the daemon's own open (``vfs.access``)."""
        self.ns = namespace
        self.sources = sources
        self.ownership = ownership or HubOwnership(os.getuid(), os.getgid(), 0o444, 0o555)
        self.check_callers = check_callers
        self._hub_owners = (self.ownership.of(True), self.ownership.of(False))  # shared by every entry
        self.stats = CoreStats()
        self._on_miss = on_miss
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    # -- metadata -----------------------------------------------------------------------------------
    def node(self, ino: int) -> Node:
        node = self.ns.get(ino)
        if node is None:
            raise NotFound(f"no inode {ino}")
        return node

    def getattr(self, ino: int) -> Node:
        self.stats.getattrs += 1
        return self.node(ino)

    def lookup(self, parent_ino: int, name: str) -> Node:
        self.stats.lookups += 1
        parent = self.node(parent_ino)
        child = self.ns.child(parent, name)
        if child is None:
            self.stats.misses += 1
            if self._on_miss is not None:
                parent_path = self.ns.path_of(parent)
                path = f"{parent_path}/{name}" if parent_path else name
                if self._on_miss(path) == REASON_UNREADABLE:
                    # the daemon may not look where it would be: a reader is denied, not told it is absent
                    raise PermissionDenied(path)
            raise NotFound(name)
        return child

    def readdir(self, ino: int, start: int) -> Iterator[tuple[str, Node, int]]:
        """Entries from offset ``start``; each with the offset of the next one (stable sorted order)."""
        return self.ns.entries(self.node(ino), start)

    def setting_owner(self, node: Node) -> Owner | None:
        """The owner a node shows without looking at the disk (the ``[mount]`` setting), or None for an
        upstream entry, whose owner ``owners`` must stat."""
        if isinstance(node.ref, UpstreamRef | UpstreamDirRef):
            return None
        return self._hub_owners[0] if node.is_dir else self._hub_owners[1]

    async def owners(self, nodes: Sequence[Node]) -> list[Owner]:
        """What each node shows as owner, group and mode. Upstream entries are stat'ed at their real path,
        all of them in one worker-thread call; the rest cost nothing."""
        owners = [self.setting_owner(node) for node in nodes]
        real = [
            (i, ref.real_path)
            for i, node in enumerate(nodes)
            if isinstance(ref := node.ref, UpstreamRef | UpstreamDirRef)
        ]
        if real:

            def stat_all() -> list[Owner]:
                return [real_owner(path) for _, path in real]

            found = await trio.to_thread.run_sync(stat_all, limiter=self.sources.disk_limiter)
            for (i, _), owner in zip(real, found, strict=True):
                owners[i] = owner
        return cast(list[Owner], owners)  # every None was an upstream entry, now stat'ed

    # -- data ---------------------------------------------------------------------------------------
    async def open(self, ino: int, flags: int, caller: Caller | None = None) -> tuple[int, Handle]:
        node = self.node(ino)
        if flags & WRITE_FLAGS:
            raise ReadOnly(self.ns.path_of(node))
        if node.is_dir:
            raise IsADirectory(self.ns.path_of(node))
        handle = await self.sources.open(self.ns.ref_of(node), caller if self.check_callers else None)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        self.stats.opens += 1
        return fh, handle

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise NotFound(f"no open file handle {fh}")
        data = await handle.read(offset, size)
        self.stats.reads += 1
        self.stats.bytes_served += len(data)
        return data

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            await handle.close()

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    # -- extended attributes ------------------------------------------------------------------------
    def listxattr(self, ino: int) -> list[str]:
        node = self.node(ino)
        return [] if node.is_dir else [XATTR_SOURCE, XATTR_CACHED]

    async def getxattr(self, ino: int, name: str) -> bytes:
        node = self.node(ino)
        if node.is_dir:
            raise NoAttribute(name)
        if name == XATTR_SOURCE:
            ref = self.ns.ref_of(node)
            return (ref.source if ref is not None else "unknown").encode()
        if name == XATTR_CACHED:
            cached = await trio.to_thread.run_sync(
                self.sources.is_cached, self.ns.ref_of(node), limiter=self.sources.disk_limiter
            )
            return b"1" if cached else b"0"
        raise NoAttribute(name)

    def record_error(self, errno: int) -> None:
        self.stats.errors[_errno.errorcode.get(errno, str(errno))] += 1
