"""The live pieces on their own: GOP-whole dropping, SDP rewriting, H.264 parsing, fMP4 output."""

from __future__ import annotations

import asyncio
from pathlib import Path

from live_system import annexb_frames, tracebacks

from relay.agent.demo_video import make_demo_video
from relay.live.feed import LiveFeed, Subscription
from relay.live.mse import MseFeed
from relay.live.webrtc import add_public_address, strip_mdns
from relay.media.h264 import codec_string, nal_type, nal_units, parameter_sets

OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:1 1 udp 2122260223 2f1e0a5c-1d2c-4d5e-9f00-1234567890ab.local 51000 typ host\r\n"
    "a=candidate:2 1 udp 1686052607 127.0.0.1 51000 typ srflx raddr 0.0.0.0 rport 0\r\n"
)


def test_strip_mdns_keeps_other_candidates():
    stripped = strip_mdns(OFFER)
    assert ".local" not in stripped
    assert "127.0.0.1 51000 typ srflx" in stripped and stripped.startswith("v=0\r\n")


def test_public_address_is_added_for_each_host_candidate():
    answer = "v=0\r\na=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"
    rewritten = add_public_address(answer, "203.0.113.7")
    assert "a=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host" in rewritten
    assert "a=candidate:abcp 1 udp 2130706430 203.0.113.7 40000 typ host" in rewritten
    assert add_public_address(answer, "") == answer


def test_h264_parsing():
    unit = (b"\x00\x00\x00\x01\x67\x42\xc0\x1e\xaa" + b"\x00\x00\x00\x01\x68\xce\x3c\x80"
            + b"\x00\x00\x01\x65\x88\x84")
    assert [nal_type(u) for u in nal_units(unit)] == [7, 8, 5]
    sps, pps = parameter_sets(unit)
    assert codec_string(sps) == "avc1.42c01e" and pps == b"\x68\xce\x3c\x80"
    assert parameter_sets(b"\x00\x00\x01\x41\x9a") is None


async def test_a_slow_subscriber_drops_whole_gops():
    subscription: Subscription[str] = Subscription(limit=3)
    for item, key in (("K1", True), ("p1", False), ("p2", False), ("p3", False), ("p4", False),
                      ("K2", True), ("q1", False)):
        subscription.offer(item, key)
    received = [await subscription.get() for _ in range(2)]
    assert received == ["K2", "q1"]  # p3 overflowed: the rest of GOP 1 went, never a lone frame
    assert subscription.dropped == 5
    subscription.close()
    assert await subscription.get() is None


async def _drain(subscription: Subscription, count: int) -> list[tuple[float, float]]:  # type: ignore[type-arg]
    """``count`` packets from it: (seconds since the first, its media time)."""
    loop, got = asyncio.get_running_loop(), []
    for _ in range(count):
        packet = await subscription.get()
        got.append((loop.time(), float(packet.pts * packet.time_base)))
    return [(when - got[0][0], media) for when, media in got]


