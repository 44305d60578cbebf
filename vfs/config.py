"""Configuration: one TOML file to one frozen, validated, typed ``Config``.

Responsibility: read the file with the standard library's ``tomllib``, apply defaults (some of which come
from the environment), check every key and value once, and hand the rest of the program plain frozen
dataclasses. ``config.example.toml`` at the top of the repository documents every key; its tests load it
with the examples uncommented, so the documentation cannot drift from the parser.

Invariants:
- The environment is read only inside ``load_config``, and only through the mapping passed in (default
  ``os.environ``). No other module reads ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``,
  ``XDG_CACHE_HOME`` or ``HOME``; they read the ``Config``.
- Every user mistake is a ``ConfigError`` whose message is ONE line naming the file, the dotted key and the
  problem. Exit code 2: the file or a value is wrong (unreadable, invalid TOML, unknown section or key, wrong
  type, bad size or value, duplicates). Exit code 3: a configured path is unusable (an upstream root that is
  missing or not a directory; a cache dir that cannot be written, see ``check_writable_cache``). All exit-2
  problems are found before any exit-3 check runs, so the filesystem is only probed for a well-formed file.
- Nothing here creates, changes or deletes anything on disk.
- The Hub token never appears in ``repr(config)`` or in ``Config.redacted()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import fnmatch
import functools
import inspect
import math
import os
import pwd
import re
import string
import sys
import tomllib
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar, overload

from vfs.datasets import KNOWN_UPSTREAMS
from vfs.errors import ConfigError

__all__ = [
    "DEFAULT_BLOCK_SIZE_BYTES",
    "DEFAULT_MAX_SIZE_BYTES",
    "VIEWS",
    "CacheConfig",
    "Config",
    "HubConfig",
    "MetricsConfig",
    "MountConfig",
    "UpstreamConfig",
    "check_writable_cache",
    "exit_on_config_error",
    "load_config",
    "parse_size",
]

EXIT_INVALID = 2
EXIT_UNUSABLE_PATH = 3

DEFAULT_REPO = "lmms-lab/LLaVA-Video-178K"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_MAX_SIZE_BYTES = 200 * 2**30
DEFAULT_UNCACHED_MAX_BYTES = 2**30
DEFAULT_BLOCK_SIZE_BYTES = 8 * 2**20
MIN_BLOCK_SIZE_BYTES = 64 * 2**10
MAX_BLOCK_SIZE_BYTES = 256 * 2**20
# A sanity ceiling, not a policy: anything larger is certainly a typo (an exbibyte is 2**60).
MAX_SIZE_BYTES_LIMIT = 2**62
CACHE_SUBDIR = "llava-vfs"

VIEWS = ("merged", "repo", "per_directory")
PREFER_CHOICES = ("upstream", "shard")

# huggingface_hub's own notion of a truthy environment flag (constants.ENV_VARS_TRUE_VALUES).
_ENV_TRUE = frozenset({"1", "ON", "YES", "TRUE"})


# --------------------------------------------------------------------------------------------- the types


@dataclass(frozen=True, kw_only=True, slots=True)
class HubConfig:
    repo: str = DEFAULT_REPO
    revision: str = "main"
    endpoint: str = DEFAULT_ENDPOINT
    # None means "not configured": the daemon then asks huggingface_hub.get_token() at start-up.
    token: str | None = field(default=None, repr=False)
    configs: tuple[str, ...] = ()
    offline: bool = False
    # Retry budget and timeouts of every Hub request (vfs.hub.client.HubClient): a failing request is
    # retried at most max_retries times in a row and within retry_deadline_s of the first failure.
    max_retries: int = 8
    retry_deadline_s: float = 120.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0

    def includes(self, directory: str) -> bool:
        """Whether the repo's video directory ``directory`` is selected by ``configs`` (empty = all)."""
        return not self.configs or any(fnmatch.fnmatchcase(directory, pat) for pat in self.configs)


