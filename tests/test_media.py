"""The codec-level pieces of relay/media on their own, with real H.264 made by PyAV: NAL parsing,
the GOP cache, the whole-GOP queue, the 90 kHz timelines, the fMP4 segmenter and the pipelines."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import pytest

from relay.agent.demo_video import make_demo_video
from relay.media.fmp4 import Fmp4Segmenter
from relay.media.frames import MediaFrame, make_packet
from relay.media.gop import GopCache
from relay.media.gop_queue import WholeGopQueue
from relay.media.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    ParameterSets,
    codec_string,
    nal_spans,
    nal_type,
    nal_types,
    nal_units,
    parameter_sets,
)
from relay.media.pipelines import Passthrough, Transcoder, is_passthrough, source_rate
from relay.media.timeline import TIME_BASE, Clock90, Timeline

FPS = 10
GOP = 2 * FPS  # the demo video's keyframe interval
STEP = 90_000 // FPS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Constrained baseline, 320x180, 10 fps, 6 s: three GOPs of 20 frames."""
    return make_demo_video(tmp_path_factory.mktemp("media") / "demo.mp4", width=320, height=180,
                           fps=FPS, seconds=6)


@pytest.fixture(scope="module")
def frames(demo: Path) -> list[MediaFrame]:
    with av.open(str(demo)) as container:
        stream = container.streams.video[0]
        clock = Clock90()
        clock.new_pass(source_rate(stream))  # as a source does when it opens
        passthrough = Passthrough(stream, clock)
        return [frame for packet in container.demux(stream) if packet.size
                for frame in passthrough.feed(packet, False)]


def decode(datas: list[bytes]) -> list[av.VideoFrame]:
    """Every picture a fresh decoder makes of these access units; fails on a decoding error."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.options = {"err_detect": "explode"}
    pictures = [picture for data in datas for picture in decoder.decode(av.Packet(data))]
    return pictures + list(decoder.decode(None))


def test_passthrough_keeps_the_sources_timing(demo):
    """Once every pts was the last one plus a frame: the bitstream filter empties the packet it is
    given, time base included, so the source's own timestamps were never read."""
    with av.open(str(demo)) as container:
        stream = container.streams.video[0]
        clock = Clock90()
        clock.new_pass(source_rate(stream))
        passthrough = Passthrough(stream, clock)
        packets = [packet for packet in container.demux(stream) if packet.size]
        # A source that stalls: a second of frames never arrives.
        kept = packets[:GOP] + packets[GOP + FPS:]
        out = [frame for packet in kept for frame in passthrough.feed(packet, False)]
    assert [frame.pts for frame in out[:GOP]] == [n * STEP for n in range(GOP)]
    assert out[GOP].pts - out[GOP - 1].pts == (FPS + 1) * STEP, "the gap is kept, not hidden"


def test_passthrough_makes_annexb_access_units_with_parameter_sets_on_every_idr(demo, frames):
    with av.open(str(demo)) as container:
        stream = container.streams.video[0]
        assert is_passthrough(stream.codec_context) and source_rate(stream) == FPS
    assert len(frames) == 6 * FPS
    assert [index for index, frame in enumerate(frames) if frame.keyframe] == [0, GOP, 2 * GOP]
    for frame in frames:
        types = nal_types(frame.data)
        assert frame.data.startswith(b"\x00\x00\x00\x01")
        assert (NAL_IDR in types) == frame.keyframe
        if frame.keyframe:
            assert {NAL_SPS, NAL_PPS} <= set(types)
    assert [frame.pts for frame in frames] == [n * STEP for n in range(len(frames))]
    pictures = decode([frame.data for frame in frames])
    assert len(pictures) == len(frames) and (pictures[0].width, pictures[0].height) == (320, 180)


