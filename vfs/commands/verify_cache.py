"""``llava-vfs verify-cache``: check every local cache entry offline and quarantine the bad ones.

Exit 0: every entry is good (or there is no cache); 1: corrupt entries were found and quarantined; 3: the
cache is in use by a running mount (which verifies its entries itself) or is unusable.
"""

from __future__ import annotations

import argparse

from vfs.cache.store import CacheStore
from vfs.commands.output import human_size
from vfs.config import Config
from vfs.layout import CacheLayout


def main(args: argparse.Namespace, config: Config) -> int:
    layout = CacheLayout(config.cache.dir)
    if not layout.data.is_dir():
        print(f"no cache at {layout.data}: nothing to check")
        return 0
    with CacheStore(layout.data, max_size_bytes=config.cache.max_size_bytes) as store:
        report = store.verify_all()
    checked = report.ok + report.corrupt
    print(
        f"checked {checked} cache entries in {layout.data}: "
        f"{report.ok} good ({human_size(report.ok_bytes)}), "
        f"{report.corrupt} corrupt, {report.orphan_temp_files} leftover temp files removed"
    )
    for label, problem in report.problems:
        print(f"corrupt: {label}: {problem} (moved to {layout.data / 'quarantine'}; refetched on next use)")
    return 0 if report.corrupt == 0 else 1
