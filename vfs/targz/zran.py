"""Random access into gzip files at checkpoints the caller chooses, driving the system zlib directly.

Responsibility: the deflate mechanics behind the shard index, nothing about tar. Four parts:

* ``Inflater``: a small, documented ctypes binding to the system ``libz`` (``inflateInit2_``, ``inflate``,
  ``inflatePrime``, ``inflateSetDictionary``, ``inflateReset``/``inflateReset2``, ``inflateEnd``). The
  ``zlib`` module of the standard library cannot stop at deflate block boundaries (``Z_BLOCK``), report
  the unused bits of the last input byte (``data_type``) or prime a raw inflater with those bits, which is
  exactly what resuming mid-stream needs. ``indexed_gzip`` and ``rapidgzip`` do, but place their seek
  points uniformly; here the caller places one checkpoint per tar member.
* ``GzipScanner``: one sequential, pull-based pass over a (possibly multi-member) gzip stream, presenting
  the uncompressed bytes as a file-like ``read(n)``. While it runs it remembers the recent deflate block
  boundaries and the uncompressed history behind them, so the consumer (the tar parser) can ask, after
  the fact, for the checkpoint before any uncompressed offset it has just learned about, and for the
  compressed offset at which the output reaches a given uncompressed offset.
* ``ResumedInflater``: push-based inflation from a checkpoint (bit offset + window), crossing into the
  following gzip members when the output spans a member boundary.
* ``sparsify_window``: which bytes of a checkpoint's 32 KiB window inflation really reads (found by
  re-inflating with marker windows); the rest are zeroed so the stored window compresses to almost nothing.

Checkpoints follow zlib's ``examples/zran.c``: after ``inflate(..., Z_BLOCK)`` returns with
``data_type & 128`` (at a block header, or just after a gzip header) and not ``data_type & 64`` (the
block that ended was the stream's last), the stream can be resumed at bit ``8 * consumed - (data_type & 7)``
with a raw inflater primed with those bits and given the 32 KiB of output that precede the point as its
dictionary. A checkpoint just after a gzip member header needs no dictionary: a new member never refers
back across its start.

Invariants:

* Offsets are absolute across gzip members (zlib's own ``total_in``/``total_out`` restart at every
  ``inflateReset``, so they are counted here from the bytes each call consumed and produced).
* A ``GzipScanner`` pass only ends normally if every gzip member's CRC-32 and length check out (zlib
  verifies them at each member's end); input that ends inside a member raises ``TruncatedStream``;
  anything after the last member other than zero padding raises ``ZlibError``. Bytes handed out during
  the pass are unverified until it ends, which is why an index is only returned after the whole pass.
* Memory stays bounded by about one deflate block plus the consumer's read-ahead: the consumer declares
  with ``forget_before(offset)`` that it will never ask about anything below ``offset``.
* All zlib failures surface as ``ZlibError`` (an ``IntegrityError``: the bytes are bad, the read is EIO).

Only 64-bit Linux (LP64) is supported: the ``z_stream`` layout below assumes 8-byte ``uLong`` and
pointers. Its size is checked at import (112 bytes), and ``inflateInit2_`` itself refuses a
``stream_size`` that differs from the library's own ``sizeof(z_stream)``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import heapq
import itertools
import logging
import re
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from vfs.errors import IntegrityError

logger = logging.getLogger(__name__)

# zlib return codes (zlib.h).
Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_ERRNO = -1
Z_STREAM_ERROR = -2
Z_DATA_ERROR = -3
Z_MEM_ERROR = -4
Z_BUF_ERROR = -5  # no progress possible: not an error, the caller must supply input or output space
Z_VERSION_ERROR = -6

# inflate() flush values used here.
Z_NO_FLUSH = 0  # zlib writes output straight to next_out, so this still delivers everything it can
Z_BLOCK = 5  # return at the end of each deflate block and right after a gzip header

# data_type bits after inflate() (zlib.h, "The Z_BLOCK option ...").
DT_UNUSED_BITS_MASK = 7  # unused bits in the last input byte consumed
DT_LAST_BLOCK = 64  # the current (or just finished) block is the last one of the deflate stream
DT_AT_BLOCK_BOUNDARY = 128  # stopped at a block header, or just after a gzip header

# windowBits values for inflateInit2_ / inflateReset2.
WBITS_RAW = -15  # raw deflate, 32 KiB window: resuming at a checkpoint
# Building uses the gzip-only wrapper rather than zran.c's auto-detect (47): a zlib-wrapped stream is not a
# .tar.gz, and resuming across members relies on gzip's 8-byte trailer.
WBITS_GZIP = 31  # 16 + 15: gzip wrapper only: building, and a following member when crossing members

WINDOW_SIZE = 32768  # deflate's maximum back-reference distance
GZIP_TRAILER_SIZE = 8  # CRC-32 + ISIZE after the last deflate block of a gzip member

_CODE_NAMES = {
    Z_NEED_DICT: "Z_NEED_DICT",
    Z_ERRNO: "Z_ERRNO",
    Z_STREAM_ERROR: "Z_STREAM_ERROR",
    Z_DATA_ERROR: "Z_DATA_ERROR",
    Z_MEM_ERROR: "Z_MEM_ERROR",
    Z_BUF_ERROR: "Z_BUF_ERROR",
    Z_VERSION_ERROR: "Z_VERSION_ERROR",
}


class ZlibError(IntegrityError):
    """zlib refused the data (or the call): the compressed bytes are not what they should be."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TruncatedStream(ZlibError):
    """The compressed input ended inside a gzip member."""


