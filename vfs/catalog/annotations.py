"""Streaming parsing and path validation of the annotation JSONs (``*_processed.json``).

Responsibility: turn an annotation file (one JSON array of record objects, up to ~670 MB) into a stream of
``VideoRecord``s whose ``path`` is either a safe, normalised relative path or ``None`` with the reason;
classify repo paths (which files are annotations, which directory a file belongs to); write a filtered
copy of an annotation file (the ``.vfs/available/`` view).

Invariants:
- Nothing here holds a whole file: records are parsed one at a time with ijson (the yajl2 C backend),
  so memory is bounded by the largest single record, never by the file.
- Annotation paths are data, never trusted. ``normalise_video_path`` only returns relative,
  ``/``-separated paths without empty, ``.`` or ``..`` components, NUL bytes, backslashes or control
  characters, valid as UTF-8, each component at most 255 bytes and the whole at most 4096 bytes: joined
  under any root, the result stays under that root. Unicode is kept exactly as written (no NFC folding).
- A malformed or truncated file raises ``AnnotationError``; it never ends early as if it were complete.
  Records already yielded before the error were well-formed; the caller decides what to keep.
- No record's text is silently altered. The yajl2 C backend mishandles lone UTF-16 surrogate escapes
  (``"\\ud83d"`` alone becomes ``"?"``, ``"\\udc80"`` aborts the parse) and integers beyond 64 bits. A guard
  scans the raw bytes for lone surrogate escapes before the parser sees them; when one (or a huge integer)
  shows up, the file is re-parsed from its start with ijson's exact pure-Python backend, skipping the
  records already yielded. That needs a seekable file; a non-seekable stream gets an ``AnnotationError``.
"""

from __future__ import annotations

import errno as _errno
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

import ijson
from ijson.backends import python as _ijson_python

from vfs.errors import VfsError

logger = logging.getLogger(__name__)

__all__ = [
    "AnnotationError",
    "BadPath",
    "VideoRecord",
    "annotation_kind",
    "iter_video_records",
    "malformed_hint",
    "normalise_video_path",
    "video_directory",
    "write_filtered",
]

MAX_COMPONENT_BYTES: Final = 255
MAX_PATH_BYTES: Final = 4096
# Bytes handed to the parser per read: large enough that per-call overhead vanishes, small enough that
# the raw buffer never matters for memory.
_READ_CHUNK_BYTES: Final = 256 * 1024
_FILTER_FLUSH_BYTES: Final = 1024 * 1024

_UTF8_BOM: Final = b"\xef\xbb\xbf"
_LFS_POINTER_PREFIX: Final = b"version https://git-lfs"
_JSON_WHITESPACE: Final = b" \t\r\n"

# C0 controls, DEL and C1 controls: never part of a real dataset path, and a newline or an escape
# sequence in a path would forge log lines, TSV rows and terminal output.
_CONTROL_CHARS: Final = re.compile("[\x01-\x1f\x7f-\x9f]")


# Paths that are already normal and safe: ASCII components of at most 255 bytes that do not start with
# "." (so never "." or ".."), no empty component. Anything else takes the full checks below.
_PLAIN_PATH: Final = re.compile(
    r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,254}(?:/[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,254})*"
)


