"""The thin pyfuse3 adapter: converts between the kernel's view and ``FsCore``, and is the one error boundary.

Every handler goes through ``_boundary``: an expected ``VfsError`` becomes its errno (logged at the
error's own level; also when a nursery wrapped it in an exception group), any other exception is logged
once with its traceback and becomes EIO, so no exception ever reaches pyfuse3 (which would tear the whole
mount down). Cancellation passes through.

Kernel caching: immutable content, so files are opened with ``keep_cache`` and entries and attributes
carry long timeouts; a lookup miss returns a *negative entry* (inode 0 with an entry timeout) so the
kernel answers repeated misses itself instead of asking the daemon every time.

Extended attributes are never cached by the kernel, and each daemon round trip costs ~150 us of pyfuse3
and trio overhead, so the answers are chosen for what callers cache: names outside the ``user.``
namespace (``security.selinux``, ``system.posix_acl_*``, which ``ls -l`` asks of every entry) are
EOPNOTSUPP, which GNU ls remembers per device; with ``[mount] xattrs = false`` getxattr and listxattr
answer ENOSYS once and the kernel answers every later call itself.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import pyfuse3

from vfs.access import Caller, Owner
from vfs.core import FsCore
from vfs.errors import VfsError, typed_error
from vfs.tree.namespace import Node

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
READDIR_BATCH = 32  # upstream entries stat'ed together: about what one readdirplus reply of 4 KiB holds


def _boundary(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as exc:
            self.core.record_error(exc.errno)
            raise
        except VfsError as exc:
            self.core.record_error(exc.errno)
            log.log(exc.log_level, "%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception as exc:
            expected = _expected_error(exc)
            if expected is not None:  # a typed error that a nursery wrapped in a group
                self.core.record_error(expected.errno)
                log.log(expected.log_level, "%s: %s", fn.__name__, expected)
                raise pyfuse3.FUSEError(expected.errno) from None
            self.core.record_error(errno.EIO)
            log.exception("unexpected error in %s%r; answering EIO", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _expected_error(exc: Exception) -> VfsError | None:
    """The typed error behind an exception group of nothing but ``VfsError``s, else None."""
    return typed_error(exc) if isinstance(exc, ExceptionGroup) else None


def _read_only(name: str) -> Any:  # Any: it stands in for handlers of every signature
    async def refuse(self: Operations, *args: Any) -> Any:
        self.core.record_error(errno.EROFS)
        raise pyfuse3.FUSEError(errno.EROFS)

    refuse.__name__ = name
    return refuse


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        core: FsCore,
        *,
        entry_timeout_s: float = 300.0,
        attr_timeout_s: float = 300.0,
        negative_timeout_s: float = 60.0,
        mtime_ns: int = 0,
        xattrs: bool = True,
    ) -> None:
        super().__init__()
        self.core = core
        self._entry_timeout = entry_timeout_s
        self._attr_timeout = attr_timeout_s
        self._negative_timeout = negative_timeout_s
        self._mtime_ns = mtime_ns
        self._xattrs = xattrs

    def _attr(self, node: Node, owner: Owner) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        if node.is_dir:
            attr.st_mode = stat.S_IFDIR | owner.mode
            attr.st_nlink = 2
        else:
            attr.st_mode = stat.S_IFREG | owner.mode
            attr.st_nlink = 1
        attr.st_size = node.size
        attr.st_blksize = 1 << 20
        attr.st_blocks = (node.size + 511) // 512
        attr.st_uid = owner.uid
        attr.st_gid = owner.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._mtime_ns
        attr.entry_timeout = self._entry_timeout
        attr.attr_timeout = self._attr_timeout
        return attr

    async def _attr_of(self, node: Node) -> pyfuse3.EntryAttributes:
        (owner,) = await self.core.owners([node])
        return self._attr(node, owner)

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if name == b".":
            return await self._attr_of(self.core.node(parent_inode))
        if name == b"..":
            return await self._attr_of(self.core.node(self.core.node(parent_inode).parent))
        try:
            node = self.core.lookup(parent_inode, os.fsdecode(name))
        except VfsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self._negative_timeout
            return negative
        return await self._attr_of(node)

    @_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return await self._attr_of(self.core.getattr(inode))

    @_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self.core.node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # One entry at a time until the kernel's buffer is full, as the entries are produced; an upstream
        # entry and the ones after it are stat'ed together, in one worker-thread call (the entries of that
        # batch that no longer fit come again in the kernel's next readdir).
        entries = self.core.readdir(fh, start_id)
        for name, node, next_id in entries:
            owner = self.core.setting_owner(node)
            if owner is not None:
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(node, owner), next_id):
                    return
                continue
            batch = [(name, node, next_id), *itertools.islice(entries, READDIR_BATCH - 1)]
            owners = await self.core.owners([entry for _, entry, _ in batch])
            for (name_, node_, next_), owner_ in zip(batch, owners, strict=True):
                if not pyfuse3.readdir_reply(token, os.fsencode(name_), self._attr(node_, owner_), next_):
                    return

    async def releasedir(self, fh: int) -> None:
        return None

    @_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh, handle = await self.core.open(inode, flags, Caller(ctx.uid, ctx.gid, ctx.pid))
        return pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache, direct_io=handle.direct_io)

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.core.read(fh, off, size)

    @_boundary
    async def release(self, fh: int) -> None:
        await self.core.release(fh)

    async def flush(self, fh: int) -> None:
        # ENOSYS once tells the kernel never to send FLUSH again: a read-only file has nothing to flush, and
        # every close() would otherwise wait for a round trip to the daemon (bench/RESULTS.md).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def forget(self, inode_list: Any) -> None:
        return None  # inodes are immutable for the life of the mount

    @_boundary
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self.core.node(inode)
        return not (mode & os.W_OK)

    def _xattrs_off(self) -> NoReturn:
        # ENOSYS makes the kernel set no_getxattr/no_listxattr for this mount: every later call fails with
        # EOPNOTSUPP in the kernel itself, so this runs once per mount and operation.
        self.core.record_error(errno.ENOSYS)
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not self._xattrs:
            self._xattrs_off()
        # `ls -l` asks every entry for security.selinux and system.posix_acl_access, the kernel caches
        # neither answer, and each round trip costs ~150 us of pyfuse3/trio overhead. EOPNOTSUPP (this
        # namespace is not supported) rather than ENODATA (supported, absent): GNU ls then remembers the
        # device as unsupported and stops asking for the rest of the listing, while the kernel, which only
        # gives up on ENOSYS, keeps passing `user.vfs.*` through.
        if not name.startswith(b"user."):
            self.core.record_error(errno.EOPNOTSUPP)
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if not name.startswith(b"user.vfs."):
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self._getxattr(inode, name)

    @_boundary
    async def _getxattr(self, inode: int, name: bytes) -> bytes:
        return await self.core.getxattr(inode, os.fsdecode(name))

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if not self._xattrs:
            self._xattrs_off()
        return await self._listxattr(inode)

    @_boundary
    async def _listxattr(self, inode: int) -> list[bytes]:
        return [n.encode() for n in self.core.listxattr(inode)]

    @_boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        total = self.core.ns.total_bytes
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = (total + 4095) // 4096
        st.f_bfree = st.f_bavail = 0
        st.f_files = len(self.core.ns)
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    setattr = _read_only("setattr")
    mknod = _read_only("mknod")
    mkdir = _read_only("mkdir")
    unlink = _read_only("unlink")
    rmdir = _read_only("rmdir")
    symlink = _read_only("symlink")
    rename = _read_only("rename")
    link = _read_only("link")
    write = _read_only("write")
    create = _read_only("create")
    setxattr = _read_only("setxattr")
    removexattr = _read_only("removexattr")
