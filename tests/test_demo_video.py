"""The demo video's overlay: a newcomer's screenshot must show the feed's name and a clock that moves,
so these decode real H.264 (PyAV) and read the pixels back, which fails if the overlay is absent."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from relay.agent.demo_video import (
    LABEL,
    Box,
    clock_text,
    make_demo_video,
    overlay_layout,
    text_rows,
)

FPS = 25


def _lumas(path: Path, indexes: set[int]) -> dict[int, tuple[bytes, int]]:
    """The luma plane (without padding) and width of the frames at these indexes."""
    found: dict[int, tuple[bytes, int]] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in indexes:
                plane = frame.planes[0]
                rows = bytes(plane)
                found[index] = (b"".join(rows[y * plane.line_size:y * plane.line_size + frame.width]
                                         for y in range(frame.height)), frame.width)
                if len(found) == len(indexes):
                    break
    return found


def _crop(luma: bytes, width: int, box: Box) -> list[bytes]:
    return [luma[(box.y + y) * width + box.x:(box.y + y) * width + box.x + box.width]
            for y in range(box.height)]


def _lit(rows: list[bytes]) -> list[bool]:
    return [value > 128 for row in rows for value in row]


def _agreement(decoded: list[bytes], expected: list[bytes]) -> float:
    """Share of pixels that are bright in both or dark in both."""
    pairs = list(zip(_lit(decoded), _lit(expected), strict=True))
    return sum(a == b for a, b in pairs) / len(pairs)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_video(tmp_path_factory.mktemp("demo") / "demo.mp4", 640, 360, FPS, seconds=3)


def test_the_clock_shows_the_videos_own_time_and_moves(video: Path):
    layout = overlay_layout(640, 360)
    assert layout is not None and layout.scale == 4  # 28-pixel glyphs: readable at 640x360
    frames = _lumas(video, {13, FPS + 13, 2 * FPS + 12})
    clocks = {index: _crop(luma, width, layout.clock) for index, (luma, width) in frames.items()}
    for index, decoded in clocks.items():
        expected = text_rows(clock_text(index, FPS), layout.scale, layout.clock.width)
        assert _agreement(decoded, expected) > 0.97, clock_text(index, FPS)
    # One second apart, the clock region differs (00:00.5 -> 00:01.5).
    assert _agreement(clocks[13], clocks[FPS + 13]) < 0.97
    assert clock_text(13, FPS) == "00:00.5" and clock_text(67 * FPS + 20, FPS) == "01:07.8"


def test_the_label_is_bright_text_on_a_dark_box(video: Path):
    layout = overlay_layout(640, 360)
    assert layout is not None
    [(luma, width)] = _lumas(video, {FPS}).values()
    label = _crop(luma, width, layout.label)
    assert _agreement(label, text_rows(LABEL, layout.scale, layout.label.width)) > 0.97
    box = [value for row in _crop(luma, width, layout.box) for value in row]
    dark = sum(value < 48 for value in box) / len(box)
    bright = sum(value > 200 for value in box) / len(box)
    assert dark > 0.6 and bright > 0.1, (dark, bright)  # the ramp alone is neither


def test_the_chroma_stays_neutral(video: Path):
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
    for plane in frame.planes[1:]:
        assert all(abs(value - 128) <= 2 for value in bytes(plane))


def test_other_sizes_scale_the_overlay_or_leave_it_out(tmp_path: Path):
    small = overlay_layout(320, 180)
    assert small is not None and small.scale == 2
    assert overlay_layout(64, 36) is None  # too small for the label: the ramp only
    path = make_demo_video(tmp_path / "tiny.mp4", 64, 36, FPS, seconds=1)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == FPS
