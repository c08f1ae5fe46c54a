"""Live push from the agent: the real Agent and real MP4 sources, with a test server playing the relay
(its /agent link, to send commands the way the relay does, and its /agent/media endpoint)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiohttp import web

from relay.agent.agent import Agent
from relay.agent.config import AgentConfig
from relay.agent.demo_video import make_demo_video
from relay.agent.push import FrameQueue
from relay.link import protocol
from relay.media.frames import MediaFrame

KEY = "rk_push_test"
CAMERA = {
    "camera_id": 7, "camera_name": "push", "stream_prop": 1, "stream_url": "", "stream_mp4": "",
    "device_ip": "", "device_user": "", "device_pass": "", "device_cmd_port": 8000,
    "device_mirror": 0, "device_osd": 0, "device_twice": 0, "device_show": 1, "started": 1,
}


# H.264 helpers for the checks


def nal_types(data: bytes) -> list[int]:
    types, at = [], data.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(data):
        types.append(data[at + 3] & 0x1F)
        at = data.find(b"\x00\x00\x01", at + 3)
    return types


def sps_profile(data: bytes) -> tuple[int, int]:
    """(profile_idc, constraint flags) of the first SPS in an access unit."""
    at = data.find(b"\x00\x00\x01")
    while at >= 0:
        if data[at + 3] & 0x1F == 7:
            return data[at + 4], data[at + 5]
        at = data.find(b"\x00\x00\x01", at + 3)
    raise AssertionError("no SPS")


def decode_all(frames: list[Received]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("h264", "r")
    pictures = [picture for frame in frames for picture in decoder.decode(av.Packet(frame.data))]
    return pictures + list(decoder.decode(None))


# The relay's part, played by a test server


@dataclass
class Received:
    keyframe: bool
    pts: int
    data: bytes


@dataclass
class Media:
    """One /agent/media socket the agent opened."""

    camera_id: int
    push_id: str
    authorization: str
    ws: web.WebSocketResponse
    frames: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    opened: float = field(default_factory=time.monotonic)

    async def frame(self, timeout: float = 5) -> Received:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def take(self, count: int) -> list[Received]:
        return [await self.frame() for _ in range(count)]


class FakeRelay:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.app = web.Application()
        self.app.router.add_get("/agent", self._agent)
        self.app.router.add_get("/agent/media", self._media)
        self.linked = asyncio.Event()
        self.media: asyncio.Queue[Media] = asyncio.Queue()
        self.refuse: set[str] = set()
        self.statuses: dict[int, dict[str, Any]] = {}
        self._link: web.WebSocketResponse | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "unknown key"}, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "welcome", "gather_id": 1, "state": self.state})
        self._link = ws
        self.linked.set()
        async for message in ws:
            body = json.loads(message.data)
            if body["type"] == "reply":
                self._replies.pop(body["id"]).set_result(body)
            elif body["type"] == "status":
                self.statuses[body["camera_id"]] = body
        return ws

    async def _media(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "unknown key"}, status=401)
        push_id = request.query["push_id"]
        if push_id in self.refuse:
            return web.json_response({"error": "not the current push"}, status=409)
        ws = web.WebSocketResponse(max_msg_size=protocol.MAX_MEDIA_FRAME)
        await ws.prepare(request)
        media = Media(int(request.query["camera_id"]), push_id, request.headers["Authorization"], ws)
        self.media.put_nowait(media)
        try:
            async for message in ws:
                assert message.type == aiohttp.WSMsgType.BINARY
                flags, pts = protocol.MEDIA_HEADER.unpack_from(message.data)
                media.frames.put_nowait(Received(bool(flags & protocol.KEYFRAME), pts,
                                                 message.data[protocol.MEDIA_HEADER.size:]))
        finally:
            media.closed.set()
        return ws

    async def command(self, action: str, **data: Any) -> dict[str, Any]:
        assert self._link is not None
        self._ids += 1
        reply = self._replies[self._ids] = asyncio.get_running_loop().create_future()
        await self._link.send_json({"type": "command", "id": self._ids, "action": action, "data": data})
        return await asyncio.wait_for(reply, 10)

    async def next_media(self, timeout: float = 5) -> Media:
        return await asyncio.wait_for(self.media.get(), timeout)

    async def status(self, camera_id: int, status: int, timeout: float = 5) -> dict[str, Any]:
        for _ in range(int(timeout / 0.02)):
            if self.statuses.get(camera_id, {}).get("status") == status:
                return self.statuses[camera_id]
            await asyncio.sleep(0.02)
        raise AssertionError(f"camera {camera_id} never reported status {status}: {self.statuses}")


Start = Callable[..., Awaitable[tuple[FakeRelay, Agent]]]


@pytest.fixture
async def start(aiohttp_server, tmp_path: Path) -> AsyncIterator[Start]:  # type: ignore[no-untyped-def]
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(*cameras: dict[str, Any], auto_dvr: int = 0) -> tuple[FakeRelay, Agent]:
        relay = FakeRelay({"gather": {"sub_rate": 400, "auto_dvr": auto_dvr}, "cameras": list(cameras),
                           "courses": []})
        server = await aiohttp_server(relay.app)
        agent = Agent(str(server.make_url("/")), KEY, tmp_path / f"agent{len(running)}",
                      AgentConfig(mac_addr="02:00:00:00:00:77"))
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(agent.run(stop))))
        await asyncio.wait_for(relay.linked.wait(), 5)
        return relay, agent

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 10)


# Sources


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    demo = make_demo_video(folder / "demo.mp4", seconds=2)
    made = {"demo": demo}
    for name, codec, options in (
        ("high", "libx264", {"profile": "high", "bf": "2", "g": "50", "preset": "veryfast"}),
        ("mpeg4", "mpeg4", {"g": "50"}),
    ):
        made[name] = folder / f"{name}.mp4"
        with av.open(str(demo)) as source, av.open(str(made[name]), "w") as target:
            stream = target.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
            stream.bit_rate = 800_000
            stream.options = options
            for t, picture in enumerate(source.decode(video=0)):
                picture = picture.reformat(format="yuv420p")
                picture.pts, picture.time_base, picture.pict_type = t, Fraction(1, 25), 0
                target.mux(stream.encode(picture))
            target.mux(stream.encode(None))
    return made


def camera(path: Path, **changes: Any) -> dict[str, Any]:
    return {**CAMERA, "stream_mp4": str(path), **changes}


# Tests


async def test_push_starts_with_the_current_gop_and_streams_decodable_frames(start: Start, videos):
    relay, agent = await start(camera(videos["demo"]))
    await relay.status(7, 1)
    await asyncio.sleep(0.6)  # into the file's only GOP (2 s): a push must not wait for the next one

    reply = await relay.command(protocol.LIVE_START, camera_id=7, push_id="p1")
    replied = time.monotonic()
    assert reply["err_code"] == protocol.OK, reply
    media = await relay.next_media()
    assert (media.camera_id, media.push_id, media.authorization) == (7, "p1", f"Bearer {KEY}")
    first = await media.frame()
    assert time.monotonic() - replied < 1.0  # the cached GOP, not the next keyframe 1.4 s away
    assert first.keyframe
    types = nal_types(first.data)
    assert 7 in types and 8 in types and 5 in types
    assert types.index(7) < types.index(8) < types.index(5)
    assert sps_profile(first.data) == (66, 0xC0)  # constrained baseline, passed through

    # Until the frame after the file loops: a keyframe, and pts that go on in 90 kHz steps.
    frames = [first]
    while len(frames) < 52:
        frames.append(await media.frame())
    assert [i for i, frame in enumerate(frames) if frame.keyframe] == [0, 50]
    assert all(5 in nal_types(frame.data) for frame in frames if frame.keyframe)
    assert {b.pts - a.pts for a, b in itertools.pairwise(frames)} == {90_000 // 25}
    pictures = decode_all(frames)
    assert len(pictures) == len(frames)
    assert {(picture.width, picture.height) for picture in pictures} == {(640, 360)}

    # A passed-through source cannot be asked for an IDR: OK all the same.
    keyframe = await relay.command(protocol.LIVE_KEYFRAME, camera_id=7)
    assert keyframe["err_code"] == protocol.OK and keyframe["data"]["forced"] is False
    assert list(agent.pushes) == [7]


async def test_stale_stops_and_restarts_change_nothing_the_right_stop_ends_it(start: Start, videos):
    relay, agent = await start(camera(videos["demo"]))
    await relay.status(7, 1)
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="a"))["err_code"] == 0
    first = await relay.next_media()
    await first.take(3)

    # The same push again: nothing changes (no second socket).
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="a"))["err_code"] == 0
    assert relay.media.empty() and not first.closed.is_set()

    # A new push id replaces the old push: its socket closes, the new one starts at a keyframe.
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="b"))["err_code"] == 0
    second = await relay.next_media()
    await asyncio.wait_for(first.closed.wait(), 5)
    assert (await second.frame()).keyframe

    # A late stop of the old push: OK, and the new one goes on.
    stale = await relay.command(protocol.LIVE_STOP, camera_id=7, push_id="a")
    assert stale["err_code"] == protocol.OK and stale["data"]["stopped"] is False
    await second.take(5)
    assert not second.closed.is_set() and agent.pushes[7].push_id == "b"

    stop = await relay.command(protocol.LIVE_STOP, camera_id=7, push_id="b")
    assert stop["err_code"] == protocol.OK and stop["data"]["stopped"] is True
    await asyncio.wait_for(second.closed.wait(), 5)
    assert agent.pushes == {}

    # Unknown cameras; a stopped camera's source is down, and stopping a camera ends its push.
    unknown = await relay.command(protocol.LIVE_START, camera_id=99, push_id="c")
    assert unknown["err_code"] == protocol.UNKNOWN_CAMERA
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="c"))["err_code"] == 0
    third = await relay.next_media()
    assert (await relay.command(protocol.CAMERA_STOP, camera_id=7))["err_code"] == 0
    await asyncio.wait_for(third.closed.wait(), 5)
    down = await relay.command(protocol.LIVE_START, camera_id=7, push_id="d")
    assert down["err_code"] == protocol.SOURCE_DOWN and "stopped" in down["err_msg"]
    malformed = await relay.command(protocol.LIVE_START, camera_id=7)
    assert malformed["err_code"] == protocol.BAD_COMMAND


async def test_failing_source_refused_socket_and_relay_closing(start: Start, videos, tmp_path: Path):
    broken = camera(tmp_path / "missing.mp4", camera_id=8)
    relay, agent = await start(camera(videos["demo"]), broken)
    await relay.status(8, 0)
    down = await relay.command(protocol.LIVE_START, camera_id=8, push_id="x")
    assert down["err_code"] == protocol.SOURCE_DOWN and "source is down" in down["err_msg"]

    await relay.status(7, 1)
    relay.refuse.add("refused")
    refused = await relay.command(protocol.LIVE_START, camera_id=7, push_id="refused")
    assert refused["err_code"] != protocol.OK and "409" in refused["err_msg"]
    assert agent.pushes == {}

    # The relay closes the media socket: the push ends quietly and can start again.
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="y"))["err_code"] == 0
    media = await relay.next_media()
    await media.take(2)
    await media.ws.close()
    for _ in range(100):
        if not agent.pushes:
            break
        await asyncio.sleep(0.02)
    assert agent.pushes == {}
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="y"))["err_code"] == 0
    again = await relay.next_media()
    assert (await again.frame()).keyframe

    # Another source for the camera ends its push.
    changed = await relay.command(protocol.CAMERA_MOD, **camera(videos["mpeg4"]))
    assert changed["err_code"] == protocol.OK
    await asyncio.wait_for(again.closed.wait(), 5)
    assert agent.pushes == {}


@pytest.mark.parametrize("source", ["high", "mpeg4"])
async def test_incompatible_sources_are_reencoded_to_constrained_baseline(start: Start, videos,
                                                                          source: str):
    with av.open(str(videos[source])) as container:  # the source is really not passable
        codec = container.streams.video[0].codec_context
        assert codec.name == "mpeg4" or (codec.profile == "High" and codec.has_b_frames)
    relay, agent = await start(camera(videos[source]))
    await relay.status(7, 1)
    await asyncio.sleep(0.3)
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="enc"))["err_code"] == 0
    assert agent.pushes[7].push_id == "enc"
    media = await relay.next_media()
    frames = await media.take(8)
    assert frames[0].keyframe and sps_profile(frames[0].data) == (66, 0xC0)
    assert all(3 not in nal_types(frame.data) for frame in frames)  # no B slices anywhere
    assert not any(frame.keyframe for frame in frames[1:])

    # live.keyframe: an IDR soon, long before the 2 s GOP would bring one (50 frames).
    keyframe = await relay.command(protocol.LIVE_KEYFRAME, camera_id=7)
    assert keyframe["err_code"] == protocol.OK and keyframe["data"]["forced"] is True
    for _ in range(15):
        frames.append(await media.frame())
        if frames[-1].keyframe:
            break
    assert frames[-1].keyframe and len(frames) < 30
    assert 7 in nal_types(frames[-1].data) and 8 in nal_types(frames[-1].data)
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))
    pictures = decode_all(frames)
    assert len(pictures) == len(frames)
    assert {(picture.width, picture.height) for picture in pictures} == {(640, 360)}


async def test_the_agent_stopping_ends_its_pushes(aiohttp_server, tmp_path: Path, videos):
    relay = FakeRelay({"gather": {}, "cameras": [camera(videos["demo"])], "courses": []})
    server = await aiohttp_server(relay.app)
    agent = Agent(str(server.make_url("/")), KEY, tmp_path / "agent",
                  AgentConfig(mac_addr="02:00:00:00:00:78"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(relay.linked.wait(), 5)
    await relay.status(7, 1)
    assert (await relay.command(protocol.LIVE_START, camera_id=7, push_id="z"))["err_code"] == 0
    media = await relay.next_media()
    await media.frame()
    stop.set()
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(media.closed.wait(), 5)
    assert agent.pushes == {} and agent.sources == {}


def test_a_slow_relay_loses_whole_gops_never_frames_within_one():
    queue = FrameQueue(max_frames=4)

    def frame(pts: int, keyframe: bool = False) -> MediaFrame:
        return MediaFrame(b"\x00\x00\x00\x01" + bytes([0x65 if keyframe else 0x41]) + b"x" * 10,
                          keyframe, pts)

    assert not queue.offer(frame(0))  # a push starts at a keyframe
    assert queue.offer(frame(1, keyframe=True))
    assert all(queue.offer(frame(pts)) for pts in (2, 3, 4))
    assert not queue.offer(frame(5))  # full: this GOP's tail goes...
    assert queue.pop() is not None and queue.pop() is not None
    assert not queue.offer(frame(6))  # ...all of it, though there is room again
    assert queue.offer(frame(7, keyframe=True)) and queue.offer(frame(8))
    assert [queue.pop().pts for _ in range(len(queue))] == [3, 4, 7, 8]  # type: ignore[union-attr]
    for pts in (9, 10, 11, 12):
        queue.offer(frame(pts, keyframe=pts == 9))
    assert queue.offer(frame(13, keyframe=True))  # a keyframe that does not fit replaces the waiting
    assert [queue.pop().pts for _ in range(len(queue))] == [13]  # type: ignore[union-attr]
    assert queue.dropped == 7


async def test_mode_1_never_fetches_a_url_and_stays_inside_the_media_folders(
        start, videos, aiohttp_server, tmp_path: Path):
    """Once, ``stream_mp4=http://127.0.0.1:…/demo.mp4`` made the agent fetch it (SSRF)."""
    fetched: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        fetched.append(request.path)
        return web.FileResponse(videos["demo"])

    app = web.Application()
    app.router.add_get("/{name}", serve)
    web_server = await aiohttp_server(app)
    urls = [str(web_server.make_url("/demo.mp4")), f"concat:{videos['demo']}|{videos['demo']}",
            "file:" + str(videos["demo"]), "//127.0.0.1/demo.mp4", "demo.mp4"]
    cameras = [camera(videos["demo"], camera_id=20 + index, stream_mp4=url)
               for index, url in enumerate(urls)]
    relay, agent = await start(*cameras)
    for index in range(len(urls)):
        report = await relay.status(20 + index, 0)
        assert "not a URL" in report["err_msg"], report
    assert fetched == []
    # With media folders set, a file elsewhere is refused and one inside plays.
    inside = tmp_path / "media" / "lesson.mp4"
    inside.parent.mkdir()
    inside.write_bytes(videos["demo"].read_bytes())
    agent.config = AgentConfig(mac_addr="02:00:00:00:00:77", media_dirs=(inside.parent,))
    await relay.command(protocol.CAMERA_ADD, **camera(videos["demo"], camera_id=30))
    await relay.command(protocol.CAMERA_ADD, **camera(inside, camera_id=31))
    await relay.command(protocol.CAMERA_ADD, **camera(inside.parent / ".." / videos["demo"].name,
                                                      camera_id=32))
    assert "outside this gatherer's media folders" in (await relay.status(30, 0))["err_msg"]
    assert (await relay.status(31, 1))["status"] == 1
    assert "outside" in (await relay.status(32, 0))["err_msg"]


