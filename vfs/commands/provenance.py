"""``llava-vfs provenance``: for each wanted path, where it is served from, its dataset and its terms;
offline, from the catalog ``index`` wrote."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO

from vfs.catalog.catalog import load_catalog_offline
from vfs.config import Config
from vfs.refs import HubFileRef, MemberRef, UpstreamRef
from vfs.tree.availability import OTHER, compute_availability
from vfs.tree.reports import iter_provenance


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


def main(args: argparse.Namespace, config: Config) -> int:
    return run_provenance(config, as_json=args.json)
