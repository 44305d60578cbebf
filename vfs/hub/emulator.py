"""A local Hugging Face Hub emulator: directories served as a *dataset* repo over HTTP, with fault knobs.

The unmodified ``huggingface_hub`` client and the daemon's own Hub client talk to it exactly as to the real
Hub (see /work/shared/HUB_PROTOCOL.md, "Emulator"). Two listeners on ``host``: the HUB origin (what
``HF_ENDPOINT`` names: resolve, dataset info, tree, paths-info, refs) and a CDN origin on another port that
serves LFS objects through signed, expiring URLs. Tests, the demo, benchmarks and air-gapped mirrors use it.

Invariants:
- ``commit`` snapshots a directory tree as an immutable commit. Files are referenced in place, never copied,
  and hashed once (git blob sha1; sha256 for LFS files); they must not change afterwards. Every answer for a
  commit sha is therefore immutable; only branches move (``commit``, ``move_branch``).
- Bodies are streamed from disk (``sendfile``, or a chunked copy when a fault shapes the body) and a Range is
  honoured by seeking: a file is never read whole into memory.
- Every response carries ``Content-Length`` (HTTP/1.1 keep-alive), never ``Content-Encoding``, and never a
  Xet signal (``X-Xet-*`` headers, ``Link rel="xet-auth"``, ``xetHash``): the client would try a Xet server.
- Errors carry ``X-Error-Code`` as the real Hub does; the CDN answers 403 for a bad or expired signature.
- Faults fire only where they can do what they say (a body fault needs a file body, a range fault a 206),
  so a fault's ``count`` is never spent on a request it could not affect.
- One DEBUG log line per request and an INFO line per fired fault. Tokens and signed-URL query strings are
  never logged or recorded: records and log lines carry the URL path only.
- Bandwidth knob: ``cdn_bytes_per_s`` (default None: unlimited) paces every CDN response body as a real
  CDN limits one connection (the Hub's gives about 40-60 MB/s per connection). Each response has its own
  budget, starting empty after the headers, so the body byte at offset ``k`` leaves no earlier than
  ``(k + 1) / cdn_bytes_per_s`` seconds later: N bytes take at least N / rate. Concurrent responses (several
  connections) each get the full rate; there is no shared cap. The hub origin is never paced.
- ``html_directory_index`` (default off; benchmarks only, the real Hub has no such page): resolve URLs of
  directories ending in ``/`` answer an HTML index page linking the children, for rclone's http backend.
"""

from __future__ import annotations

import base64
import contextlib
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
import select
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

logger = logging.getLogger(__name__)

FAULT_KINDS = frozenset(
    {
        "status",
        "rate_limit",
        "delay",
        "stall",
        "trickle",
        "truncate",
        "reset",
        "ignore_range",
        "wrong_range",
        "flip_byte",
        "expire_url",
    }
)
_ORIGINS = frozenset({"hub", "cdn", "any"})

_COPY_CHUNK_BYTES = 256 * 1024
_HASH_CHUNK_BYTES = 1 << 20
_MAX_REQUEST_BODY_BYTES = 4 << 20
# Idle keep-alive connections are closed after this, like any real server; long enough never to bite a test.
_IDLE_TIMEOUT_S = 300.0
_EXPAND_PAGE_SIZE = 50  # the real Hub's page size for expanded tree listings
_TRICKLE_DEFAULT_PIECE_BYTES = 4096
_TRICKLE_DEFAULT_PAUSE_S = 0.01
# A paced body goes out in pieces of about this many seconds of its rate: coarse enough that sleeping costs
# little CPU (100 wake-ups a second per connection), fine enough that the rate is smooth at the client.
_PACE_QUANTUM_S = 0.01
_PACE_MIN_PIECE_BYTES = 16 * 1024
_HEX40 = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


# --------------------------------------------------------------------------------------------------
# Public records and knobs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it, appended when its response is finished."""

    origin: str  # "hub" | "cdn"
    method: str
    path: str  # URL path as sent (percent-encoded), never the query string
    file: str | None  # the repo file path the request was about (resolve or CDN), if any
    range: str | None
    auth: bool  # an Authorization header was present
    status: int  # 0 if no response was sent (connection reset before the headers)
    bytes_sent: int  # body bytes written to the socket
    fault: str | None  # the fault kinds that fired on this request, comma-separated


