"""``HubEmulator``: the two origins (hub, CDN), their routes, access control, signed URLs and the knobs a
test turns while it runs."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import html
import json
import logging
import math
import os
import random
import re
import secrets
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from vfs.hub.emulator.faults import Fault, RequestRecord
from vfs.hub.emulator.http import (
    UNSATISFIABLE,
    FileBody,
    LiveRecord,
    Response,
    Server,
    hub_error,
    json_response,
    parse_range,
    truthy,
)
from vfs.hub.emulator.repo import (
    Blob,
    Commit,
    Entry,
    file_digest,
    git_blob_sha1,
    iso,
    lfs_matcher,
    lfs_pointer,
    path_key,
    scan_tree,
    tree_oid,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__package__)  # one log for the whole emulator: "vfs.hub.emulator"

_EXPAND_PAGE_SIZE = 50  # the real Hub's page size for expanded tree listings
_HEX40 = re.compile(r"[0-9a-f]{40}")


class HubEmulator:
    """A dataset repo served over HTTP from local directories, with fault knobs (see the module docstring).

    ``required_token``, ``gated``, ``signed_url_ttl_s``, ``tree_page_size`` and ``cdn_bytes_per_s`` may be
    changed while running (a new ``cdn_bytes_per_s`` applies to responses that start afterwards).
    Access model: ``required_token`` alone makes the repo private (no token: 401 ``RepoNotFound``; another
    token: 404 ``RepoNotFound``). ``gated`` keeps metadata (info, tree, paths-info) public but gates file
    downloads: no token, 401 ``GatedRepo``; a token other than ``required_token`` (when one is set), 403
    ``GatedRepo``; without ``required_token`` any token is approved (an "auto" gate).

    ``cdn_bytes_per_s`` limits each CDN response body to that rate, as a CDN limits one connection (None:
    unlimited, the default); see the module docstring. Benchmarks use it so that "the network" is not free.
    ``html_directory_index`` (off by default) is a bench-only convenience the real Hub does not offer: a GET
    of ``/datasets/{repo}/resolve/{rev}/{dir}/`` (trailing slash) answers a web server's HTML index page
    of the directory's children, so that rclone's http backend, which lists directories only by parsing
    such pages, can mount a resolve URL and read the same bytes (files still resolve, and LFS files
    redirect to the CDN, as usual).
    ``seed`` seeds the RNG behind ``Fault.probability``. ``max_records`` bounds the request log (oldest
    dropped; None keeps all); ``bytes_sent`` and ``request_count`` count the retained records.
    Signed CDN URLs carry ``Expires`` in whole epoch seconds like the real CDN, but expire at the exact
    ``signed_url_ttl_s`` (kept server-side), so sub-second TTLs work in tests.
    """

    def __init__(
        self,
        repo_id: str = "lmms-lab/LLaVA-Video-178K",
        *,
        lfs_threshold_bytes: int = 10 * 2**20,
        signed_url_ttl_s: float = 3600.0,
        tree_page_size: int = 1000,
        required_token: str | None = None,
        gated: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        seed: int = 0,
        max_records: int | None = 1_000_000,
        cdn_bytes_per_s: float | None = None,
        html_directory_index: bool = False,
    ) -> None:
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"repo_id must look like 'namespace/name', not {repo_id!r}")
        if tree_page_size < 1:
            raise ValueError("tree_page_size must be at least 1")
        if cdn_bytes_per_s is not None and not cdn_bytes_per_s > 0:
            raise ValueError(f"cdn_bytes_per_s must be positive (or None: unlimited), not {cdn_bytes_per_s}")
        self.cdn_bytes_per_s = cdn_bytes_per_s
        self.html_directory_index = html_directory_index
        self.repo_id = repo_id
        self.lfs_threshold_bytes = lfs_threshold_bytes
        self.signed_url_ttl_s = signed_url_ttl_s
        self.tree_page_size = tree_page_size
        self.required_token = required_token
        self.gated = gated
        self.host = host
        self._port = port
        self._cdn_port = cdn_port
        self._repo_hash = hashlib.sha256(f"datasets/{repo_id}".encode()).hexdigest()[:32]
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._commits: dict[str, Commit] = {}
        self._commit_order: list[str] = []
        self._branches: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._lfs_blobs: dict[str, tuple[Blob, str]] = {}  # sha256 -> (blob, a repo path holding it)
        self._signed: dict[str, tuple[float, int, str]] = {}  # signature -> (deadline, Expires, repo path)
        self._faults: list[Fault] = []
        self._rng = random.Random(seed)
        # Bounded so a long-running mirror does not grow without limit; counters cover retained records.
        self._records: deque[LiveRecord] = deque(maxlen=max_records)
        self.stopping = threading.Event()
        self._servers: list[Server] = []
        self._serve_threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._servers:
            raise RuntimeError("hub emulator already started")
        self.stopping.clear()
        hub = Server((self.host, self._port), self, "hub")
        try:
            cdn = Server((self.host, self._cdn_port), self, "cdn")
        except OSError:
            hub.server_close()
            raise
        self._servers = [hub, cdn]
        for server in self._servers:
            # A short poll interval keeps stop() quick; the loop is idle otherwise.
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"hub-emulator-{server.origin}-{server.server_port}",
            )
            thread.daemon = True
            thread.start()
            self._serve_threads.append(thread)
        logger.info("hub emulator serving %s at %s (CDN %s)", self.repo_id, self.endpoint, self.cdn_endpoint)

    def stop(self) -> None:
        if not self._servers:
            return
        self.stopping.set()  # interrupts delays, stalls and trickles
        for server in self._servers:
            server.shutdown()
        for server in self._servers:
            server.close_connections(join_timeout_s=5.0)
            server.server_close()
        for thread in self._serve_threads:
            thread.join(5.0)
        self._servers = []
        self._serve_threads = []
        logger.info("hub emulator for %s stopped", self.repo_id)

    def __enter__(self) -> HubEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _server(self, index: int) -> Server:
        if not self._servers:
            raise RuntimeError("hub emulator is not started")
        return self._servers[index]

    @property
    def endpoint(self) -> str:
        """The hub origin, e.g. ``http://127.0.0.1:40123`` (what ``HF_ENDPOINT`` names)."""
        return f"http://{self.host}:{self._server(0).server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://{self.host}:{self._server(1).server_address[1]}"

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted by both listeners since start (keep-alive reuse shows as few)."""
        return sum(s.connections_accepted for s in self._servers)

    # ---- repo content ---------------------------------------------------------------------------

    def commit(
        self, root_dir: Path, branch: str = "main", tags: Iterable[str] = (), *, message: str | None = None
    ) -> str:
        """Snapshot ``root_dir`` as a new commit on ``branch`` (its head becomes the parent); returns the sha.

        Files are referenced in place and must not change afterwards. A file is LFS if the root
        ``.gitattributes`` gives it ``filter=lfs`` or it is larger than ``lfs_threshold_bytes``.
        """
        root = Path(root_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"hub emulator root {root} is not a directory")
        started = time.monotonic()
        scanned = scan_tree(root)
        is_lfs = lfs_matcher(root)
        lfs_flags = [is_lfs(p) or st.st_size > self.lfs_threshold_bytes for p, _, st in scanned]
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub-emulator-hash") as pool:
            digests = list(
                pool.map(
                    lambda item: file_digest(item[0][1], item[0][2], "sha256" if item[1] else "git"),
                    zip(scanned, lfs_flags, strict=True),
                )
            )
        entries: dict[str, Entry] = {}
        children: dict[str, list[Entry]] = {}
        dirs: set[str] = set()
        total_bytes = 0
        for (repo_path, disk_path, st), lfs, digest in zip(scanned, lfs_flags, digests, strict=True):
            if lfs:
                pointer = lfs_pointer(digest, st.st_size)
                blob = Blob(disk_path, st.st_size, git_blob_sha1(pointer), digest, len(pointer))
            else:
                blob = Blob(disk_path, st.st_size, digest, None, None)
            entries[repo_path] = Entry(repo_path, blob.oid, blob)
            total_bytes += st.st_size
            parts = repo_path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        # Directory oids bottom-up: deepest first, so every child oid exists before its parent's.
        for entry in entries.values():
            children.setdefault(entry.path.rpartition("/")[0], []).append(entry)
        for d in sorted(dirs, key=lambda p: -p.count("/")):
            kids = sorted(children.get(d, []), key=lambda e: path_key(e.path))
            entries[d] = Entry(d, tree_oid(kids), None)
            children.setdefault(d.rpartition("/")[0], []).append(entries[d])
        for kids in children.values():
            kids.sort(key=lambda e: path_key(e.path))
        root_oid = tree_oid(children.get("", []))
        ordered = sorted(entries.values(), key=lambda e: path_key(e.path))
        keys = [path_key(e.path) for e in ordered]
        tags = list(tags)

        with self._lock:
            parent = self._branches.get(branch)
            sha = hashlib.sha1(f"commit\ntree {root_oid}\nparent {parent or ''}\n".encode()).hexdigest()
            if sha not in self._commits:
                parent_commit = self._commits.get(parent) if parent else None
                last_commit: dict[str, str] = {}
                for path, entry in entries.items():
                    old = parent_commit.entries.get(path) if parent_commit else None
                    if parent_commit is not None and old is not None and old.oid == entry.oid:
                        last_commit[path] = parent_commit.last_commit[path]
                    else:
                        last_commit[path] = sha
                self._commits[sha] = Commit(
                    sha=sha,
                    parent=parent,
                    title=message or f"Commit {len(self._commit_order) + 1}",
                    date=datetime.now(UTC),
                    entries=entries,
                    ordered=ordered,
                    keys=keys,
                    children=children,
                    last_commit=last_commit,
                )
                self._commit_order.append(sha)
                for entry in entries.values():
                    if entry.blob is not None and entry.blob.lfs_sha256 is not None:
                        self._lfs_blobs.setdefault(entry.blob.lfs_sha256, (entry.blob, entry.path))
            self._branches[branch] = sha
            for tag in tags:
                self._tags[tag] = sha
        logger.info(
            "hub emulator: committed %s (%d files, %d LFS, %d bytes) as %s on %s in %.2f s",
            root,
            len(scanned),
            sum(lfs_flags),
            total_bytes,
            sha,
            branch,
            time.monotonic() - started,
        )
        return sha

    def move_branch(self, branch: str, sha: str) -> None:
        """Point ``branch`` (created if new) at an existing commit."""
        with self._lock:
            if sha not in self._commits:
                raise ValueError(f"unknown commit {sha!r}")
            self._branches[branch] = sha
        logger.info("hub emulator: branch %s moved to %s", branch, sha)

    def add_tag(self, tag: str, sha: str) -> None:
        with self._lock:
            if sha not in self._commits:
                raise ValueError(f"unknown commit {sha!r}")
            self._tags[tag] = sha

    def head(self, revision: str = "main") -> str:
        """The commit sha a branch, tag or sha names (KeyError if none)."""
        commit = self._resolve_revision(revision)
        if commit is None:
            raise KeyError(revision)
        return commit.sha

    @property
    def commits(self) -> list[str]:
        """Commit shas in the order they were made."""
        with self._lock:
            return list(self._commit_order)

    # ---- faults and the request log ------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot, in arrival order. A request is listed from the moment it was read; its status and
        bytes are final once its response has ended."""
        with self._lock:
            return [r.freeze() for r in self._records]

    def reset_log(self) -> None:
        with self._lock:
            self._records.clear()

    def _select(self, origin: str | None, file: str | None, method: str | None) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if (origin is None or r.origin == origin)
            and (file is None or r.file == file)
            and (method is None or r.method == method.upper())
        ]

    def bytes_sent(self, *, origin: str | None = None, file: str | None = None) -> int:
        """Body bytes sent (files, JSON and error bodies), filtered by origin and repo file path."""
        return sum(r.bytes_sent for r in self._select(origin, file, None))

    def request_count(
        self, *, origin: str | None = None, file: str | None = None, method: str | None = None
    ) -> int:
        return len(self._select(origin, file, method))

    def register(self, record: LiveRecord) -> None:
        with self._lock:
            self._records.append(record)

    def pick_faults(
        self, origin: str, method: str, file: str | None, categories: tuple[str, ...], resp: Response
    ) -> dict[str, Fault]:
        has_body = method == "GET" and resp.file_body is not None and resp.file_body.length > 0
        ranged = has_body and resp.status == 206
        picked: dict[str, Fault] = {}
        with self._lock:
            for fault in self._faults:
                category = fault.category
                if category not in categories or category in picked:
                    continue
                if fault.count is not None and fault.fired >= fault.count:
                    continue
                if fault.origin != "any" and fault.origin != origin:
                    continue
                if fault.method is not None and fault.method.upper() != method:
                    continue
                if file is None:
                    if fault.file_glob != "*":
                        continue
                elif not fnmatch.fnmatchcase(file, fault.file_glob):
                    continue
                if fault.kind == "expire_url" and origin != "cdn":
                    continue
                if category == "body" and not has_body:
                    continue
                if fault.kind in ("ignore_range", "wrong_range") and not ranged:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                picked[category] = fault
        for fault in picked.values():
            logger.info(
                "hub emulator: fault %s fired (%d/%s) on %s %s file=%s",
                fault.kind,
                fault.fired,
                "unlimited" if fault.count is None else fault.count,
                origin,
                method,
                file,
            )
        return picked

    def fault_response(self, fault: Fault, resp: Response) -> Response:
        if fault.kind == "rate_limit":
            wait_s = _seconds_text(fault.retry_after_s)
            out = json_response(
                429,
                {"error": "You have been rate-limited; you can retry this action in a few moments."},
                [
                    ("RateLimit", f'"resolvers";r=0;t={wait_s}'),
                    ("RateLimit-Policy", '"fixed window";"resolvers";q=3000;w=300'),
                    ("Retry-After", str(wait_s)),
                ],
            )
        elif fault.kind == "expire_url":
            out = _cdn_denied("Request has expired")
        else:
            out = json_response(fault.status, {"error": f"emulated fault: HTTP {fault.status}"})
        out.file = resp.file
        return out

    # ---- routing --------------------------------------------------------------------------------

    def route(
        self, origin: str, method: str, url_path: str, query: str, headers: Message, body: bytes
    ) -> Response:
        segments = [unquote(s) for s in url_path.split("/")[1:]]
        if origin == "cdn":
            return self._route_cdn(method, segments, query, headers.get("Range"))
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        token = _bearer_token(headers.get("Authorization"))
        has_auth = headers.get("Authorization") is not None
        if len(segments) >= 5 and segments[0] == "datasets" and segments[3] == "resolve":
            repo = f"{segments[1]}/{segments[2]}"
            return self._resolve(method, repo, segments[4], "/".join(segments[5:]), headers, token, has_auth)
        if (len(segments) >= 3 and segments[2] == "resolve") or (
            segments and segments[0] in ("spaces", "models")
        ):
            return _repo_not_found(has_auth)  # model or space repos: this emulator serves one dataset
        if len(segments) >= 4 and segments[0] == "api" and segments[1] in ("datasets", "models", "spaces"):
            if segments[1] != "datasets":
                return _repo_not_found(has_auth)
            repo = f"{segments[2]}/{segments[3]}"
            rest = segments[4:]
            if method not in ("GET", "HEAD", "POST"):
                return hub_error(405, None, "Method not allowed")
            if not rest and method != "POST":
                return self._info(repo, None, params, token, has_auth)
            if len(rest) == 2 and rest[0] == "revision" and method != "POST":
                return self._info(repo, rest[1], params, token, has_auth)
            if len(rest) >= 2 and rest[0] == "tree" and method != "POST":
                return self._tree(
                    repo, rest[1], "/".join(rest[2:]), url_path, params, headers, token, has_auth
                )
            if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                return self._paths_info(repo, rest[1], headers, body, token, has_auth)
            if rest == ["refs"] and method != "POST":
                return self._refs(repo, token, has_auth)
        return hub_error(404, None, "Not Found")

    def _access_error(
        self, repo: str, token: str | None, has_auth: bool, *, download: bool
    ) -> Response | None:
        if repo != self.repo_id:
            return _repo_not_found(has_auth)
        required = self.required_token
        token_ok = required is not None and token is not None and hmac.compare_digest(token, required)
        if self.gated:
            if not download:
                return None
            if not has_auth:
                return hub_error(
                    401,
                    "GatedRepo",
                    f"Access to dataset {repo} is restricted. You must have access to it and be authenticated"
                    " to access it. Please log in.",
                )
            if required is not None and not token_ok:
                return hub_error(
                    403,
                    "GatedRepo",
                    f"Access to dataset {repo} is restricted and you are not in the authorized list.",
                )
            return None
        if required is not None and not token_ok:
            return _repo_not_found(has_auth)
        return None

    def _resolve_revision(self, revision: str) -> Commit | None:
        with self._lock:
            sha = self._branches.get(revision) or self._tags.get(revision)
            if sha is None and _HEX40.fullmatch(revision) and revision in self._commits:
                sha = revision
            return self._commits.get(sha) if sha else None

    def _resolve(
        self,
        method: str,
        repo: str,
        revision: str,
        path: str,
        headers: Message,
        token: str | None,
        has_auth: bool,
    ) -> Response:
        if method not in ("GET", "HEAD"):
            return hub_error(405, None, "Method not allowed")
        denied = self._access_error(repo, token, has_auth, download=True)
        if denied is not None:
            denied.file = path or None
            return denied
        commit = self._resolve_revision(revision)
        if commit is None:
            resp = hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            resp.file = path or None
            return resp
        entry = commit.entries.get(path)
        commit_header = ("X-Repo-Commit", commit.sha)
        if self.html_directory_index and (path == "" or path.endswith("/")):
            listed = self._html_index(commit, path.strip("/"), commit_header)
            if listed is not None:
                return listed
        if entry is None or entry.blob is None:
            resp = hub_error(404, "EntryNotFound", f'{path} does not exist on "{revision}"', [commit_header])
            resp.file = path or None
            return resp
        blob = entry.blob
        if blob.lfs_sha256 is not None:
            location = self._signed_url(blob.lfs_sha256, path, headers.get("Host"))
            return Response(
                302,
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Location", location),
                    commit_header,
                    ("X-Linked-Etag", f'"{blob.lfs_sha256}"'),
                    ("X-Linked-Size", str(blob.size_bytes)),
                    ("Vary", "Origin, Accept"),
                ],
                file=path,
            )
        return _file_response(
            blob,
            headers.get("Range"),
            [commit_header, ("ETag", f'"{blob.oid}"'), ("Content-Type", "application/octet-stream")],
            file=path,
        )

    def _html_index(self, commit: Commit, directory: str, commit_header: tuple[str, str]) -> Response | None:
        """A web server's directory index page for ``directory`` (None if it is not one): one relative link
        per child, sub-directories ending in ``/``. Bench-only (``html_directory_index``)."""
        if directory and (directory not in commit.entries or not commit.entries[directory].is_dir):
            return None
        links = []
        for child in commit.children.get(directory, []):
            name = child.path.rsplit("/", 1)[-1] + ("/" if child.is_dir else "")
            links.append(f'<li><a href="{quote(name)}">{html.escape(name)}</a></li>')
        title = html.escape(f"Index of /{directory}")
        body = (
            f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body><h1>{title}</h1><ul>\n"
            + "\n".join(links)
            + "\n</ul></body></html>\n"
        )
        return Response(200, [("Content-Type", "text/html; charset=utf-8"), commit_header], body.encode())

    def _info(
        self, repo: str, revision: str | None, params: dict[str, str], token: str | None, has_auth: bool
    ) -> Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        commit = self._resolve_revision(revision or "main")
        if commit is None:
            return hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision or 'main'}")
        with self._lock:
            created = self._commits[self._commit_order[0]].date
        with_blobs = truthy(params.get("blobs"))
        siblings: list[dict[str, Any]] = []
        used_bytes = 0
        for entry in commit.ordered:
            if entry.blob is None:
                continue
            used_bytes += entry.blob.size_bytes
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if with_blobs:
                sibling["size"] = entry.blob.size_bytes
                sibling["blobId"] = entry.blob.oid
                if entry.blob.lfs_sha256 is not None:
                    sibling["lfs"] = {
                        "sha256": entry.blob.lfs_sha256,
                        "size": entry.blob.size_bytes,
                        "pointerSize": entry.blob.pointer_size_bytes,
                    }
            siblings.append(sibling)
        gated: bool | str = False
        if self.gated:
            gated = "manual" if self.required_token is not None else "auto"
        payload = {
            "_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": iso(commit.date),
            "createdAt": iso(created),
            "private": self.required_token is not None and not self.gated,
            "gated": gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": used_bytes,
        }
        return json_response(200, payload)

    def _entry_json(self, entry: Entry, commit: Commit, expand: bool) -> dict[str, Any]:
        item: dict[str, Any]
        if entry.blob is None:
            item = {"type": "directory", "oid": entry.oid, "size": 0, "path": entry.path}
        else:
            item = {"type": "file", "oid": entry.oid, "size": entry.blob.size_bytes, "path": entry.path}
            if entry.blob.lfs_sha256 is not None:
                item["lfs"] = {
                    "oid": entry.blob.lfs_sha256,
                    "size": entry.blob.size_bytes,
                    "pointerSize": entry.blob.pointer_size_bytes,
                }
        if expand:
            with self._lock:
                last = self._commits[commit.last_commit[entry.path]]
            item["lastCommit"] = {"id": last.sha, "title": last.title, "date": iso(last.date)}
        return item

    def _tree(
        self,
        repo: str,
        revision: str,
        sub: str,
        url_path: str,
        params: dict[str, str],
        headers: Message,
        token: str | None,
        has_auth: bool,
    ) -> Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        commit = self._resolve_revision(revision)
        if commit is None:
            return hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        sub = sub.strip("/")
        commit_header = ("X-Repo-Commit", commit.sha)
        if sub and (sub not in commit.entries or not commit.entries[sub].is_dir):
            return hub_error(404, "EntryNotFound", f'{sub} does not exist on "{revision}"', [commit_header])
        recursive = truthy(params.get("recursive"))
        expand = truthy(params.get("expand"))
        page_size = self.tree_page_size if not expand else min(self.tree_page_size, _EXPAND_PAGE_SIZE)
        if params.get("limit", "").isdigit() and int(params["limit"]) > 0:
            page_size = min(page_size, int(params["limit"]))
        listing, keys = commit.subtree(sub, recursive)
        start = 0
        if params.get("cursor"):
            try:
                decoded = json.loads(base64.urlsafe_b64decode(params["cursor"].encode()))
                start = bisect_right(keys, path_key(str(decoded["file_name"])))
            except (ValueError, KeyError, TypeError):
                return hub_error(400, None, "Invalid cursor")
        page = listing[start : start + page_size]
        extra = [commit_header]
        if start + page_size < len(listing):
            cursor = base64.urlsafe_b64encode(json.dumps({"file_name": page[-1].path}).encode()).decode()
            next_params = {k: v for k, v in params.items() if k != "cursor"}
            next_params["cursor"] = cursor
            host = headers.get("Host") or self.endpoint.split("://", 1)[1]
            extra.append(("Link", f'<http://{host}{url_path}?{urlencode(next_params)}>; rel="next"'))
        return json_response(200, [self._entry_json(e, commit, expand) for e in page], extra)

    def _paths_info(
        self, repo: str, revision: str, headers: Message, body: bytes, token: str | None, has_auth: bool
    ) -> Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        commit = self._resolve_revision(revision)
        if commit is None:
            return hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        paths: list[str]
        expand = False
        try:
            if "json" in (headers.get("Content-Type") or ""):
                payload = json.loads(body or b"{}")
                paths = [str(p) for p in payload.get("paths", [])]
                expand = bool(payload.get("expand", False))
            else:
                form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
                paths = form.get("paths", [])
                expand = truthy((form.get("expand") or ["false"])[-1])
        except (ValueError, UnicodeDecodeError, AttributeError):
            return hub_error(400, None, "Invalid paths-info request body")
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        for raw in paths:
            path = raw.strip("/")
            entry = commit.entries.get(path)
            if entry is None or path in seen:
                continue
            seen.add(path)
            items.append(self._entry_json(entry, commit, expand))
        return json_response(200, items, [("X-Repo-Commit", commit.sha)])

    def _refs(self, repo: str, token: str | None, has_auth: bool) -> Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        with self._lock:
            branches = dict(self._branches)
            tags = dict(self._tags)
        payload = {
            "branches": [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                for b, s in sorted(branches.items())
                if not b.startswith("refs/")
            ],
            "converts": [],
            "tags": [
                {"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in sorted(tags.items())
            ],
            "pullRequests": [
                {"name": b, "ref": b, "targetCommit": s}
                for b, s in sorted(branches.items())
                if b.startswith("refs/pr/")
            ],
        }
        return json_response(200, payload)

    # ---- CDN ------------------------------------------------------------------------------------

    def _signature(self, url_path: str, expires: int, nonce: str) -> str:
        return hmac.new(self._secret, f"{url_path}\n{expires}\n{nonce}".encode(), hashlib.sha256).hexdigest()

    def _signed_url(self, sha256: str, repo_path: str, host_header: str | None) -> str:
        # Expires is whole epoch seconds as on the real CDN; the exact deadline (sub-second TTLs in tests)
        # is kept here by signature, so a URL dies on time and a changed TTL never alters issued URLs.
        deadline = time.time() + self.signed_url_ttl_s
        expires = math.ceil(deadline)
        url_path = f"/{self._repo_hash}/{sha256}"
        nonce = secrets.token_hex(8)
        signature = self._signature(url_path, expires, nonce)
        with self._lock:
            if len(self._signed) > 100_000:
                now = time.time()
                self._signed = {k: v for k, v in self._signed.items() if v[1] >= now}
            self._signed[signature] = (deadline, expires, repo_path)
        # The CDN is named by the host the client used for the hub, so the redirect works under any alias.
        hostname = host_header.rsplit(":", 1)[0] if host_header else self.host
        port = self._server(1).server_address[1]
        query = urlencode({"Expires": expires, "Key-Pair-Id": nonce, "Signature": signature})
        return f"http://{hostname}:{port}{url_path}?{query}"

    def _route_cdn(self, method: str, segments: list[str], query: str, range_header: str | None) -> Response:
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        url_path = "/" + "/".join(segments)
        file: str | None = None
        known: tuple[Blob, str] | None = None
        if len(segments) == 2 and segments[0] == self._repo_hash:
            with self._lock:
                known = self._lfs_blobs.get(segments[1])
            file = known[1] if known else None
        try:
            expires = int(params.get("Expires", ""))
        except ValueError:
            return _with_file(_cdn_denied("Missing or invalid Expires"), file)
        expected = self._signature(url_path, expires, params.get("Key-Pair-Id", ""))
        if not hmac.compare_digest(expected, params.get("Signature", "")):
            return _with_file(_cdn_denied("Invalid signature"), file)
        with self._lock:
            issued = self._signed.get(expected)
        if issued is not None:
            file = issued[2]
        deadline = issued[0] if issued is not None else float(expires)
        if time.time() >= deadline:
            return _with_file(_cdn_denied("Request has expired"), file)
        if method not in ("GET", "HEAD"):
            return _with_file(_cdn_denied("Method not allowed"), file)
        if known is None:  # a signature only exists for a committed object, so this cannot really happen
            return _with_file(Response(404, [("Content-Type", "text/plain")], b"NoSuchKey"), file)
        blob = known[0]
        return _file_response(
            blob,
            range_header,
            [("ETag", f'"{blob.etag}"'), ("Content-Type", "application/octet-stream")],
            file=file,
        )


def _seconds_text(seconds: float) -> str:
    """Whole seconds as the real Hub sends them; a fraction only when asked for one (fast tests)."""
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


def _with_file(resp: Response, file: str | None) -> Response:
    resp.file = file
    return resp


def _cdn_denied(message: str) -> Response:
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"
    )
    return Response(403, [("Content-Type", "application/xml")], body.encode())


def _repo_not_found(has_auth: bool) -> Response:
    # Without a token the Hub answers 401 so as not to reveal private repos; the error code says why.
    return hub_error(401 if not has_auth else 404, "RepoNotFound", "Repository not found")


def _bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else header


def _file_response(
    blob: Blob, range_header: str | None, headers: list[tuple[str, str]], *, file: str | None
) -> Response:
    size = blob.size_bytes
    headers = [*headers, ("Accept-Ranges", "bytes")]
    span = parse_range(range_header, size)
    if span is None:
        return Response(200, headers, file_body=FileBody(blob.disk_path, 0, size, size), file=file)
    if span == UNSATISFIABLE:
        return Response(416, [*headers, ("Content-Range", f"bytes */{size}")], file=file)
    first, last = span
    return Response(
        206,
        [*headers, ("Content-Range", f"bytes {first}-{last}/{size}")],
        file_body=FileBody(blob.disk_path, first, last - first + 1, size),
        file=file,
    )
