"""The benchmark harness at a tiny size, so ``make bench`` cannot rot. No timing assertions, ever: only
that every benchmark ran, wrote its section and its target checks, and left no mount behind."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.mounting import REPO_ROOT

pytestmark = pytest.mark.fuse


@pytest.mark.timeout(600)
def test_bench_harness_runs_end_to_end_at_tiny_size(tmp_path: Path) -> None:
    import importlib.util
    import subprocess

    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--tiny",
            "--only",
            "headline,cold,indexpass,concurrency,scale",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for title in ("## Headline", "## A large shard", "## Concurrency", "## Scale", "## Targets"):
        assert title in text, title
    assert "FAILED" not in text
    results = json.loads((tmp_path / "results.json").read_text())
    names = {c["name"] for c in results["checks"]}
    assert any(n.startswith("time to first video vs download-and-untar (small") for n in names)
    assert any(n.startswith("cached reads vs native disk") for n in names)
    assert any(n.startswith("hot re-reads vs native") for n in names)
    assert all(c["value"] == c["value"] for c in results["checks"]), "a NaN measurement"
    if importlib.util.find_spec("matplotlib") is not None:  # plots are skipped without the bench extra
        assert (tmp_path / "plots" / "headline.png").stat().st_size > 0
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read(), "a benchmark left a mount behind"
    assert any(os.scandir(tmp_path / "work" / "data")), "generated data is kept for reruns"


@pytest.mark.timeout(300)
def test_bench_headline_runs_on_a_given_repo_shaped_like_the_dataset(tmp_path: Path, demo) -> None:  # type: ignore[no-untyped-def]
    """``--repo DIR``: the demo repo (annotations, hostile names, a two-stream shard) measured as given."""
    import subprocess

    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--repo", str(demo.root), "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert f"the given repo `{demo.root}`" in text
    assert "**Time to first video**" in text and "## Targets" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["checks"]) == 4
    assert all(c["value"] == c["value"] for c in results["checks"]), "a NaN measurement"
