"""``llava-vfs hub-emulator``: serve a directory as a dataset repo until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

from vfs.errors import ConfigError
from vfs.hub.emulator.app import HubEmulator


def serve_forever(
    root: Path,
    repo_id: str,
    *,
    port: int,
    cdn_port: int,
    lfs_threshold_bytes: int,
    host: str = "127.0.0.1",
    cdn_bytes_per_s: float | None = None,
) -> None:
    """Commit ``root``, serve it, print one ready line, and block until SIGINT or SIGTERM; then stop cleanly.

    Must run on the main thread (it installs signal handlers, and restores the previous ones on return).
    """

    if not Path(root).is_dir():
        raise ConfigError(f"hub emulator root {root} is not a directory", exit_code=3)
    emulator = HubEmulator(
        repo_id,
        lfs_threshold_bytes=lfs_threshold_bytes,
        host=host,
        port=port,
        cdn_port=cdn_port,
        max_records=10_000,
        cdn_bytes_per_s=cdn_bytes_per_s,
    )
    sha = emulator.commit(Path(root))
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emulator.start()
        except OSError as exc:
            raise ConfigError(
                f"hub emulator cannot listen on {host}:{port}/{cdn_port}: {exc}", exit_code=3
            ) from exc
        print(f"hub emulator: HF_ENDPOINT={emulator.endpoint} repo={repo_id} commit={sha}", flush=True)
        while not stop_requested.wait(0.5):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
