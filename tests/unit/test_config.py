"""Tests for vfs.config: defaults, the documented example, environment defaults, the bad-config matrix,
token redaction, the cache-writability check and the one-line CLI error edge."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfs.config import (
    DEFAULT_BLOCK_SIZE_BYTES,
    DEFAULT_MAX_SIZE_BYTES,
    KNOWN_UPSTREAMS,
    CacheConfig,
    Config,
    HubConfig,
    MetricsConfig,
    MinFree,
    MountConfig,
    UpstreamConfig,
    check_writable_cache,
    exit_on_config_error,
    load_config,
    parse_size,
)
from vfs.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.example.toml"
SECRET = "hf_SECRETtoken0123456789"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path: Path | None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    return info.value


# ------------------------------------------------------------------------------------------------ defaults


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, env={"HOME": str(tmp_path)})
    assert config.hub == HubConfig()
    assert config.hub.repo == "lmms-lab/LLaVA-Video-178K"
    assert config.hub.revision == "main"
    assert config.hub.endpoint == "https://huggingface.co"
    assert config.hub.token is None
    assert config.hub.offline is False
    assert config.hub.configs == ()
    assert config.cache == CacheConfig(dir=tmp_path / ".cache" / "llava-vfs")
    assert config.cache.max_size_bytes == 200 * 2**30 == DEFAULT_MAX_SIZE_BYTES
    assert config.cache.block_size_bytes == 8 * 2**20 == DEFAULT_BLOCK_SIZE_BYTES
    assert config.cache.shared_dir is None
    assert config.upstreams == ()
    assert config.mount == MountConfig()
    assert config.mount.views == ("merged", "repo")
    assert (config.mount.entry_timeout_s, config.mount.attr_timeout_s) == (300.0, 300.0)
    assert config.mount.negative_timeout_s == 60.0
    assert config.metrics == MetricsConfig(port=None, host="127.0.0.1")
    assert config.source is None


def test_empty_file_and_shipped_example_equal_defaults(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    defaults = load_config(None, env=env)
    empty = load_config(write(tmp_path, ""), env=env)
    shipped = load_config(EXAMPLE, env=env)
    assert empty.source == tmp_path / "config.toml"
    assert shipped.source == EXAMPLE
    for config in (empty, shipped):
        assert dataclasses.replace(config, source=None) == defaults


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(None, env={"HOME": str(tmp_path)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hub = HubConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cache.max_size_bytes = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ the example

# An example line is "# key = value" or "# [section]" / "# [[section]]"; prose never has that shape.
_EXAMPLE_LINE = re.compile(r"^# (\[\[?\w+\]\]?|\w+ = .*)$")


def uncommented_example(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """The shipped example with every example line uncommented and upstream roots pointed at temp dirs."""
    roots: dict[str, Path] = {}

    def fix_root(match: re.Match[str]) -> str:
        root = tmp_path / "roots" / Path(match[1]).name
        root.mkdir(parents=True)
        roots[match[1]] = root
        return f'root = "{root}"'

    lines = [m[1] if (m := _EXAMPLE_LINE.match(line)) else line for line in EXAMPLE.read_text().splitlines()]
    text = re.sub(r'^root = "([^"]+)"$', fix_root, "\n".join(lines) + "\n", flags=re.M)
    return write(tmp_path, text, "full.toml"), roots


def test_every_documented_key_is_parsed(tmp_path: Path) -> None:
    path, roots = uncommented_example(tmp_path)
    config = load_config(path, env={"HOME": str(tmp_path), "HF_TOKEN": "hf_from_env"})
    assert config.hub == HubConfig(
        repo="lmms-lab/LLaVA-Video-178K",
        revision="0123456789abcdef0123456789abcdef01234567",
        endpoint="http://127.0.0.1:8080",
        token="hf_example_not_a_real_token",
        configs=("0_30_s_academic_v0_1", "*_youtube_v0_1"),
        offline=True,
    )
    assert config.cache == CacheConfig(
        dir=Path("/var/cache/llava-vfs"),
        max_size_bytes=1_500_000_000_000,
        block_size_bytes=16 * 2**20,
        shared_dir=Path("/shared/llava-vfs-cache"),
        min_free=MinFree(bytes=20 * 2**30),
        uncached_max_bytes=4 * 2**30,
    )
    assert config.upstreams == (
        UpstreamConfig(name="charades", prefix="academic_source/Charades", root=roots["/data/charades"]),
        UpstreamConfig(
            name="nextqa_hub_layout",
            prefix="NextQA",
            root=roots["/data/nextqa"],
            pattern="videos/{rest}",
            prefer="shard",
        ),
    )
    assert config.upstreams[0].known and not config.upstreams[1].known
    assert config.mount == MountConfig(
        allow_other=True,
        views=("merged", "repo", "per_directory"),
        exclude=("ego4d",),
        entry_timeout_s=600.0,
        attr_timeout_s=600.0,
        negative_timeout_s=30.0,
        xattrs=False,
        uid=0,
        gid=2000,
        file_mode=0o440,
        dir_mode=0o550,
    )
    assert config.metrics == MetricsConfig(port=9108, host="0.0.0.0")


def test_example_documents_every_field_with_a_default(tmp_path: Path) -> None:
    """Each dataclass field has an example line (TOML names drop the `_bytes` suffix) and a Default note."""
    path, _ = uncommented_example(tmp_path)
    text = path.read_text()
    sections = {"hub": HubConfig, "cache": CacheConfig, "mount": MountConfig, "metrics": MetricsConfig}
    current = None
    seen: dict[str, set[str]] = {name: set() for name in [*sections, "upstream"]}
    for line in text.splitlines():
        if m := re.match(r"^\[\[?(\w+)\]\]?$", line):
            current = m[1]
        elif (m := re.match(r"^(\w+) = ", line)) and current is not None:
            seen[current].add(m[1])
    for name, cls in [*sections.items(), ("upstream", UpstreamConfig)]:
        fields = {f.name.removesuffix("_bytes") for f in dataclasses.fields(cls)}
        assert seen[name] == fields, name
    # One "Default" note per [hub]/[cache]/[mount]/[metrics] key (the three mount timeouts share one, and
    # so do the four hub retry/timeout keys, uid and gid, and the two modes), and the upstream keys other
    # than the required ones.
    assert len(re.findall(r"^# Defaults?:", EXAMPLE.read_text(), flags=re.M)) == 7 + 6 + 7 + 2
    for known, prefix in KNOWN_UPSTREAMS.items():
        assert re.search(rf"^#\s+{known}\s+{re.escape(prefix)}\b", EXAMPLE.read_text(), flags=re.M)


# ------------------------------------------------------------------------------------------------ environment


def test_env_defaults(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": "http://127.0.0.1:9999/mirror/",
        "HF_TOKEN": f" {SECRET}\n",
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }
    config = load_config(None, env=env)
    assert config.hub.endpoint == "http://127.0.0.1:9999/mirror"
    assert config.hub.token == SECRET
    assert config.hub.offline is True
    assert config.cache.dir == tmp_path / "xdg" / "llava-vfs"


@pytest.mark.parametrize(
    ("value", "offline"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("", False)],
)
def test_env_offline_truthiness(tmp_path: Path, value: str, offline: bool) -> None:
    config = load_config(None, env={"HOME": str(tmp_path), "HF_HUB_OFFLINE": value})
    assert config.hub.offline is offline


def test_env_relative_xdg_is_ignored_and_empty_token_is_unset(tmp_path: Path) -> None:
    config = load_config(None, env={"HOME": str(tmp_path), "XDG_CACHE_HOME": "rel/dir", "HF_TOKEN": "  "})
    assert config.cache.dir == tmp_path / ".cache" / "llava-vfs"
    assert config.hub.token is None


def test_file_values_override_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [hub]
        endpoint = "https://mirror.example/"
        token = "hf_fromfile"
        offline = false
        [cache]
        dir = "~/mycache"
        """,
    )
    env = {
        "HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": "http://127.0.0.1:1",
        "HF_TOKEN": "hf_fromenv",
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }
    config = load_config(path, env=env)
    assert config.hub.endpoint == "https://mirror.example"
    assert config.hub.token == "hf_fromfile"
    assert config.hub.offline is False
    assert config.cache.dir == tmp_path / "home" / "mycache"