def test_nal_units_and_parameter_sets_of_a_real_keyframe(frames):
    keyframe = frames[0].data
    units = nal_units(keyframe)
    assert [nal_type(unit) for unit in units] == nal_types(keyframe)
    assert all(unit and unit[-1] != 0 for unit in units)  # no start code, no trailing zeros
    parameters = parameter_sets(keyframe)
    assert parameters is not None
    sps, pps = parameters
    assert nal_type(sps) == NAL_SPS and nal_type(pps) == NAL_PPS
    assert codec_string(sps).startswith("avc1.42")  # constrained baseline
    assert parameter_sets(frames[1].data) is None
    assert nal_units(b"\x00\x00\x01\x67\x42\x00\x00\x00\x00\x01\x68\xce\x00\x00\x01") == [
        b"\x67\x42", b"\x68\xce"]
    assert nal_spans(b"") == [] and nal_spans(b"\x00\x00\x01") == []


def test_an_idr_without_parameter_sets_gets_the_last_ones_seen_in_front(frames):
    keyframe = frames[GOP].data
    idr_only = b"".join(b"\x00\x00\x00\x01" + keyframe[start:end]
                        for kind, start, end in nal_spans(keyframe) if kind not in (NAL_SPS, NAL_PPS))
    assert set(nal_types(idr_only)) == {NAL_IDR}  # (x264 may cut it into slices)
    fresh = ParameterSets(None)
    assert fresh.complete(idr_only) == (idr_only, True)  # none seen yet: nothing to put in front
    params = ParameterSets(None)
    assert params.complete(frames[0].data) == (frames[0].data, True)  # learns them
    assert params.complete(frames[1].data) == (frames[1].data, False)
    completed, keyframe_ = params.complete(idr_only)
    assert keyframe_ and completed == params.sps + params.pps + idr_only
    assert nal_types(completed)[:2] == [NAL_SPS, NAL_PPS]
    assert len(decode([completed])) == 1  # decodes on its own
    from_extradata = ParameterSets(params.sps + params.pps)  # Annex-B extradata (an RTSP SDP)
    assert from_extradata.complete(idr_only)[0] == completed
    assert ParameterSets(b"\x01\x42\xc0\x1e").sps == b""  # avcC extradata is not Annex-B


def test_the_gop_cache_keeps_the_current_gop_from_its_keyframe(frames):
    cache: GopCache[MediaFrame] = GopCache()
    late = [cache.add(frame, frame.keyframe, len(frame.data)) for frame in frames[5:GOP]]
    assert late == [False] * (GOP - 5) and cache.frames() == [] and not cache.synced
    for frame in frames[GOP:GOP + 7]:
        assert cache.add(frame, frame.keyframe, len(frame.data))
    assert cache.frames() == frames[GOP:GOP + 7] and len(cache) == 7
    assert len(decode([frame.data for frame in cache.frames()])) == 7
    cache.forget()  # e.g. nobody watches a re-encoded source: keep nothing, still in sync
    assert cache.frames() == [] and cache.synced
    assert cache.add(frames[GOP + 7], False, 1) and cache.frames() == []  # not from a keyframe
    cache.reset()  # the source reopened
    assert not cache.synced and not cache.add(frames[GOP + 8], False, 1)
    assert cache.add(frames[2 * GOP], True, 1) and cache.frames() == [frames[2 * GOP]]


def test_a_gop_too_long_for_the_cache_is_forgotten_until_the_next_keyframe(frames):
    by_count: GopCache[MediaFrame] = GopCache(max_frames=10)
    for frame in frames[:15]:
        assert by_count.add(frame, frame.keyframe, len(frame.data))
    assert by_count.frames() == []  # never half a GOP
    for frame in frames[15:GOP + 3]:
        by_count.add(frame, frame.keyframe, len(frame.data))
    assert by_count.frames() == frames[GOP:GOP + 3]
    budget = sum(len(frame.data) for frame in frames[:3])
    by_bytes: GopCache[MediaFrame] = GopCache(max_bytes=budget)
    for frame in frames[:3]:
        by_bytes.add(frame, frame.keyframe, len(frame.data))
    assert by_bytes.frames() == frames[:3]
    by_bytes.add(frames[3], False, len(frames[3].data))
    assert by_bytes.frames() == []