@dataclass(frozen=True, slots=True)
class MinFree:
    """``[cache] min_free``: free space the cache keeps on its filesystem, as bytes or as a percentage of
    the filesystem's size (exactly one is set; both zero turns the limit off)."""

    bytes: int = 0
    percent: float = 0.0

    def of(self, filesystem_bytes: int) -> int:
        """The limit in bytes on a filesystem of ``filesystem_bytes``."""
        return self.bytes or int(filesystem_bytes * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else str(self.bytes)


DEFAULT_MIN_FREE = MinFree(percent=5.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheConfig:
    dir: Path
    max_size_bytes: int = DEFAULT_MAX_SIZE_BYTES
    block_size_bytes: int = DEFAULT_BLOCK_SIZE_BYTES
    shared_dir: Path | None = None
    min_free: MinFree = DEFAULT_MIN_FREE
    uncached_max_bytes: int = DEFAULT_UNCACHED_MAX_BYTES


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamConfig:
    name: str
    prefix: str
    root: Path
    pattern: str | None = None
    prefer: str = "upstream"

    @property
    def known(self) -> bool:
        """A built-in dataset (``vfs.datasets``), as opposed to a custom one."""
        return self.name in KNOWN_UPSTREAMS


@dataclass(frozen=True, kw_only=True, slots=True)
class MountConfig:
    allow_other: bool = False
    views: tuple[str, ...] = ("merged", "repo")
    exclude: tuple[str, ...] = ()
    entry_timeout_s: float = 300.0
    attr_timeout_s: float = 300.0
    negative_timeout_s: float = 60.0
    # False answers getxattr/listxattr with ENOSYS, after which the kernel never asks the daemon again.
    xattrs: bool = True
    # Owner and permission bits of what the Hub serves (and of .vfs/); None: the daemon's own uid/gid.
    # Upstream files and their directories show their real owner and mode instead (vfs.access).
    uid: int | None = None
    gid: int | None = None
    file_mode: int = 0o444
    dir_mode: int = 0o555


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsConfig:
    port: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    hub: HubConfig
    cache: CacheConfig
    upstreams: tuple[UpstreamConfig, ...] = ()
    mount: MountConfig = MountConfig()
    metrics: MetricsConfig = MetricsConfig()
    source: Path | None = None

    def redacted(self) -> dict[str, Any]:
        """Plain JSON-ready data for logging; the token (if any) is replaced by ``"***"``."""
        data = _plain(self)
        assert isinstance(data, dict)
        if data["hub"]["token"] is not None:
            data["hub"]["token"] = "***"
        return data


# Defaults read back from instances: with slots=True the class attributes are slot descriptors.
_HUB_DEFAULTS = HubConfig()
_MOUNT_DEFAULTS = MountConfig()
_METRICS_DEFAULTS = MetricsConfig()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
_SIZE_UNITS: Mapping[str, int] = {
    "b": 1,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE_HINT = "expected a positive size such as 4096, 512KiB, 8MiB, 200GiB or 1.5GB"


def parse_size(value: str | int, *, key: str) -> int:
    """Parse a byte size: an integer, or a number with a binary (KiB..TiB) or decimal (kB..TB) unit.

    Unit letters are case-insensitive. A bare ``K``/``M``/``G``/``T`` is refused because it is ambiguous
    between the binary and the decimal unit. The result must be a positive whole number of bytes.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key}: {_SIZE_HINT}, got {_describe(value)}", EXIT_INVALID)
    if isinstance(value, int):
        size_bytes = value
    else:
        match = _SIZE_RE.match(value)
        if match is None:
            raise ConfigError(f"{key}: bad size {value!r}: {_SIZE_HINT}", EXIT_INVALID)
        unit = match["unit"].lower()
        if unit in ("k", "m", "g", "t"):
            raise ConfigError(
                f"{key}: ambiguous unit in {value!r}: write {unit.upper()}iB (binary) or {unit.upper()}B"
                " (decimal)",
                EXIT_INVALID,
            )
        multiplier = _SIZE_UNITS.get(unit or "b")
        if multiplier is None:
            raise ConfigError(
                f"{key}: unknown unit {match['unit']!r} in {value!r}: {_SIZE_HINT}", EXIT_INVALID
            )
        try:
            exact = Decimal(match["number"]) * multiplier
        except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
            raise ConfigError(f"{key}: bad size {value!r}: {_SIZE_HINT}", EXIT_INVALID) from None
        if exact != exact.to_integral_value():
            raise ConfigError(f"{key}: {value!r} is not a whole number of bytes", EXIT_INVALID)
        size_bytes = int(exact)
    if size_bytes <= 0:
        raise ConfigError(f"{key}: size must be positive, got {value!r}", EXIT_INVALID)
    if size_bytes > MAX_SIZE_BYTES_LIMIT:
        raise ConfigError(f"{key}: size {value!r} is implausibly large", EXIT_INVALID)
    return size_bytes


# --------------------------------------------------------------------------------------------- loading

_SECTIONS = ("hub", "cache", "upstream", "mount", "metrics")
_HUB_KEYS = (
    "repo",
    "revision",
    "endpoint",
    "token",
    "configs",
    "offline",
    "max_retries",
    "retry_deadline_s",
    "connect_timeout_s",
    "read_timeout_s",
)
_CACHE_KEYS = ("dir", "max_size", "block_size", "shared_dir", "min_free", "uncached_max")
_UPSTREAM_KEYS = ("name", "prefix", "root", "pattern", "prefer")
_MOUNT_KEYS = (
    "allow_other",
    "views",
    "exclude",
    "entry_timeout_s",
    "attr_timeout_s",
    "negative_timeout_s",
    "xattrs",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
)
_METRICS_KEYS = ("port", "host")
_SECTION_KEYS = {
    "hub": _HUB_KEYS,
    "cache": _CACHE_KEYS,
    "upstream": _UPSTREAM_KEYS,
    "mount": _MOUNT_KEYS,
    "metrics": _METRICS_KEYS,
}

# Hub repo ids: "namespace/name", each part letters, digits, '-', '_', '.'; no '--' or '..'; at most 96.
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_UPSTREAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _invalid(key: str, problem: str) -> NoReturn:
    raise ConfigError(f"{key}: {problem}", EXIT_INVALID)


def _describe(value: object) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
        datetime.datetime: "datetime",
        datetime.date: "date",
        datetime.time: "time",
    }.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} {shown}"


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Table:
    """One TOML table being read: typed getters that name the dotted key in every error."""

    def __init__(self, data: object, where: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            _invalid(where, f"expected a table, got {_describe(data)}")
        self.data: dict[str, Any] = data
        self.where = where
        for name in data:
            if name not in known:
                _invalid(
                    self.key(name),
                    f"unknown key{_suggest(name, known)}; known keys: {', '.join(known)}",
                )

    def key(self, name: str) -> str:
        return f"{self.where}.{name}"

    def has(self, name: str) -> bool:
        return name in self.data

    def _typed(self, name: str, kinds: type | tuple[type, ...], expected: str) -> Any:
        value = self.data[name]
        # bool is an int subclass; TOML keeps them apart and so do we.
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            _invalid(self.key(name), f"expected {expected}, got {_describe(value)}")
        if not isinstance(value, kinds):
            _invalid(self.key(name), f"expected {expected}, got {_describe(value)}")
        return value

    def string(self, name: str, default: str) -> str:
        if name not in self.data:
            return default
        value: str = self._typed(name, str, "a string")
        if not value:
            _invalid(self.key(name), "must not be empty")
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            _invalid(self.key(name), f"contains control characters: {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.data:
            return default
        value: bool = self._typed(name, bool, "true or false")
        return value

    def seconds(self, name: str, default: float) -> float:
        if name not in self.data:
            return default
        value = float(self._typed(name, (int, float), "a number of seconds"))
        if not math.isfinite(value) or value < 0:
            _invalid(self.key(name), f"must be a finite number >= 0, got {self.data[name]!r}")
        return value

    def id_number(self, name: str) -> int | None:
        """A numeric user or group id (no name lookup: the node's accounts may differ from the login's)."""
        if name not in self.data:
            return None
        value: int = self._typed(name, int, "a numeric id")
        if not 0 <= value < 0xFFFFFFFF:  # (uid_t)-1 means "unchanged" to the kernel
            _invalid(self.key(name), f"must be between 0 and {0xFFFFFFFF - 1}, got {value}")
        return value

    def mode(self, name: str, default: int) -> int:
        """Permission bits, written as a TOML octal integer (``0o440``)."""
        if name not in self.data:
            return default
        value: int = self._typed(name, int, "permission bits such as 0o440")
        if not 0 <= value <= 0o777:
            _invalid(self.key(name), f"must be permission bits between 0o000 and 0o777, got {value:#o}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if name not in self.data:
            return default
        values: list[Any] = self._typed(name, list, "an array of strings")
        seen: set[str] = set()
        for i, item in enumerate(values):
            if not isinstance(item, str) or not item:
                _invalid(f"{self.key(name)}[{i}]", f"expected a non-empty string, got {_describe(item)}")
            if item in seen:
                _invalid(self.key(name), f"{item!r} is listed twice")
            seen.add(item)
        return tuple(values)

    def size(self, name: str, default: int) -> int:
        if name not in self.data:
            return default
        return parse_size(self.data[name], key=self.key(name))

    def min_free(self, name: str, default: MinFree) -> MinFree:
        """A size, a percentage such as ``"5%"``, or 0 (no limit)."""
        if name not in self.data:
            return default
        value = self.data[name]
        if (value == 0 and not isinstance(value, bool)) or value in ("0", "0%"):
            return MinFree()
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                percent = float(value.strip()[:-1])
            except ValueError:
                percent = math.nan
            if not 0 <= percent < 100:
                _invalid(self.key(name), f"expected a percentage from 0% to 99%, got {value!r}")
            return MinFree(percent=percent)
        return MinFree(bytes=parse_size(value, key=self.key(name)))


class _Paths:
    """Turns configured path strings into absolute paths: ``~`` from the given HOME, relative to the file."""

    def __init__(self, base: Path, home: Path) -> None:
        self.base = base
        self.home = home

    def resolve(self, raw: str) -> Path:
        if raw == "~" or raw.startswith("~/"):
            path = self.home / raw[2:]
        elif raw.startswith("~"):
            path = Path(os.path.expanduser(raw))  # "~user/...": the password database, not the environment
            if str(path).startswith("~"):
                raise ValueError(f"unknown user in {raw!r}")
        else:
            path = Path(raw)
        return path if path.is_absolute() else self.base / path

    def get(self, table: _Table, name: str) -> Path | None:
        if not table.has(name):
            return None
        raw = table.string(name, "")
        if "\x00" in raw:
            _invalid(table.key(name), "contains a NUL byte")
        try:
            return self.resolve(raw)
        except ValueError as exc:
            _invalid(table.key(name), str(exc))


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "")
    if home and os.path.isabs(home):
        return Path(home)
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def _env_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in _ENV_TRUE


def _check_endpoint(key: str, value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        _invalid(key, f"expected an http(s) URL such as {DEFAULT_ENDPOINT!r}, got {value!r}")
    if parsed.query or parsed.fragment:
        _invalid(key, f"must not have a query or fragment: {value!r}")
    try:
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        _invalid(key, f"bad port in {value!r}")
    return value.rstrip("/")


def _check_repo(key: str, value: str) -> str:
    parts = value.split("/")
    if (
        len(parts) != 2
        or not all(_REPO_PART_RE.match(p) for p in parts)
        or any("--" in p or ".." in p for p in parts)
    ):
        _invalid(key, f"expected a Hub repo id 'namespace/name', got {value!r}")
    return value


def _check_revision(key: str, value: str) -> str:
    if any(c.isspace() for c in value) or ".." in value or value.startswith("/") or value.endswith("/"):
        _invalid(key, f"not a valid branch, tag or commit: {value!r}")
    return value


def _check_relpath(key: str, value: str) -> str:
    """A safe relative POSIX path: not absolute, no empty, '.' or '..' parts, no NUL."""
    stripped = value.rstrip("/")
    if not stripped or value.startswith("/"):
        _invalid(key, f"must be a relative path, got {value!r}")
    if "\x00" in value or "\\" in value:
        _invalid(key, f"must not contain NUL or backslash: {value!r}")
    if any(part in ("", ".", "..") for part in stripped.split("/")):
        _invalid(key, f"must not contain empty, '.' or '..' parts: {value!r}")
    return stripped


def _check_pattern(key: str, value: str) -> str:
    """A ``{rest}`` template: exactly one ``{rest}``, no other fields, and a safe relative result."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        _invalid(key, f"bad template {value!r}: {exc}")
    if fields != ["rest"] or "{rest!" in value or "{rest:" in value:
        _invalid(key, f"must contain '{{rest}}' exactly once and no other fields, got {value!r}")
    _check_relpath(key, value.replace("{rest}", "x"))
    return value


def _parse_hub(raw: object, env: Mapping[str, str]) -> HubConfig:
    t = _Table(raw, "hub", _HUB_KEYS)
    repo = _check_repo(t.key("repo"), t.string("repo", DEFAULT_REPO))
    revision = _check_revision(t.key("revision"), t.string("revision", "main"))
    if t.has("endpoint"):
        endpoint = _check_endpoint(t.key("endpoint"), t.string("endpoint", ""))
    elif env.get("HF_ENDPOINT", "").strip():
        endpoint = _check_endpoint("hub.endpoint (from HF_ENDPOINT)", env["HF_ENDPOINT"].strip())
    else:
        endpoint = DEFAULT_ENDPOINT
    token: str | None
    if t.has("token"):
        # Never echo a token, not even a malformed one: these checks name the key and the problem only.
        token = t.data["token"]
        if not isinstance(token, str):
            _invalid(t.key("token"), "expected a string")
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            _invalid(t.key("token"), "must be a non-empty string without whitespace or control characters")
    else:
        token = env.get("HF_TOKEN", "").strip() or None
    configs = t.strings("configs", ())
    for i, pattern in enumerate(configs):
        if "/" in pattern:
            _invalid(f"hub.configs[{i}]", f"a video directory name or glob, without '/': {pattern!r}")
    offline = t.boolean("offline", _env_true(env.get("HF_HUB_OFFLINE")))
    max_retries = _HUB_DEFAULTS.max_retries
    if t.has("max_retries"):
        max_retries = t._typed("max_retries", int, "a whole number of retries")
        if not 0 <= max_retries <= 1000:
            _invalid(t.key("max_retries"), f"must be between 0 and 1000, got {max_retries}")
    retry_deadline_s = t.seconds("retry_deadline_s", _HUB_DEFAULTS.retry_deadline_s)
    connect_timeout_s = t.seconds("connect_timeout_s", _HUB_DEFAULTS.connect_timeout_s)
    read_timeout_s = t.seconds("read_timeout_s", _HUB_DEFAULTS.read_timeout_s)
    for name, value in (("connect_timeout_s", connect_timeout_s), ("read_timeout_s", read_timeout_s)):
        if value == 0:
            _invalid(t.key(name), "must be more than 0 seconds")
    return HubConfig(
        repo=repo,
        revision=revision,
        endpoint=endpoint,
        token=token,
        configs=configs,
        offline=offline,
        max_retries=max_retries,
        retry_deadline_s=retry_deadline_s,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
    )


def _default_cache_dir(env: Mapping[str, str], home: Path) -> Path:
    xdg = env.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache"
    return base / CACHE_SUBDIR


def _parse_cache(raw: object, paths: _Paths, env: Mapping[str, str]) -> CacheConfig:
    t = _Table(raw, "cache", _CACHE_KEYS)
    cache_dir = paths.get(t, "dir") or _default_cache_dir(env, paths.home)
    max_size_bytes = t.size("max_size", DEFAULT_MAX_SIZE_BYTES)
    block_size_bytes = t.size("block_size", DEFAULT_BLOCK_SIZE_BYTES)
    if block_size_bytes & (block_size_bytes - 1):
        _invalid("cache.block_size", f"must be a power of two, got {block_size_bytes} bytes")
    if not MIN_BLOCK_SIZE_BYTES <= block_size_bytes <= MAX_BLOCK_SIZE_BYTES:
        _invalid("cache.block_size", f"must be between 64KiB and 256MiB, got {block_size_bytes} bytes")
    if max_size_bytes < block_size_bytes:
        _invalid("cache.max_size", f"{max_size_bytes} bytes is smaller than one block ({block_size_bytes})")
    shared_dir = paths.get(t, "shared_dir")
    if shared_dir is not None and os.path.normpath(shared_dir) == os.path.normpath(cache_dir):
        _invalid("cache.shared_dir", f"must differ from cache.dir ({cache_dir})")
    return CacheConfig(
        dir=cache_dir,
        max_size_bytes=max_size_bytes,
        block_size_bytes=block_size_bytes,
        shared_dir=shared_dir,
        min_free=t.min_free("min_free", DEFAULT_MIN_FREE),
        uncached_max_bytes=t.size("uncached_max", DEFAULT_UNCACHED_MAX_BYTES),
    )


def _parse_upstreams(raw: object, paths: _Paths) -> tuple[UpstreamConfig, ...]:
    if isinstance(raw, dict):
        _invalid("upstream", "expected an array of tables: write [[upstream]], not [upstream]")
    if not isinstance(raw, list):
        _invalid("upstream", f"expected an array of tables ([[upstream]]), got {_describe(raw)}")
    upstreams: list[UpstreamConfig] = []
    names: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for index, item in enumerate(raw, start=1):
        where = f"upstream[{index}]"
        t = _Table(item, where, _UPSTREAM_KEYS)
        if not t.has("name"):
            _invalid(
                t.key("name"), f"missing; a known dataset ({', '.join(KNOWN_UPSTREAMS)}) or a custom name"
            )
        name = t.string("name", "")
        if not _UPSTREAM_NAME_RE.match(name):
            _invalid(t.key("name"), f"letters, digits, '_', '.', '-' only, got {name!r}")
        if name in names:
            _invalid(t.key("name"), f"duplicate upstream name {name!r} (also {names[name]})")
        names[name] = where
        if t.has("prefix"):
            prefix = _check_relpath(t.key("prefix"), t.string("prefix", ""))
        elif name in KNOWN_UPSTREAMS:
            prefix = KNOWN_UPSTREAMS[name]
        else:
            _invalid(
                t.key("prefix"),
                f"required for custom upstream {name!r}{_suggest(name, tuple(KNOWN_UPSTREAMS))};"
                f" known datasets: {', '.join(KNOWN_UPSTREAMS)}",
            )
        if prefix in prefixes:
            _invalid(t.key("prefix"), f"duplicate upstream prefix {prefix!r} (also {prefixes[prefix]})")
        prefixes[prefix] = where
        if not t.has("root"):
            _invalid(t.key("root"), "missing; the local directory that holds this dataset")
        root = paths.get(t, "root")
        assert root is not None
        pattern = _check_pattern(t.key("pattern"), t.string("pattern", "")) if t.has("pattern") else None
        prefer = t.string("prefer", "upstream")
        if prefer not in PREFER_CHOICES:
            _invalid(t.key("prefer"), f"expected one of {', '.join(PREFER_CHOICES)}, got {prefer!r}")
        upstreams.append(UpstreamConfig(name=name, prefix=prefix, root=root, pattern=pattern, prefer=prefer))
    return tuple(upstreams)


def _parse_mount(raw: object) -> MountConfig:
    t = _Table(raw, "mount", _MOUNT_KEYS)
    views = t.strings("views", _MOUNT_DEFAULTS.views)
    if not views:
        _invalid("mount.views", f"must name at least one of {', '.join(VIEWS)}")
    for i, view in enumerate(views):
        if view not in VIEWS:
            _invalid(
                f"mount.views[{i}]",
                f"unknown view {view!r}{_suggest(view, VIEWS)}; allowed: {', '.join(VIEWS)}",
            )
    exclude = t.strings("exclude", ())
    for i, name in enumerate(exclude):
        if name not in KNOWN_UPSTREAMS:
            _invalid(
                f"mount.exclude[{i}]",
                f"unknown dataset {name!r}{_suggest(name, tuple(KNOWN_UPSTREAMS))};"
                f" known: {', '.join(KNOWN_UPSTREAMS)}",
            )
    return MountConfig(
        allow_other=t.boolean("allow_other", False),
        views=views,
        exclude=exclude,
        entry_timeout_s=t.seconds("entry_timeout_s", _MOUNT_DEFAULTS.entry_timeout_s),
        attr_timeout_s=t.seconds("attr_timeout_s", _MOUNT_DEFAULTS.attr_timeout_s),
        negative_timeout_s=t.seconds("negative_timeout_s", _MOUNT_DEFAULTS.negative_timeout_s),
        xattrs=t.boolean("xattrs", _MOUNT_DEFAULTS.xattrs),
        uid=t.id_number("uid"),
        gid=t.id_number("gid"),
        file_mode=t.mode("file_mode", _MOUNT_DEFAULTS.file_mode),
        dir_mode=t.mode("dir_mode", _MOUNT_DEFAULTS.dir_mode),
    )


def _parse_metrics(raw: object) -> MetricsConfig:
    t = _Table(raw, "metrics", _METRICS_KEYS)
    port: int | None = None
    if t.has("port"):
        port = t._typed("port", int, "a TCP port number")
        if not 1 <= port <= 65535:
            _invalid("metrics.port", f"must be between 1 and 65535, got {port}")
    host = t.string("host", _METRICS_DEFAULTS.host)
    if any(c.isspace() for c in host):
        _invalid("metrics.host", f"not a host name or address: {host!r}")
    return MetricsConfig(port=port, host=host)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}", EXIT_INVALID) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte {exc.start})", EXIT_INVALID) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", EXIT_INVALID) from None


def _check_roots(upstreams: tuple[UpstreamConfig, ...]) -> None:
    for index, upstream in enumerate(upstreams, start=1):
        key = f"upstream[{index}].root"
        root = upstream.root
        if not root.exists():
            raise ConfigError(f"{key}: {upstream.name} root {root} does not exist", EXIT_UNUSABLE_PATH)
        if not root.is_dir():
            raise ConfigError(f"{key}: {upstream.name} root {root} is not a directory", EXIT_UNUSABLE_PATH)
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(f"{key}: {upstream.name} root {root} is not readable", EXIT_UNUSABLE_PATH)


def _one_line(message: str) -> str:
    return " ".join(message.split("\n"))


def load_config(path: Path | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load, default and validate the configuration; ``path=None`` gives all defaults.

    ``env`` supplies HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, XDG_CACHE_HOME and HOME (default
    ``os.environ``). Raises ``ConfigError`` (exit code 2 or 3, see the module docstring).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    source = Path(os.path.abspath(path)) if path is not None else None
    where = str(source) if source is not None else "built-in defaults"
    try:
        data = _read_toml(source) if source is not None else {}
        for section, value in data.items():
            if section in _SECTIONS:
                continue
            if isinstance(value, dict | list):
                _invalid(
                    section,
                    f"unknown section{_suggest(section, _SECTIONS)}; known sections: {', '.join(_SECTIONS)}",
                )
            # A key above the first [section] header: point at the section that has it, if any.
            owners = [f"{name}.{section}" for name, keys in _SECTION_KEYS.items() if section in keys]
            hint = f" (did you mean {' or '.join(owners)}?)" if owners else ""
            _invalid(
                section, f"unknown top-level key{hint}; keys belong in a section: {', '.join(_SECTIONS)}"
            )
        home = _home(environ)
        paths = _Paths(source.parent if source is not None else Path.cwd(), home)
        config = Config(
            hub=_parse_hub(data.get("hub", {}), environ),
            cache=_parse_cache(data.get("cache", {}), paths, environ),
            upstreams=_parse_upstreams(data.get("upstream", []), paths),
            mount=_parse_mount(data.get("mount", {})),
            metrics=_parse_metrics(data.get("metrics", {})),
            source=source,
        )
        configured = {u.name for u in config.upstreams}
        for i, name in enumerate(config.mount.exclude):
            if name in configured:
                _invalid(
                    f"mount.exclude[{i}]", f"{name!r} is excluded but also configured as an [[upstream]]"
                )
        # Only a well-formed file gets its paths probed: exit 2 problems always win over exit 3.
        _check_roots(config.upstreams)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(f"{where}: "):
            message = f"{where}: {message}"
        raise ConfigError(_one_line(message), exc.exit_code) from None
    return config


def check_writable_cache(config: Config) -> None:
    """Raise ``ConfigError(..., 3)`` unless the cache dir is (or could be created as) a writable directory.

    Creates nothing: a missing dir is judged by its nearest existing ancestor.
    """
    where = str(config.source) if config.source is not None else "built-in defaults"
    cache_dir = config.cache.dir

    def exists(path: Path) -> bool:
        try:
            os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:  # EACCES on an ancestor is not "missing": creating would fail too
            raise ConfigError(
                f"{where}: cache.dir: cannot access {path}: {exc.strerror}", EXIT_UNUSABLE_PATH
            ) from None
        return True

    probe = cache_dir
    while not exists(probe) and probe != probe.parent:
        probe = probe.parent
    if probe == cache_dir:
        if not cache_dir.is_dir():
            problem = f"{cache_dir} exists and is not a directory"
        elif not os.access(cache_dir, os.W_OK | os.X_OK):
            problem = f"{cache_dir} is not writable"
        else:
            return
    elif not probe.is_dir():
        problem = f"cannot create {cache_dir}: {probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = f"cannot create {cache_dir}: {probe} is not writable"
    else:
        return
    raise ConfigError(f"{where}: cache.dir: {problem}", EXIT_UNUSABLE_PATH)


# --------------------------------------------------------------------------------------------- the CLI edge

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exit_with(exc: ConfigError) -> NoReturn:
    # One line, no traceback: the message already names the file, the key and the problem.
    print(f"llava-vfs: error: {_one_line(str(exc))}", file=sys.stderr, flush=True)
    raise SystemExit(exc.exit_code)


@contextlib.contextmanager
def _config_error_exit() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        _exit_with(exc)


@overload
def exit_on_config_error(fn: None = None) -> contextlib.AbstractContextManager[None]: ...
@overload
def exit_on_config_error(fn: Callable[_P, _R]) -> Callable[_P, _R]: ...
def exit_on_config_error(fn: Callable[_P, Any] | None = None) -> Any:
    """Turn a ``ConfigError`` into ``llava-vfs: error: <message>`` on stderr and ``exit(exit_code)``.

    Use as a decorator (``@exit_on_config_error``, sync or async functions) or as a context manager
    (``with exit_on_config_error(): ...``).
    """
    if fn is None:
        return _config_error_exit()
    if inspect.iscoroutinefunction(fn):
        async_fn: Callable[_P, Awaitable[Any]] = fn

        @functools.wraps(fn)
        async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            try:
                return await async_fn(*args, **kwargs)
            except ConfigError as exc:
                _exit_with(exc)

        return async_wrapper

    sync_fn = fn

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
        try:
            return sync_fn(*args, **kwargs)
        except ConfigError as exc:
            _exit_with(exc)

    return wrapper