def test_bad_env_endpoint_names_the_variable(tmp_path: Path) -> None:
    error = load_error(None, env={"HOME": str(tmp_path), "HF_ENDPOINT": "ftp://x"})
    assert error.exit_code == 2
    assert str(error).startswith("built-in defaults: hub.endpoint (from HF_ENDPOINT): ")


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "videos" / "charades").mkdir(parents=True)
    write(
        conf_dir,
        """
        [cache]
        dir = "cache"
        shared_dir = "../shared"
        [[upstream]]
        name = "charades"
        root = "videos/charades"
        """,
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(Path("etc/config.toml"), env={"HOME": str(tmp_path)})
    assert config.source == conf_dir / "config.toml"
    assert config.cache.dir == conf_dir / "cache"
    assert config.cache.shared_dir == conf_dir / "../shared"
    assert config.upstreams[0].root == conf_dir / "videos/charades"
    assert config.upstreams[0].prefix == KNOWN_UPSTREAMS["charades"]


def test_upstream_prefix_normalised_and_overridable(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    path = write(
        tmp_path,
        """
        [[upstream]]
        name = "activitynet"
        prefix = "ActivityNet-QA/"
        root = "r"
        """,
    )
    (upstream,) = load_config(path, env={}).upstreams
    assert upstream.prefix == "ActivityNet-QA"
    assert upstream.pattern is None and upstream.prefer == "upstream"


def test_hub_configs_glob_selection() -> None:
    hub = HubConfig(configs=("0_30_s_academic_v0_1", "*_youtube_v0_1"))
    assert hub.includes("0_30_s_academic_v0_1")
    assert hub.includes("2_3_m_youtube_v0_1")
    assert not hub.includes("1_2_m_academic_v0_1")
    assert HubConfig().includes("anything")


# ------------------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("value", "size_bytes"),
    [
        ("200GiB", 200 * 2**30),
        ("8MiB", 8 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("512KiB", 512 * 1024),
        ("4096", 4096),
        (4096, 4096),
        ("8mib", 8 * 2**20),
        ("2 TiB", 2 * 2**40),
        ("3kB", 3000),
        ("3KB", 3000),
        ("1.5KiB", 1536),
        ("7b", 7),
        ("1tb", 10**12),
    ],
)
def test_parse_size_accepts(value: str | int, size_bytes: int) -> None:
    assert parse_size(value, key="cache.max_size") == size_bytes


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "positive"),
        (0, "positive"),
        (-5, "positive"),
        ("-5MiB", "bad size"),
        ("lots", "bad size"),
        ("", "bad size"),
        ("12XB", "unknown unit"),
        ("8M", "ambiguous"),
        ("1.0001KB", "whole number"),
        (1.5, "got float"),
        (True, "got boolean"),
        ("99999999TiB", "implausibly large"),
    ],
)
def test_parse_size_rejects(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, key="cache.max_size")  # type: ignore[arg-type]
    assert info.value.exit_code == 2
    assert str(info.value).startswith("cache.max_size: ")
    assert problem in str(info.value)