@pytest.mark.parametrize("catch_up", [False, True])
def test_a_slow_consumer_gets_whole_gops_that_decode(frames, catch_up: bool):
    queue: WholeGopQueue[MediaFrame] = WholeGopQueue(8, catch_up=catch_up)
    taken: list[MediaFrame] = []
    assert not queue.offer(frames[1], False)  # it starts at a keyframe
    for index, frame in enumerate(frames):
        queue.offer(frame, frame.keyframe, len(frame.data))
        if index % 3 == 0 and (item := queue.pop()) is not None:  # a third of the stream's rate
            taken.append(item)
    left = [item for item in iter(queue.pop, None)]
    received = taken + left
    assert received[0] is frames[0] and 0 < len(received) < len(frames)
    assert queue.dropped == len(frames) + 1 - len(received)
    position = {id(frame): index for index, frame in enumerate(frames)}
    for earlier, later in itertools.pairwise(received):  # after any gap, a keyframe
        assert position[id(later)] == position[id(earlier)] + 1 or later.keyframe
    assert len(decode([frame.data for frame in received])) == len(received)


def test_on_overflow_a_push_keeps_the_head_of_its_gop_and_a_viewer_catches_up(frames):
    keep: WholeGopQueue[MediaFrame] = WholeGopQueue(4)
    catch: WholeGopQueue[MediaFrame] = WholeGopQueue(4, catch_up=True)
    for frame in frames[:6]:
        keep.offer(frame, frame.keyframe)
        catch.offer(frame, frame.keyframe)
    assert list(iter(keep.pop, None)) == frames[:4] and keep.dropped == 2
    assert list(iter(catch.pop, None)) == [] and catch.dropped == 6
    for queue in (keep, catch):
        assert not queue.offer(frames[6], False)  # still dropping, though there is room again
        assert queue.offer(frames[GOP], True) and queue.offer(frames[GOP + 1], False)
        assert list(iter(queue.pop, None)) == frames[GOP:GOP + 2]


def test_the_whole_gop_queue_bounds_bytes_and_items(frames):
    key, delta = frames[0], frames[1]
    queue: WholeGopQueue[MediaFrame] = WholeGopQueue(100, max_bytes=len(key.data) + len(delta.data),
                                                     max_item_bytes=len(key.data))
    assert queue.offer(key, True, len(key.data)) and queue.offer(delta, False, len(delta.data))
    assert not queue.offer(frames[2], False, len(frames[2].data))  # over max_bytes
    assert queue.offer(frames[GOP], True, len(key.data)) and len(queue) == 1  # replaces the waiting
    assert queue.dropped == 3
    big = MediaFrame(key.data * 2, True, 0)
    assert not queue.offer(big, True, len(big.data))  # bigger than any item may be: a drop starts
    assert not queue.offer(frames[GOP + 1], False, 1)
    queue.skip_to_keyframe()  # a consumer that joins mid-GOP
    assert queue.offer(frames[2 * GOP], True, 1) and not (
        queue.skip_to_keyframe() or queue.offer(frames[2 * GOP + 1], False, 1))
    assert [queue.pop(), queue.pop(), queue.pop()] == [frames[GOP], frames[2 * GOP], None]


def test_clock90_goes_on_one_frame_after_the_last_when_a_file_loops(demo):
    clock = Clock90()
    stamps: list[int] = []
    with av.open(str(demo)) as container:
        stream = container.streams.video[0]
        for _ in range(2):  # a file source loops: its timestamps start again
            clock.new_pass(source_rate(stream))
            stamps += [clock.stamp(packet.pts, packet.time_base)
                       for packet in container.demux(stream) if packet.size]
            container.seek(0)
    assert stamps == [n * STEP for n in range(2 * 6 * FPS)]
    assert clock.stamp(None, None) == stamps[-1] + STEP  # no timestamp: the next frame
    assert clock.stamp(0, Fraction(1, FPS)) == stamps[-1] + 2 * STEP  # back in time: forward
    assert clock.stamp(1, Fraction(1, FPS)) == stamps[-1] + 3 * STEP  # and on from there


