"""The format of one local cache entry: the file's name, and the trailer that makes it verify itself.

An entry file is the content, then the key, then a fixed footer (magic, format version, key length,
content size, content sha256, CRC32 of key and footer). Its name is the sha256 of its key. So a file
read back after a crash, a copy or a rot names its key and checks its own bytes without any index.
Where entry files live under the store's root is the store's business (``vfs.cache.store``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass

FORMAT_VERSION = 1
_MAGIC = b"LVVFSENT"
# magic, format version, reserved (0), key length, content size, content sha256 digest.
FOOTER_HEAD = struct.Struct("<8sHHIQ32s")
FOOTER_CRC = struct.Struct("<I")
FOOTER_SIZE = FOOTER_HEAD.size + FOOTER_CRC.size
MAX_KEY_BYTES = 4096

HASH_CHUNK_BYTES = 1 << 20
HEX = frozenset("0123456789abcdef")


class BadEntry(Exception):
    """An entry file failed a check; the message is the problem, for the one WARNING."""


@dataclass(frozen=True)
class Trailer:
    key: str
    size: int
    sha256: str


def entry_name(key: str) -> str:
    """The file name of ``key``'s entry: the sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(encode_key(key)).hexdigest()


def encode_key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise ValueError(f"cache key must be a non-empty str, got {key!r}")
    encoded = key.encode("utf-8")  # strict: a key that cannot be recorded is a programming error
    if len(encoded) > MAX_KEY_BYTES:
        raise ValueError(f"cache key is {len(encoded)} bytes, more than {MAX_KEY_BYTES}")
    return encoded


def entry_file_bytes(encoded_key: bytes, size: int) -> int:
    """The size of the entry file of ``size`` content bytes under the key ``encoded_key``."""
    return size + len(encoded_key) + FOOTER_SIZE


def normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    lowered = sha256.lower()
    if len(lowered) != 64 or not set(lowered) <= HEX:
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return lowered


def encode_trailer(key: str, size: int, sha256_hex: str) -> bytes:
    """The bytes that follow an entry's content (public for tests that craft entries)."""
    key_bytes = encode_key(key)
    head = FOOTER_HEAD.pack(_MAGIC, FORMAT_VERSION, 0, len(key_bytes), size, bytes.fromhex(sha256_hex))
    return key_bytes + head + FOOTER_CRC.pack(zlib.crc32(key_bytes + head))


def read_trailer(fd: int, file_size: int) -> Trailer:
    if file_size < FOOTER_SIZE:
        raise BadEntry(f"file is {file_size} bytes, shorter than the {FOOTER_SIZE}-byte trailer")
    footer = os.pread(fd, FOOTER_SIZE, file_size - FOOTER_SIZE)
    if len(footer) != FOOTER_SIZE:
        raise BadEntry("short read of the trailer")
    magic, version, _reserved, key_len, size, digest = FOOTER_HEAD.unpack_from(footer)
    (crc,) = FOOTER_CRC.unpack_from(footer, FOOTER_HEAD.size)
    if magic != _MAGIC:
        raise BadEntry("no entry trailer at the end of the file (bad magic)")
    if version != FORMAT_VERSION:
        raise BadEntry(f"format version {version}, expected {FORMAT_VERSION}")
    if key_len > MAX_KEY_BYTES or key_len + FOOTER_SIZE > file_size:
        raise BadEntry(f"trailer key length {key_len} is out of range")
    key_bytes = os.pread(fd, key_len, file_size - FOOTER_SIZE - key_len)
    if zlib.crc32(key_bytes + footer[: FOOTER_HEAD.size]) != crc:
        raise BadEntry("trailer checksum mismatch")
    if size + key_len + FOOTER_SIZE != file_size:
        raise BadEntry(f"file is {file_size} bytes but the trailer records {size} content bytes")
    try:
        key = key_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEntry("trailer key is not UTF-8") from exc
    return Trailer(key=key, size=size, sha256=digest.hex())


def sha256_of_prefix(fd: int, size: int) -> str:
    hasher = hashlib.sha256()
    buf = memoryview(bytearray(min(HASH_CHUNK_BYTES, max(size, 1))))
    offset = 0
    while offset < size:
        n = os.preadv(fd, [buf[: min(len(buf), size - offset)]], offset)
        if n == 0:
            raise BadEntry(f"unexpected end of file at offset {offset}")
        hasher.update(buf[:n])  # hashlib releases the GIL for large buffers: verifications run in parallel
        offset += n
    return hasher.hexdigest()
