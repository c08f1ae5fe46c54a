"""The demo camera's video: an H.264 MP4 the agent makes itself with PyAV (no media in the repo)."""

from __future__ import annotations

import logging
import random
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)


#: Seed of the noise band (``noise_rows``), so a noisy video is the same file every time.
NOISE_SEED = 20240601
_NOISE_LEVELS = bytes(max(16, min(235, 128 + (i - 128) * 40 // 256)) for i in range(256))  # ±20


def _luma(width: int, height: int, t: int) -> bytes:
    """The luma (Y) plane of frame ``t`` of the demo picture, ``width * height`` bytes, row by row.

    A diagonal ramp that drifts, with a bright bar sweeping across: every frame differs."""
    ramp = bytes((i // 2) % 220 + 16 for i in range(2 * (width + height) + 512))
    rows = [ramp[(y + 3 * t) % 256:(y + 3 * t) % 256 + width] for y in range(height)]
    bar = (t * 8) % width
    return b"".join(row[:bar] + b"\xeb" * min(16, width - bar) + row[bar + 16:] for row in rows)


def make_demo_video(path: Path, width: int = 640, height: int = 360, fps: int = 25,
                    seconds: int = 10, noise_rows: int = 0) -> Path:
    """Write a constrained-baseline H.264 MP4 (keyframe every 2 s) to ``path`` unless it exists.

    The picture is so easy to code that x264 stays far below its 1 Mbit/s target; ``noise_rows``
    replaces that many bottom rows with fresh noise each frame, which brings it up to the target
    (``bench/live.py`` measures with 24)."""
    noise = random.Random(NOISE_SEED)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 1_000_000
        stream.options = {"profile": "baseline", "g": str(2 * fps), "bf": "0",
                          "preset": "veryfast", "tune": "zerolatency"}
        stream.codec_context.time_base = Fraction(1, fps)
        chroma = bytes([128]) * ((width // 2) * (height // 2))
        for t in range(fps * seconds):
            frame = av.VideoFrame(width, height, "yuv420p")
            luma = _luma(width, height, t)[:width * (height - noise_rows)]
            if noise_rows:
                luma += noise.randbytes(width * noise_rows).translate(_NOISE_LEVELS)
            frame.planes[0].update(luma)
            frame.planes[1].update(chroma)
            frame.planes[2].update(chroma)
            frame.pts = t
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)
    log.info("made the demo video %s (%dx%d, %d s)", path, width, height, seconds)
    return path
