"""The agent's recorder and snapshot taker over real H.264 (and AAC), driven as a camera source does.

The driver demuxes a real MP4 with PyAV and calls the taps' open/packet/close with the demuxed
packets, in demux order, as relay/agent/sources.py does; the files the recorder and the spool write
are read back with PyAV.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import pytest

from relay.agent.demo_video import make_demo_video
from relay.agent.recorder import Recorder, SlicePolicy
from relay.agent.snapshots import SnapshotTaker, VideoParams, keyframe_jpeg
from relay.agent.spool import Spool, SpoolEntry

RUN = Path(__file__).with_name("recorder_run.py")


class Pkt(NamedTuple):
    kind: str  # "video" / "audio"
    dts: int
    pts: int
    key: bool
    data: bytes


def make_high(path: Path, width: int = 320, height: int = 240, fps: int = 25, seconds: int = 4,
              gop: int = 12) -> Path:
    """High profile H.264 with B-frames (GOP of ``gop`` frames) and mono AAC at 48 kHz."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"profile": "high", "g": str(gop), "keyint_min": str(gop), "bf": "2",
                         "preset": "veryfast", "sc_threshold": "0"}
        video.codec_context.time_base = Fraction(1, fps)
        audio = container.add_stream("aac", rate=48000)
        audio.layout, audio.format = "mono", "fltp"
        tone = array.array("f", (0.3 * math.sin(2 * math.pi * i / 128) for i in range(1024))).tobytes()
        ramp = bytes((i // 2) % 220 + 16 for i in range(2 * (width + height) + 512))
        chroma = bytes([128]) * (width * height // 4)
        samples = 0
        for t in range(fps * seconds):
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.planes[0].update(b"".join(ramp[(y + 3 * t) % 256:(y + 3 * t) % 256 + width]
                                            for y in range(height)))
            frame.planes[1].update(chroma)
            frame.planes[2].update(bytes([90 + (t * 7) % 80]) * (width * height // 4))
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(video.encode(frame))
            while samples < (t + 1) * 48000 // fps:
                sound = av.AudioFrame(format="fltp", layout="mono", samples=1024)
                sound.planes[0].update(tone)
                sound.sample_rate, sound.pts, sound.time_base = 48000, samples, Fraction(1, 48000)
                samples += 1024
                container.mux(audio.encode(sound))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    return {"demo": make_demo_video(root / "demo.mp4", 320, 180, 25, 8),
            "high": make_high(root / "high.mp4")}


def read(path: Path) -> list[Pkt]:
    with av.open(str(path)) as container:
        return [Pkt(p.stream.type, p.dts, p.pts, p.is_keyframe, bytes(p))
                for p in container.demux() if p.dts is not None]


def video(packets: list[Pkt]) -> list[Pkt]:
    return [p for p in packets if p.kind == "video"]


def gops(packets: list[Pkt]) -> list[list[bytes]]:
    """The video packets' bytes, one list per GOP."""
    out: list[list[bytes]] = []
    for p in video(packets):
        if p.key or not out:
            out.append([])
        out[-1].append(p.data)
    return out


def drive(tap: Any, path: Path, passes: int = 1, reopen: bool = False,
          each: Callable[[int, av.Packet], None] | None = None) -> None:
    """Feed ``tap`` as a camera source does: open(streams), every packet, close at the end; a file
    source loops (``passes``), seeking back or (``reopen``) opening the file again."""
    done = 0
    container = av.open(str(path))
    try:
        for number in range(passes):
            if number and reopen:
                container.close()
                container = av.open(str(path))
            elif number:
                container.seek(0)
            streams = [container.streams.video[0], *container.streams.audio[:1]]
            if number == 0 or reopen:
                tap.open(streams)
            for packet in container.demux(streams):
                if packet.dts is None:
                    continue
                tap.packet(packet)
                if each is not None:
                    each(done, packet)
                done += 1
    finally:
        container.close()
    tap.close("the file ended")


def record(tmp_path: Path, path: Path, policy: SlicePolicy, **kwargs: Any) -> list[SpoolEntry]:
    spool = Spool(tmp_path / "spool", 0)
    recorder = Recorder(3, spool, policy)
    drive(recorder, path, **kwargs)
    assert recorder.join(20)
    assert not recorder.recording and recorder.last_error == "" and recorder.errors == 0
    entries = spool.pending()
    assert recorder.slices == len(entries)
    return entries


def top_boxes(path: Path) -> list[str]:
    data, at, names = path.read_bytes(), 0, []
    while at + 8 <= len(data):
        size, name = struct.unpack(">I4s", data[at:at + 8])
        names.append(name.decode())
        if size < 8:
            break
        at += size
    return names


def check_file(entry: SpoolEntry) -> list[Pkt]:
    """What every finished slice must be: a faststart MP4 that starts at 0, moves forward, decodes,
    with a poster of the video's size and a manifest that describes it."""
    boxes = top_boxes(entry.file)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    packets = read(entry.file)
    for kind in {p.kind for p in packets}:
        dts = [p.dts for p in packets if p.kind == kind]
        assert dts[0] == 0 if kind == "video" else dts[0] >= 0, (kind, dts[:3])
        assert all(b > a for a, b in itertools.pairwise(dts)), kind
    assert packets[0].kind == "video" and packets[0].key
    with av.open(str(entry.file)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == len(video(packets))
    with av.open(str(entry.poster)) as container:
        poster = next(container.decode(video=0))
    assert (poster.width, poster.height) == (entry.width, entry.height)
    fields = json.loads(entry.manifest.read_bytes())
    data = entry.file.read_bytes()
    assert fields["size"] == len(data) == entry.size
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()
    assert fields["kind"] == "record" and fields["camera_id"] == 3
    assert fields["file"] == entry.file.name and fields["poster"] == entry.poster.name
    assert len(fields["upload_id"]) == 32 and int(fields["upload_id"], 16) >= 0
    assert fields["start_time"] <= fields["end_time"] <= time.time()
    return packets


def test_slices_cut_at_keyframes_and_copy_the_stream(tmp_path: Path, media: dict[str, Path]) -> None:
    entries = record(tmp_path, media["demo"], SlicePolicy(slice_seconds=3, overlap_gops=0))
    # keyframes every 2 s: the first at or after 3 s of media is at 4 s, then 8 s is the end
    assert [e.duration for e in entries] == pytest.approx([4.0, 4.0], abs=0.05)
    assert [(e.width, e.height) for e in entries] == [(320, 180)] * 2
    assert entries[0].end_time <= entries[1].start_time
    slices = [check_file(e) for e in entries]
    assert [len(gops(s)) for s in slices] == [2, 2]
    # stream copy: every packet of the source, once, unchanged, in order
    assert [p.data for s in slices for p in video(s)] == [p.data for p in video(read(media["demo"]))]


def test_high_profile_b_frames_and_aac_are_copied(tmp_path: Path, media: dict[str, Path]) -> None:
    source = read(media["high"])
    assert any(p.pts != p.dts + (video(source)[0].pts - video(source)[0].dts)
               for p in video(source)), "the source has no B-frames"
    (entry,) = record(tmp_path, media["high"], SlicePolicy(0, 0))
    packets = check_file(entry)
    assert [p.data for p in video(packets)] == [p.data for p in video(source)]
    audio = [p.data for p in packets if p.kind == "audio"]
    source_audio = [p.data for p in source if p.kind == "audio"]
    assert len(audio) >= len(source_audio) - 2 and audio == source_audio[-len(audio):]
    with av.open(str(entry.file)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.video[0].codec_context.profile == "High"
    assert entry.duration == pytest.approx(4.0, abs=0.05)


@pytest.mark.parametrize("overlap", [1, 2])
def test_overlap_repeats_the_last_gops(tmp_path: Path, media: dict[str, Path], overlap: int) -> None:
    entries = record(tmp_path, media["high"], SlicePolicy(slice_seconds=1.0, overlap_gops=overlap))
    gop = 12 / 25
    # GOPs of 0.48 s: a slice is cut at the first keyframe at or after 1 s of it (overlap included),
    # that is after 3 GOPs, of which the first `overlap` repeat the previous slice's last ones
    slices = [check_file(e) for e in entries]
    assert [len(gops(s)) for s in slices[:-1]] == [3] * (len(slices) - 1)
    assert [e.duration for e in entries[:-1]] == pytest.approx([3 * gop] * (len(entries) - 1), abs=0.05)
    for before, after in itertools.pairwise(slices):
        assert gops(after)[:overlap] == gops(before)[-overlap:]
        assert any(p.kind == "audio" and p.dts < overlap * gop * 48000 for p in after)
    # without the repeated GOPs the slices are the source, every GOP once
    own = gops(slices[0]) + [g for s in slices[1:] for g in gops(s)[overlap:]]
    assert own == gops(read(media["high"]))
    assert len(entries) == math.ceil((len(own) - 3) / (3 - overlap)) + 1


@pytest.mark.parametrize("reopen", [False, True])
def test_a_looping_source_stays_monotonic(tmp_path: Path, media: dict[str, Path], reopen: bool) -> None:
    (entry,) = record(tmp_path, media["high"], SlicePolicy(0, 0), passes=3, reopen=reopen)
    packets = check_file(entry)  # one file, dts rising in both streams through both restarts
    assert gops(packets) == gops(read(media["high"])) * 3
    assert entry.duration == pytest.approx(12.0, abs=0.5)
    audio = [p for p in packets if p.kind == "audio"]
    assert audio[-1].dts / 48000 == pytest.approx(12.0, abs=0.5)  # audio kept up with the video


def test_a_slice_policy_change_applies_at_the_next_keyframe(tmp_path: Path,
                                                            media: dict[str, Path]) -> None:
    spool = Spool(tmp_path / "spool", 0)
    recorder = Recorder(3, spool, SlicePolicy(0, 0))

    def change(number: int, packet: av.Packet) -> None:
        if packet.stream.type == "video" and float(packet.dts * packet.time_base) >= 5.0:
            recorder.policy = SlicePolicy(slice_seconds=2, overlap_gops=0)

    drive(recorder, media["demo"], each=change)
    assert recorder.join(20)
    assert [e.duration for e in spool.pending()] == pytest.approx([6.0, 2.0], abs=0.05)
    with pytest.raises(ValueError):
        SlicePolicy(slice_seconds=1, overlap_gops=4)


def test_a_write_error_finishes_the_slice_and_the_next_starts(tmp_path: Path,
                                                              media: dict[str, Path]) -> None:
    # every file this process writes is capped at 60 kB (a GOP of the demo picture is 35-42 kB):
    # writing the second GOP fails
    run = subprocess.run([sys.executable, str(RUN), str(media["demo"]), str(tmp_path / "spool"),
                          "--speed", "0", "--fsize", "60000"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["errors"] == ["cannot write the recording: File too large"]
    assert "File too large" in run.stderr and "Traceback" not in run.stderr
    entries = Spool(tmp_path / "spool", 0).pending()
    assert len(entries) == result["slices"] >= 2
    for entry in entries:
        assert entry.size <= 60000 and entry.duration >= 1.9
        packets = read(entry.file)
        assert packets[0].key and packets[0].dts == 0


def test_a_killed_recorder_leaves_a_part_the_spool_finishes(tmp_path: Path,
                                                            media: dict[str, Path]) -> None:
    spool_dir = tmp_path / "spool"
    process = subprocess.Popen([sys.executable, str(RUN), str(media["demo"]), str(spool_dir),
                                "--speed", "4", "--passes", "3"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        fed = 0.0
        assert process.stdout is not None
        while fed < 6.0:  # the keyframe at 6 s is written: GOPs 0-6 s are flushed fragments
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            fed = json.loads(line)["keyframe"]
        time.sleep(0.2)  # mid-GOP
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    parts = list(spool_dir.glob("*.part.mp4"))
    assert len(parts) == 1 and not list(spool_dir.glob("*.json"))
    spool = Spool(spool_dir, 0)
    (entry,) = spool.recover()
    assert not list(spool_dir.glob("*.part.mp4"))
    # all but at most the GOP being written (2 s)
    assert fed - 0.05 <= entry.duration <= fed + 2.0
    packets = read(entry.file)
    assert gops(packets) == gops(read(media["demo"]))[:len(gops(packets))]
    boxes = top_boxes(entry.file)
    assert boxes.index("moov") < boxes.index("mdat")
    assert entry.start_time <= time.time() and entry.end_time == pytest.approx(
        entry.start_time + entry.duration)
    with av.open(str(entry.poster)) as container:
        assert next(container.decode(video=0)).width == 320


def test_snapshots_every_interval_decode_to_the_video_size(tmp_path: Path,
                                                           media: dict[str, Path]) -> None:
    spool = Spool(tmp_path / "spool", 0)
    now = [1000.0]
    taker = SnapshotTaker(5, spool, interval=120.0, clock=lambda: now[0])
    assert taker.due()

    def tick(number: int, packet: av.Packet) -> None:
        taker.join(5)  # the picture is made before the next minute "passes"
        if packet.stream.type == "video":
            now[0] += 30.0  # a minute every two frames: due again after four frames

    drive(taker, media["high"], each=tick)
    assert taker.join(10)
    entries = spool.pending()
    # 100 frames, a keyframe every 12: each keyframe after 120 s since the last snapshot is taken
    assert len(entries) == taker.taken == 9
    for entry in entries:
        assert entry.kind == "snapshot" and entry.poster is None and entry.duration == 0
        assert entry.start_time == entry.end_time
        with av.open(str(entry.file)) as container:
            picture = next(container.decode(video=0))
        assert (picture.width, picture.height) == (entry.width, entry.height) == (320, 240)
        fields = json.loads(entry.manifest.read_bytes())
        assert fields["file"] == entry.file.name and fields["poster"] == ""
    taker.interval = 0
    assert not taker.due()


def test_keyframe_jpeg_of_a_baseline_idr(media: dict[str, Path]) -> None:
    with av.open(str(media["demo"])) as container:
        stream = container.streams.video[0]
        params = VideoParams.of(stream)
        keyframe = next(bytes(p) for p in container.demux(stream) if p.is_keyframe)
    picture = keyframe_jpeg(params, [keyframe])
    assert picture is not None and picture.data[:2] == b"\xff\xd8"
    assert (picture.width, picture.height) == (320, 180)
    assert keyframe_jpeg(params, [b"\x00\x00\x00\x01garbage"]) is None
