"""Test helpers: write configs, run the daemon as a subprocess, wait for the mount, unmount cleanly.

The daemon runs in its own process (as users run it): the test process makes ordinary syscalls on the
mount, the emulator runs in the test process's threads, and the daemon's stderr is checked against the
log contract (no unexpected WARNING or worse) when the mount is stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_config(
    path: Path,
    *,
    endpoint: str,
    repo: str,
    cache_dir: Path,
    extra: str = "",
    block_size: str = "8MiB",
    max_size: str = "10GiB",
    revision: str = "main",
    min_free: str = "0",
) -> Path:
    """A config for tests. ``min_free`` is 0 unless a test sets it, so that no count of cache hits depends
    on the free space of the machine that runs the suite."""
    path.write_text(
        f'[hub]\nrepo = "{repo}"\nendpoint = "{endpoint}"\nrevision = "{revision}"\n\n'
        f'[cache]\ndir = "{cache_dir}"\nblock_size = "{block_size}"\nmax_size = "{max_size}"\n'
        f'min_free = "{min_free}"\n\n{extra}'
    )
    return path


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``llava-vfs`` in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "vfs.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=_env(env),
    )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env.update(extra or {})
    return env


LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+): (.*)$")


class Mount:
    """``with Mount(config, mountpoint) as m:`` runs ``llava-vfs mount`` until the block ends."""

    def __init__(
        self,
        config: Path,
        mountpoint: Path,
        *,
        allow_log: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 60.0,
        check_log: bool = True,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``prefix``: a command the daemon runs under, e.g. ``setpriv --bounding-set ...`` (it must exec
        the daemon in its own process, so signals reach it)."""
        self.config = config
        self.prefix = prefix
        self.mountpoint = mountpoint
        self.allow_log = allow_log
        self.env = env
        self.ready_timeout_s = ready_timeout_s
        self.check_log = check_log
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = mountpoint.parent / f"{mountpoint.name}.daemon.log"
        self.exit_code: int | None = None

    def start(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "vfs.cli",
                "--log-level",
                "DEBUG",
                "mount",
                "--config",
                str(self.config),
                str(self.mountpoint),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO_ROOT,
            env=_env(self.env),
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mount not ready after {self.ready_timeout_s}s:\n{self.log()}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        self._log.close()
        self.exit_code = self.proc.returncode
        return self.exit_code

    def unexpected_log_lines(self) -> list[str]:
        bad = []
        for line in self.log().splitlines():
            m = LOG_LINE.match(line)
            if (
                m
                and m.group(2).startswith("vfs")
                and not any(re.search(p, m.group(3)) for p in self.allow_log)
            ):
                bad.append(line)
        return bad

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        code = self.stop()
        if exc_type is None:
            assert code == 0, f"daemon exited with {code}:\n{self.log()}"
            if self.check_log:
                bad = self.unexpected_log_lines()
                assert not bad, "unexpected WARNING+ lines in the daemon log:\n" + "\n".join(bad)