def test_the_mse_timeline_keeps_pts_and_continues_after_the_last_with_the_step_it_saw():
    timeline = Timeline()
    assert [timeline.place(pts) for pts in (5000, 8600, 12_200)] == [5000, 8600, 12_200]
    assert timeline.step == 3600
    assert timeline.place(0) == 15_800  # a push from zero again: one frame after the last
    assert timeline.place(3600) == 19_400  # and on, at the same offset
    assert timeline.place(19_400 + 10 * 90_000) > 19_400 and timeline.step == 3600  # a jump


def base_decode_time(fragment: bytes) -> int:
    """The ``tfdt`` decode time of an fMP4 fragment (moof + mdat)."""
    at = fragment.index(b"tfdt")
    size = 8 if fragment[at + 4] == 1 else 4
    return int.from_bytes(fragment[at + 8:at + 8 + size], "big")


def test_the_fmp4_segmenter_makes_an_init_segment_and_fragments_that_play(frames, tmp_path: Path):
    packets = [make_packet(frame.data, frame.pts, frame.keyframe) for frame in frames[:GOP + 5]]
    assert packets[0].time_base == TIME_BASE and packets[0].is_keyframe
    parameters = parameter_sets(frames[0].data)
    assert parameters is not None
    segmenter = Fmp4Segmenter(packets[0], *parameters)
    assert (segmenter.width, segmenter.height) == (320, 180)
    assert segmenter.codec == codec_string(parameters[0])
    fragments = [segmenter.push(packet, 1000 + packet.pts) for packet in packets]
    segmenter.close()
    assert fragments[0] == b"" and segmenter.init[4:8] == b"ftyp" and b"moov" in segmenter.init
    assert all(fragment[4:8] == b"moof" for fragment in fragments[1:])  # one per frame, one behind
    path = tmp_path / "out.mp4"
    path.write_bytes(segmenter.init + b"".join(fragments))
    with av.open(str(path)) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) == len(packets) - 1  # the last frame's fragment waits for its end
    # The muxer starts its timeline at 0; the gaps between fragments are those of the pts given.
    assert [base_decode_time(fragment) for fragment in fragments[1:]] == [
        packet.pts - packets[0].pts for packet in packets[:-1]]
    with pytest.raises(ValueError):
        Fmp4Segmenter(make_packet(b"\x00\x00\x01\x65\x00", 0, True), *parameters)


@pytest.fixture(scope="module")
def high(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """H.264 High with B-frames: what the relay cannot take as it is."""
    path = tmp_path_factory.mktemp("media-high") / "high.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"profile": "high", "bf": "2", "g": str(GOP), "preset": "veryfast"}
        for t in range(3 * GOP):
            frame = av.VideoFrame(160, 96, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(t * 7 + plane.line_size) % 256]) * plane.buffer_size)
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_the_transcoder_re_encodes_to_baseline_only_while_watched_and_starts_with_an_idr(high):
    with av.open(str(high)) as container:
        stream = container.streams.video[0]
        assert not is_passthrough(stream.codec_context)
        transcoder = Transcoder(stream, Clock90(), lambda: 256)
        packets = [packet for packet in container.demux(stream) if packet.size]
        unwatched = [transcoder.feed(packet, False) for packet in packets[:GOP + 5]]
        assert unwatched == [[]] * (GOP + 5)  # nobody watches: nothing is encoded
        out = [frame for packet in packets[GOP + 5:] for frame in transcoder.feed(packet, True)]
        out += transcoder.end_pass()
        transcoder.close()
    assert out[0].keyframe  # mid-GOP: the GOP kept so far decodes into an IDR of this picture
    for frame in out:
        if frame.keyframe:
            sps = parameter_sets(frame.data)
            assert sps is not None and sps[0][1] == 66  # profile_idc: baseline
    assert all(later.pts > earlier.pts for earlier, later in itertools.pairwise(out))
    assert len(decode([frame.data for frame in out])) == len(out) >= 2 * GOP - 5