def _publish_gop(feed: LiveFeed, seconds: float, fps: int = 25) -> int:
    frames = int(seconds * fps)
    for n in range(frames):
        feed.publish(b"\x00\x00\x00\x01\x65" if n == 0 else b"\x00\x00\x00\x01\x41",
                     n * 90_000 // fps, n == 0)
    return frames


async def test_a_joining_webrtc_viewer_gets_the_cached_gop_paced_then_live():
    feed = LiveFeed(lambda: None)
    frames = _publish_gop(feed, 2.0)  # a 2 s GOP waits: 3x real time, so ~0.67 s to send
    paced, unpaced = feed.subscribe(paced=True), feed.subscribe()
    first = await _drain(unpaced, frames)
    assert first[-1][0] < 0.05  # a node link (TCP) takes it at once
    got = await _drain(paced, frames)
    assert got[0][0] == 0  # the keyframe at once: the viewer decodes straight away
    halfway = got[frames // 2]
    assert 0.3 < halfway[0] < 0.5, halfway  # 1 s of video in ~1/3 s: spread, not a burst
    assert 0.6 < got[-1][0] < 0.9, got[-1]
    # Caught up (its queue ran empty): live frames go as they come, unpaced from then on.
    loop = asyncio.get_running_loop()
    for n in range(frames, frames + 5):
        feed.publish(b"\x00\x00\x00\x01\x41", n * 90_000 // 25, False)
        published = loop.time()
        await paced.get()
        assert loop.time() - published < 0.01


async def test_a_long_backlog_is_paced_faster_and_a_timeline_jump_ends_the_pacing():
    feed = LiveFeed(lambda: None)
    frames = _publish_gop(feed, 6.0)  # 6 s waiting: 7x, live within about a second
    got = await _drain(feed.subscribe(paced=True), frames)
    assert 0.8 < got[-1][0] < 1.1, got[-1]
    feed = LiveFeed(lambda: None)
    frames = _publish_gop(feed, 1.0)
    feed.publish(b"\x00\x00\x00\x01\x41", 3600 * 90_000, False)  # an hour later: a jump
    subscription = feed.subscribe(paced=True)
    got = await _drain(subscription, frames + 1)
    assert got[-1][0] < 0.5, got[-1]  # paced until the jump, never an hour's wait


def test_every_viewer_s_sender_gets_one_split_of_a_frame_and_the_same_clock():
    """relay.live.rtp_once: aiortc's own payloads and NTP time, worked out once."""
    from aiortc import clock
    from aiortc.codecs.h264 import H264Encoder

    from relay.live import rtp_once
    from relay.media.frames import make_packet

    frame = make_packet(b"\x00\x00\x00\x01\x67\x42\xc0\x1e\x00\x00\x00\x01\x68\xce"
                        b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 40, 180_000, True)
    theirs = H264Encoder().pack(frame)
    first, second = rtp_once.payloads_of(frame), rtp_once.payloads_of(frame)
    assert first == theirs and len(first[0]) > 5  # STAP-A of SPS+PPS, then FU-A fragments
    assert second[0] is first[0]  # one split for every viewer
    other = make_packet(b"\x00\x00\x00\x01\x41" + bytes(100), 183_600, False)
    assert rtp_once.payloads_of(other) == H264Encoder().pack(other)
    for _ in range(rtp_once.RECENT_FRAMES + 1):  # forgotten once far behind: split again, right
        rtp_once.payloads_of(make_packet(b"\x00\x00\x00\x01\x41", 0, False))
    again = rtp_once.payloads_of(frame)
    assert again == theirs and again[0] is not first[0]
    before = clock.datetime_to_ntp(clock.current_datetime())
    ours = rtp_once.ntp_now()
    after = clock.datetime_to_ntp(clock.current_datetime())
    assert before - (1 << 22) <= ours <= after + (1 << 22)  # within a millisecond of aiortc's


async def test_feed_starts_viewers_on_the_current_gop_and_mse_makes_fragments(tmp_path: Path):
    frames = annexb_frames(make_demo_video(tmp_path / "v.mp4", seconds=1), 12)
    keyframe_requests = []
    feed = LiveFeed(lambda: keyframe_requests.append(1))
    assert feed.publish(b"\x00\x00\x01\x41\x9a", 0, False) is None  # nothing before a keyframe
    for payload, pts, key in frames[:5]:
        feed.publish(payload, pts, key)
    late = feed.subscribe()
    assert keyframe_requests == [1]
    first = await late.get()
    assert first.is_keyframe and first.pts == frames[0][1]  # the GOP so far, from its keyframe
    mse = MseFeed(feed)
    viewer = mse.subscribe()
    await asyncio.sleep(0)  # let the muxer subscribe before more frames arrive
    for payload, pts, key in frames[5:]:
        feed.publish(payload, pts, key)
    await asyncio.sleep(0.05)
    items = []
    while len(items) < 4:
        items.append(await asyncio.wait_for(viewer.get(), 2))
    assert items[0].startswith(b"{") and b"avc1.42" in items[0]
    assert items[1][4:8] == b"ftyp"
    assert all(item[4:8] == b"moof" for item in items[2:])
    await mse.close()
    feed.close()


def test_tracebacks_are_cut_out_of_a_log_whole():
    """What the live tests' teardown shows: each traceback with the record that logged it and any
    chained exception, however far from the end of the log (a tail once cut one off)."""
    noise = "".join(f"2026-12-01 22:14:{n % 60:02d},449 INFO aiohttp.access: GET /metrics 200\n"
                    for n in range(400))
    task = ("2026-12-01 22:14:17,500 ERROR asyncio: Task exception was never retrieved\n"
            "future: <Task finished name='Task-9' coro=<send() done>>\n"
            "Traceback (most recent call last):\n"
            '  File "writer.py", line 247, in _send_compressed_frame_async_locked\n'
            "    self._write_websocket_frame(\n"
            "ConnectionResetError: Cannot write to closing transport")
    chained = ("2026-12-01 22:15:00,000 ERROR relay.live.controller: live task failed\n"
               "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 'a'\n\n"
               "During handling of the above exception, another exception occurred:\n\n"
               "Traceback (most recent call last):\n  File \"a.py\", line 3, in f\nValueError: b")
    log = noise + task + "\n" + noise + chained + "\n" + noise
    assert tracebacks(log) == [task, chained]
    assert tracebacks(noise) == []
