"""The daemon's async Hub client: pinned revisions, tree listings and verified byte ranges.

Responsibility: every byte and every listing the daemon, the indexer and the sources take from the Hub
comes through ``HubClient``. It runs under trio on one ``httpx2.AsyncClient`` from huggingface_hub's
``get_async_session()`` for its whole lifetime, with per-request timeouts, and owns the retries (no other
layer retries, so they never multiply).

Invariants:
- Bytes returned or yielded for ``[start, end)`` are exactly those bytes, in order: every ranged answer
  must be a 206 whose ``Content-Range`` start, end and total match the request and whose body has exactly
  the declared length. Anything else (a 200 that ignored the Range, a wrong range, a short body, a reset)
  is retried and, once the budget is spent, raised as ``FetchError``; never returned. Corrupt bytes inside
  a well-formed answer cannot be seen here: ``download_file`` and the callers verify checksums.
- Each file is resolved once per commit (single-flight): the signed CDN location of an LFS file, or the
  resolve URL of a regular file, is cached and reused for every range. A CDN 403 means the signature
  expired: the file is re-resolved and the read retried, never failed for it. A CDN host that refuses
  connections is forgotten too (the retry re-resolves: the Hub may redirect elsewhere).
- The token goes to the hub origin only. CDN requests are built without it (redirects to the CDN are never
  followed by the HTTP layer), and no log line contains a token or a signed URL.
- Retries: exponential backoff with full jitter, at most ``max_retries`` per failure streak and within
  ``retry_deadline_s`` of the streak's first failure. A streak ends when an attempt delivers at least
  ``chunk_bytes``, so a long stream survives any number of resets as long as it keeps making real
  progress, while a server that sends a few bytes and then stalls or resets every time still ends in an
  error within the deadline (bytes it did deliver are kept either way). 429 and Retry-After
  waits are honoured (capped by the deadline) and pause the whole origin, so concurrent readers do not
  hammer a rate-limited resolver. Each retry is one WARNING; the final failure is the caller's to log.
- At most ``max_connections`` requests are in flight (a ``trio.CapacityLimiter``; a streaming read holds
  its slot until its body is consumed or abandoned). Counters are in ``stats``.

Shared state (``_locations``, ``_resolving``, ``_pause_until``, ``stats``) is only touched from the trio
thread and never across an ``await`` inside one read-modify-write.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import random
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx2
import trio
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_async_session, hf_raise_for_status

import vfs
from vfs.durable import publish
from vfs.errors import FetchError, IntegrityError, VfsError

logger = logging.getLogger(__name__)

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def is_commit_sha(revision: str) -> bool:
    """Whether ``revision`` is already a commit (40 lowercase hex digits) rather than a branch or tag."""
    return _COMMIT_RE.fullmatch(revision) is not None


_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
# The Hub's RateLimit header: `"resolvers";r=0;t=55`. huggingface_hub's own parser takes integer seconds
# only; this one also takes fractions (the emulator uses them to keep tests fast).
_RATELIMIT_R_RE = re.compile(r";\s*r\s*=\s*(\d+)")
_RATELIMIT_T_RE = re.compile(r";\s*t\s*=\s*(\d+(?:\.\d+)?)")
_MAX_HUB_REDIRECTS = 5
_REPO_TYPE_PREFIX = {"dataset": "datasets/", "model": "", "space": "spaces/"}


# --- typed errors --------------------------------------------------------------------------------------


class HubAccessError(VfsError):
    """The Hub refused access to the repo, a revision or a path. At start-up the daemon exits with 4."""

    errno = errno.EACCES
    log_level = logging.ERROR


class RepoNotFound(HubAccessError):
    """No such repo, or a private one the token cannot see (the Hub does not tell them apart)."""

    errno = errno.ENOENT


class RevisionNotFound(HubAccessError):
    errno = errno.ENOENT


class GatedRepo(HubAccessError):
    """The repo is gated and no token was sent, or the token's owner has not been granted access."""

    errno = errno.EACCES


class EntryNotFound(HubAccessError):
    """The path does not exist at that commit."""

    errno = errno.ENOENT


