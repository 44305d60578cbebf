"""``llava-vfs coverage`` and ``llava-vfs provenance``: the reports of ``vfs.tree``, offline, from the
catalog ``index`` wrote."""

from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING

from vfs.catalog.catalog import load_catalog_offline
from vfs.config import Config
from vfs.refs import HubFileRef, MemberRef, UpstreamRef
from vfs.tree.availability import (
    OTHER,
    compute_availability,
)
from vfs.tree.reports import (
    coverage_report,
    iter_provenance,
    render_coverage_table,
)

if TYPE_CHECKING:
    pass


__all__ = [
    "run_coverage",
    "run_provenance",
]


def run_coverage(config: Config, *, as_json: bool, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    av = compute_availability(config, load_catalog_offline(config))
    report = coverage_report(av)
    if as_json:
        out.write(json.dumps(report, indent=1, sort_keys=False) + "\n")
    else:
        out.write(render_coverage_table(report))
    return 0


def run_provenance(config: Config, *, as_json: bool, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    av = compute_availability(config, load_catalog_offline(config))
    if as_json:
        # Streamed item by item: the full dataset has about 180K wanted paths.
        out.write(json.dumps({"repo": av.catalog.repo, "commit": av.catalog.commit})[:-1] + ', "paths": [\n')
        for i, item in enumerate(iter_provenance(av)):
            out.write(("" if i == 0 else ",\n") + json.dumps(item, sort_keys=True))
        out.write("\n]}\n")
        return 0
    out.write("path\tsource\tfrom\tdataset\tterms\n")
    for item in iter_provenance(av):
        if item["source"] == MemberRef.kind:
            origin = f"{item['shard']}#{item['member']}@{item['offset']}"
        elif item["source"] == UpstreamRef.kind:
            origin = str(item.get("upstream_file") or item.get("upstream_dir"))
        elif item["source"] == HubFileRef.kind:
            origin = str(item["hub_file"])
        else:
            origin = f"{item['reason']}: {item['guidance']}"
        out.write(
            f"{item['path']}\t{item['source']}\t{origin}\t"
            f"{item['dataset'] or OTHER}\t{item['terms'] or '-'}\n"
        )
    return 0
