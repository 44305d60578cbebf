"""The per-commit catalog: every path the mount shows, its exact size and its source, persisted in SQLite.

One database file per (repo, commit), written whole to a temp file and renamed into place, so a reader
never sees a half-written catalog and a catalog is never mixed across commits. A mount loads it in one
pass (about a second at full scale) instead of re-reading annotations and shard indexes.

``pins.json`` beside the databases maps a revision name (``main``) to the commit that ``llava-vfs index``
or the first mount pinned, so a mount restarts on the same bytes, even with the Hub unreachable.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vfs.config import Config
from vfs.durable import replacing, write_atomic
from vfs.errors import ConfigError, IntegrityError
from vfs.hub.client import is_commit_sha
from vfs.layout import CacheLayout
from vfs.refs import HubFileRef, MemberRef

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files(path TEXT PRIMARY KEY, size INTEGER NOT NULL, blob_id TEXT NOT NULL, lfs_sha256 TEXT);
CREATE TABLE shards(path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                    directory TEXT, members INTEGER NOT NULL, index_bytes INTEGER NOT NULL);
CREATE TABLE members(path TEXT PRIMARY KEY, shard TEXT NOT NULL, shard_sha256 TEXT NOT NULL,
                     member_path TEXT NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL,
                     sha256 TEXT NOT NULL);
CREATE TABLE wanted(path TEXT NOT NULL, data_source TEXT NOT NULL, annotation TEXT NOT NULL,
                    records INTEGER NOT NULL, PRIMARY KEY(path, data_source, annotation));
CREATE TABLE annotations(path TEXT PRIMARY KEY, directory TEXT, records INTEGER NOT NULL,
                         bad_records INTEGER NOT NULL);
CREATE TABLE bad_records(annotation TEXT NOT NULL, record_index INTEGER NOT NULL, raw TEXT, problem TEXT);
"""


class CatalogError(IntegrityError):
    """A catalog file that cannot be read (corrupt, other version)."""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    path: str
    sha256: str
    size: int
    directory: str | None
    members: int
    index_bytes: int


@dataclass(frozen=True, slots=True)
class WantedRow:
    path: str
    data_source: str
    annotation: str
    records: int


@dataclass
class CatalogData:
    """Everything a catalog holds, in memory, for writing or for building the namespace."""

    repo: str
    commit: str
    files: list[HubFileRef] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    members: dict[str, MemberRef] = field(default_factory=dict)  # video path -> member
    wanted: list[WantedRow] = field(default_factory=list)
    annotations: list[tuple[str, str | None, int, int]] = field(default_factory=list)
    bad_records: list[tuple[str, int, str, str]] = field(default_factory=list)
    indexed: bool = False


def repo_slug(repo: str) -> str:
    return repo.replace("/", "--")


class CatalogDir:
    """``<cache dir>/catalog/<repo slug>/``: the databases and the pins of one repo."""

    def __init__(self, root: Path, repo: str) -> None:
        self.dir = root / repo_slug(repo)
        self.repo = repo

    def db_path(self, commit: str) -> Path:
        return self.dir / f"{commit}.sqlite"

    def read_pins(self) -> dict[str, str]:
        try:
            data = json.loads((self.dir / "pins.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def pin(self, revision: str, commit: str) -> None:
        pins = self.read_pins()
        pins[revision] = commit
        write_atomic(self.dir / "pins.json", json.dumps(pins, indent=1, sort_keys=True).encode())

    def exists(self, commit: str) -> bool:
        return self.db_path(commit).exists()

    def write(self, data: CatalogData) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.db_path(data.commit)
        with replacing(final) as tmp:
            self._write_db(tmp, data)
        return final

    @staticmethod
    def _write_db(tmp: Path, data: CatalogData) -> None:
        con = sqlite3.connect(tmp)
        try:
            con.executescript(_SCHEMA)
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("version", SCHEMA_VERSION),
                    ("repo", data.repo),
                    ("commit", data.commit),
                    ("indexed", "1" if data.indexed else "0"),
                ],
            )
            con.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?)",
                ((f.path, f.size, f.blob_id, f.lfs_sha256) for f in data.files),
            )
            con.executemany(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?)",
                ((s.path, s.sha256, s.size, s.directory, s.members, s.index_bytes) for s in data.shards),
            )
            con.executemany(
                "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (p, m.shard_path, m.shard_sha256, m.member_path, m.offset, m.size, m.sha256)
                    for p, m in data.members.items()
                ),
            )
            con.executemany(
                "INSERT OR REPLACE INTO wanted VALUES (?, ?, ?, ?)",
                ((w.path, w.data_source, w.annotation, w.records) for w in data.wanted),
            )
            con.executemany("INSERT INTO annotations VALUES (?, ?, ?, ?)", data.annotations)
            con.executemany("INSERT INTO bad_records VALUES (?, ?, ?, ?)", data.bad_records)
            con.commit()
        finally:
            con.close()

    def read(self, commit: str) -> CatalogData:
        path = self.db_path(commit)
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise CatalogError(f"{path}: {exc}") from exc
        try:
            meta = dict(con.execute("SELECT key, value FROM meta"))
            if meta.get("version") != SCHEMA_VERSION or meta.get("commit") != commit:
                raise CatalogError(f"{path}: catalog of another version or commit; run `llava-vfs index`")
            data = CatalogData(
                repo=meta.get("repo", self.repo), commit=commit, indexed=meta.get("indexed") == "1"
            )
            data.files = [
                HubFileRef(p, s, b, lfs)
                for p, s, b, lfs in con.execute("SELECT path, size, blob_id, lfs_sha256 FROM files")
            ]
            data.shards = [ShardInfo(*row) for row in con.execute("SELECT * FROM shards")]
            data.members = {
                row[0]: MemberRef(*row[1:])
                for row in con.execute(
                    "SELECT path, shard, shard_sha256, member_path, offset, size, sha256 FROM members"
                )
            }
            data.wanted = [WantedRow(*row) for row in con.execute("SELECT * FROM wanted")]
            data.annotations = list(con.execute("SELECT * FROM annotations"))
            data.bad_records = list(con.execute("SELECT * FROM bad_records"))
            return data
        except sqlite3.Error as exc:
            raise CatalogError(f"{path}: {exc}") from exc
        finally:
            con.close()


def iter_wanted_paths(rows: Iterable[WantedRow]) -> Iterator[str]:
    seen: set[str] = set()
    for row in rows:
        if row.path not in seen:
            seen.add(row.path)
            yield row.path


def load_catalog_offline(config: Config) -> CatalogData:
    """The catalog of the configured revision, from the cache only (no Hub): exit 4 when there is none."""
    catalogs = CatalogDir(CacheLayout(config.cache.dir).catalog, config.hub.repo)
    revision = config.hub.revision
    commit = revision if is_commit_sha(revision) else catalogs.read_pins().get(revision)
    if commit is None or not catalogs.exists(commit):
        raise ConfigError(
            f"no catalog of {config.hub.repo}@{revision} in {config.cache.dir}: run `llava-vfs index` first",
            4,
        )
    try:
        return catalogs.read(commit)
    except CatalogError as exc:
        raise ConfigError(f"{exc}; run `llava-vfs index` again", 3) from None
