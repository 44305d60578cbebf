"""``llava-vfs coverage``: wanted, available and missing videos per directory, source and dataset; the
report of ``vfs.tree``, offline, from the catalog ``index`` wrote."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO

from vfs.catalog.catalog import load_catalog_offline
from vfs.config import Config
from vfs.tree.availability import compute_availability
from vfs.tree.reports import coverage_report, render_coverage_table


def run_coverage(config: Config, *, as_json: bool, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    av = compute_availability(config, load_catalog_offline(config))
    report = coverage_report(av)
    if as_json:
        out.write(json.dumps(report, indent=1, sort_keys=False) + "\n")
    else:
        out.write(render_coverage_table(report))
    return 0


def main(args: argparse.Namespace, config: Config) -> int:
    return run_coverage(config, as_json=args.json)
