"""Shared fixtures.

The log contract: a test fails if any ``vfs`` logger emits WARNING or worse that the test did not
declare with ``@pytest.mark.allow_log(r"regex", ...)``. Degradations must be visible, and a test that
provokes one must say so.
"""

from __future__ import annotations

import logging
import re

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_log(*patterns): WARNING+ log messages matching any regex are expected"
    )


@pytest.fixture(autouse=True)
def log_contract(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="vfs")
    yield
    patterns = [p for m in request.node.iter_markers("allow_log") for p in m.args]
    unexpected = [
        r
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)
        if r.levelno >= logging.WARNING
        and r.name.startswith("vfs")
        and not any(re.search(p, r.getMessage()) for p in patterns)
    ]
    if unexpected:
        lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in unexpected[:20])
        pytest.fail(f"unexpected WARNING+ log records (declare with @pytest.mark.allow_log):\n{lines}")


REPO_ID = "lmms-lab/LLaVA-Video-178K"


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The generated demo dataset (real mp4s in tar.gz shards), built once per test session."""
    from vfs.demo.dataset import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "repo")


@pytest.fixture(scope="session")
def _session_hub(demo):
    from vfs.hub.emulator import HubEmulator

    with HubEmulator(repo_id=REPO_ID, tree_page_size=50) as emu:
        emu.commit(demo.root)
        yield emu


@pytest.fixture
def hub(_session_hub):
    """The session's Hub emulator serving the demo repo, with a clean request log and no faults."""
    _session_hub.clear_faults()
    _session_hub.reset_log()
    yield _session_hub
    _session_hub.clear_faults()


@pytest.fixture(scope="session")
def indexed_demo_cache(tmp_path_factory: pytest.TempPathFactory, demo, _session_hub):
    """A cache dir holding the demo's catalog and shard indexes (no video): copy it, never modify it."""
    import trio

    from tests.mounting import write_config
    from vfs.commands.index import index_async
    from vfs.config import load_config

    work = tmp_path_factory.mktemp("indexed-demo")
    cfg = write_config(
        work / "t.toml", endpoint=_session_hub.endpoint, repo=REPO_ID, cache_dir=work / "cache"
    )
    logging.disable(logging.WARNING)  # the demo's hostile records are expected; no test's subject here
    try:
        trio.run(lambda: index_async(load_config(cfg), jobs=2, progress=False))
    finally:
        logging.disable(logging.NOTSET)
    return work / "cache"


@pytest.fixture
def no_machine_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub client passes token=None to huggingface_hub's lookup: keep a developer's own token out of
    tests that talk to the emulator (``pytestmark = pytest.mark.usefixtures("no_machine_token")``)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