@dataclass
class Fault:
    """A deliberate misbehaviour, matched per request by origin, method and repo file path.

    Kinds (``after_bytes`` counts body bytes; body faults keep the body incomplete, at most size-1 bytes):
      status        answer ``status`` (5xx/4xx) with a JSON error body
      rate_limit    429 with ``RateLimit: "resolvers";r=0;t=<s>`` and ``Retry-After: <s>``: whole seconds as
                    on the real Hub when ``retry_after_s`` is integral, else the fraction (``t=0.25``; fast
                    tests; huggingface_hub's own parser then reads the integer part)
      delay         sleep ``delay_s`` before the headers, then answer normally
      stall         send ``after_bytes`` of the body, sleep ``delay_s``, close the connection
      trickle       send the whole body in pieces of ``after_bytes`` (4 KiB if 0) with ``delay_s`` (10 ms if
                    0) between pieces
      truncate      declare the full ``Content-Length``, send ``after_bytes``, close
      reset         TCP RST: before the headers if ``after_bytes`` is 0, else after that many body bytes
      ignore_range  answer a Range request with 200 and the full body
      wrong_range   answer a Range request with 206 for a shifted range (the body matches the header, not
                    the request); a whole-file range gets a wrong total instead
      flip_byte     flip one byte at body offset ``after_bytes`` (the last byte if the body is shorter)
      expire_url    the CDN answers 403 as for an expired signature
    ``file_glob`` is an ``fnmatch`` pattern (``*`` crosses ``/``) against the repo file path; a request that
    names no file (tree, info, paths-info) matches only ``"*"``. ``count=None`` fires without limit.
    ``probability`` draws from the emulator's seeded RNG, so a random fault mix replays exactly.
    """

    kind: str
    origin: str = "any"
    method: str | None = None
    file_glob: str = "*"
    count: int | None = 1
    probability: float = 1.0
    status: int = 503
    retry_after_s: float = 1.0
    delay_s: float = 0.0
    after_bytes: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.origin not in _ORIGINS:
            raise ValueError(f"unknown fault origin {self.origin!r}; expected hub, cdn or any")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability {self.probability} is not within [0, 1]")
        if self.count is not None and self.count < 0:
            raise ValueError(f"fault count {self.count} is negative")
        if self.after_bytes < 0 or self.delay_s < 0 or self.retry_after_s < 0:
            raise ValueError("fault after_bytes, delay_s and retry_after_s must not be negative")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"status fault needs a 4xx or 5xx status, not {self.status}")

    @property
    def category(self) -> str:
        """At most one fault per category fires on a request: a delay can combine with a body fault."""
        if self.kind == "delay":
            return "delay"
        if self.kind in ("status", "rate_limit", "expire_url") or (
            self.kind == "reset" and not self.after_bytes
        ):
            return "answer"
        return "body"


# --------------------------------------------------------------------------------------------------
# The repo model: blobs, entries, commits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Blob:
    disk_path: Path
    size_bytes: int
    oid: str  # git blob sha1 of the content, or of the LFS pointer for LFS files (what the tree shows)
    lfs_sha256: str | None
    pointer_size_bytes: int | None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.oid


@dataclass(frozen=True)
class _Entry:
    path: str
    oid: str
    blob: _Blob | None  # None for a directory

    @property
    def is_dir(self) -> bool:
        return self.blob is None


def _path_key(path: str) -> tuple[str, ...]:
    # Sorting by components lists a directory right before its contents (pre-order), so every subtree is
    # one contiguous slice of the sorted listing.
    return tuple(path.split("/"))


@dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    title: str
    date: datetime
    entries: dict[str, _Entry]
    ordered: list[_Entry]  # every entry, sorted by _path_key
    keys: list[tuple[str, ...]]
    children: dict[str, list[_Entry]]  # directory path ("" = root) -> direct children, sorted
    last_commit: dict[str, str]  # path -> sha of the commit that last changed it

    def subtree(self, sub: str, recursive: bool) -> tuple[list[_Entry], list[tuple[str, ...]]]:
        if not recursive:
            kids = self.children.get(sub, [])
            return kids, [_path_key(e.path) for e in kids]
        if not sub:
            return self.ordered, self.keys
        key = _path_key(sub)
        lo = bisect_right(self.keys, key)
        hi = bisect_left(self.keys, (*key, "\U0010ffff"), lo)
        return self.ordered[lo:hi], self.keys[lo:hi]


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------------
# Hashing (cached by file identity) and .gitattributes
# --------------------------------------------------------------------------------------------------

