"""Extracting one member from the compressed bytes of its fetch range (``ShardIndex.fetch_range``): resume
inflating at the member's checkpoint with its window, skip to the member, and hand back exactly its bytes,
checked against the length and sha256 the index recorded.
"""

from __future__ import annotations

import hashlib

from vfs.errors import IntegrityError
from vfs.targz import zran
from vfs.targz.shard_index import Member, ShardIndex


class MemberExtractor:
    """Push-based: feed the compressed bytes of fetch_range(member) in order, get the member's bytes.

    The bytes ``feed`` returns are NOT verified: keep them out of reach of readers until ``finish``
    returns. Construction reads the checkpoint's window (a disk read for a loaded index).
    """

    def __init__(self, index: ShardIndex, member: Member) -> None:
        checkpoint = index.checkpoints[member.checkpoint]
        self.member = member
        self._skip = member.offset - checkpoint.out_offset
        self._remaining = member.size
        self._hasher = hashlib.sha256()
        self._finished = False
        self._inflater: zran.ResumedInflater | None = None
        if member.size:
            self._inflater = zran.ResumedInflater(
                checkpoint.cmp_bit_offset,
                index.window(member.checkpoint),
                output_limit_bytes=self._skip + member.size,
            )

    def feed(self, chunk: bytes) -> bytes:
        """Returns the next member bytes this chunk produced (unverified until ``finish``)."""
        if self._finished:
            raise ValueError("feed() after finish()")
        if self._inflater is None or self._remaining == 0:
            return b""
        try:
            pieces = self._inflater.feed(chunk)
        except zran.ZlibError as e:
            self._close()
            raise IntegrityError(f"member {self.member.path!r}: corrupt compressed data: {e}") from e
        out: list[bytes] = []
        for piece in pieces:
            if self._skip:
                if len(piece) <= self._skip:
                    self._skip -= len(piece)
                    continue
                piece = piece[self._skip :]
                self._skip = 0
            out.append(piece)
            self._hasher.update(piece)
            self._remaining -= len(piece)
        return b"".join(out)

    def finish(self) -> None:
        """Raise ``IntegrityError`` unless exactly ``size`` bytes came out and their sha256 matches."""
        self._finished = True
        self._close()
        if self._remaining:
            raise IntegrityError(
                f"member {self.member.path!r}: compressed range ended after "
                f"{self.member.size - self._remaining} of {self.member.size} bytes"
            )
        digest = self._hasher.hexdigest()
        if digest != self.member.sha256:
            raise IntegrityError(
                f"member {self.member.path!r}: sha256 {digest}, expected {self.member.sha256}"
            )

    def _close(self) -> None:
        if self._inflater is not None:
            self._inflater.close()


def extract_member(index: ShardIndex, member: Member, compressed: bytes) -> bytes:
    """Extract ``member`` from ``compressed`` (the bytes of ``fetch_range(member)``), verified."""
    extractor = MemberExtractor(index, member)
    data = extractor.feed(compressed)
    extractor.finish()
    return data
