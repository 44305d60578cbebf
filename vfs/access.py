"""Who may read what: the owner and mode each entry shows, and the caller's check against an upstream
file's real path. The rules and why they hold: docs/design.md, "Permissions"; what they mean for a lab:
docs/cluster.md, "Multi-user nodes and licensed datasets".

Everything here that touches the disk or ``/proc`` blocks: callers run it in a worker thread.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from vfs.errors import PermissionDenied

log = logging.getLogger(__name__)

R_OK, X_OK = 0o4, 0o1


@dataclass(frozen=True, slots=True)
class Owner:
    """The owner, group and permission bits (no file type) an entry shows."""

    uid: int
    gid: int
    mode: int


# What an upstream entry shows while the daemon cannot stat its real path: nobody but root gets in, and
# opening it tells the caller why (EACCES, or ENOENT for a file that vanished).
UNREADABLE = Owner(0, 0, 0)


@dataclass(frozen=True, slots=True)
class HubOwnership:
    """``[mount] uid, gid, file_mode, dir_mode``, resolved: what every non-upstream entry shows."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int

    def of(self, is_dir: bool) -> Owner:
        return Owner(self.uid, self.gid, self.dir_mode if is_dir else self.file_mode)


@dataclass(frozen=True, slots=True)
class Caller:
    """The process behind a FUSE request (pyfuse3's ``RequestContext``: uid, gid, pid)."""

    uid: int
    gid: int
    pid: int


def real_owner(real_path: str) -> Owner:
    """Blocking: the owner and mode of a real path, or ``UNREADABLE`` when it cannot be stat'ed now."""
    try:
        st = os.stat(real_path)
    except OSError as exc:
        log.debug("stat %s: %s; shown as unreadable", real_path, exc.strerror)
        return UNREADABLE
    return owner_of(st)


def owner_of(st: os.stat_result) -> Owner:
    return Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def groups_of(caller: Caller) -> frozenset[int]:
    """Blocking: the caller's primary and supplementary groups, from ``/proc/<pid>/status``.

    FUSE passes only uid, gid and pid. A process that is gone, or a pid this namespace cannot see, leaves
    just the primary group: the check can then only be stricter than the kernel's, never looser."""
    groups = {caller.gid}
    try:
        with open(f"/proc/{caller.pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass
    return frozenset(groups)


def permits(owner: Owner, uid: int, groups: frozenset[int], want: int) -> bool:
    """The kernel's rule for owner, group and other bits (no ACLs): the first class that matches decides."""
    if uid == owner.uid:
        bits = owner.mode >> 6
    elif owner.gid in groups:
        bits = owner.mode >> 3
    else:
        bits = owner.mode
    return bits & want == want


def check_real_chain(real_path: str, root: str, caller: Caller, file_owner: Owner) -> None:
    """Blocking: raise ``PermissionDenied`` unless ``caller`` could open ``real_path`` for reading directly:
    search permission on every directory from ``root`` down to the file's own, read permission on the file
    (whose ``file_owner`` the caller has: the fstat of the fd it opened, so the file checked is that one).

    Root passes, as it does past the kernel's own check. The directories above ``root`` are not checked:
    the configured root is where the dataset's access rules start."""
    if caller.uid == 0:
        return
    groups = groups_of(caller)
    chain = [root]
    parent = os.path.dirname(real_path)
    if parent != root:
        for part in os.path.relpath(parent, root).split(os.sep):
            chain.append(os.path.join(chain[-1], part))
    for directory in chain:
        if not permits(_owner_or_deny(directory), caller.uid, groups, X_OK):
            raise PermissionDenied(f"uid {caller.uid} may not search {directory}")
    if not permits(file_owner, caller.uid, groups, R_OK):
        raise PermissionDenied(f"uid {caller.uid} may not read {real_path}")


def _owner_or_deny(path: str) -> Owner:
    owner = real_owner(path)
    if owner is UNREADABLE:
        raise PermissionDenied(f"{path} cannot be checked; refused")
    return owner