class _ZStream(ctypes.Structure):
    """``z_stream`` from zlib.h, LP64 layout (112 bytes on x86-64/aarch64 Linux).

    ``uInt`` is 32-bit, ``uLong`` and pointers 64-bit; ctypes inserts the same padding the C compiler
    does. ``zalloc``/``zfree``/``opaque`` stay NULL so zlib uses malloc/free.
    """

    _fields_ = (
        ("next_in", ctypes.c_void_p),  # z_const Bytef *
        ("avail_in", ctypes.c_uint),  # uInt
        ("total_in", ctypes.c_ulong),  # uLong
        ("next_out", ctypes.c_void_p),  # Bytef *
        ("avail_out", ctypes.c_uint),  # uInt
        ("total_out", ctypes.c_ulong),  # uLong
        ("msg", ctypes.c_char_p),  # z_const char *: last error message or NULL
        ("state", ctypes.c_void_p),  # struct internal_state *
        ("zalloc", ctypes.c_void_p),  # alloc_func
        ("zfree", ctypes.c_void_p),  # free_func
        ("opaque", ctypes.c_void_p),  # voidpf
        ("data_type", ctypes.c_int),  # int: see DT_* above
        ("adler", ctypes.c_ulong),  # uLong
        ("reserved", ctypes.c_ulong),  # uLong
    )


_ZStreamPtr = ctypes.POINTER(_ZStream)
_UINT_MAX = 0xFFFFFFFF


