"""The agent's spool on a real directory, with real recordings (relay.agent.recorder over H.264 made
with PyAV) and real JPEG snapshots."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import av
import pytest

from relay.agent.demo_video import make_demo_video
from relay.agent.recorder import Recorder, SlicePolicy
from relay.agent.snapshots import VideoParams, keyframe_jpeg
from relay.agent.spool import Spool, SpoolEntry

NAME = re.compile(r"^(\d+)-(\d{8}T\d{6})-[0-9a-f]{6}$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_video(tmp_path_factory.mktemp("media") / "demo.mp4", 320, 180, 25, 6)


@pytest.fixture(scope="module")
def jpeg(demo: Path) -> bytes:
    with av.open(str(demo)) as container:
        stream = container.streams.video[0]
        keyframe = next(bytes(p) for p in container.demux(stream) if p.is_keyframe)
        picture = keyframe_jpeg(VideoParams.of(stream), [keyframe])
    assert picture is not None
    return picture.data


def feed(recorder: Recorder, path: Path, close: bool = True) -> None:
    """As a camera source does (see tests/test_recorder.py)."""
    with av.open(str(path)) as container:
        streams = [container.streams.video[0]]
        recorder.open(streams)
        for packet in container.demux(streams):
            if packet.dts is not None:
                recorder.packet(packet)
    if close:
        recorder.close("the file ended")


def test_the_cap_drops_the_oldest_unsent_entries(tmp_path: Path, jpeg: bytes,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    ready: list[SpoolEntry] = []
    dropped: list[tuple[SpoolEntry, str]] = []
    spool = Spool(tmp_path, 0, on_ready=ready.append, on_drop=lambda e, why: dropped.append((e, why)))
    first = spool.add_snapshot(4, jpeg, 1_700_000_100.0, 320, 180)
    one = spool.bytes_used()
    assert one > len(jpeg)  # the picture and its manifest
    spool.max_bytes = 2 * one + one // 2
    second = spool.add_snapshot(4, jpeg, 1_700_000_200.0, 320, 180)
    older = spool.add_snapshot(5, jpeg, 1_700_000_050.0, 320, 180)  # made last, taken first
    assert dropped == [(older, "spool full")]
    assert ready == [first, second, older]
    assert spool.pending() == [first, second]
    assert not older.manifest.exists() and not older.file.exists()
    with caplog.at_level(logging.WARNING, logger="relay.agent.spool"):
        third = spool.add_snapshot(4, jpeg, 1_700_000_300.0, 320, 180)
    assert [e for e, _ in dropped] == [older, first]
    assert spool.pending() == [second, third]
    assert any("dropping the oldest unsent snapshot" in r.getMessage() for r in caplog.records)
    assert not any(second.upload_id in r.getMessage() for r in caplog.records)
    assert spool.bytes_used() <= spool.max_bytes and spool.bytes_used(5) == 0


def test_the_cap_counts_recordings_and_the_parts_being_written(tmp_path: Path, demo: Path,
                                                               jpeg: bytes) -> None:
    dropped: list[SpoolEntry] = []
    spool = Spool(tmp_path, 0, on_drop=lambda e, why: dropped.append(e))
    snapshot = spool.add_snapshot(1, jpeg, time.time() - 60, 320, 180)
    recorder = Recorder(1, spool, SlicePolicy(0, 0))
    feed(recorder, demo, close=False)  # a part on disk, still open
    assert spool.bytes_used() > snapshot.size + 20_000 and spool.bytes_used(2) == 0
    # over the cap while only a part (which cannot be dropped) and snapshots are there
    spool.max_bytes = 1
    later = spool.add_snapshot(1, jpeg, time.time(), 320, 180)
    assert dropped == [snapshot, later] and spool.pending() == []
    assert len(list(tmp_path.glob("*.part.mp4"))) == 1
    recorder.close("the course ended")
    assert recorder.join(20)
    # the recording became ready, alone over the cap: dropped too
    (record,) = dropped[2:]
    assert record.kind == "record" and record.camera_id == 1 and record.duration == pytest.approx(6.0)
    assert spool.pending() == [] and list(tmp_path.iterdir()) == []


def test_names_manifests_and_remove(tmp_path: Path, jpeg: bytes) -> None:
    spool = Spool(tmp_path, 0)
    at = 1_700_000_000.5  # 2023-11-14 22:13:20 UTC
    part = spool.new_part(12, at)
    assert part.parent == tmp_path and part.name.endswith(".part.mp4") and not part.exists()
    match = NAME.match(part.name[:-len(".part.mp4")])
    assert match and match.group(1) == "12" and match.group(2) == "20231114T221320"
    entry = spool.add_snapshot(12, jpeg, at, 320, 180)
    assert NAME.match(entry.file.name[:-len(".jpg")]) and entry.manifest.name.endswith(".json")
    fields = json.loads(entry.manifest.read_bytes())
    assert set(fields) == {"upload_id", "kind", "camera_id", "file", "poster", "size", "sha256",
                           "start_time", "end_time", "duration", "width", "height"}
    assert fields["start_time"] == fields["end_time"] == at and fields["kind"] == "snapshot"
    assert re.fullmatch(r"[0-9a-f]{32}", fields["upload_id"])
    assert not list(tmp_path.glob("*.tmp"))
    # a new Spool over the same directory reads the same entry back
    assert Spool(tmp_path, 0).pending() == [entry]
    spool.remove(entry)
    assert spool.pending() == [] and spool.bytes_used() == 0 and list(tmp_path.iterdir()) == []
    spool.remove(entry)  # already gone: nothing to do


def test_files_vanishing_underneath(tmp_path: Path, demo: Path, jpeg: bytes) -> None:
    spool = Spool(tmp_path, 0)
    assert spool.finish(tmp_path / "9-20240101T000000-abcdef.part.mp4", 9, 1.0, 2.0) is None
    entry = spool.add_snapshot(9, jpeg, time.time(), 320, 180)
    entry.manifest.unlink()
    assert spool.pending() == [] and spool.bytes_used() == 0
    spool.remove(entry)
    other = spool.add_snapshot(9, jpeg, time.time(), 320, 180)
    other.file.unlink()
    spool.remove(other)
    assert not other.manifest.exists()


def test_recover_finishes_parts_and_removes_what_no_manifest_names(tmp_path: Path, demo: Path,
                                                                   jpeg: bytes) -> None:
    spool = Spool(tmp_path, 0)
    kept = spool.add_snapshot(2, jpeg, 1_700_000_000.0, 320, 180)
    # a recorder that stopped without finishing (the process died): its part holds whole fragments
    abandoned = Recorder(3, spool, SlicePolicy(0, 0))
    feed(abandoned, demo, close=False)
    (part,) = tmp_path.glob("*.part.mp4")
    shutil.copy(part, tmp_path / "kept.bin")
    abandoned.close("")
    assert abandoned.join(20)
    (finished,) = [e for e in spool.pending() if e.kind == "record"]
    left = tmp_path / "3-20240101T000001-123456.part.mp4"
    shutil.copy(tmp_path / "kept.bin", left)  # as the crashed agent left it
    (tmp_path / "kept.bin").unlink()
    # a part whose manifest was written before the crash: only the part's removal was left to do
    done = tmp_path / (finished.manifest.name[:-len(".json")] + ".part.mp4")
    shutil.copy(left, done)
    junk = {"2-20240101T000000-aaaaaa.mp4": b"x", "2-20240101T000000-aaaaaa.json.tmp": b"{",
            "7-20240101T000000-bbbbbb.remux.mp4": b"", "readme.txt": b"hi",
            "8-20240101T000000-cccccc.json": b"not json",
            "8-20240101T000000-dddddd.json": json.dumps({**json.loads(kept.manifest.read_bytes()),
                                                         "file": "8-gone.jpg"}).encode(),
            "8-20240101T000000-eeeeee.json": json.dumps({**json.loads(kept.manifest.read_bytes()),
                                                         "file": "../outside.jpg"}).encode()}
    for name, data in junk.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "4-20240101T000000-ffffff.part.mp4").write_bytes(b"\x00\x00\x00\x1cftypisom" + b"\0" * 16)
    with av.open(str(tmp_path / "5-20240101T000000-999999.part.mp4"), "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as empty:
        with av.open(str(demo)) as source:
            empty.add_stream_from_template(source.streams.video[0])
        empty.start_encoding()  # the header of a recording that got no packet
    assert (tmp_path / "5-20240101T000000-999999.part.mp4").stat().st_size > 0
    ready: list[SpoolEntry] = []
    spool = Spool(tmp_path, 0, on_ready=ready.append)
    pending = spool.recover()
    assert ready == []
    (entry,) = [e for e in pending if e not in (kept, finished)]
    assert pending == [kept, entry, finished]  # oldest first
    assert entry.kind == "record" and entry.camera_id == 3 and entry.duration == pytest.approx(4.0)
    assert entry.start_time == 1_704_067_201.0  # its name's time: 2024-01-01 00:00:01 UTC
    assert entry.end_time == pytest.approx(entry.start_time + 4.0)
    names = {p.name for p in tmp_path.iterdir()}
    expected = {e.manifest.name for e in pending} | {e.file.name for e in pending}
    expected |= {e.poster.name for e in pending if e.poster is not None}
    assert names == expected
    with av.open(str(entry.file)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 100  # 4 s of 25 fps: the last GOP is lost
