"""``python -m bench.run``: run the benchmark suite and write bench/RESULTS.md (see bench/README.md).

Options: ``--quick`` (smaller data, fewer repetitions: a few minutes), ``--only NAME,...`` (a subset of
the benchmarks), ``--repo DIR`` (run the headline checks on an existing repo directory instead of generated
data), ``--out PATH`` (default bench/RESULTS.md), ``--work DIR`` (scratch space, default
/var/tmp/llava-vfs-bench; generated data is kept in ``DIR/data`` and reused by later runs).
Needs root and FUSE, like the mount itself; drops the page cache (``/proc/sys/vm/drop_caches``) as root.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench import common
from bench.report import Report

BENCHMARKS = ("headline", "cold", "indexpass", "concurrency", "peers", "scale")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few repetitions")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--repo", type=Path, help="an existing repo directory for the headline checks")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/llava-vfs-bench"))
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test's size
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    if args.repo is not None and not args.only:
        names = ["headline"]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    report = Report(args.out, mode=mode)
    data_dir = args.work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        work = args.work / f"run-{os.getpid()}"
        t0 = time.monotonic()
        print(f"[bench] {name} ...", flush=True)
        try:
            kwargs = {"quick": args.quick or args.tiny}
            if args.tiny:
                kwargs["tiny"] = True
            if name == "headline" and args.repo is not None:
                kwargs["repo_dir"] = args.repo
            module.run(report, work, data_dir, **kwargs)
        except Exception:
            failures += 1
            sec = report.section(f"{name}: FAILED")
            Report.text(sec, "```\n" + traceback.format_exc()[-3000:] + "\n```")
            traceback.print_exc()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"[bench] {name} done in {time.monotonic() - t0:.0f}s", flush=True)
        report.write()
    if common.DAEMON_PROBLEMS:
        sec = report.section("Daemon errors during the run")
        Report.text(sec, "```\n" + "\n".join(common.DAEMON_PROBLEMS[:20]) + "\n```")
        failures += 1
    report.write()
    for c in report.checks:
        print(f"[bench] {'ok    ' if c.ok else 'MISSED'} {c.name}: {c.value:.3g}{c.unit} (goal {c.target:g})")
    print(f"[bench] wrote {args.out}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
