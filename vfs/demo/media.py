"""Real, small, reproducible H.264 mp4s for the demo dataset, the tests and the benchmarks.

PyAV and numpy are the demo extra, imported inside the functions that need them, so that the filesystem
itself never loads them.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction


def check_frame_size(width: int, height: int) -> None:
    # yuv420p needs even sizes; decord 0.6 returns mis-sized frames for some narrow widths (16, 24, 48 and
    # 72 px were seen), while every multiple of 32 decodes correctly.
    if width < 32 or width % 32 or height < 16 or height % 2:
        raise ValueError(
            f"frame size {width}x{height}: width must be a multiple of 32, height even and >= 16"
        )


def make_mp4(*, seconds: float, width: int, height: int, fps: int, seed: int) -> bytes:
    """A real H.264 (libx264, yuv420p) mp4 of moving, seed-dependent content; deterministic per arguments.

    Reproducible bytes need two things, both measured with PyAV 18 (libx264 164): frames are built as
    ``yuv420p`` planes in numpy, so no pixel-format conversion runs, and x264 runs on one thread without its
    assembly kernels (``no-asm``). With the assembly on, 12 of 40 seeds of a 96x64 clip gave more than one
    output in 8 encodes in one process (planes built in numpy or not; turning off x264's lookahead also
    cured it, so its SIMD path reads bytes nothing set); without it, all 40 gave one. The output then also
    no longer depends on which SIMD extensions the CPU has. It costs about twice the encode time.
    """
    import av  # the demo extra: imported here so the filesystem itself never needs PyAV or numpy
    import numpy as np  # the demo extra, like PyAV

    check_frame_size(width, height)
    frame_count = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    luma = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    chroma = rng.integers(0, 256, size=(2, height // 2, width // 2), dtype=np.uint8)
    box_colour = rng.integers(0, 256, size=3, dtype=np.uint8)  # Y, U, V
    step_y, step_x = (int(v) for v in rng.integers(1, 4, size=2))
    box = max(4, min(width, height) // 4) & ~1  # even, so it covers whole chroma samples
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One thread and no assembly: see above. A keyframe per second, like real clips, so decord's seeks
        # have more than one keyframe to land on.
        stream.options = {
            "preset": "veryfast",
            "crf": "28",
            "threads": "1",
            "g": str(fps),
            "x264-params": "no-asm=1",
        }
        for t in range(frame_count):
            y_plane = np.roll(luma, shift=(t * step_y, t * step_x), axis=(0, 1))
            uv_planes = np.roll(chroma, shift=((t * step_y) // 2, (t * step_x) // 2), axis=(1, 2))
            y = (t * 3 * step_y) % (height - box) & ~1
            x = (t * 5 * step_x) % (width - box) & ~1
            y_plane[y : y + box, x : x + box] = box_colour[0]
            uv_planes[0, y // 2 : (y + box) // 2, x // 2 : (x + box) // 2] = box_colour[1]
            uv_planes[1, y // 2 : (y + box) // 2, x // 2 : (x + box) // 2] = box_colour[2]
            # yuv420p as one (height * 3 / 2, width) array: Y, then U and V each folded into height / 4 rows.
            planes = np.concatenate([y_plane, uv_planes.reshape(height // 2, width)])
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def pad_mp4(data: bytes, padding_bytes: int, *, seed: int) -> bytes:
    """Append a top-level ``free`` box of ``padding_bytes`` (header included) of seeded random bytes.

    Demuxers skip ``free`` boxes, so the file stays a valid mp4 that decodes to the same frames; random
    bytes keep gzip from shrinking the shards, as real mp4s do not compress.
    """
    if padding_bytes == 0:
        return data
    if padding_bytes < 16:
        raise ValueError("padding must be 0 or at least 16 bytes (one box header)")
    import numpy as np  # the demo extra, like PyAV

    if padding_bytes <= 0xFFFFFFFF:
        header = struct.pack(">I4s", padding_bytes, b"free")
    else:
        header = struct.pack(">I4sQ", 1, b"free", padding_bytes)  # 64-bit "largesize" box
    return data + header + np.random.default_rng(seed).bytes(padding_bytes - len(header))
