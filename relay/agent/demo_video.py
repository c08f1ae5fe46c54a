"""The demo camera's video: an H.264 MP4 the agent makes itself with PyAV (no media in the repo).

Over the moving ramp, a dark box in the top-left corner carries ``DEMO CAMERA`` and a clock of the
video's own time (``MM:SS.t``), drawn into the luma plane with a built-in 5x7 bitmap font: a still
frame or a screenshot then shows at once whether the picture is live (the clock moves) and which
feed it is. The chroma stays neutral (grey picture)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)


#: Seed of the noise band (``noise_rows``), so a noisy video is the same file every time.
NOISE_SEED = 20240601
_NOISE_LEVELS = bytes(max(16, min(235, 128 + (i - 128) * 40 // 256)) for i in range(256))  # ±20


#: Version of the picture, for callers that name the file after it (``relay demo``: demo-v2.mp4).
VERSION = 2
#: The default length: the agent loops the file, so the clock jumps back only once a minute.
DEFAULT_SECONDS = 60
LABEL = "DEMO CAMERA"

#: A 5x7 font: each glyph is 7 rows of 5 bits (the high bit is the left column).
_FONT: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    ".": (0, 0, 0, 0, 0, 0b01100, 0b01100),
    ":": (0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0),
    "0": (0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110),
    "1": (0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110),
    "2": (0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111),
    "3": (0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110),
    "4": (0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010),
    "5": (0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110),
    "6": (0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110),
    "7": (0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000),
    "8": (0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110),
    "9": (0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100),
    "A": (0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001),
    "C": (0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110),
    "D": (0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100),
    "E": (0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111),
    "M": (0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001),
    "O": (0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110),
    "R": (0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001),
}
_DARK, _BRIGHT = 16, 235
_CLOCK_CHARS = len("00:00.0")


@dataclass(frozen=True)
class Box:
    """A rectangle of the picture, in pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Layout:
    """Where the overlay goes for one picture size: the dark box, the label's and the clock's
    text lines inside it, and the font scale (pixels per font dot)."""

    box: Box
    label: Box
    clock: Box
    scale: int


def overlay_layout(width: int, height: int) -> Layout | None:
    """The overlay's place at this size (top-left corner), or None when the picture is too small
    for it. The font scales with the height: 4 pixels per dot at 360 lines, 2 at 180."""
    scale = max(1, height // 90)
    pad = 2 * scale
    line = 7 * scale
    text_width = len(LABEL) * 6 * scale - scale
    box = Box(pad, pad, text_width + 2 * pad, 2 * line + 3 * pad)
    if box.x + box.width > width or box.y + box.height > height:
        return None
    label = Box(box.x + pad, box.y + pad, text_width, line)
    clock = Box(label.x, label.y + line + pad, _CLOCK_CHARS * 6 * scale - scale, line)
    return Layout(box, label, clock, scale)


def clock_text(frame_index: int, fps: int) -> str:
    """The video's own time at this frame, ``MM:SS.t`` (minutes, seconds, tenths)."""
    tenths = frame_index * 10 // fps
    return f"{tenths // 600 % 100:02d}:{tenths // 10 % 60:02d}.{tenths % 10}"


def text_rows(text: str, scale: int, width: int) -> list[bytes]:
    """``text`` rendered bright on dark, ``7 * scale`` rows of exactly ``width`` bytes."""
    rows = []
    for dot_row in range(7):
        row = bytearray()
        for char in text:
            bits = _FONT[char][dot_row]
            for column in range(6):  # 5 dots and a gap
                lit = column < 5 and bits >> (4 - column) & 1
                row += bytes([_BRIGHT if lit else _DARK]) * scale
        rows.extend([bytes(row[:width]).ljust(width, bytes([_DARK]))] * scale)
    return rows


def _paint(luma: bytearray, stride: int, at: Box, rows: list[bytes]) -> None:
    for offset, row in enumerate(rows):
        start = (at.y + offset) * stride + at.x
        luma[start:start + at.width] = row


def _overlay(luma: bytearray, width: int, layout: Layout, label: list[bytes], clock: str) -> None:
    box = layout.box
    _paint(luma, width, box, [bytes([_DARK]) * box.width] * box.height)
    _paint(luma, width, layout.label, label)
    _paint(luma, width, layout.clock, text_rows(clock, layout.scale, layout.clock.width))


def _luma(width: int, height: int, t: int) -> bytes:
    """The luma (Y) plane of frame ``t`` of the demo picture, ``width * height`` bytes, row by row.

    A diagonal ramp that drifts, with a bright bar sweeping across: every frame differs."""
    ramp = bytes((i // 2) % 220 + 16 for i in range(2 * (width + height) + 512))
    rows = [ramp[(y + 3 * t) % 256:(y + 3 * t) % 256 + width] for y in range(height)]
    bar = (t * 8) % width
    return b"".join(row[:bar] + b"\xeb" * min(16, width - bar) + row[bar + 16:] for row in rows)


def make_demo_video(path: Path, width: int = 640, height: int = 360, fps: int = 25,
                    seconds: int = DEFAULT_SECONDS, noise_rows: int = 0) -> Path:
    """Write a constrained-baseline H.264 MP4 (keyframe every 2 s) to ``path`` unless it exists.

    The picture is so easy to code that x264 stays far below its 1 Mbit/s target; ``noise_rows``
    replaces that many bottom rows with fresh noise each frame, which brings it up to the target
    (``bench/live.py`` measures with 24). The label and clock box (:func:`overlay_layout`) is drawn
    over the top-left corner of every frame when the picture is large enough for it."""
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
        layout = overlay_layout(width, height - noise_rows)
        label = text_rows(LABEL, layout.scale, layout.label.width) if layout else []
        for t in range(fps * seconds):
            frame = av.VideoFrame(width, height, "yuv420p")
            luma = bytearray(_luma(width, height, t)[:width * (height - noise_rows)])
            if layout is not None:
                _overlay(luma, width, layout, label, clock_text(t, fps))
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