_HASH_CACHE: dict[tuple[Any, ...], str] = {}
_HASH_CACHE_LOCK = threading.Lock()


def _file_digest(disk_path: Path, st: os.stat_result, kind: str) -> str:
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


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size_bytes: int) -> bytes:
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


def _lfs_matcher(root: Path) -> Callable[[str], bool]:
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


def _scan_tree(root: Path) -> list[tuple[str, Path, os.stat_result]]:
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


def _tree_oid(children: Iterable[_Entry]) -> str:
    # A git tree object over (mode, name, oid): a faithful enough directory identity for listings.
    body = b"".join(
        b"%s %s\0%s"
        % (b"40000" if e.is_dir else b"100644", e.path.rsplit("/", 1)[-1].encode(), bytes.fromhex(e.oid))
        for e in children
    )
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class _FileBody:
    disk_path: Path
    start: int
    length: int
    total: int


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file_body: _FileBody | None = None
    file: str | None = None  # the repo file the request was about

    @property
    def content_length(self) -> int:
        return self.file_body.length if self.file_body is not None else len(self.body)


@dataclass
class _LiveRecord:
    """The record of a request in flight, registered before any response byte is sent and updated as the
    response goes out, so a client that has seen a response always finds its record (``status`` is set
    before the headers; ``bytes_sent`` counts a chunk before it is written and is corrected on failure)."""

    origin: str
    method: str
    path: str
    range: str | None
    auth: bool
    file: str | None = None
    status: int = 0
    bytes_sent: int = 0
    faults: list[str] = field(default_factory=list)

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            origin=self.origin,
            method=self.method,
            path=self.path,
            file=self.file,
            range=self.range,
            auth=self.auth,
            status=self.status,
            bytes_sent=self.bytes_sent,
            fault=",".join(self.faults) or None,
        )


_UNSATISFIABLE = (-1, -1)


