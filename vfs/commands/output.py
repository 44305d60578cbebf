"""What the commands print that more than one of them prints."""

from __future__ import annotations


def human_size(size_bytes: int) -> str:
    """``123 bytes``, ``4.0 KiB``, ``1.5 GiB``: a size for people, in binary units."""
    size, unit = float(size_bytes), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{size_bytes} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