@functools.cache
def _libz() -> tuple[ctypes.CDLL, bytes]:
    """Load the system zlib once and declare the signatures used here; returns (library, version)."""
    name = ctypes.util.find_library("z")
    if name is None:
        raise ImportError("the system zlib (libz.so) was not found")
    lib = ctypes.CDLL(name)  # CDLL releases the GIL during each call
    lib.zlibVersion.argtypes = ()
    lib.zlibVersion.restype = ctypes.c_char_p
    # int inflateInit2_(z_streamp strm, int windowBits, const char *version, int stream_size)
    lib.inflateInit2_.argtypes = (_ZStreamPtr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    lib.inflateInit2_.restype = ctypes.c_int
    for fn_name in ("inflate", "inflateReset2"):  # int f(z_streamp strm, int flush_or_windowBits)
        fn = getattr(lib, fn_name)
        fn.argtypes = (_ZStreamPtr, ctypes.c_int)
        fn.restype = ctypes.c_int
    for fn_name in ("inflateEnd", "inflateReset"):  # int f(z_streamp strm)
        fn = getattr(lib, fn_name)
        fn.argtypes = (_ZStreamPtr,)
        fn.restype = ctypes.c_int
    # int inflatePrime(z_streamp strm, int bits, int value)
    lib.inflatePrime.argtypes = (_ZStreamPtr, ctypes.c_int, ctypes.c_int)
    lib.inflatePrime.restype = ctypes.c_int
    # int inflateSetDictionary(z_streamp strm, const Bytef *dictionary, uInt dictLength)
    lib.inflateSetDictionary.argtypes = (_ZStreamPtr, ctypes.c_char_p, ctypes.c_uint)
    lib.inflateSetDictionary.restype = ctypes.c_int
    version: bytes = lib.zlibVersion()
    return lib, version


def zlib_version() -> str:
    """The version string of the zlib this module drives."""
    return _libz()[1].decode("ascii")


class Inflater:
    """One zlib inflate stream with a reusable output buffer.

    Input is set with ``set_input`` (a reference is kept so zlib's ``next_in`` stays valid) and consumed by
    ``inflate``, which writes into ``self.output`` and reports what it consumed and produced. Not
    thread-safe; ``close`` (or garbage collection) frees zlib's state.
    """

    def __init__(self, window_bits: int, *, output_size_bytes: int = 256 * 1024) -> None:
        lib, version = _libz()
        self._lib = lib
        self._strm = _ZStream()
        self._ptr = ctypes.pointer(self._strm)
        self._input = b""
        self._input_addr = 0
        self._input_pos = 0
        # The output buffer is a bytearray so produced bytes can be sliced without a ctypes round trip;
        # the from_buffer view pins it (no resize) and gives zlib its address.
        self.output = bytearray(output_size_bytes)
        self._output_view = memoryview(self.output)
        self._output_pin = (ctypes.c_char * output_size_bytes).from_buffer(self.output)
        self._output_addr = ctypes.addressof(self._output_pin)
        rc = lib.inflateInit2_(self._ptr, window_bits, version, ctypes.sizeof(_ZStream))
        if rc != Z_OK:
            raise ZlibError(f"inflateInit2_(windowBits={window_bits}) failed: {_CODE_NAMES.get(rc, rc)}", rc)
        self._finalizer = weakref.finalize(self, lib.inflateEnd, self._ptr)

    def close(self) -> None:
        """Free zlib's state (idempotent)."""
        self._finalizer()

    def __enter__(self) -> Inflater:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- input -------------------------------------------------------------------------------------

    def set_input(self, data: bytes) -> None:
        """Replace the pending input with ``data`` (bytes are not copied; the reference is kept)."""
        if not isinstance(data, bytes):
            data = bytes(data)  # zlib reads it later through a raw pointer: it must be immutable
        if len(data) > _UINT_MAX:
            raise ValueError("input chunk larger than 4 GiB")
        self._input = data
        # c_char_p on a bytes object points at its internal buffer: no copy.
        self._input_addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        self._input_pos = 0
        self._strm.next_in = self._input_addr
        self._strm.avail_in = len(data)

    @property
    def avail_in(self) -> int:
        """Bytes of the current input not yet consumed."""
        return int(self._strm.avail_in)

    def pending_input(self) -> memoryview:
        """The unconsumed rest of the current input."""
        return memoryview(self._input)[self._input_pos :]

    def skip_input(self, count: int) -> None:
        """Consume ``count`` input bytes without inflating them (e.g. a gzip trailer)."""
        if not 0 <= count <= self._strm.avail_in:
            raise ValueError(f"cannot skip {count} of {self._strm.avail_in} pending input bytes")
        self._input_pos += count
        self._strm.next_in = self._input_addr + self._input_pos
        self._strm.avail_in -= count

    # -- inflate -----------------------------------------------------------------------------------

    def inflate(self, max_output_bytes: int, flush: int = Z_NO_FLUSH) -> tuple[int, int, int]:
        """Run ``inflate(strm, flush)`` into ``self.output[:max_output_bytes]``.

        Returns ``(rc, consumed_bytes, produced_bytes)``; the produced bytes are
        ``self.output[:produced_bytes]`` until the next call. ``rc`` is ``Z_OK``, ``Z_STREAM_END`` or
        ``Z_BUF_ERROR`` (no progress possible); anything else raises ``ZlibError``.
        """
        strm = self._strm
        if not 0 < max_output_bytes <= len(self.output):
            raise ValueError(f"max_output_bytes must be in 1..{len(self.output)}")
        strm.next_out = self._output_addr
        strm.avail_out = max_output_bytes
        avail_in_before = strm.avail_in
        rc = self._lib.inflate(self._ptr, flush)
        consumed = avail_in_before - strm.avail_in
        self._input_pos += consumed
        if rc not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
            raise ZlibError(self._message("inflate", rc), rc)
        return rc, consumed, max_output_bytes - strm.avail_out

    def output_view(self, size_bytes: int) -> memoryview:
        """The first ``size_bytes`` of the output buffer (valid until the next ``inflate``)."""
        return self._output_view[:size_bytes]

    @property
    def data_type(self) -> int:
        """``strm->data_type`` after the last ``inflate``: see the DT_* constants."""
        return int(self._strm.data_type)

    # -- state -------------------------------------------------------------------------------------

    def prime(self, bits: int, value: int) -> None:
        """``inflatePrime``: insert ``bits`` bits of ``value`` ahead of the input (resume mid-byte)."""
        self._check("inflatePrime", self._lib.inflatePrime(self._ptr, bits, value))

    def set_dictionary(self, window: bytes) -> None:
        """``inflateSetDictionary``: the output that preceded the resume point (raw inflate only)."""
        if window:
            self._check(
                "inflateSetDictionary", self._lib.inflateSetDictionary(self._ptr, window, len(window))
            )

    def reset(self) -> None:
        """``inflateReset``: start a new stream with the same wrapper setting (next gzip member)."""
        self._check("inflateReset", self._lib.inflateReset(self._ptr))

    def reset2(self, window_bits: int) -> None:
        """``inflateReset2``: start a new stream with another wrapper setting (raw -> gzip)."""
        self._check("inflateReset2", self._lib.inflateReset2(self._ptr, window_bits))

    def _check(self, call: str, rc: int) -> None:
        if rc != Z_OK:
            raise ZlibError(self._message(call, rc), rc)

    def _message(self, call: str, rc: int) -> str:
        msg = self._strm.msg
        detail = msg.decode("utf-8", "replace") if msg else "no message"
        return f"zlib {call} failed: {_CODE_NAMES.get(rc, rc)} ({detail})"


if ctypes.sizeof(_ZStream) != 112:  # pragma: no cover - only on non-LP64 platforms
    raise ImportError(f"unsupported platform: sizeof(z_stream) is {ctypes.sizeof(_ZStream)}, expected 112")


class BlockBoundary(NamedTuple):
    """A point where inflation can resume: the start of a deflate block, or of a gzip member's data.

    A NamedTuple because the scanner creates one per deflate block (tens of thousands per GB).
    """

    out_offset: int  # uncompressed offset of the first byte the block produces
    cmp_bit_offset: int  # bit offset in the compressed file where the block header starts
    member_out_start: int  # uncompressed offset where the enclosing gzip member began

    @property
    def window_start(self) -> int:
        """First uncompressed offset of the dictionary this point needs (never before its member)."""
        return max(self.out_offset - WINDOW_SIZE, self.member_out_start)


class GzipScanner:
    """Sequential pull-based inflation of a (multi-member) gzip stream that remembers resume points.

    ``read(n)`` gives the uncompressed stream like a file (what ``tarfile`` in stream mode needs).
    ``checkpoint_at(offset)`` returns the last block boundary at or before ``offset`` with its window;
    ``request_sparse_window`` later reports which of its bytes are really needed;
    ``on_output_reaches(offset, callback)`` reports the number of compressed bytes needed to produce
    everything before ``offset``; ``tap(start, end, sink)`` passes an uncompressed range to ``sink`` as it
    is produced; ``forget_before(offset)`` promises none of these will be asked about anything below
    ``offset`` again, which is what keeps memory bounded. ``drain(offset)`` yields the rest of the
    uncompressed stream from ``offset`` to the end of the last gzip member.

    Not thread-safe: one consumer drives it; callbacks and sinks run inside its calls.

    Output is produced in steps of at most ``step_bytes``: the compressed end reported for an offset that
    was already passed is exact to within one step; for offsets registered before the output reaches
    them it is exact (the step is cut at the offset).
    """

    _INFLATE, _BETWEEN_MEMBERS, _ZERO_PADDING, _DONE = range(4)

    def __init__(
        self,
        read: Callable[[int], bytes],
        *,
        read_size_bytes: int = 256 * 1024,
        step_bytes: int = 64 * 1024,
    ) -> None:
        self._read = read
        self._read_size_bytes = read_size_bytes
        self._step_bytes = step_bytes
        self._inflater = Inflater(WBITS_GZIP, output_size_bytes=step_bytes)
        self._state = self._INFLATE
        self.cmp_offset = 0  # compressed bytes consumed by zlib (or skipped as padding)
        self.out_offset = 0  # uncompressed bytes produced
        self._member_out_start = 0
        self._gzip_members = 1
        # Uncompressed history: _history[0] is at offset _history_base. It holds every byte not yet
        # handed to read() and the windows of the retained boundaries.
        self._history = bytearray()
        self._history_base = 0
        self._handed = 0  # next offset read() will return
        self._floor = 0  # nothing below this will be asked about again
        # _boundaries[0] is the last boundary <= _floor; later ones follow in order.
        self._boundaries: deque[BlockBoundary] = deque()
        # (out_offset, cmp_offset) after each step that produced output at or beyond _floor.
        self._trace: deque[tuple[int, int]] = deque()
        # Heap of (out_offset, sequence, callback(cmp_offset)) to call when the output reaches out_offset.
        self._waiters: list[tuple[int, int, Callable[[int], None]]] = []
        self._sequence = itertools.count()
        # Compressed input as pulled: (compressed offset of chunk[0], chunk), kept while a retained
        # boundary or a pending sparse-window job may need to re-inflate from it.
        self._cmp_chunks: deque[tuple[int, bytes]] = deque()
        self._pulled = 0
        self._window_jobs: list[_WindowJob] = []
        # (next offset to feed, end offset, sink): consumers of uncompressed ranges, fed as produced.
        self._taps: deque[tuple[int, int, Callable[[memoryview], object]]] = deque()

    def close(self) -> None:
        self._inflater.close()

    @property
    def gzip_members(self) -> int:
        """How many gzip members have been started so far."""
        return self._gzip_members

    @property
    def retained_bytes(self) -> int:
        """Bytes held in memory: uncompressed history (windows, unread output) and compressed input."""
        return len(self._history) + sum(len(chunk) for _, chunk in self._cmp_chunks)

    @property
    def finished(self) -> bool:
        """True once the input is exhausted after a complete gzip member (and any zero padding)."""
        return self._state == self._DONE

    # -- file-like side ------------------------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` uncompressed bytes (fewer only at the end of the stream)."""
        if size < 0:
            raise ValueError("GzipScanner.read needs a size")
        while self.out_offset - self._handed < size and self._state != self._DONE:
            self._step()
        start = self._handed - self._history_base
        # One copy: the temporary memoryview is released at once, so the bytearray stays resizable.
        data = bytes(memoryview(self._history)[start : start + size])
        self._handed += len(data)
        self._trim()
        return data

    # -- checkpoint side -----------------------------------------------------------------------------

    def checkpoint_at(self, offset: int) -> tuple[BlockBoundary, bytes]:
        """The last known block boundary at or before ``offset`` and its window (dictionary) bytes."""
        if offset < self._floor:
            raise ValueError(f"offset {offset} is below the forgotten floor {self._floor}")
        chosen: BlockBoundary | None = None
        for boundary in self._boundaries:
            if boundary.out_offset > offset:
                break
            chosen = boundary
        if chosen is None:
            raise ValueError(f"no block boundary known at or before offset {offset}")
        start = chosen.window_start - self._history_base
        if start < 0:  # pragma: no cover - guarded by _trim's retention rule
            raise AssertionError("window of a retained boundary was trimmed")
        return chosen, bytes(self._history[start : chosen.out_offset - self._history_base])

    def on_output_reaches(self, offset: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(cmp_end)`` with the compressed bytes needed to inflate everything below ``offset``.

        Called at once if the output already passed ``offset``, else from the step that reaches it.
        ``offset`` must not be below the floor.
        """
        if offset < self._floor:
            raise ValueError(f"offset {offset} is below the forgotten floor {self._floor}")
        if offset <= self.out_offset:
            for out_offset, cmp_offset in self._trace:
                if out_offset >= offset:
                    callback(cmp_offset)
                    return
            raise AssertionError(f"no trace entry reaches {offset}")  # pragma: no cover
        heapq.heappush(self._waiters, (offset, next(self._sequence), callback))

    def request_sparse_window(
        self, boundary: BlockBoundary, window: bytes, callback: Callable[[bytes], None]
    ) -> None:
        """Call ``callback(sparse)``: ``window`` with the bytes zeroed that resuming here never reads.

        Deflate matches reach at most 32 KiB back, so which window bytes are read is known once the output
        is 32 KiB past the boundary (or the stream has ended); until then the compressed bytes from the
        boundary on are kept. See ``sparsify_window``.
        """
        if not window:
            callback(window)
            return
        job = _WindowJob(boundary, window, callback)
        self._window_jobs.append(job)
        ready_at = boundary.out_offset + WINDOW_SIZE
        if ready_at <= self.out_offset:
            self._resolve_window_job(job)
        else:
            heapq.heappush(
                self._waiters, (ready_at, next(self._sequence), lambda _cmp: self._resolve_window_job(job))
            )

    def tap(self, start: int, end: int, sink: Callable[[memoryview], object]) -> None:
        """Pass every uncompressed byte in ``[start, end)`` to ``sink``, in order, as it is produced.

        Bytes already produced are passed at once (``start`` must not be below the floor). The views are
        only valid during the call. This is how the builder hashes member data straight from zlib's
        output, without the copies a file-like consumer costs.
        """
        if start < self._floor:
            raise ValueError(f"offset {start} is below the forgotten floor {self._floor}")
        if self._taps and start < self._taps[-1][1]:
            raise ValueError("tapped ranges must not overlap or go backwards")
        produced_end = min(end, self.out_offset)
        if produced_end > start:
            base = self._history_base
            # A temporary view: released right after the call, so the bytearray stays resizable.
            sink(memoryview(self._history)[start - base : produced_end - base])
            start = produced_end
        if end > start:
            self._taps.append((start, end, sink))

    def forget_before(self, offset: int) -> None:
        """Promise that no checkpoint or compressed end below ``offset`` will be asked for again."""
        if offset <= self._floor:
            return
        self._floor = offset
        boundaries = self._boundaries
        while len(boundaries) >= 2 and boundaries[1].out_offset <= offset:
            boundaries.popleft()
        trace = self._trace
        while trace and trace[0][0] < offset:
            trace.popleft()
        self._trim()

    def drain(self, offset: int) -> Iterator[bytes]:
        """Yield every uncompressed byte from ``offset`` (>= the floor) to the end of the stream."""
        if offset < self._floor:
            raise ValueError(f"offset {offset} is below the forgotten floor {self._floor}")
        self.forget_before(offset)
        position = offset
        while True:
            if position < self.out_offset:
                start = position - self._history_base
                chunk = bytes(memoryview(self._history)[start:])
                position = self.out_offset
                self._handed = max(self._handed, position)
                self._trim()
                yield chunk
            if self._state == self._DONE:
                return
            self._step()

    # -- internals ----------------------------------------------------------------------------------

    def _trim(self) -> None:
        keep_from = self._handed
        if self._boundaries:
            keep_from = min(keep_from, self._boundaries[0].window_start)
        for job in self._window_jobs:
            keep_from = min(keep_from, job.boundary.window_start)
        drop = keep_from - self._history_base
        if drop > 0:
            # bytearray deletes at the front by moving its start pointer: no copy of the rest.
            del self._history[:drop]
            self._history_base = keep_from
        self._trim_compressed()

    def _trim_compressed(self) -> None:
        keep_from = self.cmp_offset
        if self._boundaries:
            keep_from = min(keep_from, self._boundaries[0].cmp_bit_offset // 8)
        for job in self._window_jobs:
            keep_from = min(keep_from, job.boundary.cmp_bit_offset // 8)
        chunks = self._cmp_chunks
        while len(chunks) > 1 and chunks[0][0] + len(chunks[0][1]) <= keep_from:
            chunks.popleft()

    def _compressed_from(self, offset: int) -> bytes:
        """The pulled compressed bytes from ``offset`` on (must still be retained)."""
        pieces = [chunk for start, chunk in self._cmp_chunks if start + len(chunk) > offset]
        if not pieces or self._cmp_chunks[0][0] > offset:  # pragma: no cover - retention rule
            raise AssertionError(f"compressed bytes from {offset} were not retained")
        first_start = self._pulled - sum(len(piece) for piece in pieces)
        return b"".join(pieces)[offset - first_start :]

    def _resolve_window_job(self, job: _WindowJob) -> None:
        if job not in self._window_jobs:
            return  # already resolved at the end of the stream
        self._window_jobs.remove(job)
        boundary = job.boundary
        produced = min(WINDOW_SIZE, self.out_offset - boundary.out_offset)
        start = boundary.out_offset - self._history_base
        reference = bytes(self._history[start : start + produced])
        compressed = self._compressed_from(boundary.cmp_bit_offset // 8)
        job.callback(sparsify_window(job.window, boundary.cmp_bit_offset, compressed, reference))

    def _pull(self) -> bytes:
        chunk = self._read(self._read_size_bytes)
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        if chunk:
            self._cmp_chunks.append((self._pulled, chunk))
            self._pulled += len(chunk)
            self._trim_compressed()
        return chunk

    def _step(self) -> None:
        """Advance by one zlib call (or one input chunk of padding); sets _DONE at the end."""
        inflater = self._inflater
        if inflater.avail_in == 0:
            chunk = self._pull()
            if not chunk:
                if self._state == self._INFLATE:
                    raise TruncatedStream(
                        f"gzip stream truncated: input ends inside gzip member {self._gzip_members} "
                        f"at compressed offset {self.cmp_offset} (uncompressed offset {self.out_offset})"
                    )
                self._state = self._DONE
                for job in list(self._window_jobs):
                    self._resolve_window_job(job)
                return
            inflater.set_input(chunk)
        if self._state == self._BETWEEN_MEMBERS:
            # After a member's trailer: another gzip header, or zero padding up to the end of the file.
            if inflater.pending_input()[0] == 0:
                self._state = self._ZERO_PADDING
            else:
                inflater.reset()  # gzip wrapper again: zlib checks the next member's header
                self._gzip_members += 1
                self._member_out_start = self.out_offset
                self._state = self._INFLATE
        if self._state == self._ZERO_PADDING:
            rest = inflater.pending_input()
            if rest.tobytes().count(0) != len(rest):
                raise ZlibError(
                    f"unexpected data after the end of gzip member {self._gzip_members} "
                    f"(compressed offset about {self.cmp_offset})"
                )
            inflater.skip_input(len(rest))
            self.cmp_offset += len(rest)
            return

        limit = self._step_bytes
        if self._waiters:
            # Cut the step at the next registered offset so its compressed end is exact.
            limit = min(limit, max(1, self._waiters[0][0] - self.out_offset))
        rc, consumed, produced = inflater.inflate(limit, Z_BLOCK)
        if rc == Z_BUF_ERROR and consumed == 0 and produced == 0 and inflater.avail_in:
            raise ZlibError("inflate made no progress", rc)  # pragma: no cover - defensive
        self.cmp_offset += consumed
        if produced:
            output = inflater.output_view(produced)
            self._history += output
            if self._taps:
                self._feed_taps(output, self.out_offset)
            self.out_offset += produced
            if self.out_offset >= self._floor:
                self._trace.append((self.out_offset, self.cmp_offset))
        if rc == Z_STREAM_END:
            # zlib has checked the member's CRC-32 and length; what follows is decided on the next step.
            self._state = self._BETWEEN_MEMBERS
        else:
            data_type = inflater.data_type
            if data_type & DT_AT_BLOCK_BOUNDARY and not data_type & DT_LAST_BLOCK:
                self._add_boundary(
                    BlockBoundary(
                        out_offset=self.out_offset,
                        cmp_bit_offset=8 * self.cmp_offset - (data_type & DT_UNUSED_BITS_MASK),
                        member_out_start=self._member_out_start,
                    )
                )
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.out_offset:
            heapq.heappop(waiters)[2](self.cmp_offset)

    def _feed_taps(self, output: memoryview, output_start: int) -> None:
        output_end = output_start + len(output)
        taps = self._taps
        while taps and taps[0][0] < output_end:
            position, end, sink = taps[0]
            upto = min(end, output_end)
            sink(output[position - output_start : upto - output_start])
            if upto == end:
                taps.popleft()
            else:
                taps[0] = (upto, end, sink)

    def _add_boundary(self, boundary: BlockBoundary) -> None:
        if boundary.out_offset <= self._floor:
            # Supersedes every earlier boundary: only the last one at or before the floor is useful.
            self._boundaries.clear()
        self._boundaries.append(boundary)


@dataclass(eq=False, slots=True)
class _WindowJob:
    """A pending ``request_sparse_window`` (compared by identity)."""

    boundary: BlockBoundary
    window: bytes
    callback: Callable[[bytes], None]


_INVERT = bytes(255 - i for i in range(256))
_MARKER_LOW = bytes(i & 0xFF for i in range(WINDOW_SIZE))
_MARKER_HIGH = bytes(i >> 8 for i in range(WINDOW_SIZE))
_NONZERO = re.compile(rb"[^\x00]")


def sparsify_window(window: bytes, cmp_bit_offset: int, compressed: bytes, reference: bytes) -> bytes:
    """``window`` with every byte zeroed that inflating from the checkpoint never reads.

    ``compressed`` holds the file's bytes from ``cmp_bit_offset // 8`` on, enough to produce
    ``reference``: the true output of the first ``min(32 KiB, rest of stream)`` bytes after the checkpoint
    (later output cannot reach back past the checkpoint). Each output byte is either a literal or a copy,
    possibly through earlier output, of one window byte. Inflating with the bitwise complement of the
    window changes exactly the copied bytes; inflating with windows whose byte ``i`` holds the low and the
    high byte of ``i`` names the window byte each was copied from. The result has the window's length
    (so distances still resolve) but compresses to almost nothing when few bytes are read, which for
    incompressible video data is the common case (stored blocks read none).
    Any surprise returns the full window: sparsity is an optimisation, never a risk to correctness (and
    extraction checks every member's sha256 regardless).
    """
    size = len(reference)
    if not window:
        return window

    def inflate_with(dictionary: bytes) -> bytes:
        inflater = ResumedInflater(cmp_bit_offset, dictionary, output_limit_bytes=size)
        try:
            return b"".join(inflater.feed(compressed))
        finally:
            inflater.close()

    try:
        flipped = inflate_with(window.translate(_INVERT))
        if len(flipped) != size:
            raise ZlibError(f"re-inflation produced {len(flipped)} of {size} bytes")
        difference = (int.from_bytes(flipped, "little") ^ int.from_bytes(reference, "little")).to_bytes(
            size, "little"
        )
        copied = [match.start() for match in _NONZERO.finditer(difference)]
        sparse = bytearray(len(window))
        if copied:
            low = inflate_with(_MARKER_LOW[: len(window)])
            high = inflate_with(_MARKER_HIGH[: len(window)])
            for position in copied:
                source = low[position] | high[position] << 8
                sparse[source] = window[source]
    except (ZlibError, IndexError) as e:  # pragma: no cover - defensive
        logger.debug("keeping the full window at bit %d: %s", cmp_bit_offset, e)
        return window
    return bytes(sparse)


class ResumedInflater:
    """Push-based inflation from a checkpoint, across gzip member boundaries.

    Feed the compressed file's bytes from ``cmp_bit_offset // 8`` on, in order; get the uncompressed
    bytes from the checkpoint's uncompressed offset on, at most ``output_limit_bytes`` in total (input
    beyond what that needs is ignored). When the deflate stream of a gzip member ends, the 8-byte trailer
    is skipped (its CRC covers bytes before the checkpoint, so it cannot be checked here) and the next
    member is inflated with zlib's gzip wrapper, which checks that member's header and, if reached, trailer.
    """

    def __init__(
        self,
        cmp_bit_offset: int,
        window: bytes,
        *,
        output_limit_bytes: int,
        output_chunk_bytes: int = 256 * 1024,
    ) -> None:
        if len(window) > WINDOW_SIZE:
            raise ValueError(f"window of {len(window)} bytes exceeds {WINDOW_SIZE}")
        self._inflater = Inflater(WBITS_RAW, output_size_bytes=output_chunk_bytes)
        self._prime_bits = (-cmp_bit_offset) % 8
        self._window = window
        self._primed = False
        self._raw = True  # still in the checkpoint's own gzip member (raw inflate, trailer not consumed)
        self._trailer_to_skip = 0
        self._remaining_out = output_limit_bytes
        self.consumed_bytes = 0
        if self._prime_bits == 0:
            self._start()

    def close(self) -> None:
        self._inflater.close()

    @property
    def remaining_output_bytes(self) -> int:
        return self._remaining_out

    def _start(self) -> None:
        self._inflater.set_dictionary(self._window)
        self._primed = True

    def feed(self, chunk: bytes) -> list[bytes]:
        """Inflate ``chunk``; returns the uncompressed pieces it completed (possibly none)."""
        pieces: list[bytes] = []
        if self._remaining_out <= 0 or not chunk:
            return pieces
        inflater = self._inflater
        inflater.set_input(chunk)
        if not self._primed:
            # The checkpoint starts inside this byte: its high `bits` bits belong to the next block.
            first = chunk[0]
            inflater.skip_input(1)
            inflater.prime(self._prime_bits, first >> (8 - self._prime_bits))
            self._start()
        while self._remaining_out > 0 and inflater.avail_in:
            if self._trailer_to_skip:
                skip = min(self._trailer_to_skip, inflater.avail_in)
                inflater.skip_input(skip)
                self._trailer_to_skip -= skip
                if self._trailer_to_skip == 0:
                    inflater.reset2(WBITS_GZIP)
                continue
            limit = min(len(inflater.output), self._remaining_out)
            rc, consumed, produced = inflater.inflate(limit, Z_NO_FLUSH)
            if produced:
                pieces.append(bytes(inflater.output_view(produced)))
                self._remaining_out -= produced
            if rc == Z_STREAM_END:
                if self._raw:
                    self._raw = False
                    self._trailer_to_skip = GZIP_TRAILER_SIZE
                else:
                    inflater.reset()  # gzip wrapper consumed the trailer; the next header follows
            elif consumed == 0 and produced == 0:
                raise ZlibError("inflate made no progress on pending input", rc)  # pragma: no cover
        self.consumed_bytes += len(chunk) - inflater.avail_in
        return pieces
