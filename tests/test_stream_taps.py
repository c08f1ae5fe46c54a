"""A camera source's stream taps (recorder, snapshots): a tap added mid-GOP starts with the GOP the
source keeps, whole and intact, then gets every packet; a stopped source closes its taps."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import pytest

from relay.agent.demo_video import make_demo_video
from relay.agent.sources import CameraSource


class Collector:
    """A stream tap that keeps what it is handed (the bytes: a source's packet is its own)."""

    def __init__(self) -> None:
        self.opened: list[Sequence[Any]] = []
        self.packets: list[tuple[bool, int, int | None, float]] = []  # keyframe, size, pts, at
        self.closed: list[str] = []
        self.lock = threading.Lock()

    def open(self, streams: Sequence[Any]) -> None:
        self.opened.append(streams)

    def packet(self, packet: av.Packet) -> None:
        with self.lock:
            self.packets.append((packet.is_keyframe, len(bytes(packet)), packet.pts,
                                 time.monotonic()))

    def close(self, reason: str) -> None:
        self.closed.append(reason)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    # Keyframes every 2 s, played in real time: a tap added 1 s after one comes mid-GOP.
    return make_demo_video(tmp_path_factory.mktemp("taps") / "cam.mp4", seconds=6)


def test_a_tap_added_mid_gop_starts_with_the_whole_cached_gop(video: Path):
    source = CameraSource(1, "file:" + str(video), True, lambda *_: None, lambda: False)
    source.start()
    try:
        deadline = time.monotonic() + 10
        while not source.is_open and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3.0)  # one GOP and a half in: the source holds a GOP begun a second ago
        tap = Collector()
        added = time.monotonic()
        source.add_stream_tap(tap)
        time.sleep(1.5)
        source.remove_stream_tap(tap, "done")
    finally:
        source.stop()
        source.join(5)
    assert len(tap.opened) == 1 and tap.closed == ["done"]
    first_keyframe, first_size, _pts, _at = tap.packets[0]
    assert first_keyframe and first_size > 0, "the cached GOP starts at its keyframe, intact"
    assert all(size > 0 for _key, size, _pts, _at in tap.packets), "no packet arrives emptied"
    handed_at_once = [entry for entry in tap.packets if entry[3] - added < 0.05]
    assert len(handed_at_once) >= 10, "the cached GOP (about a second of frames) comes at once"
    pts = [entry[2] for entry in tap.packets]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
