"""Typed errors shared by every layer.

Each error that can reach a filesystem call carries the errno the kernel should see and the log level
the single error boundary (``vfs.fuse_ops``) logs it at. Start-up mistakes are ``ConfigError``s with a
documented exit code: the CLI prints one line and exits, never a traceback.
"""

from __future__ import annotations

import errno as _errno
import logging


class VfsError(Exception):
    """An expected failure of a filesystem operation."""

    errno: int = _errno.EIO
    log_level: int = logging.ERROR


class NotFound(VfsError):
    """The path does not exist in this view (ENOENT)."""

    errno = _errno.ENOENT
    log_level = logging.DEBUG


class NotADirectory(VfsError):
    errno = _errno.ENOTDIR
    log_level = logging.DEBUG


class IsADirectory(VfsError):
    errno = _errno.EISDIR
    log_level = logging.DEBUG


class ReadOnly(VfsError):
    """Any mutation of the read-only view (EROFS)."""

    errno = _errno.EROFS
    log_level = logging.DEBUG


class PermissionDenied(VfsError):
    """The caller may not read this (EACCES): a normal answer on a multi-user node, logged at DEBUG."""

    errno = _errno.EACCES
    log_level = logging.DEBUG


class NoAttribute(VfsError):
    """An extended attribute that the file does not have (ENODATA)."""

    errno = _errno.ENODATA
    log_level = logging.DEBUG


class RemoteChanged(VfsError):
    """The remote no longer matches what was pinned (ESTALE)."""

    errno = _errno.ESTALE
    log_level = logging.ERROR


class IntegrityError(VfsError):
    """Bytes failed a length or checksum check; they are never served (EIO)."""

    errno = _errno.EIO
    log_level = logging.ERROR


class FetchError(VfsError):
    """The remote could not deliver the bytes within the retry budget (EIO)."""

    errno = _errno.EIO
    log_level = logging.ERROR


class ConfigError(Exception):
    """A user mistake found at start-up: one line on stderr and ``exit_code``.

    Exit codes (documented in the README):
      2  usage or invalid configuration (unknown key, bad value, invalid TOML, unreadable file)
      3  a configured path is unusable (missing upstream root, unwritable cache dir, bad mountpoint)
      4  the Hub refused or could not be reached at start-up (repo, revision, token, network)
      5  the mount itself failed (FUSE unavailable, mountpoint busy)
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exception_leaves(exc: BaseException) -> list[BaseException]:
    """The plain exceptions inside (possibly nested) exception groups; ``[exc]`` for a plain one."""
    leaves: list[BaseException] = []
    pending = [exc]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(reversed(item.exceptions))
        else:
            leaves.append(item)
    return leaves


def typed_error(exc: BaseException) -> VfsError | None:
    """The one error a caller should see behind a nursery's exception group, or None.

    Only a group made of ``VfsError``s qualifies (anything else, cancellation included, must keep
    propagating as it is). A ``FetchError`` wins: when a download fails, the consumer of its stream
    complains too, but the download's failure is the cause.
    """
    leaves = exception_leaves(exc)
    typed = [leaf for leaf in leaves if isinstance(leaf, VfsError)]
    if not leaves or len(typed) != len(leaves):
        return None
    return next((leaf for leaf in typed if isinstance(leaf, FetchError)), typed[0])


NO_SPACE_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT})
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL ("database or disk is full"): the lowest layer does not load sqlite3


def no_space_error(exc: BaseException) -> BaseException | None:
    """The out-of-space error behind ``exc`` (in a group, or as a cause), or None: an ``OSError`` with
    ENOSPC or EDQUOT, or SQLite's "database or disk is full"."""
    seen: set[int] = set()
    pending = exception_leaves(exc)
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno in NO_SPACE_ERRNOS:
            return item
        if getattr(item, "sqlite_errorcode", None) == _SQLITE_FULL:
            return item
        for linked in (item.__cause__, item.__context__):
            if linked is not None:
                pending.extend(exception_leaves(linked))
    return None
