"""Planning a mount: the availability, its reports and its derived ``.vfs/`` files, from which the daemon
(or ``index``, for the first mount) builds the tree and its snapshot. Blocking: worker threads in the daemon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vfs.catalog.catalog import CatalogData
from vfs.config import Config
from vfs.layout import CacheLayout
from vfs.refs import FileRef, LocalFileRef, json_file
from vfs.tree.availability import (
    Availability,
    compute_availability,
)
from vfs.tree.reports import (
    build_available_annotations,
    coverage_report,
    write_missing_tsv,
)

if TYPE_CHECKING:
    from vfs.refs import VirtualRef

log = logging.getLogger(__name__)

__all__ = [
    "MountPlan",
    "log_coverage",
    "plan_mount",
]


@dataclass
class MountPlan:
    """What a mount is built from: availability, the coverage report and the ``.vfs/`` entries."""

    availability: Availability
    report: dict[str, object]
    entries: dict[str, tuple[int, FileRef]]  # .vfs/ relative name -> (size, ref)
    complete: bool = True  # False when a derived file could not be written (full disk): do not persist


def plan_mount(config: Config, layout: CacheLayout, catalog: CatalogData) -> MountPlan:
    """Blocking (thread only): resolve upstreams, build the ``.vfs/`` reports and filtered annotations."""

    av = compute_availability(config, catalog)
    report = coverage_report(av)
    coverage_ref: VirtualRef = json_file(lambda: report)
    entries: dict[str, tuple[int, FileRef]] = {"coverage.json": (len(coverage_ref.render()), coverage_ref)}
    # The derived files are a convenience: a full disk must not keep the videos from being served.
    available: dict[str, LocalFileRef] = {}
    complete = True
    try:
        available = build_available_annotations(av, layout)
        missing = write_missing_tsv(av, layout.annotations / "reports")
        entries["missing.tsv"] = (missing.size, missing)
    except OSError as exc:
        complete = False
        log.error("could not write .vfs/missing.tsv or .vfs/available/ under %s: %s", layout.annotations, exc)
    for repo_path, ref in available.items():
        entries[f"available/{repo_path}"] = (ref.size, ref)
    return MountPlan(av, report, entries, complete)


def log_coverage(report: dict[str, object], config: Config) -> None:
    """The one INFO line a mount logs about what it serves."""
    total = report["total"]
    reasons = report["missing_by_reason"]
    assert isinstance(total, dict) and isinstance(reasons, dict)
    log.info(
        "coverage: %d wanted, %d available, %d missing (%s); upstream roots: %s",
        total["wanted"],
        total["available"],
        total["missing"],
        ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none",
        ", ".join(f"{u.name}={u.root}" for u in config.upstreams) or "none",
    )
