"""systemd integration: the template unit passes ``systemd-analyze verify`` and runs the daemon the way
systemd expects; READY=1 and STOPPING=1 arrive on a real NOTIFY_SOCKET from the daemon's own pid; the
``allow_other`` pre-check for non-root users."""

from __future__ import annotations

import array
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from tests.mounting import REPO_ROOT, Mount, write_config
from vfs.cli import build_parser
from vfs.daemon import check_allow_other, sd_notify
from vfs.errors import ConfigError

UNIT = REPO_ROOT / "systemd" / "llava-vfs@.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key several times); comments and blanks skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, val = line.partition("=")
        current.setdefault(key.strip(), []).append(val.strip())
    return sections


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    units = sorted((REPO_ROOT / "systemd").glob("*.service"))
    assert UNIT in units
    for unit in units:
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert unit.name.split("@")[0] not in result.stderr, result.stderr  # no warning about our unit
    # an instance (what `systemctl start llava-vfs@cluster` loads) verifies as well
    instance = tmp_path / "llava-vfs@cluster.service"
    shutil.copy(UNIT, instance)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_runs_the_daemon_the_way_systemd_expects() -> None:
    unit = parse_unit(UNIT)
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    # configuration mistakes (exit 2 and 3, see vfs.errors.ConfigError) are not retried
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}
    assert "/dev/fuse rw" in unit["Service"]["DeviceAllow"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # nothing that gives the service its own mount namespace: the FUSE mount would be invisible outside it
    namespacing = {
        "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "ReadWritePaths",
        "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
        "ProtectProc", "ProcSubset", "RootDirectory", "RootImage", "MountFlags", "PrivateUsers",
    }  # fmt: skip
    assert not namespacing & set(service), namespacing & set(service)
    assert service.get("NoNewPrivileges") == "yes"
    # mount(2), and reading every upstream file a permitted user may read (the open checks the user)
    assert service["CapabilityBoundingSet"] == "CAP_SYS_ADMIN CAP_DAC_READ_SEARCH"

    # ExecStart, with the instance and the environment substituted, is a valid `llava-vfs mount` command line
    env = dict(e.replace("%i", "cluster").split("=", 1) for e in unit["Service"]["Environment"])
    argv = shlex.split(service["ExecStart"].replace("%i", "cluster"))
    assert argv[:2] == ["/usr/bin/env", "llava-vfs"]
    argv = [env.get(a[2:-1], a) if a.startswith("${") else a for a in argv[2:]]
    args = build_parser().parse_args(argv)
    assert args.command == "mount" and args.config == "/etc/llava-vfs/cluster.toml"
    assert args.mountpoint == "/mnt/llava-vfs/cluster"


def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # learn the sender's pid, as systemd does
    sock.bind(path)
    sock.settimeout(60)
    return sock


def _receive(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and the pid that sent it."""
    creds = struct.calcsize("3i")
    msg, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
    pid = -1
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = array.array("i", data[:creds])[0]
    return msg, pid


@pytest.mark.fuse
def test_ready_and_stopping_arrive_on_the_notify_socket(tmp_path: Path, small_notify_repo) -> None:
    notify_path = str(tmp_path / "notify.sock")
    sock = _listen(notify_path)
    cfg = write_config(
        tmp_path / "c.toml",
        endpoint=small_notify_repo.endpoint,
        repo="org/notify",
        cache_dir=tmp_path / "cache",
    )
    mnt = tmp_path / "mnt"
    received: list[tuple[bytes, int, bool]] = []

    def listen() -> None:
        for _ in range(2):
            msg, pid = _receive(sock)
            # what a unit ordered After= this one would see at that moment
            received.append((msg, pid, os.path.ismount(mnt) and (mnt / "README.md").exists()))

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        with Mount(cfg, mnt, env={"NOTIFY_SOCKET": notify_path}) as m:
            assert m.proc is not None
            daemon_pid = m.proc.pid
            deadline = 100
            while not received and deadline:
                threading.Event().wait(0.1)
                deadline -= 1
            assert received and received[0] == (b"READY=1", daemon_pid, True)
        listener.join(timeout=30)
        assert len(received) == 2
        assert received[1][:2] == (b"STOPPING=1", daemon_pid)
        assert m.exit_code == 0
    finally:
        sock.close()
        listener.join(timeout=5)


@pytest.fixture
def small_notify_repo(tmp_path: Path):
    from vfs.hub.emulator import HubEmulator

    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("# notify test\n")
    with HubEmulator(repo_id="org/notify") as emu:
        emu.commit(root)
        yield emu


@pytest.mark.allow_log(r"could not notify systemd")
def test_sd_notify_abstract_sockets_and_a_missing_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"llava-vfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    sd_notify("STOPPING=1")  # a warning, never an exception: the filesystem keeps serving
    monkeypatch.delenv("NOTIFY_SOCKET")
    sd_notify("READY=1")  # not under systemd: nothing to do


def test_allow_other_for_non_root_needs_user_allow_other(tmp_path: Path) -> None:
    conf = tmp_path / "fuse.conf"
    for text in ("", "# user_allow_other\n", "mount_max = 1000\n"):
        conf.write_text(text)
        with pytest.raises(ConfigError) as info:
            check_allow_other(True, euid=1000, fuse_conf=conf)
        assert (
            info.value.exit_code == 5
            and "user_allow_other" in str(info.value)
            and str(conf) in str(info.value)
        )
    with pytest.raises(ConfigError):
        check_allow_other(True, euid=1000, fuse_conf=tmp_path / "missing.conf")
    conf.write_text("mount_max = 1000\nuser_allow_other  # for llava-vfs\n")
    check_allow_other(True, euid=1000, fuse_conf=conf)
    check_allow_other(True, euid=0, fuse_conf=tmp_path / "missing.conf")  # root needs no permission
    check_allow_other(False, euid=1000, fuse_conf=tmp_path / "missing.conf")


def test_sigterm_is_what_the_unit_sends() -> None:
    # the daemon unmounts on SIGTERM (tests/mount/test_mount.py); the unit must send exactly that
    unit = parse_unit(UNIT)
    assert signal.Signals[unit["Service"]["KillSignal"][-1]] == signal.SIGTERM
    assert unit["Service"]["KillMode"] == ["mixed"]
