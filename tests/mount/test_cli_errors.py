"""The bad-config matrix through the real entry points: ``llava-vfs mount``,
``llava-vfs index`` and ``python mount.py``, each a subprocess.

Every user mistake must give ONE line on stderr (``llava-vfs: error: ...`` naming the file and the key),
the exit code documented in README.md "Exit codes" (``vfs.errors.ConfigError``), no traceback, and leave
nothing behind: no mount, no cache directory, nothing written into the mountpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ID
from tests.mounting import REPO_ROOT, Mount, _env
from tests.reliability import indexed_cache, write_cfg

LLAVA_VFS = str(Path(sys.executable).parent / "llava-vfs")
ENTRY_POINTS = {
    "llava-vfs mount": lambda cfg, mnt: [LLAVA_VFS, "mount", "--config", str(cfg), str(mnt)],
    "llava-vfs index": lambda cfg, mnt: [LLAVA_VFS, "index", "--config", str(cfg), "--no-progress"],
    "python mount.py": lambda cfg, mnt: [
        sys.executable,
        str(REPO_ROOT / "mount.py"),
        "--config",
        str(cfg),
        str(mnt),
    ],
}


@dataclass(frozen=True)
class Case:
    name: str
    config: str  # TOML text; {cache} and {tmp} are filled in
    exit_code: int
    says: str  # a fragment the one line must contain
    mount_only: bool = False
    mountpoint: str = "mnt"  # relative to the case directory
    everywhere: bool = True  # through all three entry points, else through `llava-vfs mount` only


def _hub(endpoint: str) -> str:
    return f'[hub]\nrepo = "{REPO_ID}"\nendpoint = "{endpoint}"\n'


def cases(endpoint: str) -> list[Case]:
    hub = _hub(endpoint)
    cache = '[cache]\ndir = "{cache}"\n'
    return [
        Case("unknown key", hub + "bogus_key = 1\n" + cache, 2, "hub.bogus_key: unknown key"),
        Case(
            "unknown section",
            hub + cache + "[mounts]\nviews = []\n",
            2,
            "mounts: unknown section",
            everywhere=False,
        ),
        Case("bad size", hub + cache + 'max_size = "10 parsecs"\n', 2, "cache.max_size"),
        Case(
            "ambiguous size",
            hub + cache + 'max_size = "10G"\n',
            2,
            "cache.max_size: ambiguous unit",
            everywhere=False,
        ),
        Case("negative size", hub + cache + "block_size = -5\n", 2, "cache.block_size", everywhere=False),
        Case("invalid TOML", hub + cache + 'max_size = "1GiB\n', 2, "invalid TOML"),
        Case("not UTF-8", hub + cache + "# caf\xe9\n", 2, "invalid TOML", everywhere=False),
        Case(
            "bad retry key",
            hub.replace("\n", "\nmax_retries = -1\n", 1) + cache,
            2,
            "hub.max_retries",
            everywhere=False,
        ),
        Case(
            "missing upstream root",
            hub + cache + '[[upstream]]\nname = "charades"\nroot = "{tmp}/no/such/root"\n',
            3,
            "upstream[1].root",
        ),
        Case(
            "upstream root is a file",
            hub + cache + '[[upstream]]\nname = "charades"\nroot = "{tmp}/a_file"\n',
            3,
            "is not a directory",
            everywhere=False,
        ),
        Case("cache dir under a file", hub + '[cache]\ndir = "{tmp}/a_file/cache"\n', 3, "cache.dir"),
        Case(
            "cache dir is a file", hub + '[cache]\ndir = "{tmp}/a_file"\n', 3, "cache.dir", everywhere=False
        ),
        Case("mountpoint missing", hub + cache, 3, "does not exist", mount_only=True, mountpoint="nope"),
        Case(
            "mountpoint is a file", hub + cache, 3, "is not a directory", mount_only=True, mountpoint="a_file"
        ),
    ]


@dataclass
class Outcome:
    argv: list[str]
    code: int
    stdout: str
    stderr: str


def run(argv: list[str]) -> Outcome:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=_env(None))
    return Outcome(argv, done.returncode, done.stdout, done.stderr)


def check_one_line(out: Outcome, code: int, says: str) -> None:
    where = f"{out.argv[1:3]}: exit {out.code}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    assert out.code == code, where
    assert "Traceback" not in out.stderr + out.stdout, where
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith("llava-vfs: error: "), where
    assert says in lines[0], where


def test_bad_config_matrix_one_line_documented_code_nothing_created(tmp_path, hub) -> None:
    jobs: list[tuple[Case, str, Path, list[str]]] = []
    for case in cases(hub.endpoint):
        for entry, argv in ENTRY_POINTS.items():
            if case.mount_only and entry == "llava-vfs index":
                continue
            if not case.everywhere and entry != "llava-vfs mount":
                continue
            work = tmp_path / f"{case.name}-{entry}".replace(" ", "_").replace(".", "_")
            work.mkdir()
            (work / "mnt").mkdir()
            (work / "a_file").write_text("not a directory\n")
            cfg = work / "c.toml"
            text = case.config.replace("{cache}", str(work / "cache")).replace("{tmp}", str(work))
            cfg.write_bytes(text.encode("latin-1"))
            jobs.append((case, entry, work, argv(cfg, work / case.mountpoint)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, [argv for *_, argv in jobs]))
    for (case, entry, work, _), out in zip(jobs, outcomes, strict=True):
        check_one_line(out, case.exit_code, case.says)
        assert not (work / "cache").exists(), f"{case.name} via {entry} created the cache dir"
        assert not os.path.ismount(work / "mnt") and os.listdir(work / "mnt") == [], (case.name, entry)
        assert sorted(os.listdir(work)) == ["a_file", "c.toml", "mnt"], (case.name, entry)


def test_missing_config_file_and_usage_errors(tmp_path) -> None:
    for argv in (
        [LLAVA_VFS, "mount", "--config", str(tmp_path / "none.toml"), str(tmp_path)],
        [sys.executable, str(REPO_ROOT / "mount.py"), "--config", str(tmp_path / "none.toml"), str(tmp_path)],
        [LLAVA_VFS, "index", "--config", str(tmp_path / "none.toml")],
    ):
        check_one_line(run(argv), 2, "cannot read config file")
    usage = run([sys.executable, str(REPO_ROOT / "mount.py")])  # no mountpoint: argparse's usage error
    assert usage.code == 2 and "Traceback" not in usage.stderr and "usage:" in usage.stderr


@pytest.mark.fuse
def test_busy_mountpoint_and_read_only_cache_dir(tmp_path, hub) -> None:
    """A mountpoint something is mounted on (5); a cache dir on a read-only file system (3)."""
    cache_dir = indexed_cache(tmp_path.parent, hub.endpoint, REPO_ID, tmp_path / "cache")
    cfg = write_cfg(tmp_path / "c.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=cache_dir)
    with Mount(cfg, tmp_path / "mnt", allow_log=(r"skipped video", r"records skipped")) as m:
        before = sorted(os.listdir(m.mountpoint))
        for entry in ("llava-vfs mount", "python mount.py"):
            out = run(ENTRY_POINTS[entry](cfg, m.mountpoint))
            check_one_line(out, 5, "is busy")
        ro = write_cfg(
            tmp_path / "ro.toml", endpoint=hub.endpoint, repo=REPO_ID, cache_dir=m.mountpoint / "cache"
        )  # the read-only mount itself
        for argv in ENTRY_POINTS.values():
            check_one_line(run(argv(ro, tmp_path / "mnt2")), 3, "cache.dir")
        assert sorted(os.listdir(m.mountpoint)) == before  # still serving, nothing written into it
    assert m.exit_code == 0


def test_hub_unreachable_at_start_is_exit_4(tmp_path) -> None:
    """A valid config whose Hub cannot be reached: one line and exit 4, within the retry deadline."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = write_cfg(
        tmp_path / "c.toml",
        endpoint=dead,
        repo=REPO_ID,
        cache_dir=tmp_path / "cache",
        hub_keys="max_retries = 2\nretry_deadline_s = 1.0\nconnect_timeout_s = 1.0\n",
    )
    (tmp_path / "mnt").mkdir()
    for argv in ENTRY_POINTS.values():
        out = run(argv(cfg, tmp_path / "mnt"))
        # The daemon's own log lines (start-up, one WARNING per retry) go to stderr as well; the error
        # itself is one line, the last one, and there is no traceback.
        assert out.code == 4 and "Traceback" not in out.stderr, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("llava-vfs: error: ")]
        assert len(errors) == 1 and "cannot reach the Hub" in errors[0], out.stderr
        assert out.stderr.strip().splitlines()[-1] == errors[0]
        assert not os.path.ismount(tmp_path / "mnt")