# ------------------------------------------------------------------------------------------------ bad configs

BAD_CONFIGS = {
    "unknown key with suggestion": (
        '[cache]\nmax_sise = "1GiB"\n',
        "cache.max_sise",
        "did you mean 'max_size'",
    ),
    "unknown section": ("[mounts]\nallow_other = true\n", "mounts", "did you mean 'mount'"),
    "top-level key": ('repo = "a/b"\n[hub]\n', "repo", "did you mean hub.repo?"),
    "bad size": ('[cache]\nmax_size = "12 parsecs"\n', "cache.max_size", "unknown unit 'parsecs'"),
    "zero size": ("[cache]\nmax_size = 0\n", "cache.max_size", "positive"),
    "block not power of two": ('[cache]\nblock_size = "100KiB"\n', "cache.block_size", "power of two"),
    "min_free of 100%": ('[cache]\nmin_free = "100%"\n', "cache.min_free", "percentage"),
    "min_free not a number": ('[cache]\nmin_free = "x%"\n', "cache.min_free", "percentage"),
    "negative min_free": ('[cache]\nmin_free = "-1%"\n', "cache.min_free", "percentage"),
    "min_free not a size": ('[cache]\nmin_free = "lots"\n', "cache.min_free", "bad size"),
    "min_free as bool": ("[cache]\nmin_free = true\n", "cache.min_free", "got boolean"),
    "block too small": ('[cache]\nblock_size = "4KiB"\n', "cache.block_size", "between 64KiB and 256MiB"),
    "max below block": ('[cache]\nmax_size = "1MiB"\n', "cache.max_size", "smaller than one block"),
    "shared equals dir": ('[cache]\ndir = "/c"\nshared_dir = "/c/"\n', "cache.shared_dir", "differ"),
    "wrong type": ("[hub]\nrepo = 5\n", "hub.repo", "expected a string, got integer 5"),
    "bad repo": ('[hub]\nrepo = "no-namespace"\n', "hub.repo", "namespace/name"),
    "bad endpoint": ('[hub]\nendpoint = "huggingface.co"\n', "hub.endpoint", "http(s) URL"),
    "configs with slash": ('[hub]\nconfigs = ["a/b"]\n', "hub.configs[0]", "without '/'"),
    "offline not bool": ('[hub]\noffline = "yes"\n', "hub.offline", "true or false"),
    "section not a table": ('hub = "x"\n', "hub", "expected a table"),
    "upstream as table": ('[upstream]\nname = "charades"\n', "upstream", "[[upstream]]"),
    "upstream unknown key": (
        '[[upstream]]\nname = "charades"\nroots = "/"\n',
        "upstream[1].roots",
        "did you mean 'root'",
    ),
    "duplicate upstream name": (
        '[[upstream]]\nname = "charades"\nroot = "/"\n[[upstream]]\nname = "charades"\nroot = "/tmp"\n',
        "upstream[2].name",
        "duplicate upstream name 'charades'",
    ),
    "duplicate upstream prefix": (
        '[[upstream]]\nname = "charades"\nroot = "/"\n'
        '[[upstream]]\nname = "mine"\nprefix = "academic_source/Charades"\nroot = "/"\n',
        "upstream[2].prefix",
        "duplicate upstream prefix",
    ),
    "custom upstream without prefix": (
        '[[upstream]]\nname = "mine"\nroot = "/"\n',
        "upstream[1].prefix",
        "custom",
    ),
    "upstream without root": ('[[upstream]]\nname = "charades"\n', "upstream[1].root", "missing"),
    "prefix escaping": (
        '[[upstream]]\nname = "x"\nprefix = "a/../../etc"\nroot = "/"\n',
        "upstream[1].prefix",
        "'..'",
    ),
    "absolute prefix": (
        '[[upstream]]\nname = "x"\nprefix = "/etc"\nroot = "/"\n',
        "upstream[1].prefix",
        "relative",
    ),
    "pattern without rest": (
        '[[upstream]]\nname = "charades"\nroot = "/"\npattern = "videos/{id}"\n',
        "upstream[1].pattern",
        "{rest}",
    ),
    "pattern escaping": (
        '[[upstream]]\nname = "charades"\nroot = "/"\npattern = "../{rest}"\n',
        "upstream[1].pattern",
        "'..'",
    ),
    "bad prefer": (
        '[[upstream]]\nname = "charades"\nroot = "/"\nprefer = "both"\n',
        "upstream[1].prefer",
        "shard",
    ),
    "bad views": ('[mount]\nviews = ["merged", "flat"]\n', "mount.views[1]", "unknown view 'flat'"),
    "empty views": ("[mount]\nviews = []\n", "mount.views", "at least one"),
    "duplicate view": ('[mount]\nviews = ["repo", "repo"]\n', "mount.views", "twice"),
    "exclude unknown name": (
        '[mount]\nexclude = ["charade"]\n',
        "mount.exclude[0]",
        "did you mean 'charades'",
    ),
    "exclude configured upstream": (
        '[[upstream]]\nname = "ego4d"\nroot = "/"\n[mount]\nexclude = ["ego4d"]\n',
        "mount.exclude[0]",
        "also configured",
    ),
    "negative timeout": ("[mount]\nattr_timeout_s = -1\n", "mount.attr_timeout_s", ">= 0"),
    "timeout as string": ('[mount]\nentry_timeout_s = "5"\n', "mount.entry_timeout_s", "number of seconds"),
    "mode as string": ('[mount]\nfile_mode = "0440"\n', "mount.file_mode", "permission bits such as 0o440"),
    "mode with setuid": ("[mount]\ndir_mode = 0o4555\n", "mount.dir_mode", "between 0o000 and 0o777"),
    "negative gid": ("[mount]\ngid = -5\n", "mount.gid", "between 0 and"),
    "uid as name": ('[mount]\nuid = "nobody"\n', "mount.uid", "a numeric id"),
    "negative port": ("[metrics]\nport = -1\n", "metrics.port", "between 1 and 65535"),
    "port too big": ("[metrics]\nport = 70000\n", "metrics.port", "between 1 and 65535"),
    "port as bool": ("[metrics]\nport = true\n", "metrics.port", "got boolean"),
}


