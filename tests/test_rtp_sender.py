"""relay.live.rtp_sender on its own: a camera's feed answered by ``answer_offer`` in this process,
watched by real aiortc viewers over 127.0.0.1, with real H.264 from PyAV.

Each test runs on the C send loop and on the Python one. aiortc's own receiver is the judge: it
decodes what the lean sender sends, NACKs what it lost (a packet is dropped as it arrives,
before aiortc sees it) and gets it back as RTX, reads the sender reports, and its PLI reaches
the camera's keyframe request. The private aiortc names the
sender relies on are checked against the installed aiortc.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpSrPacket, RtpPacket
from live_system import annexb_frames

from relay.agent.demo_video import make_demo_video
from relay.live import fanout, rtp_once
from relay.live.feed import LiveFeed
from relay.live.rtp_sender import HISTORY, LeanSender
from relay.live.webrtc import answer_offer, limit_ice_addresses

FPS = 25


class Camera:
    """A LiveFeed published at real time from a PyAV-made file, looping (pts kept increasing)."""

    def __init__(self, frames: list[tuple[bytes, int, bool]]) -> None:
        self.keyframe_requests = 0
        self.feed = LiveFeed(self._keyframe)
        self._frames = frames
        self._task = asyncio.create_task(self._run())

    def _keyframe(self) -> None:
        self.keyframe_requests += 1

    async def _run(self) -> None:
        span = self._frames[-1][1] + 90_000 // FPS
        loop = 0
        while True:
            for payload, pts, key in self._frames:
                self.feed.publish(payload, pts + loop * span, key)
                await asyncio.sleep(1 / FPS)
            loop += 1

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.feed.close()


@pytest.fixture(params=["c", "python"], autouse=True)
def send_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both ways out: the C send loop, and Python's (an install without it)."""
    if request.param == "python":
        monkeypatch.setattr(fanout, "route_of", lambda *args: None)
    return request.param


@pytest.fixture
async def camera(tmp_path: Path) -> AsyncIterator[Camera]:
    original = aioice.ice.get_host_addresses
    limit_ice_addresses(["127.0.0.1"])  # (process-wide: put back after)
    camera = Camera(annexb_frames(make_demo_video(tmp_path / "v.mp4", seconds=2)))
    try:
        yield camera
    finally:
        await camera.close()
        aioice.ice.get_host_addresses = original


class Viewer:
    """An aiortc viewer of ``camera``, connected to a lean sender answered in this process."""

    def __init__(self) -> None:
        self.client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.transceiver = self.client.addTransceiver("video", direction="recvonly")
        self.track: Any = None
        self.close_server: Any = None
        self.closed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, camera: Camera) -> LeanSender:
        arrived: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.client.on("track", lambda track: arrived.done() or arrived.set_result(track))
        await self.client.setLocalDescription(await self.client.createOffer())
        before = lean_senders()

        async def on_closed() -> None:
            self.closed.set()

        self.close_server, answer = await answer_offer(
            self.client.localDescription.sdp, camera.feed, "", 20, "viewer", on_closed,
            lambda close: self.tasks.append(asyncio.ensure_future(close)))
        await self.client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self.track = await asyncio.wait_for(arrived, 20)
        [sender] = lean_senders() - before
        return sender

    async def close(self) -> None:
        await self.client.close()
        if self.close_server is not None:
            await self.close_server()
        for task in self.tasks:
            await task


def lean_senders() -> set[LeanSender]:
    """The lean senders in this process (answer_offer keeps its connection to itself)."""
    return {thing for thing in gc.get_objects() if isinstance(thing, LeanSender)}


async def test_a_viewer_decodes_what_the_lean_sender_sends(camera: Camera, send_path: str) -> None:
    viewer = Viewer()
    try:
        sender = await viewer.connect(camera)
        assert isinstance(sender, LeanSender)
        frames = [await asyncio.wait_for(viewer.track.recv(), 10) for _ in range(30)]
        assert {(frame.width, frame.height) for frame in frames} == {(640, 360)}
        pts = [frame.pts for frame in frames]
        assert pts == sorted(pts) and len(set(pts)) == 30  # in order, none twice
        stats = await sender.getStats()
        [outbound] = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert outbound.packetsSent >= 30 and outbound.bytesSent > 10_000
        assert (sender._fast is not None) == (send_path == "c")  # (relay/live/fanout.py)
    finally:
        await viewer.close()
    assert viewer.closed.is_set()


