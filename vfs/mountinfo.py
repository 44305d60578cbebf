"""The mounts of this process's mount namespace, from ``/proc/self/mountinfo`` (proc(5)).

One parser for the daemon (which device its own mount is, to tune the kernel) and ``prefetch`` (which
llava-vfs mounts run). Never touches a mountpoint: a FUSE mount whose daemon is not serving yet would hang
a stat of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")  # the kernel writes space, tab, newline and backslash as \ooo


@dataclass(frozen=True, slots=True)
class MountInfo:
    device: tuple[int, int]  # (major, minor)
    mountpoint: str
    fstype: str  # e.g. "fuse.llava-vfs"


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def mounts(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """Every mount, in the kernel's order (a later entry for a mountpoint is mounted over an earlier one).
    Unreadable or malformed input gives what could be read."""
    found: list[MountInfo] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                pre, sep, post = line.partition(" - ")
                fields = pre.split()
                if not sep or len(fields) < 5:
                    continue
                try:
                    major, minor = (int(n) for n in fields[2].split(":"))
                except ValueError:
                    continue
                fstype = post.split(" ", 1)[0]
                found.append(MountInfo((major, minor), _unescape(fields[4]), fstype))
    except OSError:
        pass
    return found