async def test_the_push_goes_where_live_start_names_not_beside_the_link(start: Start, videos,
                                                                       aiohttp_server):
    """``media_url`` names the node that owns the camera's live state (another port here); a URL
    the agent must not send its key to is a malformed command, and nothing connects anywhere."""
    relay, agent = await start(camera(videos["demo"]))
    await relay.status(7, 1)
    owner = FakeRelay(relay.state)
    owner_server = await aiohttp_server(owner.app)
    media_url = str(owner_server.make_url("/agent/media")).replace("http://", "ws://")
    reply = await relay.command(protocol.LIVE_START, camera_id=7, push_id="elsewhere",
                                media_url=media_url)
    assert reply["err_code"] == protocol.OK, reply
    media = await owner.next_media()
    assert (media.camera_id, media.push_id, media.authorization) == (7, "elsewhere",
                                                                     f"Bearer {KEY}")
    assert (await media.frame()).keyframe
    assert relay.media.empty()  # nothing beside the link
    for bad in ("http://127.0.0.1/agent/media", "ws://user:pw@127.0.0.1/agent/media",
                "ws://127.0.0.1/agent/media?push_id=x", "ws:///agent/media", "ws://a b/", 7,
                "ws://" + "a" * 2000):
        refused = await relay.command(protocol.LIVE_START, camera_id=7, push_id="bad",
                                      media_url=bad)
        assert refused["err_code"] == protocol.BAD_COMMAND, (bad, refused)
    await asyncio.sleep(0.3)
    assert relay.media.empty() and owner.media.empty()
    assert agent.pushes[7].push_id == "elsewhere"  # the refused starts replaced nothing


def test_media_url_of_a_node():
    assert protocol.media_url_of("http://10.0.0.5:8080") == "ws://10.0.0.5:8080/agent/media"
    assert protocol.media_url_of("https://node-2.example/") == "wss://node-2.example/agent/media"
