"""The emulator's HTTP plumbing: the threaded server, the request handler, ranges, responses streamed from
disk, pacing (``cdn_bytes_per_s``) and the faults that reshape a response. Routes are ``Routes``'s."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from vfs.hub.emulator.faults import Fault, RequestRecord

logger = logging.getLogger(__package__)  # one log for the whole emulator: "vfs.hub.emulator"


class Routes(Protocol):
    """What the server asks of the app (``Routes``): an answer per request, the faults that fire on
    it, the request log, the CDN's pace, and the event that interrupts delays when it stops."""

    stopping: threading.Event
    cdn_bytes_per_s: float | None

    def route(
        self, origin: str, method: str, url_path: str, query: str, headers: Message, body: bytes
    ) -> Response: ...

    def pick_faults(
        self, origin: str, method: str, file: str | None, categories: tuple[str, ...], resp: Response
    ) -> dict[str, Fault]: ...

    def fault_response(self, fault: Fault, resp: Response) -> Response: ...

    def register(self, record: LiveRecord) -> None: ...


_COPY_CHUNK_BYTES = 256 * 1024
_MAX_REQUEST_BODY_BYTES = 4 << 20
# Idle keep-alive connections are closed after this, like any real server; long enough never to bite a test.
_IDLE_TIMEOUT_S = 300.0
_TRICKLE_DEFAULT_PIECE_BYTES = 4096
_TRICKLE_DEFAULT_PAUSE_S = 0.01
# A paced body goes out in pieces of about this many seconds of its rate: coarse enough that sleeping costs
# little CPU (100 wake-ups a second per connection), fine enough that the rate is smooth at the client.
_PACE_QUANTUM_S = 0.01
_PACE_MIN_PIECE_BYTES = 16 * 1024
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass
class FileBody:
    disk_path: Path
    start: int
    length: int
    total: int


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file_body: FileBody | None = None
    file: str | None = None  # the repo file the request was about

    @property
    def content_length(self) -> int:
        return self.file_body.length if self.file_body is not None else len(self.body)


@dataclass
class LiveRecord:
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


UNSATISFIABLE = (-1, -1)


def parse_range(header: str | None, size_bytes: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, ``UNSATISFIABLE``, or None to ignore it (RFC 9110:
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
            return UNSATISFIABLE
        return max(0, size_bytes - suffix_bytes), size_bytes - 1
    start = int(first)
    end = int(last) if last else size_bytes - 1
    if last and end < start:
        return None
    if start >= size_bytes:
        return UNSATISFIABLE
    return start, min(end, size_bytes - 1)


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])], body)


def hub_error(
    status: int, code: str | None, message: str, extra: list[tuple[str, str]] | None = None
) -> Response:
    headers = [("X-Error-Message", message)]
    if code is not None:
        headers.insert(0, ("X-Error-Code", code))
    return json_response(status, {"error": message}, headers + (extra or []))


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


class _Pacer:
    """One response's bandwidth budget: ``wait(n)`` blocks until ``n`` more bytes may leave.

    The budget starts empty when the pacer is made (after the headers), so the byte at body offset ``k``
    is released at ``t0 + (k + 1) / rate`` at the earliest: a body of N bytes cannot finish before
    ``t0 + N / rate``. ``wait`` returns False when the emulator is stopping (the sleep is interrupted)."""

    def __init__(self, bytes_per_s: float, stopping: threading.Event) -> None:
        self.bytes_per_s = bytes_per_s
        self.piece_bytes = max(_PACE_MIN_PIECE_BYTES, int(bytes_per_s * _PACE_QUANTUM_S))
        self.stopping = stopping
        self._t0_s = time.monotonic()
        self._released_bytes = 0

    def wait(self, n: int) -> bool:
        self._released_bytes += n
        due_s = self._t0_s + self._released_bytes / self.bytes_per_s
        while (delay_s := due_s - time.monotonic()) > 0:
            if self.stopping.wait(delay_s):
                return False
        return True


class Server(ThreadingHTTPServer):
    """One listener. Tracks its connections and handler threads so ``stop`` ends them all promptly."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Routes, origin: str) -> None:
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
    server: Server

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
        out = LiveRecord(
            origin=origin,
            method=method,
            path=split.path,
            range=self.headers.get("Range"),
            auth=self.headers.get("Authorization") is not None,
        )
        emu.register(out)
        try:
            request_body = self._read_request_body()
            if request_body is None:
                resp = hub_error(413, None, "Request body too large or chunked")
                self.close_connection = True
            else:
                resp = emu.route(origin, method, split.path, split.query, self.headers, request_body)
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

    def _respond(self, emu: Routes, origin: str, method: str, resp: Response, out: LiveRecord) -> None:
        picked = emu.pick_faults(origin, method, resp.file, ("delay", "answer"), resp)
        delay = picked.get("delay")
        if delay is not None:
            out.faults.append(delay.kind)
            emu.stopping.wait(delay.delay_s)
        answer = picked.get("answer")
        if answer is not None:
            out.faults.append(answer.kind)
            if answer.kind == "reset":
                self._reset_connection()
                return
            resp = emu.fault_response(answer, resp)
        body_fault: Fault | None = None
        if method == "GET" and resp.file_body is not None and resp.file_body.length > 0:
            body_fault = emu.pick_faults(origin, method, resp.file, ("body",), resp).get("body")
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
        pacer = _Pacer(rate, emu.stopping) if rate else None
        self._send_file(emu, resp.file_body, body_fault, out, pacer)

    def _send_file(
        self, emu: Routes, fb: FileBody, fault: Fault | None, out: LiveRecord, pacer: _Pacer | None
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
                while done < fb.length and not emu.stopping.is_set():
                    n = min(piece_bytes, fb.length - done)
                    self._copy(f, fb.start + done, n, out, pacer=pacer)
                    done += n
                    if done < fb.length:
                        emu.stopping.wait(pause_s)
                if done < fb.length:
                    self.close_connection = True
            else:  # stall, truncate, reset: the body stays incomplete
                n = min(fault.after_bytes, fb.length - 1)
                self._copy(f, fb.start, n, out, pacer=pacer)
                if fault.kind == "reset":
                    self._reset_connection()
                    return
                if fault.kind == "stall":
                    emu.stopping.wait(fault.delay_s)
                self.close_connection = True

    def _sendfile(self, f: BinaryIO, start: int, length: int, out: LiveRecord) -> None:
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
        out: LiveRecord,
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


def _reshape_for_fault(fault: Fault, resp: Response) -> Response:
    """The response a range fault sends instead: 200 + full body, or a shifted, self-consistent 206."""
    fb = resp.file_body
    assert fb is not None
    kept = [(k, v) for k, v in resp.headers if k != "Content-Range"]
    if fault.kind == "ignore_range":
        return Response(200, kept, file_body=FileBody(fb.disk_path, 0, fb.total, fb.total), file=resp.file)
    if fault.kind == "wrong_range":
        first, length, total = fb.start, fb.length, fb.total
        if first + length < total:
            shifted = first + 1
        elif first > 0:
            shifted = first - 1
        else:  # the whole file was asked for: no room to shift, so lie about the total instead
            kept.append(("Content-Range", f"bytes 0-{total - 1}/{total + 1}"))
            return Response(206, kept, file_body=fb, file=resp.file)
        kept.append(("Content-Range", f"bytes {shifted}-{shifted + length - 1}/{total}"))
        return Response(206, kept, file_body=FileBody(fb.disk_path, shifted, length, total), file=resp.file)
    return resp