# --- public data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoFile:
    """One file of the repo at a commit, as the tree listing describes it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer for LFS files)
    lfs_sha256: str | None  # sha256 of the content for LFS files, else None

    @property
    def content_id(self) -> str:
        """The content's identity: the LFS sha256 for LFS files, else the git blob sha1."""
        return self.lfs_sha256 if self.lfs_sha256 is not None else self.blob_id


@dataclass
class HubStats:
    """Counters, read by metrics and tests. Only mutated on the trio thread."""

    requests: int = 0  # HTTP requests sent (hub and CDN, including failed attempts)
    resolves: int = 0  # of which file resolves (`/resolve/...` HEADs)
    bytes_received: int = 0  # response body bytes received, including bytes of failed attempts
    retries: int = 0  # retries performed (each logged once at WARNING)
    rate_limited: int = 0  # 429 answers
    errors: int = 0  # calls that ended in an exception raised to the caller


# --- internals -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    """Where a file's bytes are read from. ``is_cdn``: a signed URL on another origin (LFS)."""

    url: str
    is_cdn: bool
    size_bytes: int | None


class _Retryable(Exception):
    """A transient failure of one attempt; ``reason`` is logged, never a URL with a signature."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _SignatureExpired(Exception):
    """The CDN answered 403 to a signed URL: re-resolve the file."""


class _RetryBudget:
    """One operation's retry allowance, counted from the first failure since the last progress."""

    def __init__(self, client: HubClient, what: str) -> None:
        self._client = client
        self._what = what
        self._failures = 0
        self._streak_start_s: float | None = None

    def progressed(self) -> None:
        self._failures = 0
        self._streak_start_s = None

    async def failed(self, failure: _Retryable) -> None:
        """Sleep before the next attempt, or raise ``FetchError`` when the budget is spent."""
        c = self._client
        now_s = trio.current_time()
        if self._streak_start_s is None:
            self._streak_start_s = now_s
        self._failures += 1
        deadline_s = self._streak_start_s + c._retry_deadline_s
        if self._failures > c._max_retries or now_s >= deadline_s:
            raise FetchError(
                f"{self._what}: gave up after {self._failures} failed attempts in "
                f"{now_s - self._streak_start_s:.1f}s: {failure.reason}"
            )
        if failure.retry_after_s is not None:
            delay_s = failure.retry_after_s
        else:
            cap_s = min(c._backoff_max_s, c._backoff_base_s * 2 ** (self._failures - 1))
            delay_s = c._rng.uniform(0.0, cap_s)
        delay_s = max(0.0, min(delay_s, deadline_s - now_s))
        c.stats.retries += 1
        logger.warning(
            "%s: %s; retry %d/%d in %.2fs",
            self._what,
            failure.reason,
            self._failures,
            c._max_retries,
            delay_s,
        )
        await trio.sleep(delay_s)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _int_header(resp: httpx2.Response, name: str) -> int | None:
    value = resp.headers.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _retry_after_s(resp: httpx2.Response) -> float | None:
    """The wait the server asked for: RateLimit's ``t`` when ``r=0``, else a numeric Retry-After."""
    ratelimit = resp.headers.get("ratelimit")
    if ratelimit:
        remaining = _RATELIMIT_R_RE.search(ratelimit)
        reset = _RATELIMIT_T_RE.search(ratelimit)
        if reset is not None and (remaining is None or int(remaining.group(1)) == 0):
            return float(reset.group(1))
    retry_after = resp.headers.get("retry-after")
    if retry_after:
        try:
            return max(0.0, float(retry_after.strip()))
        except ValueError:
            return None  # an HTTP date: fall back to our own backoff
    return None


def _check_commit(commit: str) -> None:
    if not _COMMIT_RE.fullmatch(commit):
        raise ValueError(f"expected a 40-hex commit sha (resolve revisions first), got {commit!r}")


def _check_span(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"invalid byte range [{start}, {end})")


def _write_and_hash(fd: int, chunk: bytes, hasher: Any) -> None:
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    hasher.update(chunk)


