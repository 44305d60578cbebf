"""The emulator's repo model: directories committed as immutable git-like commits (blobs hashed once,
cached by file identity; LFS decided by ``.gitattributes`` and a size threshold)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__package__)  # one log for the whole emulator: "vfs.hub.emulator"

_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Blob:
    disk_path: Path
    size_bytes: int
    oid: str  # git blob sha1 of the content, or of the LFS pointer for LFS files (what the tree shows)
    lfs_sha256: str | None
    pointer_size_bytes: int | None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.oid


@dataclass(frozen=True)
class Entry:
    path: str
    oid: str
    blob: Blob | None  # None for a directory

    @property
    def is_dir(self) -> bool:
        return self.blob is None


def path_key(path: str) -> tuple[str, ...]:
    # Sorting by components lists a directory right before its contents (pre-order), so every subtree is
    # one contiguous slice of the sorted listing.
    return tuple(path.split("/"))


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    title: str
    date: datetime
    entries: dict[str, Entry]
    ordered: list[Entry]  # every entry, sorted by path_key
    keys: list[tuple[str, ...]]
    children: dict[str, list[Entry]]  # directory path ("" = root) -> direct children, sorted
    last_commit: dict[str, str]  # path -> sha of the commit that last changed it

    def subtree(self, sub: str, recursive: bool) -> tuple[list[Entry], list[tuple[str, ...]]]:
        if not recursive:
            kids = self.children.get(sub, [])
            return kids, [path_key(e.path) for e in kids]
        if not sub:
            return self.ordered, self.keys
        key = path_key(sub)
        lo = bisect_right(self.keys, key)
        hi = bisect_left(self.keys, (*key, "\U0010ffff"), lo)
        return self.ordered[lo:hi], self.keys[lo:hi]


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_HASH_CACHE: dict[tuple[Any, ...], str] = {}
_HASH_CACHE_LOCK = threading.Lock()


def file_digest(disk_path: Path, st: os.stat_result, kind: str) -> str:
    """git blob sha1 (kind "git") or sha256 (kind "sha256") of a file, cached by identity and mtime."""
    key = (os.path.realpath(disk_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, kind)
    with _HASH_CACHE_LOCK:
        cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha1() if kind == "git" else hashlib.sha256()
    if kind == "git":
        digest.update(b"blob %d\0" % st.st_size)
    hashed_bytes = 0
    with open(disk_path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            hashed_bytes += len(chunk)
    if hashed_bytes != st.st_size:
        raise RuntimeError(f"{disk_path} changed while it was being hashed ({hashed_bytes} != {st.st_size})")
    value = digest.hexdigest()
    with _HASH_CACHE_LOCK:
        _HASH_CACHE[key] = value
    return value


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size_bytes: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size_bytes}\n".encode()


def _glob_to_regex(pattern: str) -> str:
    """gitattributes glob to a regex: ``*``/``?`` stay within a component, ``**`` crosses them."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def lfs_matcher(root: Path) -> Callable[[str], bool]:
    """Whether a repo path is LFS by the root ``.gitattributes`` (the last matching line wins)."""
    rules: list[tuple[re.Pattern[str], bool, bool]] = []  # (regex, anchored, is_lfs)
    try:
        text = (root / ".gitattributes").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        pattern, attrs = parts[0], parts[1:]
        setting: bool | None = None
        for attr in attrs:
            if attr == "filter=lfs":
                setting = True
            elif attr.startswith("filter=") or attr in ("-filter", "!filter"):
                setting = False
        if setting is None:
            continue
        anchored = "/" in pattern.rstrip("/")
        regex = re.compile(_glob_to_regex(pattern.strip("/")))
        rules.append((regex, anchored, setting))

    def is_lfs(path: str) -> bool:
        verdict = False
        basename = path.rsplit("/", 1)[-1]
        for regex, anchored, setting in rules:
            if regex.fullmatch(path if anchored else basename):
                verdict = setting
        return verdict

    return is_lfs


def scan_tree(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Regular files under root as (repo path, disk path, stat), skipping hidden ones but .gitattributes."""
    found: list[tuple[str, Path, os.stat_result]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop: list each real directory once
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") and not (rel_dir == "" and name == ".gitattributes"):
                continue
            repo_path = f"{rel_dir}/{name}" if rel_dir else name
            try:
                repo_path.encode("utf-8")
            except UnicodeEncodeError:
                logger.warning("hub emulator: skipping %r, its name is not valid UTF-8", repo_path)
                continue
            disk_path = Path(dirpath, name)
            st = os.stat(disk_path)
            if stat.S_ISREG(st.st_mode):
                found.append((repo_path, disk_path, st))
    return found


def tree_oid(children: Iterable[Entry]) -> str:
    # A git tree object over (mode, name, oid): a faithful enough directory identity for listings.
    body = b"".join(
        b"%s %s\0%s"
        % (b"40000" if e.is_dir else b"100644", e.path.rsplit("/", 1)[-1].encode(), bytes.fromhex(e.oid))
        for e in children
    )
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