@pytest.mark.parametrize(("text", "key", "problem"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_matrix(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    message = str(error)
    assert error.exit_code == 2
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[hub]\nrepo = "a/b"\nrevision = \n')
    error = load_error(path)
    assert error.exit_code == 2
    assert re.fullmatch(rf"{re.escape(str(path))}: invalid TOML: .*line 3, column \d+.*", str(error))


def test_duplicate_toml_key_is_invalid_toml(tmp_path: Path) -> None:
    error = load_error(write(tmp_path, "[metrics]\nport = 1\nport = 2\n"))
    assert error.exit_code == 2 and "invalid TOML" in str(error)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[hub]\nrepo = "\xff/x"\n')
    error = load_error(path)
    assert error.exit_code == 2 and "not UTF-8" in str(error)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.toml"
    if kind == "directory":
        path.mkdir()
    error = load_error(path)
    assert error.exit_code == 2
    assert str(error).startswith(f"{path}: cannot read config file: ")
    assert "\n" not in str(error)


@pytest.mark.parametrize(("make", "problem"), [("missing", "does not exist"), ("file", "is not a directory")])
def test_unusable_upstream_root_exits_3(tmp_path: Path, make: str, problem: str) -> None:
    root = tmp_path / "charades"
    if make == "file":
        root.write_bytes(b"not a dir")
    path = write(tmp_path, f'[[upstream]]\nname = "charades"\nroot = "{root}"\n')
    error = load_error(path)
    assert error.exit_code == 3
    assert str(error) == f"{path}: upstream[1].root: charades root {root} {problem}"


def test_value_errors_win_over_path_errors(tmp_path: Path) -> None:
    """A missing root (3) is only reported once the whole file is well formed (2 first)."""
    path = write(tmp_path, '[[upstream]]\nname = "charades"\nroot = "/nonexistent"\n[metrics]\nport = 0\n')
    error = load_error(path)
    assert error.exit_code == 2 and "metrics.port" in str(error)


# ------------------------------------------------------------------------------------------------ the token


def test_token_never_in_repr_or_redacted(tmp_path: Path) -> None:
    for config in (
        load_config(write(tmp_path, f'[hub]\ntoken = "{SECRET}"\n'), env={}),
        load_config(None, env={"HOME": str(tmp_path), "HF_TOKEN": SECRET}),
    ):
        assert config.hub.token == SECRET
        assert SECRET not in repr(config)
        assert SECRET not in str(config)
        redacted = config.redacted()
        assert redacted["hub"]["token"] == "***"
        assert SECRET not in json.dumps(redacted)


def test_redacted_is_plain_json(tmp_path: Path) -> None:
    path, roots = uncommented_example(tmp_path)
    data = json.loads(json.dumps(load_config(path, env={}).redacted()))
    assert data["hub"]["token"] == "***"
    assert data["cache"]["dir"] == "/var/cache/llava-vfs"
    assert data["upstreams"][0]["root"] == str(roots["/data/charades"])
    assert data["mount"]["views"] == ["merged", "repo", "per_directory"]
    assert data["source"] == str(path)
    assert load_config(None, env={"HOME": "/h"}).redacted()["hub"]["token"] is None


@pytest.mark.parametrize("value", [f'"{SECRET} x"', f'"{SECRET}\\n"', '""', "12345"])
def test_bad_token_is_never_echoed(tmp_path: Path, value: str) -> None:
    error = load_error(write(tmp_path, f"[hub]\ntoken = {value}\n"))
    assert error.exit_code == 2
    assert "hub.token" in str(error)
    assert SECRET not in str(error) and "12345" not in str(error)


# ------------------------------------------------------------------------------------------------ cache dir


def config_with_cache(tmp_path: Path, cache_dir: Path) -> Config:
    return load_config(write(tmp_path, f'[cache]\ndir = "{cache_dir}"\n'), env={})


def test_writable_cache_ok_and_creates_nothing(tmp_path: Path) -> None:
    check_writable_cache(config_with_cache(tmp_path, tmp_path))
    missing = tmp_path / "a" / "b" / "cache"
    check_writable_cache(config_with_cache(tmp_path, missing))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("layout", "problem"),
    [("cache-is-file", "exists and is not a directory"), ("ancestor-is-file", "is not a directory")],
)
def test_unusable_cache_dir_exits_3(tmp_path: Path, layout: str, problem: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"x")
    cache_dir = blocker if layout == "cache-is-file" else blocker / "sub" / "cache"
    config = config_with_cache(tmp_path, cache_dir)
    with pytest.raises(ConfigError) as info:
        check_writable_cache(config)
    assert info.value.exit_code == 3
    assert str(info.value).startswith(f"{config.source}: cache.dir: ")
    assert problem in str(info.value)


def as_unprivileged_user(fn: Callable[[], None]) -> str:
    """Run ``fn`` in a forked child as user ``nobody`` when we are root (root ignores permission bits);
    return "ok" or "<exit code> <message>"."""
    if os.geteuid() != 0:
        try:
            fn()
        except ConfigError as exc:
            return f"{exc.exit_code} {exc}"
        return "ok"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                fn()
                out = "ok"
            except ConfigError as exc:
                out = f"{exc.exit_code} {exc}"
            os.write(write_fd, out.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out_bytes = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out_bytes.decode()


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temp dir every user can traverse (pytest's own tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="vfs-config-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize(
    ("layout", "problem"),
    [
        ("existing", "is not writable"),
        ("missing", "cannot create {cache}: {locked} is not writable"),
        ("private", "cannot access {locked}/cache"),
    ],
)
def test_unwritable_cache_dir_exits_3(public_tmp: Path, layout: str, problem: str) -> None:
    locked = public_tmp / "locked"
    locked.mkdir(mode=0o700 if layout == "private" else 0o555)
    cache_dir = locked if layout == "existing" else locked / "cache"
    config = Config(hub=HubConfig(), cache=CacheConfig(dir=cache_dir))
    out = as_unprivileged_user(lambda: check_writable_cache(config))
    assert out.startswith("3 built-in defaults: cache.dir: "), out
    assert problem.format(cache=cache_dir, locked=locked) in out
    # the same layout is fine for its owner when it is root (the common case for the daemon)
    if os.geteuid() == 0 and layout != "private":
        check_writable_cache(config)


# ------------------------------------------------------------------------------------------------ CLI edge


def test_exit_on_config_error_decorator_and_context(capsys: pytest.CaptureFixture[str]) -> None:
    @exit_on_config_error
    def fails() -> int:
        raise ConfigError("f.toml: cache.dir: broken", 3)

    @exit_on_config_error
    def works(x: int) -> int:
        return x + 1

    assert works(1) == 2
    with pytest.raises(SystemExit) as info:
        fails()
    assert info.value.code == 3
    with pytest.raises(SystemExit) as info, exit_on_config_error():
        raise ConfigError("two\nlines", 2)
    assert info.value.code == 2
    assert (
        capsys.readouterr().err
        == "llava-vfs: error: f.toml: cache.dir: broken\nllava-vfs: error: two lines\n"
    )


async def test_exit_on_config_error_async(capsys: pytest.CaptureFixture[str]) -> None:
    @exit_on_config_error
    async def fails() -> None:
        raise ConfigError("x: y: z", 2)

    with pytest.raises(SystemExit) as info:
        await fails()
    assert info.value.code == 2
    assert capsys.readouterr().err == "llava-vfs: error: x: y: z\n"


@pytest.mark.parametrize(
    ("text", "code", "key"),
    [
        ("[cache]\nblock_sise = 1\n", 2, "cache.block_sise"),
        ('[[upstream]]\nname = "ego4d"\nroot = "/nope"\n', 3, "root"),
    ],
)
def test_cli_error_is_one_line_without_traceback(tmp_path: Path, text: str, code: int, key: str) -> None:
    path = write(tmp_path, text)
    program = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from vfs.config import exit_on_config_error, load_config

        @exit_on_config_error
        def main() -> None:
            load_config(Path(sys.argv[1]), env={})
            print("loaded")

        main()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == code
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"llava-vfs: error: {path}: ")
    assert key in lines[0]


@pytest.mark.parametrize(
    ("value", "expected", "on_100_gib"),
    [
        ('"5%"', MinFree(percent=5.0), 5 * 2**30),
        ('"12.5 %"', MinFree(percent=12.5), int(12.5 * 2**30)),
        ('"20GiB"', MinFree(bytes=20 * 2**30), 20 * 2**30),
        ("0", MinFree(), 0),
        ('"0%"', MinFree(), 0),
    ],
)
def test_min_free_is_a_size_or_a_percentage(
    tmp_path: Path, value: str, expected: MinFree, on_100_gib: int
) -> None:
    config = load_config(write(tmp_path, f"[cache]\nmin_free = {value}\n"), env={"HOME": str(tmp_path)})
    assert config.cache.min_free == expected
    assert config.cache.min_free.of(100 * 2**30) == on_100_gib


def test_min_free_and_uncached_max_defaults(tmp_path: Path) -> None:
    config = load_config(None, env={"HOME": str(tmp_path)})
    assert config.cache.min_free == MinFree(percent=5.0) and str(config.cache.min_free) == "5%"
    assert config.cache.uncached_max_bytes == 2**30
