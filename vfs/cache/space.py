"""The free space of the filesystem under the local cache, as a limit the cache keeps (``[cache]
min_free``), estimated between ``statvfs`` calls.

A training node's cache disk is shared with checkpoints and logs that fill it while ``max_size`` is far
from reached (mountpoint-s3 keeps a share of the disk free for the same reason; rclone has
``--vfs-cache-min-free-space``). The store asks this class, under its own lock, how many bytes it must
evict before writing an entry; the answer is an estimate (the last ``statvfs`` less what the store has
written since), refreshed at most every ``CHECK_EVERY_BYTES`` written and whenever the estimate says
space is short, so that a cache hit never pays for a system call and a shortage is never acted on
without looking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from vfs.config import MinFree

log = logging.getLogger("vfs.cache.store")

# statvfs at most once per this many bytes written (and whenever the estimate says space is short).
CHECK_EVERY_BYTES = 8 << 20


class DiskSpace:
    """Free space under ``root`` and the limit ``min_free`` on it. Not thread-safe: the store calls it
    under its lock."""

    def __init__(
        self,
        root: Path,
        min_free: MinFree,
        *,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self._root = root
        self._statvfs = statvfs
        st = statvfs(root)
        self.filesystem_bytes = st.f_blocks * st.f_frsize
        self.min_free_bytes = min_free.of(self.filesystem_bytes)
        self.free_bytes = st.f_bavail * st.f_frsize  # the estimate; see the module docstring
        self._written_since_check = 0

    def refresh(self) -> int:
        """Look again (one ``statvfs``); the free bytes. A filesystem that cannot answer keeps the
        estimate: the writes themselves then tell (ENOSPC)."""
        try:
            st = self._statvfs(self._root)
        except OSError as exc:
            log.debug("cache: statvfs of %s failed: %s", self._root, exc)
            return self.free_bytes
        self.free_bytes = st.f_bavail * st.f_frsize
        self._written_since_check = 0
        return self.free_bytes

    def shortfall(self, incoming: int) -> int:
        """Bytes to free before writing ``incoming`` more keeps ``min_free`` free (0: none)."""
        short = self.min_free_bytes + incoming - self.free_bytes
        if short > 0 or self._written_since_check >= CHECK_EVERY_BYTES:
            short = self.min_free_bytes + incoming - self.refresh()
        return max(0, short)

    def written(self, size: int) -> None:
        """``size`` bytes are (about to be) written: the estimate goes down by as much."""
        self.free_bytes -= size
        self._written_since_check += size

    def freed(self, size: int) -> None:
        """``size`` bytes were evicted; they come back once unlinked (and closed by any reader)."""
        self.free_bytes += size