class BadPath(ValueError):
    """An annotation ``video`` value that cannot be used as a path; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AnnotationError(VfsError):
    """An annotation file is not a well-formed JSON array of records (malformed, truncated, not JSON)."""

    errno = _errno.EIO
    log_level = logging.ERROR

    def __init__(
        self,
        file_label: str,
        reason: str,
        *,
        byte_offset: int | None = None,
        records_before: int | None = None,
    ) -> None:
        where = []
        if byte_offset is not None:
            where.append(f"near byte {byte_offset}")
        if records_before is not None:
            where.append(f"after {records_before} records")
        suffix = f" ({', '.join(where)})" if where else ""
        super().__init__(f"{file_label}: {reason}{suffix}")
        self.file_label = file_label
        self.reason = reason
        self.byte_offset = byte_offset
        self.records_before = records_before


@dataclass(frozen=True, slots=True)
class VideoRecord:
    """One item of an annotation array, reduced to what the catalog needs.

    ``path`` is the normalised safe path or ``None`` when the value was rejected; ``problem`` is the reason
    for a rejection, or, with ``path`` set, why the path looks like a dirty record (see ``malformed_hint``).
    """

    index: int
    record_id: str | None
    data_source: str | None
    raw_video: object
    path: str | None
    problem: str | None

    @property
    def rejected(self) -> bool:
        """True when the record names no usable path (bad value, missing field, not an object)."""
        return self.path is None


# --- paths -----------------------------------------------------------------------------------------


def normalise_video_path(raw: object) -> str:
    """Return ``raw`` as a safe relative path, or raise ``BadPath(reason)``.

    ``a//b``, ``./a`` and a trailing ``/`` are collapsed; ``..`` anywhere is refused rather than resolved,
    since a record that climbs out of its folder is dirty whatever it would resolve to.
    """
    if not isinstance(raw, str):
        raise BadPath("not a string")
    if len(raw) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(raw):
        return raw  # the common case, decided by one regex: already normal, nothing to check
    if not raw:
        raise BadPath("empty path")
    if "\x00" in raw:
        raise BadPath("NUL byte")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from a "\udc80" escape) cannot name a file on a UTF-8 filesystem.
        raise BadPath("not valid UTF-8") from None
    if "\\" in raw:
        raise BadPath("backslash")
    if _CONTROL_CHARS.search(raw):
        raise BadPath("control character")
    if raw.startswith("/"):
        raise BadPath("absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if not parts:
        raise BadPath("empty path")
    if ".." in parts:
        raise BadPath("'..' component")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise BadPath(f"component over {MAX_COMPONENT_BYTES} bytes")
    path = "/".join(parts)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise BadPath(f"path over {MAX_PATH_BYTES} bytes")
    return path


# Top-level folders of the merged tree whose leaves are video files (DATASET.md section 2).
_VIDEO_FILE_ROOTS: Final = frozenset(
    {"academic_source", "liwei_youtube_videos", "NextQA", "ActivityNet-QA", "perception_test"}
)
_VIDEO_EXTENSIONS: Final = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
_YOUTUBE_DIR: Final = "liwei_youtube_videos/videos/youtube_video_2024"


def malformed_hint(path: str) -> str | None:
    """Why a syntactically valid ``path`` cannot exist because its record is dirty, or ``None``.

    Encodes the known forms of DATASET.md section 2: youtube clips live exactly in
    ``liwei_youtube_videos/videos/youtube_video_2024/``, and every family except llava_hound's frame
    directories (``shareVideoGPTV/...``) names a video file with an extension. Paths in unknown
    families are given the benefit of the doubt (``None``): a new revision may add a family.
    """
    parts = path.split("/")
    name = parts[-1]
    problems: list[str] = []
    in_youtube_tree = parts[0] == "liwei_youtube_videos"
    if (in_youtube_tree or name.startswith("ytb_")) and "/".join(parts[:-1]) != _YOUTUBE_DIR:
        if in_youtube_tree and "youtube_video_2024" not in parts[:-1]:
            problems.append("the youtube path lacks the youtube_video_2024/ level")
        else:
            problems.append(f"youtube clips live directly in {_YOUTUBE_DIR}/")
    if (
        in_youtube_tree or parts[0] in _VIDEO_FILE_ROOTS or name.startswith("ytb_")
    ) and not name.lower().endswith(_VIDEO_EXTENSIONS):
        problems.append("it has no video extension such as .mp4")
    if not problems:
        return None
    return f"malformed record: {' and '.join(problems)}, so no shard or upstream dataset holds {path!r}"


# --- repo paths --------------------------------------------------------------------------------------

# Video directories are "<duration bucket>_<family>", e.g. 0_30_s_academic_v0_1 or 2_3_m_nextqa. The
# pattern is generic on purpose: a revision may add buckets or families, and everything is derived from
# the repo listing, never from a fixed list or the README.
_VIDEO_DIRECTORY: Final = re.compile(r"\d+_\d+_[sm]_[A-Za-z0-9_]+")
_ANNOTATION_SUFFIX: Final = "_processed.json"
LLAVA_HOUND_DIRECTORY: Final = "llava_hound"


def video_directory(repo_path: str) -> str | None:
    """The video directory (e.g. ``0_30_s_academic_v0_1``) that ``repo_path`` is, or is inside; else None."""
    first = repo_path.split("/", 1)[0]
    return first if _VIDEO_DIRECTORY.fullmatch(first) else None


def annotation_kind(repo_path: str) -> str | None:
    """Whether a repo file is an annotation JSON, and which kind.

    Annotations are ``*_processed.json`` files directly inside a video directory or ``llava_hound/``.
    Returns ``"caption"`` (``_cap_`` infix), ``"multi_choice"`` (``_mc_``), ``"open_ended"`` (``_oe_``,
    or llava_hound's ``_qa_`` file), ``"other"`` for an annotation with an unknown infix, and ``None`` for
    everything else (README, .gitattributes, shards, stray ``*.parquet``, prompt folders).
    """
    parts = repo_path.split("/")
    if len(parts) != 2:
        return None
    top, name = parts
    if not name.endswith(_ANNOTATION_SUFFIX) or name == _ANNOTATION_SUFFIX:
        return None
    if top != LLAVA_HOUND_DIRECTORY and not _VIDEO_DIRECTORY.fullmatch(top):
        return None
    tokens = set(name[: -len(_ANNOTATION_SUFFIX)].split("_"))
    if "cap" in tokens:
        return "caption"
    if "mc" in tokens:
        return "multi_choice"
    if "oe" in tokens or "qa" in tokens:
        return "open_ended"
    return "other"


# --- streaming -------------------------------------------------------------------------------------


class _NeedsExactParser(Exception):
    """Internal: the fast parser would get this input wrong; re-parse with the exact backend."""

    def __init__(self, reason: str, byte_offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.byte_offset = byte_offset


# A high surrogate escape not followed by a low one. yajl silently turns it into "?" or, when another
# "\\u" escape follows, into a made-up code point, so these must be found before the C parser sees them.
# Valid pairs (emoji written with ensure_ascii, common) are skipped inside the regex engine. Whether the
# backslash is itself escaped ("\\\\ud83d" is literal text) is checked per candidate, which is rare.
# Lone *low* surrogates need no guard: yajl emits bytes that the C backend refuses to decode, loudly.
_LONE_HIGH: Final = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")
# The end of a chunk that may be the start of a high surrogate escape, completed by the next chunk.
_PARTIAL_HIGH_TAIL: Final = re.compile(rb"\\(?:u(?:[dD](?:[89abAB][0-9a-fA-F]?)?)?)?\Z")
# What may follow a high surrogate at the end of a chunk and still become its low half.
_LOW_PREFIX: Final = re.compile(rb"(?:\\(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]{0,2})?)?)?)?")
_BACKSLASH: Final = 0x5C


def _is_escaped(text: bytes, index: int) -> bool:
    """Whether the byte at ``index`` follows an odd run of backslashes (so it is an escaped character)."""
    run = 0
    while index - run > 0 and text[index - run - 1] == _BACKSLASH:
        run += 1
    return run % 2 == 1


class _Reader:
    """The file as the parser sees it: skips a UTF-8 BOM, tracks byte offsets, guards against surrogates.

    With ``guard`` on, every chunk is scanned for lone high surrogate escapes before the C parser sees
    it; finding one raises ``_NeedsExactParser`` out of ``read`` (ijson propagates it, and has yielded
    every record that ended in earlier chunks). One regex search per chunk; surrogate pairs cost nothing
    extra.
    """

    def __init__(self, raw: BinaryIO, file_label: str, *, guard: bool) -> None:
        self._raw = raw
        self._label = file_label
        self._guard = guard
        self._peeked = b""
        self._hold = b""  # unscanned tail starting at an unescaped backslash (an escape cut by the chunk)
        self.position = 0  # file offset just past the bytes handed to the parser
        self.chunk_start = 0  # file offset of the last chunk handed to the parser
        self._peek_top_level()

    def _peek_top_level(self) -> None:
        """Check that the file starts (after an optional BOM and whitespace) with ``[``."""
        data = b""
        bom_checked = False
        skipped = 0  # leading bytes dropped (BOM, whitespace): offsets stay file offsets
        while True:
            chunk = self._raw.read(_READ_CHUNK_BYTES)
            if not chunk:
                break
            data += chunk
            if not bom_checked and len(data) >= len(_UTF8_BOM):
                bom_checked = True
                if data.startswith(_UTF8_BOM):
                    # RFC 8259 lets parsers ignore a BOM; the C parser would call it an invalid char.
                    data = data[len(_UTF8_BOM) :]
                    skipped += len(_UTF8_BOM)
            if bom_checked:
                stripped = data.lstrip(_JSON_WHITESPACE)
                skipped += len(data) - len(stripped)
                data = stripped  # drop whitespace as it comes: a whitespace-only file costs no memory
                if data:
                    break
        self.position = self.chunk_start = skipped
        if not data.strip(_JSON_WHITESPACE):
            raise AnnotationError(self._label, "empty file, expected a JSON array of records", byte_offset=0)
        if not data.startswith(b"["):
            if data.startswith(_LFS_POINTER_PREFIX):
                reason = "a Git LFS pointer, not the JSON it points to"
            elif data.startswith(b"{"):
                reason = "the top level is a JSON object, expected an array of records"
            else:
                reason = f"not a JSON array of records (starts with {data[:16]!r})"
            raise AnnotationError(self._label, reason, byte_offset=skipped)
        self._peeked = data

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self._peeked:
            data, self._peeked = self._peeked, b""
        else:
            data = self._raw.read(_READ_CHUNK_BYTES if size is None or size < 0 else size)
        self.chunk_start = self.position
        if self._guard:
            self._scan(data)
        self.position += len(data)
        return data

    def _scan(self, data: bytes) -> None:
        """Raise ``_NeedsExactParser`` if ``data`` (with the held tail) holds a lone high surrogate escape.

        Invariant: the scanned text starts at a position that is not inside an escape (the file start, a
        safe chunk boundary, or a held tail that starts at an unescaped backslash), so counting the
        backslashes before a candidate within the text gives its true parity.
        """
        text = self._hold + data
        base = self.position - len(self._hold)
        self._hold = b""
        if not data:
            # EOF: a held high surrogate at the very end sits in an unterminated string, which the parser
            # reports as truncation.
            return
        search_from = 0
        while (match := _LONE_HIGH.search(text, search_from)) is not None:
            start = match.start()
            if _is_escaped(text, start):
                search_from = start + 1  # a literal backslash followed by "ud83d": plain text
                continue
            if _LOW_PREFIX.fullmatch(text, match.end()):
                self._hold = text[start:]  # the chunk ends where its low half may still follow
                return
            raise _NeedsExactParser("a lone UTF-16 high surrogate escape", base + start)
        if (
            b"\\" in text[-5:]
            and (tail := _PARTIAL_HIGH_TAIL.search(text, max(0, len(text) - 5))) is not None
        ) and not _is_escaped(text, tail.start()):
            self._hold = text[tail.start() :]


def _first_line(error: Exception) -> str:
    message = error.args[0] if error.args else str(error)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    lines = str(message).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _json_error_reason(message: str) -> str:
    if "premature EOF" in message or message.startswith("Incomplete"):
        return f"truncated JSON: the file ends inside the array ({message})"
    return f"malformed JSON: {message}"


def _is_seekable(fileobj: BinaryIO) -> bool:
    try:
        return bool(fileobj.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _iter_items(fileobj: BinaryIO, file_label: str) -> Iterator[tuple[int, object]]:
    """Yield ``(index, item)`` for each element of the top-level array, exactly as ``json.load`` would."""
    start = fileobj.tell() if _is_seekable(fileobj) else None
    reader = _Reader(fileobj, file_label, guard=True)
    index = 0
    items = ijson.items(reader, "item", use_float=True, buf_size=_READ_CHUNK_BYTES)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except _NeedsExactParser as exc:
            reason, offset = exc.reason, exc.byte_offset
            break
        except ijson.JSONError as exc:
            message = _first_line(exc)
            if "integer overflow" not in message:
                raise AnnotationError(
                    file_label,
                    _json_error_reason(message),
                    byte_offset=reader.chunk_start,
                    records_before=index,
                ) from None
            reason, offset = "an integer beyond 64 bits", reader.chunk_start
            break
        except UnicodeDecodeError:
            # yajl emits undecodable bytes for a lone low surrogate escape ("\\udc80"): no silent damage.
            reason, offset = "a lone UTF-16 surrogate escape", reader.chunk_start
            break
        yield index, item
        index += 1

    if start is None:
        raise AnnotationError(
            file_label,
            f"holds {reason}, which needs the exact parser and a seekable file to re-read",
            byte_offset=offset,
            records_before=index,
        )
    logger.info(
        "%s holds %s near byte %d: re-parsing with the exact (slower) parser from record %d",
        file_label,
        reason,
        offset,
        index,
    )
    fileobj.seek(start)
    exact_reader = _Reader(fileobj, file_label, guard=False)
    exact_items = _ijson_python.items(exact_reader, "item", use_float=True, buf_size=_READ_CHUNK_BYTES)
    exact_index = 0
    while True:
        try:
            item = next(exact_items)
        except StopIteration:
            return
        except ijson.JSONError as exc:
            raise AnnotationError(
                file_label,
                _json_error_reason(_first_line(exc)),
                byte_offset=exact_reader.chunk_start,
                records_before=exact_index,
            ) from None
        except ValueError as exc:  # e.g. a number the exact backend cannot convert
            raise AnnotationError(
                file_label,
                f"malformed JSON: {exc}",
                byte_offset=exact_reader.chunk_start,
                records_before=exact_index,
            ) from None
        if exact_index >= index:
            yield exact_index, item
        exact_index += 1


def _label_value(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _video_record(index: int, item: object) -> VideoRecord:
    if not isinstance(item, dict):
        kind = "null" if item is None else type(item).__name__
        return VideoRecord(index, None, None, None, None, f"not an object ({kind})")
    record_id = _label_value(item.get("id"))
    data_source = _label_value(item.get("data_source"))
    if "video" not in item:
        return VideoRecord(index, record_id, data_source, None, None, "missing video field")
    raw = item["video"]
    try:
        path = normalise_video_path(raw)
    except BadPath as bad:
        return VideoRecord(index, record_id, data_source, raw, None, bad.reason)
    return VideoRecord(index, record_id, data_source, raw, path, malformed_hint(path))


def iter_video_records(fileobj: BinaryIO, *, file_label: str) -> Iterator[VideoRecord]:
    """Stream the records of one annotation file.

    Every item of the array is yielded, in order: non-objects and records with unusable ``video`` values
    with ``path=None`` and ``problem`` set, dirty-but-valid paths with both set. Raises ``AnnotationError``
    (naming ``file_label``, the byte offset and the records seen) for malformed or truncated JSON.
    """
    for index, item in _iter_items(fileobj, file_label):
        yield _video_record(index, item)


def _dumps_record(record: dict[str, object]) -> bytes:
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate has no UTF-8 form; the ASCII escape form keeps the record exact and the file valid.
        return json.dumps(record, ensure_ascii=True, allow_nan=False).encode("ascii")


def write_filtered(
    src: BinaryIO,
    dst: BinaryIO,
    keep: Callable[[dict], bool],
    *,
    file_label: str = "<annotation stream>",
) -> tuple[int, int]:
    """Write to ``dst`` a JSON array of the records of ``src`` for which ``keep(record)`` is true.

    Streams: one record in memory at a time. Records are re-serialised with ``json.dumps`` (non-ASCII kept
    literal), one per line. Items that are not objects are dropped. Returns ``(kept, dropped)``. On
    ``AnnotationError`` ``dst`` holds a partial array: write to a temporary file and publish on success.
    """
    kept = dropped = 0
    out = bytearray(b"[")
    for _index, item in _iter_items(src, file_label):
        if not isinstance(item, dict) or not keep(item):
            dropped += 1
            continue
        try:
            encoded = _dumps_record(item)
        except ValueError as exc:  # NaN or infinity from the exact parser: not valid JSON to write
            raise AnnotationError(file_label, f"record {_index} cannot be re-serialised: {exc}") from None
        out += b"\n" if kept == 0 else b",\n"
        out += encoded
        kept += 1
        if len(out) >= _FILTER_FLUSH_BYTES:
            dst.write(out)
            out.clear()
    out += b"\n]\n"
    dst.write(out)
    return kept, dropped