def _parse_range(header: str | None, size_bytes: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, ``_UNSATISFIABLE``, or None to ignore it (RFC 9110:
    a missing, malformed or multi-range header is ignored and the whole file is sent)."""
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        suffix_bytes = int(last)
        if suffix_bytes == 0 or size_bytes == 0:
            return _UNSATISFIABLE
        return max(0, size_bytes - suffix_bytes), size_bytes - 1
    start = int(first)
    end = int(last) if last else size_bytes - 1
    if last and end < start:
        return None
    if start >= size_bytes:
        return _UNSATISFIABLE
    return start, min(end, size_bytes - 1)


def _json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])], body)


def _hub_error(
    status: int, code: str | None, message: str, extra: list[tuple[str, str]] | None = None
) -> _Response:
    headers = [("X-Error-Message", message)]
    if code is not None:
        headers.insert(0, ("X-Error-Code", code))
    return _json_response(status, {"error": message}, headers + (extra or []))


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


class _Pacer:
    """One response's bandwidth budget: ``wait(n)`` blocks until ``n`` more bytes may leave.

    The budget starts empty when the pacer is made (after the headers), so the byte at body offset ``k``
    is released at ``t0 + (k + 1) / rate`` at the earliest: a body of N bytes cannot finish before
    ``t0 + N / rate``. ``wait`` returns False when the emulator is stopping (the sleep is interrupted)."""

    def __init__(self, bytes_per_s: float, stopping: threading.Event) -> None:
        self.bytes_per_s = bytes_per_s
        self.piece_bytes = max(_PACE_MIN_PIECE_BYTES, int(bytes_per_s * _PACE_QUANTUM_S))
        self._stopping = stopping
        self._t0_s = time.monotonic()
        self._released_bytes = 0

    def wait(self, n: int) -> bool:
        self._released_bytes += n
        due_s = self._t0_s + self._released_bytes / self.bytes_per_s
        while (delay_s := due_s - time.monotonic()) > 0:
            if self._stopping.wait(delay_s):
                return False
        return True


class _Server(ThreadingHTTPServer):
    """One listener. Tracks its connections and handler threads so ``stop`` ends them all promptly."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: HubEmulator, origin: str) -> None:
        self.emulator = emulator
        self.origin = origin
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self.connections_accepted = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"hub-emulator-{self.origin}-{self.server_port}-conn",
            daemon=True,
        )
        with self._conn_lock:
            self._connections.add(request)
            self._handler_threads.add(thread)
            self.connections_accepted += 1
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            # A client hung up or reset an idle keep-alive connection (e.g. after abandoning a body): normal.
            logger.debug("hub emulator (%s): connection from %s ended: %r", self.origin, client_address, exc)
            return
        logger.error(
            "hub emulator (%s): unexpected error serving %s", self.origin, client_address, exc_info=True
        )

    def close_connections(self, join_timeout_s: float) -> None:
        with self._conn_lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv or send
        deadline = time.monotonic() + join_timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub-emulator/1"
    sys_version = ""
    disable_nagle_algorithm = True  # TCP_NODELAY: without it every keep-alive request costs ~40 ms
    timeout = _IDLE_TIMEOUT_S
    server: _Server

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is logged by _exchange, with what we know about it

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("hub emulator (%s): " + format, self.server.origin, *args)

    def do_GET(self) -> None:
        self._exchange("GET")

    def do_HEAD(self) -> None:
        self._exchange("HEAD")

    def do_POST(self) -> None:
        self._exchange("POST")

    def do_PUT(self) -> None:
        self._exchange("PUT")

    def do_DELETE(self) -> None:
        self._exchange("DELETE")

    def do_PATCH(self) -> None:
        self._exchange("PATCH")

    def do_OPTIONS(self) -> None:
        self._exchange("OPTIONS")

    # ---- one request ----------------------------------------------------------------------------

    def _exchange(self, method: str) -> None:
        emu = self.server.emulator
        origin = self.server.origin
        split = urlsplit(self.path)
        out = _LiveRecord(
            origin=origin,
            method=method,
            path=split.path,
            range=self.headers.get("Range"),
            auth=self.headers.get("Authorization") is not None,
        )
        emu._register(out)
        try:
            request_body = self._read_request_body()
            if request_body is None:
                resp = _hub_error(413, None, "Request body too large or chunked")
                self.close_connection = True
            else:
                resp = emu._route(origin, method, split.path, split.query, self.headers, request_body)
            out.file = resp.file
            self._respond(emu, origin, method, resp, out)
        except (ConnectionError, TimeoutError) as exc:
            # The client went away or stopped reading: normal for cancelled reads and fault tests.
            self.close_connection = True
            logger.debug("hub emulator (%s): %s %s: connection ended: %r", origin, method, split.path, exc)
        except OSError as exc:
            # A committed file vanished or became unreadable: the tree broke the "never changes" contract.
            self.close_connection = True
            logger.warning("hub emulator (%s): %s %s failed: %s", origin, method, split.path, exc)
        finally:
            logger.debug(
                "%s %s %s range=%s auth=%s status=%d bytes=%d%s",
                origin,
                method,
                split.path,
                out.range,
                out.auth,
                out.status,
                out.bytes_sent,
                f" fault={','.join(out.faults)}" if out.faults else "",
            )

    def _read_request_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_REQUEST_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _respond(self, emu: HubEmulator, origin: str, method: str, resp: _Response, out: _LiveRecord) -> None:
        picked = emu._pick_faults(origin, method, resp.file, ("delay", "answer"), resp)
        delay = picked.get("delay")
        if delay is not None:
            out.faults.append(delay.kind)
            emu._stopping.wait(delay.delay_s)
        answer = picked.get("answer")
        if answer is not None:
            out.faults.append(answer.kind)
            if answer.kind == "reset":
                self._reset_connection()
                return
            resp = emu._fault_response(answer, resp)
        body_fault: Fault | None = None
        if method == "GET" and resp.file_body is not None and resp.file_body.length > 0:
            body_fault = emu._pick_faults(origin, method, resp.file, ("body",), resp).get("body")
            if body_fault is not None:
                out.faults.append(body_fault.kind)
                resp = _reshape_for_fault(body_fault, resp)

        out.status = resp.status
        self.send_response(resp.status)
        for name, value in resp.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(resp.content_length))
        self.end_headers()
        if method == "HEAD":
            return
        if resp.file_body is None:
            if resp.body:
                out.bytes_sent += len(resp.body)
                self.wfile.write(resp.body)
            return
        rate = emu.cdn_bytes_per_s if origin == "cdn" else None
        pacer = _Pacer(rate, emu._stopping) if rate else None
        self._send_file(emu, resp.file_body, body_fault, out, pacer)

    def _send_file(
        self, emu: HubEmulator, fb: _FileBody, fault: Fault | None, out: _LiveRecord, pacer: _Pacer | None
    ) -> None:
        if fb.length == 0:
            return
        with open(fb.disk_path, "rb") as f:
            kind = fault.kind if fault is not None else None
            if fault is None or kind in ("ignore_range", "wrong_range"):
                if pacer is None:
                    self._sendfile(f, fb.start, fb.length, out)
                    return
                done = 0
                while done < fb.length:
                    n = min(pacer.piece_bytes, fb.length - done)
                    if not pacer.wait(n):  # stopping: end the connection rather than finish the body
                        self.close_connection = True
                        return
                    self._sendfile(f, fb.start + done, n, out)
                    done += n
            elif fault.kind == "flip_byte":
                self._copy(
                    f, fb.start, fb.length, out, flip_at=min(fault.after_bytes, fb.length - 1), pacer=pacer
                )
            elif fault.kind == "trickle":
                piece_bytes = fault.after_bytes or _TRICKLE_DEFAULT_PIECE_BYTES
                pause_s = fault.delay_s or _TRICKLE_DEFAULT_PAUSE_S
                done = 0
                while done < fb.length and not emu._stopping.is_set():
                    n = min(piece_bytes, fb.length - done)
                    self._copy(f, fb.start + done, n, out, pacer=pacer)
                    done += n
                    if done < fb.length:
                        emu._stopping.wait(pause_s)
                if done < fb.length:
                    self.close_connection = True
            else:  # stall, truncate, reset: the body stays incomplete
                n = min(fault.after_bytes, fb.length - 1)
                self._copy(f, fb.start, n, out, pacer=pacer)
                if fault.kind == "reset":
                    self._reset_connection()
                    return
                if fault.kind == "stall":
                    emu._stopping.wait(fault.delay_s)
                self.close_connection = True

    def _sendfile(self, f: BinaryIO, start: int, length: int, out: _LiveRecord) -> None:
        """Zero-copy body from disk. os.sendfile directly (not socket.sendfile, which falls back to reads
        and then cannot say how much went out); the socket has a timeout, so it is non-blocking inside."""
        out.bytes_sent += length
        offset, remaining = start, length
        poller: select.poll | None = None
        try:
            while remaining:
                try:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(remaining, 8 << 20))
                except BlockingIOError:
                    if poller is None:
                        poller = select.poll()
                        poller.register(self.connection, select.POLLOUT)
                    if not poller.poll(_IDLE_TIMEOUT_S * 1000):
                        raise TimeoutError("client stopped reading") from None
                    continue
                if n == 0:  # the file shrank after it was committed: end the connection, never pad
                    self.close_connection = True
                    logger.warning("hub emulator: %s is shorter than when it was committed", f.name)
                    return
                offset += n
                remaining -= n
        finally:
            out.bytes_sent -= remaining

    def _copy(
        self,
        f: BinaryIO,
        start: int,
        length: int,
        out: _LiveRecord,
        flip_at: int | None = None,
        pacer: _Pacer | None = None,
    ) -> None:
        f.seek(start)
        done = 0
        piece_bytes = pacer.piece_bytes if pacer is not None else _COPY_CHUNK_BYTES
        while done < length:
            chunk = f.read(min(piece_bytes, length - done))
            if not chunk:
                raise OSError(f"{f.name} is shorter than when it was committed")
            if pacer is not None and not pacer.wait(len(chunk)):
                self.close_connection = True
                return
            if flip_at is not None and done <= flip_at < done + len(chunk):
                mutable = bytearray(chunk)
                mutable[flip_at - done] ^= 0xFF
                chunk = bytes(mutable)
            out.bytes_sent += len(chunk)
            try:
                self.wfile.write(chunk)
            except BaseException:
                out.bytes_sent -= len(chunk)
                raise
            done += len(chunk)

    def _reset_connection(self) -> None:
        """Abort with a TCP RST: linger 0, then a real close (the buffered reader holds a socket reference
        that would otherwise defer the close)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass


def _reshape_for_fault(fault: Fault, resp: _Response) -> _Response:
    """The response a range fault sends instead: 200 + full body, or a shifted, self-consistent 206."""
    fb = resp.file_body
    assert fb is not None
    kept = [(k, v) for k, v in resp.headers if k != "Content-Range"]
    if fault.kind == "ignore_range":
        return _Response(200, kept, file_body=_FileBody(fb.disk_path, 0, fb.total, fb.total), file=resp.file)
    if fault.kind == "wrong_range":
        first, length, total = fb.start, fb.length, fb.total
        if first + length < total:
            shifted = first + 1
        elif first > 0:
            shifted = first - 1
        else:  # the whole file was asked for: no room to shift, so lie about the total instead
            kept.append(("Content-Range", f"bytes 0-{total - 1}/{total + 1}"))
            return _Response(206, kept, file_body=fb, file=resp.file)
        kept.append(("Content-Range", f"bytes {shifted}-{shifted + length - 1}/{total}"))
        return _Response(206, kept, file_body=_FileBody(fb.disk_path, shifted, length, total), file=resp.file)
    return resp


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------


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
        self._commits: dict[str, _Commit] = {}
        self._commit_order: list[str] = []
        self._branches: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._lfs_blobs: dict[str, tuple[_Blob, str]] = {}  # sha256 -> (blob, a repo path holding it)
        self._signed: dict[str, tuple[float, int, str]] = {}  # signature -> (deadline, Expires, repo path)
        self._faults: list[Fault] = []
        self._rng = random.Random(seed)
        # Bounded so a long-running mirror does not grow without limit; counters cover retained records.
        self._records: deque[_LiveRecord] = deque(maxlen=max_records)
        self._stopping = threading.Event()
        self._servers: list[_Server] = []
        self._serve_threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._servers:
            raise RuntimeError("hub emulator already started")
        self._stopping.clear()
        hub = _Server((self.host, self._port), self, "hub")
        try:
            cdn = _Server((self.host, self._cdn_port), self, "cdn")
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
        self._stopping.set()  # interrupts delays, stalls and trickles
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

    def _server(self, index: int) -> _Server:
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
        scanned = _scan_tree(root)
        is_lfs = _lfs_matcher(root)
        lfs_flags = [is_lfs(p) or st.st_size > self.lfs_threshold_bytes for p, _, st in scanned]
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub-emulator-hash") as pool:
            digests = list(
                pool.map(
                    lambda item: _file_digest(item[0][1], item[0][2], "sha256" if item[1] else "git"),
                    zip(scanned, lfs_flags, strict=True),
                )
            )
        entries: dict[str, _Entry] = {}
        children: dict[str, list[_Entry]] = {}
        dirs: set[str] = set()
        total_bytes = 0
        for (repo_path, disk_path, st), lfs, digest in zip(scanned, lfs_flags, digests, strict=True):
            if lfs:
                pointer = _lfs_pointer(digest, st.st_size)
                blob = _Blob(disk_path, st.st_size, _git_blob_sha1(pointer), digest, len(pointer))
            else:
                blob = _Blob(disk_path, st.st_size, digest, None, None)
            entries[repo_path] = _Entry(repo_path, blob.oid, blob)
            total_bytes += st.st_size
            parts = repo_path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        # Directory oids bottom-up: deepest first, so every child oid exists before its parent's.
        for entry in entries.values():
            children.setdefault(entry.path.rpartition("/")[0], []).append(entry)
        for d in sorted(dirs, key=lambda p: -p.count("/")):
            kids = sorted(children.get(d, []), key=lambda e: _path_key(e.path))
            entries[d] = _Entry(d, _tree_oid(kids), None)
            children.setdefault(d.rpartition("/")[0], []).append(entries[d])
        for kids in children.values():
            kids.sort(key=lambda e: _path_key(e.path))
        root_oid = _tree_oid(children.get("", []))
        ordered = sorted(entries.values(), key=lambda e: _path_key(e.path))
        keys = [_path_key(e.path) for e in ordered]
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
                self._commits[sha] = _Commit(
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

    def _register(self, record: _LiveRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _pick_faults(
        self, origin: str, method: str, file: str | None, categories: tuple[str, ...], resp: _Response
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

    def _fault_response(self, fault: Fault, resp: _Response) -> _Response:
        if fault.kind == "rate_limit":
            wait_s = _seconds_text(fault.retry_after_s)
            out = _json_response(
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
            out = _json_response(fault.status, {"error": f"emulated fault: HTTP {fault.status}"})
        out.file = resp.file
        return out

    # ---- routing --------------------------------------------------------------------------------

    def _route(
        self, origin: str, method: str, url_path: str, query: str, headers: Message, body: bytes
    ) -> _Response:
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
                return _hub_error(405, None, "Method not allowed")
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
        return _hub_error(404, None, "Not Found")

    def _access_error(
        self, repo: str, token: str | None, has_auth: bool, *, download: bool
    ) -> _Response | None:
        if repo != self.repo_id:
            return _repo_not_found(has_auth)
        required = self.required_token
        token_ok = required is not None and token is not None and hmac.compare_digest(token, required)
        if self.gated:
            if not download:
                return None
            if not has_auth:
                return _hub_error(
                    401,
                    "GatedRepo",
                    f"Access to dataset {repo} is restricted. You must have access to it and be authenticated"
                    " to access it. Please log in.",
                )
            if required is not None and not token_ok:
                return _hub_error(
                    403,
                    "GatedRepo",
                    f"Access to dataset {repo} is restricted and you are not in the authorized list.",
                )
            return None
        if required is not None and not token_ok:
            return _repo_not_found(has_auth)
        return None

    def _resolve_revision(self, revision: str) -> _Commit | None:
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
    ) -> _Response:
        if method not in ("GET", "HEAD"):
            return _hub_error(405, None, "Method not allowed")
        denied = self._access_error(repo, token, has_auth, download=True)
        if denied is not None:
            denied.file = path or None
            return denied
        commit = self._resolve_revision(revision)
        if commit is None:
            resp = _hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            resp.file = path or None
            return resp
        entry = commit.entries.get(path)
        commit_header = ("X-Repo-Commit", commit.sha)
        if self.html_directory_index and (path == "" or path.endswith("/")):
            listed = self._html_index(commit, path.strip("/"), commit_header)
            if listed is not None:
                return listed
        if entry is None or entry.blob is None:
            resp = _hub_error(404, "EntryNotFound", f'{path} does not exist on "{revision}"', [commit_header])
            resp.file = path or None
            return resp
        blob = entry.blob
        if blob.lfs_sha256 is not None:
            location = self._signed_url(blob.lfs_sha256, path, headers.get("Host"))
            return _Response(
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

    def _html_index(
        self, commit: _Commit, directory: str, commit_header: tuple[str, str]
    ) -> _Response | None:
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
        return _Response(200, [("Content-Type", "text/html; charset=utf-8"), commit_header], body.encode())

    def _info(
        self, repo: str, revision: str | None, params: dict[str, str], token: str | None, has_auth: bool
    ) -> _Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        commit = self._resolve_revision(revision or "main")
        if commit is None:
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision or 'main'}")
        with self._lock:
            created = self._commits[self._commit_order[0]].date
        with_blobs = _truthy(params.get("blobs"))
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
            "lastModified": _iso(commit.date),
            "createdAt": _iso(created),
            "private": self.required_token is not None and not self.gated,
            "gated": gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": used_bytes,
        }
        return _json_response(200, payload)

    def _entry_json(self, entry: _Entry, commit: _Commit, expand: bool) -> dict[str, Any]:
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
            item["lastCommit"] = {"id": last.sha, "title": last.title, "date": _iso(last.date)}
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
    ) -> _Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        commit = self._resolve_revision(revision)
        if commit is None:
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        sub = sub.strip("/")
        commit_header = ("X-Repo-Commit", commit.sha)
        if sub and (sub not in commit.entries or not commit.entries[sub].is_dir):
            return _hub_error(404, "EntryNotFound", f'{sub} does not exist on "{revision}"', [commit_header])
        recursive = _truthy(params.get("recursive"))
        expand = _truthy(params.get("expand"))
        page_size = self.tree_page_size if not expand else min(self.tree_page_size, _EXPAND_PAGE_SIZE)
        if params.get("limit", "").isdigit() and int(params["limit"]) > 0:
            page_size = min(page_size, int(params["limit"]))
        listing, keys = commit.subtree(sub, recursive)
        start = 0
        if params.get("cursor"):
            try:
                decoded = json.loads(base64.urlsafe_b64decode(params["cursor"].encode()))
                start = bisect_right(keys, _path_key(str(decoded["file_name"])))
            except (ValueError, KeyError, TypeError):
                return _hub_error(400, None, "Invalid cursor")
        page = listing[start : start + page_size]
        extra = [commit_header]
        if start + page_size < len(listing):
            cursor = base64.urlsafe_b64encode(json.dumps({"file_name": page[-1].path}).encode()).decode()
            next_params = {k: v for k, v in params.items() if k != "cursor"}
            next_params["cursor"] = cursor
            host = headers.get("Host") or self.endpoint.split("://", 1)[1]
            extra.append(("Link", f'<http://{host}{url_path}?{urlencode(next_params)}>; rel="next"'))
        return _json_response(200, [self._entry_json(e, commit, expand) for e in page], extra)

    def _paths_info(
        self, repo: str, revision: str, headers: Message, body: bytes, token: str | None, has_auth: bool
    ) -> _Response:
        denied = self._access_error(repo, token, has_auth, download=False)
        if denied is not None:
            return denied
        commit = self._resolve_revision(revision)
        if commit is None:
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
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
                expand = _truthy((form.get("expand") or ["false"])[-1])
        except (ValueError, UnicodeDecodeError, AttributeError):
            return _hub_error(400, None, "Invalid paths-info request body")
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        for raw in paths:
            path = raw.strip("/")
            entry = commit.entries.get(path)
            if entry is None or path in seen:
                continue
            seen.add(path)
            items.append(self._entry_json(entry, commit, expand))
        return _json_response(200, items, [("X-Repo-Commit", commit.sha)])

    def _refs(self, repo: str, token: str | None, has_auth: bool) -> _Response:
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
        return _json_response(200, payload)

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

    def _route_cdn(self, method: str, segments: list[str], query: str, range_header: str | None) -> _Response:
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        url_path = "/" + "/".join(segments)
        file: str | None = None
        known: tuple[_Blob, str] | None = None
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
            return _with_file(_Response(404, [("Content-Type", "text/plain")], b"NoSuchKey"), file)
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


def _with_file(resp: _Response, file: str | None) -> _Response:
    resp.file = file
    return resp


def _cdn_denied(message: str) -> _Response:
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"
    )
    return _Response(403, [("Content-Type", "application/xml")], body.encode())


def _repo_not_found(has_auth: bool) -> _Response:
    # Without a token the Hub answers 401 so as not to reveal private repos; the error code says why.
    return _hub_error(401 if not has_auth else 404, "RepoNotFound", "Repository not found")


def _bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else header


def _file_response(
    blob: _Blob, range_header: str | None, headers: list[tuple[str, str]], *, file: str | None
) -> _Response:
    size = blob.size_bytes
    headers = [*headers, ("Accept-Ranges", "bytes")]
    span = _parse_range(range_header, size)
    if span is None:
        return _Response(200, headers, file_body=_FileBody(blob.disk_path, 0, size, size), file=file)
    if span == _UNSATISFIABLE:
        return _Response(416, [*headers, ("Content-Range", f"bytes */{size}")], file=file)
    first, last = span
    return _Response(
        206,
        [*headers, ("Content-Range", f"bytes {first}-{last}/{size}")],
        file_body=_FileBody(blob.disk_path, first, last - first + 1, size),
        file=file,
    )


# --------------------------------------------------------------------------------------------------
# The CLI entry point
# --------------------------------------------------------------------------------------------------


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
    from vfs.errors import ConfigError

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