async def test_a_lost_packet_comes_back_as_rtx_from_the_shared_payload(camera: Camera) -> None:
    viewer = Viewer()
    receiver = viewer.transceiver.receiver
    handle = receiver._handle_rtp_packet
    dropped: dict[int, bytes] = {}
    again: dict[int, bytes] = {}
    seen = 0

    async def lossy(packet: RtpPacket, arrival_time_ms: int) -> None:
        nonlocal seen
        if packet.payload_type == viewer_payload_type():
            seen += 1  # (a loss before the first packet is no loss to the receiver: not that)
            if seen > 10 and len(dropped) < 3 and packet.sequence_number % 7 == 3 and (
                    not packet.marker):
                dropped[packet.sequence_number] = packet.payload
                return  # lost on the way
        elif len(packet.payload) > 2:  # RTX: the original sequence number, then its payload
            again[int.from_bytes(packet.payload[:2], "big")] = packet.payload[2:]
        await handle(packet, arrival_time_ms)

    def viewer_payload_type() -> int:
        return receiver._RTCRtpReceiver__codecs and next(
            pt for pt, codec in receiver._RTCRtpReceiver__codecs.items()
            if codec.mimeType.lower() == "video/h264")

    receiver._handle_rtp_packet = lossy
    try:
        await viewer.connect(camera)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (len(dropped) == 3 and set(dropped) <= set(again)):
            await asyncio.wait_for(viewer.track.recv(), 10)
        assert len(dropped) == 3, dropped
        assert {seq: again.get(seq) for seq in dropped} == dropped  # each sent again, same bytes
    finally:
        await viewer.close()


async def test_sender_reports_and_pli_reach_their_ends(camera: Camera) -> None:
    viewer = Viewer()
    receiver = viewer.transceiver.receiver
    handle = receiver._handle_rtcp_packet
    reports: list[RtcpSrPacket] = []

    async def watch(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            reports.append(packet)
        await handle(packet)

    receiver._handle_rtcp_packet = watch
    try:
        sender = await viewer.connect(camera)
        for _ in range(10):
            await asyncio.wait_for(viewer.track.recv(), 10)
        deadline = time.monotonic() + 5
        while not reports and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert reports, "no sender report within 5 s"
        report = reports[-1]
        assert report.ssrc == sender._ssrc and report.sender_info.packet_count > 0
        wall = report.sender_info.ntp_timestamp / 2**32 - rtp_once.NTP_TO_UNIX
        assert abs(wall - time.time()) < 3, wall
        before = camera.keyframe_requests
        await receiver._send_rtcp_pli(sender._ssrc)
        deadline = time.monotonic() + 5
        while camera.keyframe_requests == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert camera.keyframe_requests > before
    finally:
        await viewer.close()


async def test_many_viewers_share_payloads_with_their_own_numbers(
        camera: Camera, monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[LeanSender] = []
    take = LeanSender._take

    def counted(self: LeanSender, packet: av.Packet) -> None:
        handed.append(self)
        take(self, packet)

    monkeypatch.setattr(LeanSender, "_take", counted)
    viewers = [Viewer() for _ in range(3)]
    try:
        senders = [await viewer.connect(camera) for viewer in viewers]
        for viewer in viewers:  # past the paced GOP each joins on (~1 s), to the live edge
            for _ in range(2 * FPS):
                await asyncio.wait_for(viewer.track.recv(), 10)
        assert len({sender._ssrc for sender in senders}) == 3
        assert len({sender._origin for sender in senders}) == 3
        kept = [list(sender._history) for sender in senders]
        assert all(len(frames) > 20 for frames in kept)
        # The same frame's payloads are one list of bytes in every viewer's history.
        shared = {id(frame[2]) for frame in kept[0]}
        assert any(id(frame[2]) in shared for frame in kept[1])
        assert senders[0]._history.maxlen == HISTORY
        # Live frames were handed over inside the feed's publish, to every viewer.
        assert all(handed.count(sender) >= 3 for sender in senders), len(handed)
    finally:
        for viewer in viewers:
            await viewer.close()
    assert all(viewer.closed.is_set() for viewer in viewers)


async def test_the_private_aiortc_names_the_lean_sender_uses_are_there() -> None:
    """If an aiortc upgrade renames these, this fails first (the lean sender reads and writes
    them: its start/stop events, its sender-report counters, the transport's)."""
    from aiortc import RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpSender
    from aiortc.rtcdtlstransport import RTCCertificate

    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    sender = RTCRtpSender("video", dtls)
    for name in ("rtp_started", "rtp_exited", "ntp_timestamp", "rtp_timestamp", "packet_count",
                 "octet_count"):
        assert hasattr(sender, f"_RTCRtpSender__{name}"), name
    for name in ("_RTCDtlsTransport__tx_packets", "_RTCDtlsTransport__tx_bytes", "_tx_srtp"):
        assert hasattr(dtls, name), name
    assert hasattr(dtls.transport, "_connection")
    assert hasattr(dtls.transport._connection, "_nominated")
    assert callable(RTCRtpSender._run_rtp) and callable(RTCRtpSender._retransmit)
