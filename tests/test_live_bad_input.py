"""Bad input on the live endpoints, against a real relay process with a real agent pushing.

No browser: the test talks to ``/play/live/<id>/…`` and ``/agent/media`` the way a broken or hostile
client would, and checks that every refusal is a clear answer (400/403/404/409 JSON, or a closed
socket) and that nothing leaks: the viewer and push gauges at ``/metrics`` return to zero by the
ordinary stop rules (heartbeat timeout, close-after, the ICE deadline). The last test feeds the
camera's shared fMP4 muxer, in this process, pushes whose timestamps go back (an agent restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import av
import pytest
from aiortc import RTCPeerConnection
from conftest import eventually, free_port
from live_system import CLOSE_AFTER, VIEWER_TIMEOUT, LiveSystem, api

from relay.agent.demo_video import make_demo_video
from relay.agent.push import Clock90, Passthrough
from relay.link import protocol
from relay.live.feed import LiveFeed
from relay.live.mse import MseFeed
from relay.live.webrtc import ICE_DEADLINE
from relay.tickets import issue_ticket

#: How long a session nobody heartbeats (then its push) takes to go, with some slack for a busy box.
VIEWER_GONE = VIEWER_TIMEOUT + 3
PUSH_GONE = VIEWER_TIMEOUT + CLOSE_AFTER + 4


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    with LiveSystem.running(tmp_path_factory.mktemp("live-bad")) as live:
        yield live
        assert "Traceback" not in live.agent_log(), live.agent_log()[-4000:]
    log = "".join(live.relay_logs)
    # Bad input is refused, never a bug: no internal error, no stray exception in the relay.
    assert "Traceback" not in log and "internal error" not in log, log[-6000:]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def open_session(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int) -> str:
    async with http.post(f"{system.base}/play/live/{camera_id}/session",
                         params={"ticket": system.ticket(camera_id)}) as response:
        body = await response.json()
        assert response.status == 200, body
    return body["session"]


async def call(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int, what: str,
               session: str, **kwargs) -> tuple[int, str, dict | None]:  # type: ignore[no-untyped-def, type-arg]
    """POST to a live endpoint: status, content type and the JSON body (None when not JSON)."""
    async with http.post(f"{system.base}/play/live/{camera_id}/{what}", params={"session": session},
                         **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, response.content_type, body


@contextlib.asynccontextmanager
async def heartbeats(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int, session: str,
                     ended: asyncio.Event | None = None) -> AsyncIterator[None]:
    """Keep a session alive as the page does (every second) while the block runs; ``ended`` is set
    when the relay answers 404 (the session is gone)."""

    async def beat() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, _, _ = await call(http, system, camera_id, "heartbeat", session)
                if status == 404 and ended is not None:
                    ended.set()
                    return
            await asyncio.sleep(1)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """``eventually`` that leaves the event loop running (heartbeats must go on meanwhile)."""
    await asyncio.to_thread(eventually, check, timeout)


async def settle(system: LiveSystem) -> None:
    """No viewer left, then no push: what every test ends with (and starts from)."""
    await until(lambda: system.viewers() == 0, timeout=VIEWER_GONE)
    await until(lambda: system.pushes() == 0, timeout=PUSH_GONE)


GARBAGE_OFFERS = {
    "not SDP": {"json": {"sdp": "hello"}},
    "SDP-looking junk": {"json": {"sdp": "v=0\r\nm=video\r\n"}},
    "a media line without formats": {"json": {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n"
                                                     "t=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF\r\n"}},
    "an offer without ICE": {"json": {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
                                             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
                                             "a=rtpmap:96 H264/90000\r\na=recvonly\r\na=mid:0\r\n"}},
    "binary junk in SDP": {"json": {"sdp": "v=0\r\nm=video \x00\xff 96\r\n"}},
    "sdp is a number": {"json": {"sdp": 5}},
    "sdp is null": {"json": {"sdp": None}},
    "missing sdp": {"json": {"type": "offer"}},
    "a JSON list": {"json": ["v=0"]},
    "not JSON": {"data": b"v=0\r\nm=video 9 RTP 96\r\n", "headers": {"Content-Type": "text/plain"}},
    "not UTF-8": {"data": b"\xff\xfe{\x00", "headers": {"Content-Type": "application/json"}},
    "empty body": {"data": b""},
    "huge SDP (over the SDP limit)": {"json": {"sdp": "v=0\r\nm=video 9 RTP 96\r\n" + "a=x\r\n" * 12_000}},
    "huge body (over the request limit)": {"data": b'{"sdp": "' + b"v" * (2 << 20) + b'"}',
                                           "headers": {"Content-Type": "application/json"}},
}


async def test_bad_offers_are_400_json_and_leak_nothing(system: LiveSystem, http: aiohttp.ClientSession):
    await settle(system)
    camera_id = system.cameras[0]
    session = await open_session(http, system, camera_id)
    assert system.viewers() == 1
    await until(lambda: system.pushes() == 1)
    for name, body in GARBAGE_OFFERS.items():
        status, kind, answer = await call(http, system, camera_id, "webrtc", session, **body)
        assert (status, kind) == (400, "application/json"), (name, status, kind)
        assert answer and isinstance(answer.get("error"), str) and answer["error"], (name, answer)
    # The session survives bad offers (the page may try again) but holds nothing once it is let go.
    status, _, beat = await call(http, system, camera_id, "heartbeat", session)
    assert status == 200 and beat and beat["ticket"], beat
    await settle(system)


async def test_unknown_and_foreign_sessions_are_404(system: LiveSystem, http: aiohttp.ClientSession):
    await settle(system)
    mine, other = system.cameras
    session = await open_session(http, system, mine)
    for camera_id, session_id in ((mine, "no-such-session"), (mine, ""), (other, session)):
        for what, extra in (("webrtc", {"json": {"sdp": "v=0"}}), ("heartbeat", {})):
            status, kind, body = await call(http, system, camera_id, what, session_id, **extra)
            assert (status, kind) == (404, "application/json"), (camera_id, session_id, what, status)
            assert body, body
        async with http.get(f"{system.base}/play/live/{camera_id}/mse",
                            params={"session": session_id}) as response:
            assert response.status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{system.base}/play/live/{camera_id}/mse?session={session_id}")
        assert refused.value.status == 404
        # A goodbye for a session that is not there answers 204 and changes nothing.
        status, _, _ = await call(http, system, camera_id, "bye", session_id)
        assert status == 204
    for target in ("abc", "0", "-1", str(2**60)):
        status, _, _ = await call(http, system, target, "heartbeat", session)  # type: ignore[arg-type]
        assert status == 404, target
    # Our own session is untouched by all of that.
    assert system.viewers() == 1
    status, _, beat = await call(http, system, mine, "heartbeat", session)
    assert status == 200, beat
    status, _, _ = await call(http, system, mine, "bye", session)
    assert status == 204
    assert system.viewers() == 0
    status, _, _ = await call(http, system, mine, "heartbeat", session)
    assert status == 404
    await until(lambda: system.pushes() == 0, timeout=CLOSE_AFTER + 4)


async def test_bad_tickets_are_403_json(system: LiveSystem, http: aiohttp.ClientSession):
    await settle(system)
    camera_id, other = system.cameras
    good = system.ticket(camera_id)
    fields, _, mac = good.rpartition(".")
    signer = system.signer()
    tickets = {
        "missing": None,
        "empty": "",
        "garbage": "garbage",
        "forged": f"live.{camera_id}.{int(time.time()) + 600}.{'A' * 43}",
        "tampered": f"{fields}.{mac[:-2]}{'AB' if mac[-2:] != 'AB' else 'CD'}",
        "longer-lived than signed": f"live.{camera_id}.{int(time.time()) + 9999}.{mac}",
        "expired": issue_ticket(signer, time.time() - 3600, "live", camera_id, 600),
        "other camera": system.ticket(other),
        "a recording's": issue_ticket(signer, time.time(), "record", camera_id, 600),
        "huge": "x" * 5000,
    }
    for name, ticket in tickets.items():
        params = {} if ticket is None else {"ticket": ticket}
        async with http.post(f"{system.base}/play/live/{camera_id}/session", params=params) as response:
            assert (response.status, response.content_type) == (403, "application/json"), name
            body = await response.json()
            assert isinstance(body.get("error"), str) and body["error"], (name, body)
            if name == "expired":
                assert "expired" in body["error"]
            if name == "other camera":
                assert "not for this camera" in body["error"]
    assert system.idle()
    await asyncio.sleep(1.5)  # a reconcile pass later, still nothing runs
    assert system.idle()


async def test_agent_media_refuses_bad_keys_pushes_and_frames(system: LiveSystem,
                                                              http: aiohttp.ClientSession):
    await settle(system)
    camera_id = system.cameras[0]
    media = f"{system.base}/agent/media"
    auth = {"Authorization": f"Bearer {system.key}"}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {system.key}"}):
        async with http.get(media, params={"camera_id": camera_id, "push_id": "x"},
                            headers=headers) as response:
            assert response.status == 401, headers
    for params in ({}, {"camera_id": camera_id}, {"camera_id": "abc", "push_id": "x"},
                   {"camera_id": camera_id, "push_id": "x" * 65}):
        async with http.get(media, params=params, headers=auth) as response:
            assert response.status == 400, params
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # nobody watches: no push
        await http.ws_connect(f"{media}?camera_id={camera_id}&push_id=made-up", headers=auth)
    assert refused.value.status == 409

    known = len(system.pushes_started(camera_id))
    session = await open_session(http, system, camera_id)
    # A text frame; a binary frame of a bare header (no access unit); one shorter than a header.
    frames = ("text", protocol.MEDIA_HEADER.pack(protocol.KEYFRAME, 0), b"\x01\x00\x00")
    async with heartbeats(http, system, camera_id, session):
        for malformed in frames:
            await until(lambda k=known: len(system.pushes_started(camera_id)) > k, timeout=20)
            known = len(system.pushes_started(camera_id))
            push_id = system.pushes_started(camera_id)[-1]
            warnings = system.relay_log.text().count("malformed media frame")
            ws = await http.ws_connect(f"{media}?camera_id={camera_id}&push_id={push_id}",
                                       headers=auth)
            if isinstance(malformed, str):
                await ws.send_str(malformed)
            else:
                await ws.send_bytes(malformed)
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
            await ws.close()
            assert ws.close_code == 4002, ws.close_code
            await until(lambda w=warnings: system.relay_log.text().count("malformed media frame") > w)
            # That push is over; its id is refused from now on, and the relay starts a new one for
            # the viewer still watching.
            await until(lambda p=push_id: system.pushes_started(camera_id)[-1] != p, timeout=20)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{media}?camera_id={camera_id}&push_id={push_id}",
                                      headers=auth)
            assert refused.value.status == 409
            assert system.pushes() == 1
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # no such camera
            await http.ws_connect(f"{media}?camera_id=999999&push_id={push_id}", headers=auth)
        assert refused.value.status == 409
    await settle(system)
    assert "Traceback" not in system.agent_log()


async def test_an_offer_whose_session_ends_on_the_way_is_404(system: LiveSystem,
                                                             http: aiohttp.ClientSession):
    """The session says goodbye while its offer is still arriving: no connection is made for a
    session that no longer exists."""
    await settle(system)
    camera_id = system.cameras[0]
    session = await open_session(http, system, camera_id)
    client = RTCPeerConnection()
    try:
        client.addTransceiver("video", direction="recvonly")
        await client.setLocalDescription(await client.createOffer())
        offer = json.dumps({"sdp": client.localDescription.sdp}).encode()
    finally:
        await client.close()
    halfway, gone = asyncio.Event(), asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield offer[:100]
        halfway.set()
        await gone.wait()
        yield offer[100:]

    sending = asyncio.create_task(call(http, system, camera_id, "webrtc", session, data=slowly(),
                                       headers={"Content-Type": "application/json"}))
    await asyncio.wait_for(halfway.wait(), 10)
    await asyncio.sleep(0.3)  # the relay has the request and waits for the rest of the offer
    status, _, _ = await call(http, system, camera_id, "bye", session)
    assert status == 204 and system.viewers() == 0
    gone.set()
    status, _, answer = await asyncio.wait_for(sending, 20)
    assert (status, answer) == (404, {"error": "no such session"})
    await until(lambda: system.pushes() == 0, timeout=CLOSE_AFTER + 4)


def unreachable(sdp: str) -> str:
    """The offer with its candidates replaced by one at a closed local port (ICE can never
    complete), the way a client behind a dead network path looks to the relay."""
    port = free_port()
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate:",
                                                                          "a=end-of-candidates"))]
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("m="):
            out += [f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
                    "a=end-of-candidates"]
    return "\r\n".join(out) + "\r\n"


async def test_an_offer_that_never_connects_ends_its_session(system: LiveSystem,
                                                              http: aiohttp.ClientSession):
    """A real aiortc offer (recvonly video) whose ICE never completes: the relay drops the
    connection by its ICE deadline, and with it the session, although the session still beats."""
    await settle(system)
    camera_id = system.cameras[1]
    session = await open_session(http, system, camera_id)
    ended = asyncio.Event()
    async with heartbeats(http, system, camera_id, session, ended):
        client = RTCPeerConnection()
        try:
            client.addTransceiver("video", direction="recvonly")
            await client.setLocalDescription(await client.createOffer())
            status, _, answer = await call(http, system, camera_id, "webrtc", session,
                                           json={"sdp": unreachable(client.localDescription.sdp)})
            assert status == 200 and answer and answer["sdp"].startswith("v=0"), answer
        finally:
            await client.close()  # never takes the answer: no ICE from this side either
        offered = time.monotonic()
        assert system.viewers() == 1 and system.pushes() == 1
        await asyncio.wait_for(ended.wait(), ICE_DEADLINE + 10)
    assert time.monotonic() - offered > VIEWER_TIMEOUT + 1  # the heartbeats did keep it alive
    assert system.viewers() == 0
    await until(lambda: system.pushes() == 0, timeout=CLOSE_AFTER + 4)
    assert "ICE did not complete" in system.relay_log.text() or "connection failed" in \
        system.relay_log.text()


async def test_an_offline_camera_refuses_sessions_with_409(system: LiveSystem,
                                                           http: aiohttp.ClientSession):
    await settle(system)
    camera_id = system.cameras[1]
    answer = api(system.base, "stop_camera", token=system.token, camera_id=camera_id)
    assert answer["transmit"]["err_code"] == 0, answer
    try:
        await until(lambda: api(system.base, "get_camera_status", token=system.token,
                               camera_id=camera_id)["status"] == 0)
        ticket = system.ticket(camera_id)
        started = len(system.pushes_started(camera_id))
        for _ in range(3):
            async with http.post(f"{system.base}/play/live/{camera_id}/session",
                                 params={"ticket": ticket}) as response:
                assert (response.status, response.content_type) == (409, "application/json")
                body = await response.json()
            assert "camera is offline" in body["error"] and body["state"] == "offline", body
        deadline = time.monotonic() + 2.5  # more than two reconcile passes: still no push
        while time.monotonic() < deadline:
            assert system.idle()
            await asyncio.sleep(0.2)
        assert len(system.pushes_started(camera_id)) == started
    finally:
        api(system.base, "start_camera", token=system.token, camera_id=camera_id)
        await until(lambda: api(system.base, "get_camera_status", token=system.token,
                               camera_id=camera_id)["status"] == 1, timeout=20)
    # Back online: the same ticket opens a session again.
    session = await open_session(http, system, camera_id)
    assert system.viewers() == 1
    await call(http, system, camera_id, "bye", session)
    await settle(system)


def base_decode_time(fragment: bytes) -> int:
    """The ``tfdt`` decode time of an fMP4 fragment (moof + mdat)."""
    at = fragment.index(b"tfdt")
    version = fragment[at + 4]
    size = 8 if version == 1 else 4
    return int.from_bytes(fragment[at + 8:at + 8 + size], "big")


async def test_pts_that_go_back_keep_the_mse_stream_going(tmp_path):  # type: ignore[no-untyped-def]
    """A push that starts again from an earlier time (an agent restarted: its clock is back at
    zero) must not break the camera's shared fMP4 muxer: MSE viewers keep receiving fragments,
    on a timeline that only goes forward."""
    with av.open(str(make_demo_video(tmp_path / "v.mp4", seconds=2))) as container:
        stream = container.streams.video[0]
        passthrough = Passthrough(stream, Clock90())
        frames = [frame for packet in container.demux(stream) if packet.size
                  for frame in passthrough.feed(packet, True)]
    feed = LiveFeed(lambda: None)
    mse = MseFeed(feed)
    viewer = mse.subscribe()
    await asyncio.sleep(0)
    for _push in range(3):  # the same frames, pts and all, three times: three pushes from zero
        feed.reset()
        for frame in frames:
            feed.publish(frame.data, frame.pts, frame.keyframe)
            await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    assert not mse._task.done(), mse._task
    items = []
    with contextlib.suppress(TimeoutError):
        while True:
            items.append(await asyncio.wait_for(viewer.get(), 0.5))
    fragments = [item for item in items if item[4:8] == b"moof"]
    assert len(fragments) == 3 * len(frames) - 1  # all but the last frame's (it waits for its end)
    times = [base_decode_time(fragment) for fragment in fragments]
    assert all(later > earlier for earlier, later in itertools.pairwise(times)), times
    await mse.close()
    feed.close()