def _publish(fd: int, tmp: Path, dest: Path) -> None:
    """fsync the temp file, rename it over ``dest`` and fsync the directory, so a crash leaves either."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    publish(tmp, dest, synced=True)


def _discard(fd: int, tmp: Path) -> None:
    os.close(fd)
    tmp.unlink(missing_ok=True)


def _open_temp(dest: Path) -> tuple[int, Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return fd, tmp


# --- the client ------------------------------------------------------------------------------------------


class HubClient:
    """Async client for one Hub repo. Use as ``async with HubClient(...) as hub:`` under trio.

    ``token``: a string is sent as the token; ``None`` lets huggingface_hub find one (``HF_TOKEN``, the
    login file) unless ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` is set.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        repo_id: str,
        token: str | None,
        repo_type: str = "dataset",
        max_connections: int = 16,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        max_retries: int = 8,
        retry_deadline_s: float = 120.0,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 20.0,
        chunk_bytes: int = 1 << 20,
    ) -> None:
        if repo_type not in _REPO_TYPE_PREFIX:
            raise ValueError(f"repo_type must be one of {sorted(_REPO_TYPE_PREFIX)}, got {repo_type!r}")
        if max_connections < 1 or chunk_bytes < 1 or max_retries < 0:
            raise ValueError("max_connections and chunk_bytes must be >= 1, max_retries >= 0")
        self._endpoint = endpoint.rstrip("/")
        self._hub_origin = _origin(self._endpoint)
        self._repo_id = repo_id
        self._repo_type = repo_type
        self._token = token
        self._max_retries = max_retries
        self._retry_deadline_s = retry_deadline_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._chunk_bytes = chunk_bytes
        self._timeout = httpx2.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=None
        )
        self._limiter = trio.CapacityLimiter(max_connections)
        self._rng = random.Random()
        self.stats = HubStats()
        self._http: httpx2.AsyncClient | None = None
        self._hub_headers: dict[str, str] = {}
        self._cdn_headers: dict[str, str] = {}
        self._sends_token = False
        # (commit, path) -> where to read it; single-flight resolves wait on the Event.
        self._locations: dict[tuple[str, str], _Location] = {}
        self._resolving: dict[tuple[str, str], trio.Event] = {}
        # origin kind ("hub" / "cdn") -> trio time before which no request is sent (rate limit pause).
        self._pause_until: dict[str, float] = {}
        prefix = _REPO_TYPE_PREFIX[repo_type]
        self._resolve_base = f"{self._endpoint}/{prefix}{repo_id}/resolve"
        self._api_base = f"{self._endpoint}/api/{repo_type}s/{repo_id}"

    # -- lifecycle --

    async def __aenter__(self) -> HubClient:
        # build_hf_headers may read the token file and probe installed packages: once, off the trio thread.
        headers = await trio.to_thread.run_sync(
            functools.partial(
                build_hf_headers,
                token=self._token,
                library_name="llava-video-vfs",
                library_version=vfs.__version__,
            )
        )
        self._sends_token = "authorization" in {k.lower() for k in headers}
        self._hub_headers = {**headers, "accept-encoding": "identity"}
        self._cdn_headers = {
            k: v for k, v in self._hub_headers.items() if k.lower() not in ("authorization", "cookie")
        }
        self._http = get_async_session()
        logger.debug(
            "hub client for %s %s at %s (token: %s)",
            self._repo_type,
            self._repo_id,
            self._endpoint,
            "yes" if self._sends_token else "no",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            with trio.CancelScope(shield=True):
                await http.aclose()

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            raise RuntimeError("HubClient is not open: use `async with HubClient(...) as hub:`")
        return self._http

    # -- public API --

    async def resolve_commit(self, revision: str) -> str:
        """Branch, tag or sha -> the 40-hex commit it names now."""
        what = f"resolve revision {revision!r} of {self._repo_id}"
        try:
            resp = await self._call("GET", f"{self._api_base}/revision/{quote(revision, safe='')}", what)
            try:
                sha = resp.json().get("sha")
            except (ValueError, AttributeError) as exc:
                raise FetchError(f"{what}: malformed answer ({exc})") from None
            if not isinstance(sha, str) or not _COMMIT_RE.fullmatch(sha):
                raise FetchError(f"{what}: answer has no valid commit sha ({sha!r})")
            logger.debug("%s -> %s", what, sha)
            return sha
        except VfsError:
            self.stats.errors += 1
            raise

    async def list_files(self, commit: str) -> list[RepoFile]:
        """Every file of the repo at ``commit`` (recursive), sorted by path. Follows ``Link: rel=next``."""
        _check_commit(commit)
        what = f"list {self._repo_id}@{commit[:12]}"
        files: list[RepoFile] = []
        url: str | None = f"{self._api_base}/tree/{commit}?recursive=true&expand=false"
        pages = 0
        try:
            while url is not None:
                resp = await self._call("GET", url, f"{what} (page {pages + 1})")
                pages += 1
                try:
                    entries = resp.json()
                except ValueError as exc:
                    raise FetchError(f"{what}: page {pages} is not JSON ({exc})") from None
                if not isinstance(entries, list):
                    raise FetchError(f"{what}: page {pages} is not a JSON array")
                for entry in entries:
                    repo_file = self._parse_tree_entry(entry, what)
                    if repo_file is not None:
                        files.append(repo_file)
                next_link = resp.links.get("next")
                url = urljoin(url, next_link["url"]) if next_link and next_link.get("url") else None
        except VfsError:
            self.stats.errors += 1
            raise
        files.sort(key=lambda f: f.path)
        logger.debug("%s: %d files in %d pages", what, len(files), pages)
        return files

    async def read_range(self, commit: str, path: str, start: int, end: int) -> bytes:
        """Exactly the bytes ``[start, end)`` of ``path`` at ``commit``; ``FetchError`` if not deliverable."""
        parts: list[bytes] = []
        async with aclosing(self.stream_range(commit, path, start, end)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
        data = b"".join(parts)
        if len(data) != end - start:  # stream_range guarantees it; a cheap last line of defence
            self.stats.errors += 1
            raise FetchError(f"read {path}@{commit[:12]} [{start}, {end}): got {len(data)} bytes")
        return data

    async def stream_range(self, commit: str, path: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Yield the bytes of ``[start, end)`` in order, in chunks of about ``chunk_bytes``.

        A failure mid-body resumes with a new ranged request from the next missing offset; bytes already
        received are yielded, never refetched. Use with ``contextlib.aclosing`` when stopping early.
        """
        _check_commit(commit)
        _check_span(start, end)
        what = f"read {path}@{commit[:12]} [{start}, {end})"
        budget = _RetryBudget(self, what)
        position = start
        reresolved = False
        try:
            while position < end:
                location = await self._location(commit, path)
                if location.size_bytes is not None and end > location.size_bytes:
                    raise ValueError(f"{what}: past the end of the file ({location.size_bytes} bytes)")
                attempt_start = position
                pending = bytearray()
                failure: _Retryable | None = None
                try:
                    async with self._open_range(location, position, end) as resp:
                        async for raw in resp.aiter_raw():
                            self.stats.bytes_received += len(raw)
                            if position + len(pending) + len(raw) > end:
                                pending.clear()  # a body longer than declared: trust none of the excess
                                raise _Retryable("body longer than the requested range")
                            pending += raw
                            if len(pending) >= self._chunk_bytes:
                                chunk = bytes(pending)
                                pending.clear()
                                position += len(chunk)
                                yield chunk
                except _SignatureExpired:
                    self._forget(commit, path, location)
                    if not reresolved:
                        reresolved = True
                        logger.debug("%s: signed CDN URL refused (expired); re-resolving", what)
                        continue
                    failure = _Retryable("CDN refused a freshly signed URL (403)")
                except _Retryable as exc:
                    failure = exc
                except httpx2.TransportError as exc:
                    failure = self._transport_failure(exc)
                    if location.is_cdn and isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
                        # The host the Hub redirected to cannot be reached (a dead CDN node, a URL handed
                        # out before an outage): the next attempt asks the Hub again, which may redirect
                        # elsewhere. Resets and stalls keep the location: the host is up.
                        self._forget(commit, path, location)
                if pending:  # bytes received before a failure are good: keep them
                    chunk = bytes(pending)
                    position += len(chunk)
                    yield chunk
                if failure is None and position < end:
                    failure = _Retryable(f"body ended early at offset {position}")
                if position > attempt_start:
                    reresolved = False
                    if position - attempt_start >= self._chunk_bytes:
                        budget.progressed()
                if failure is not None and position < end:
                    await budget.failed(failure)
        except VfsError:
            self.stats.errors += 1
            raise

    async def download_file(self, commit: str, f: RepoFile, dest: Path) -> None:
        """Download ``f`` whole to ``dest`` (temp file, fsync, rename), verified against ``f.content_id``.

        A checksum mismatch is retried (up to ``max_retries`` times) and then raised as ``IntegrityError``;
        ``dest`` is never written with unverified bytes.
        """
        _check_commit(commit)
        dest = Path(dest)
        what = f"download {f.path}@{commit[:12]}"
        try:
            location = await self._location(commit, f.path)
            if location.size_bytes is not None and location.size_bytes != f.size:
                raise IntegrityError(
                    f"{what}: listed as {f.size} bytes, the Hub serves {location.size_bytes}"
                )
            for attempt in range(self._max_retries + 1):
                digest = await self._download_once(commit, f, dest)
                if digest == f.content_id:
                    logger.debug("%s: %d bytes verified", what, f.size)
                    return
                if attempt < self._max_retries:
                    self.stats.retries += 1
                    logger.warning(
                        "%s: checksum mismatch (got %s, want %s); retry %d/%d",
                        what,
                        digest,
                        f.content_id,
                        attempt + 1,
                        self._max_retries,
                    )
            raise IntegrityError(f"{what}: checksum mismatch on all {self._max_retries + 1} attempts")
        except VfsError:
            self.stats.errors += 1
            raise

    # -- downloading --

    async def _download_once(self, commit: str, f: RepoFile, dest: Path) -> str:
        """Fetch into a temp file; publish it as ``dest`` only if its digest is ``f.content_id``."""
        hasher = hashlib.sha256() if f.lfs_sha256 is not None else hashlib.sha1(b"blob %d\0" % f.size)
        fd, tmp = await trio.to_thread.run_sync(_open_temp, dest)
        published = False
        try:
            async with aclosing(self.stream_range(commit, f.path, 0, f.size)) as chunks:
                async for chunk in chunks:
                    await trio.to_thread.run_sync(_write_and_hash, fd, chunk, hasher)
            digest = hasher.hexdigest()
            if digest == f.content_id:
                published = True  # _publish closes fd whatever happens
                await trio.to_thread.run_sync(_publish, fd, tmp, dest)
            return digest
        finally:
            if not published:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_discard, fd, tmp)

    # -- resolving --

    async def _location(self, commit: str, path: str) -> _Location:
        """The cached location of ``path``, resolving it once (single-flight) on first use."""
        key = (commit, path)
        while True:
            cached = self._locations.get(key)
            if cached is not None:
                return cached
            in_flight = self._resolving.get(key)
            if in_flight is None:
                break
            await in_flight.wait()  # then loop: the resolver either cached it or failed
        done = trio.Event()
        self._resolving[key] = done
        try:
            location = await self._resolve(commit, path)
            self._locations[key] = location
            return location
        finally:
            del self._resolving[key]
            done.set()

    def _forget(self, commit: str, path: str, stale: _Location) -> None:
        # Only drop the entry we used: a concurrent reader may already have cached a fresh one.
        if self._locations.get((commit, path)) == stale:
            del self._locations[(commit, path)]

    async def _resolve(self, commit: str, path: str) -> _Location:
        url = f"{self._resolve_base}/{commit}/{quote(path)}"
        what = f"resolve {path}@{commit[:12]}"
        for _hop in range(_MAX_HUB_REDIRECTS + 1):
            resp = await self._call("HEAD", url, what, is_resolve=True)
            if not 300 <= resp.status_code < 400:
                size = _int_header(resp, "content-length")
                logger.debug("%s: regular file, %s bytes", what, size)
                return _Location(url=url, is_cdn=False, size_bytes=size)
            target = resp.headers.get("location")
            if not target:
                raise FetchError(f"{what}: HTTP {resp.status_code} without a Location")
            target = urljoin(url, target)
            if _origin(target) == self._hub_origin:
                url = target  # a renamed repo: the Hub redirects within its own origin
                continue
            size = _int_header(resp, "x-linked-size")
            logger.debug("%s: LFS file on the CDN, %s bytes", what, size)
            return _Location(url=target, is_cdn=True, size_bytes=size)
        raise FetchError(f"{what}: more than {_MAX_HUB_REDIRECTS} redirects on the hub")

    # -- requests --

    def _headers_for(self, url: str) -> dict[str, str]:
        # The token is attached by origin, not by call site, so it can never reach the CDN.
        return dict(self._hub_headers if _origin(url) == self._hub_origin else self._cdn_headers)

    def _origin_kind(self, url: str) -> str:
        return "hub" if _origin(url) == self._hub_origin else "cdn"

    async def _wait_for_pause(self, kind: str) -> None:
        until_s = self._pause_until.get(kind)
        if until_s is not None and until_s > trio.current_time():
            await trio.sleep_until(until_s)

    def _note_rate_limit(self, kind: str, wait_s: float | None) -> None:
        self.stats.rate_limited += 1
        if wait_s:
            until_s = trio.current_time() + min(wait_s, self._retry_deadline_s)
            self._pause_until[kind] = max(self._pause_until.get(kind, 0.0), until_s)

    def _transport_failure(self, exc: httpx2.TransportError) -> _Retryable:
        if isinstance(exc, (httpx2.UnsupportedProtocol, httpx2.LocalProtocolError)):
            raise FetchError(f"cannot send the request: {type(exc).__name__}: {exc}") from None
        return _Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def _call(self, method: str, url: str, what: str, *, is_resolve: bool = False) -> httpx2.Response:
        """A request with a small answer, read whole and retried; returns a 2xx or 3xx answer."""
        budget = _RetryBudget(self, what)
        while True:
            try:
                return await self._send_small(method, url, what, is_resolve=is_resolve)
            except _Retryable as failure:
                await budget.failed(failure)

    async def _send_small(self, method: str, url: str, what: str, *, is_resolve: bool) -> httpx2.Response:
        kind = self._origin_kind(url)
        await self._wait_for_pause(kind)
        borrower = object()
        await self._limiter.acquire_on_behalf_of(borrower)
        try:
            self.stats.requests += 1
            if is_resolve:
                self.stats.resolves += 1
            try:
                resp = await self._client().request(
                    method, url, headers=self._headers_for(url), timeout=self._timeout, follow_redirects=False
                )
            except httpx2.TransportError as exc:
                raise self._transport_failure(exc) from None
            except OfflineModeIsEnabled:
                raise FetchError(f"{what}: HF_HUB_OFFLINE is set") from None
        finally:
            self._limiter.release_on_behalf_of(borrower)
        self.stats.bytes_received += len(resp.content)
        logger.debug("%s %s: HTTP %d, %d bytes", method, what, resp.status_code, len(resp.content))
        if resp.status_code >= 400:
            self._raise_for_status(resp, kind, what)
        return resp

    @asynccontextmanager
    async def _open_range(self, location: _Location, start: int, end: int) -> AsyncIterator[httpx2.Response]:
        """Send one ranged GET and yield the answer once its status and headers check out."""
        kind = "cdn" if location.is_cdn else "hub"
        await self._wait_for_pause(kind)
        # A private borrower per request: one task may hold several streams (or a stream and a read).
        borrower = object()
        await self._limiter.acquire_on_behalf_of(borrower)
        try:
            client = self._client()
            headers = self._headers_for(location.url)
            headers["range"] = f"bytes={start}-{end - 1}"
            request = client.build_request("GET", location.url, headers=headers, timeout=self._timeout)
            self.stats.requests += 1
            try:
                resp = await client.send(request, stream=True, follow_redirects=False)
            except OfflineModeIsEnabled:
                raise FetchError("HF_HUB_OFFLINE is set") from None
            try:
                logger.debug("GET %s [%d, %d): HTTP %d", kind, start, end, resp.status_code)
                self._check_range_answer(resp, location, start, end)
                yield resp
            finally:
                await resp.aclose()
        finally:
            self._limiter.release_on_behalf_of(borrower)

    def _check_range_answer(self, resp: httpx2.Response, location: _Location, start: int, end: int) -> None:
        status = resp.status_code
        if status == 200:
            raise _Retryable("server ignored the Range header (200 instead of 206)")
        if status == 403 and location.is_cdn:
            raise _SignatureExpired()
        if status != 206:
            self._raise_for_status(resp, "cdn" if location.is_cdn else "hub", f"read [{start}, {end})")
            raise FetchError(f"read [{start}, {end}): unexpected HTTP {status}")
        content_range = resp.headers.get("content-range", "")
        match = _CONTENT_RANGE_RE.match(content_range)
        if match is None:
            raise _Retryable(f"206 with a malformed Content-Range {content_range!r}")
        first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
        if first != start or last != end - 1:
            raise _Retryable(f"asked bytes {start}-{end - 1}, got Content-Range {content_range!r}")
        if location.size_bytes is not None and total != str(location.size_bytes):
            raise _Retryable(f"Content-Range total {total} is not the file size {location.size_bytes}")
        length = _int_header(resp, "content-length")
        if length is not None and length != end - start:
            raise _Retryable(f"Content-Length {length} for a range of {end - start} bytes")
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _Retryable(f"Content-Encoding {encoding!r} despite Accept-Encoding: identity")

    def _raise_for_status(self, resp: httpx2.Response, kind: str, what: str) -> None:
        """Raise ``_Retryable`` for transient answers, the typed error for the rest."""
        status = resp.status_code
        if status == 429:
            wait_s = _retry_after_s(resp)
            self._note_rate_limit(kind, wait_s)
            raise _Retryable("rate limited (429)", retry_after_s=wait_s)
        if status == 408 or 500 <= status <= 599:
            raise _Retryable(f"HTTP {status}", retry_after_s=_retry_after_s(resp))
        raise self._typed_error(resp, what)

    def _typed_error(self, resp: httpx2.Response, what: str) -> VfsError:
        status = resp.status_code
        code = resp.headers.get("x-error-code", "")
        repo_url = f"{self._endpoint}/{_REPO_TYPE_PREFIX[self._repo_type]}{self._repo_id}"
        try:
            hf_raise_for_status(resp)
        except GatedRepoError:
            code = "GatedRepo"
        except RepositoryNotFoundError:
            code = "RepoNotFound"
        except RevisionNotFoundError:
            code = "RevisionNotFound"
        except RemoteEntryNotFoundError:
            code = "EntryNotFound"
        except (HfHubHTTPError, httpx2.StreamError, RuntimeError):
            pass  # fall back to X-Error-Code, then to a plain FetchError
        if code == "GatedRepo":
            why = "the token has not been granted access" if self._sends_token else "no token was sent"
            return GatedRepo(
                f"{what}: {self._repo_id} is gated and {why} (HTTP {status}); accept its terms at "
                f"{repo_url} and configure a token ([hub] token or HF_TOKEN)"
            )
        if code == "RepoNotFound":
            return RepoNotFound(
                f"{what}: repository {self._repo_id} not found at {self._endpoint} (HTTP {status}); check "
                "[hub] repo, and that the token can see it if it is private"
            )
        if code == "RevisionNotFound":
            return RevisionNotFound(f"{what}: no such revision in {self._repo_id} (HTTP {status})")
        if code == "EntryNotFound":
            return EntryNotFound(f"{what}: no such file in {self._repo_id} (HTTP {status})")
        message = resp.headers.get("x-error-message") or resp.reason_phrase
        if status in (401, 403):  # e.g. an invalid or expired token: not worth retrying
            return HubAccessError(
                f"{what}: HTTP {status} {message}; check the token ([hub] token or HF_TOKEN) and its "
                "permissions"
            )
        return FetchError(f"{what}: HTTP {status} {message}".rstrip())

    @staticmethod
    def _parse_tree_entry(entry: Any, what: str) -> RepoFile | None:
        if not isinstance(entry, dict):
            raise FetchError(f"{what}: tree entry is not an object: {entry!r:.200}")
        if entry.get("type") != "file":
            return None
        path, size, oid, lfs = entry.get("path"), entry.get("size"), entry.get("oid"), entry.get("lfs")
        if not isinstance(path, str) or not isinstance(size, int) or size < 0 or not isinstance(oid, str):
            raise FetchError(f"{what}: malformed tree entry {entry!r:.200}")
        lfs_sha256: str | None = None
        if lfs is not None:
            lfs_oid = lfs.get("oid") if isinstance(lfs, dict) else None
            if not isinstance(lfs_oid, str) or not re.fullmatch(r"[0-9a-f]{64}", lfs_oid):
                raise FetchError(f"{what}: malformed LFS info for {path!r}")
            lfs_sha256 = lfs_oid
        return RepoFile(path=path, size=size, blob_id=oid, lfs_sha256=lfs_sha256)
