"""The layer contracts in pyproject.toml hold for vfs/, and `lint-imports` fails on an import that points
up a layer or closes a circle (checked on a copy of vfs/ with one such import added)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's vfs/ before the installed one
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "lint-imports"),
            "--no-cache",
            "--config",
            str(root / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
    )


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(REPO_ROOT / "vfs", root / "vfs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_its_contracts(tmp_path: Path) -> None:
    done = lint_imports(copy_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        ("errors.py", "from vfs import daemon", "Layers only point down"),  # the bottom importing the top
        ("targz/zran.py", "from vfs.targz import shard_index", "No import cycles inside a package"),
    ],
    ids=["upward", "circle"],
)
def test_an_upward_import_or_a_circle_fails(tmp_path: Path, module: str, added: str, broken: str) -> None:
    root = copy_tree(tmp_path)
    path = root / "vfs" / module
    path.write_text(path.read_text() + f"\n{added}  # noqa\n")
    done = lint_imports(root)
    assert done.returncode != 0
    assert f"{broken} BROKEN" in done.stdout, done.stdout
