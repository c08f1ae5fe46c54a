"""Bad input on the live endpoints, against a real relay process with a real agent pushing.

No browser: the test talks to ``/play/live/<id>/…`` and ``/agent/media`` the way a broken or hostile
client would, and checks that every refusal is a clear answer (400/403/404/409 JSON of the relay's
one error shape, ``{"err_code": <status>, "err_msg": "<why>"}``, or a closed socket) and that
nothing leaks: the viewer and push gauges at ``/metrics`` return to zero by the
ordinary stop rules (heartbeat timeout, close-after, the ICE deadline). The last test feeds the
camera's shared fMP4 muxer, in this process, pushes whose timestamps go back (an agent restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import av
import pytest
from aiortc import RTCPeerConnection
from conftest import eventually, free_port, run_relay
from live_system import (
    CLOSE_AFTER,
    ICE_DEADLINE,
    VIEWER_TIMEOUT,
    LiveSystem,
    api,
    call,
    heartbeats,
    no_tracebacks,
    open_session,
    settle,
    until,
)

from relay.agent.agent import Agent
from relay.agent.config import AgentConfig
from relay.agent.demo_video import make_demo_video
from relay.link import protocol
from relay.live.feed import LiveFeed
from relay.live.mse import MseFeed
from relay.media.pipelines import Passthrough
from relay.media.timeline import Clock90
from relay.tickets import issue_ticket


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    with LiveSystem.running(tmp_path_factory.mktemp("live-bad")) as live:
        yield live
        agent_log = live.agent_log()
    # Bad input is refused, never a bug: no internal error, no stray exception in the relay.
    no_tracebacks({"agent": agent_log,
                   **{f"relay run {n}": log for n, log in enumerate(live.relay_logs)}})
    internal = [line for log in live.relay_logs for line in log.splitlines()
                if "internal error" in line]
    assert not internal, internal


def refusal(body: dict | None, status: int) -> str:  # type: ignore[type-arg]
    """The reason of a refusal in the relay's one error shape (fails on any other shape)."""
    assert body is not None and body.get("err_code") == status, (status, body)
    assert isinstance(body.get("err_msg"), str) and body["err_msg"], body
    return body["err_msg"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


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
        refusal(answer, 400)
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
            assert refusal(body, 404) == "no such session", body
        async with http.get(f"{system.base}/play/live/{camera_id}/mse",
                            params={"session": session_id}) as response:
            assert response.status == 404
            assert refusal(await response.json(), 404) == "no such session"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{system.base}/play/live/{camera_id}/mse?session={session_id}")
        assert refused.value.status == 404
        # A goodbye for a session that is not there answers 204 and changes nothing.
        status, _, _ = await call(http, system, camera_id, "bye", session_id)
        assert status == 204
    for target in ("abc", "0", "-1", str(2**60)):
        status, _, body = await call(http, system, target, "heartbeat", session)  # type: ignore[arg-type]
        assert status == 404, target
        assert refusal(body, 404) == "no such camera", (target, body)
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
    created = int(good.split(".")[2])  # kind.id.created.expiry.signature
    camera = {"camera_id": camera_id, "created": created}
    signer = system.signer()
    tickets = {
        "missing": None,
        "empty": "",
        "garbage": "garbage",
        "forged": f"live.{camera_id}.{created}.{int(time.time()) + 600}.{'A' * 43}",
        "tampered": f"{fields}.{mac[:-2]}{'AB' if mac[-2:] != 'AB' else 'CD'}",
        "longer-lived than signed": f"live.{camera_id}.{created}.{int(time.time()) + 9999}.{mac}",
        "expired": issue_ticket(signer, time.time() - 3600, "live", camera, 600),
        "an older camera's, same id": issue_ticket(signer, time.time(), "live",
                                                   {**camera, "created": created - 1}, 600),
        "other camera": system.ticket(other),
        "a recording's": issue_ticket(signer, time.time(), "record",
                                      {"record_id": camera_id, "created": created}, 600),
        "huge": "x" * 5000,
    }
    for name, ticket in tickets.items():
        params = {} if ticket is None else {"ticket": ticket}
        async with http.post(f"{system.base}/play/live/{camera_id}/session", params=params) as response:
            assert (response.status, response.content_type) == (403, "application/json"), name
            reason = refusal(await response.json(), 403)
            if name == "expired":
                assert "expired" in reason
            if name == "other camera":
                assert "not for this camera" in reason
            if name == "an older camera's, same id":
                assert "no longer exists" in reason
    assert system.idle()
    await asyncio.sleep(1.5)  # a reconcile pass later, still nothing runs
    assert system.idle()


@contextlib.asynccontextmanager
async def own_agent(system: LiveSystem) -> AsyncIterator[tuple[Agent, str, int]]:
    """A second gatherer: the real agent code with a key of its own, run in this process so the
    test can read the push ids it is given (no log shows one), and one camera on it. Yields the
    agent, its key and the camera's id."""
    key = run_relay("agent-key", "add", "inside", "--data", str(system.relay.data)).stdout.strip()
    agent = Agent(system.base, key, system.tmp / "inside-agent",
                  AgentConfig(mac_addr="02:00:00:00:0b:0b", name_pc="inside"))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        def gatherer() -> int | None:
            rows = api(system.base, "list_gather", token=system.token)["data"]
            return next((row["gather_id"] for row in rows if row["name_pc"] == "inside"), None)

        gather_id = await until_value(gatherer)
        camera_id = api(system.base, "add_camera", token=system.token, camera_name="inside",
                        gather_id=gather_id, stream_prop=1,
                        stream_mp4=str(system.tmp / "cam.mp4"))["camera_id"]
        await until(lambda: api(system.base, "get_camera_status", token=system.token,
                                camera_id=camera_id)["status"] == 1, timeout=20)
        yield agent, key, camera_id
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)


async def until_value(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(eventually, check, timeout)


async def test_agent_media_refuses_bad_keys_pushes_and_frames(system: LiveSystem,
                                                              http: aiohttp.ClientSession):
    await settle(system)
    media = f"{system.base}/agent/media"
    async with own_agent(system) as (agent, key, camera_id):
        auth = {"Authorization": f"Bearer {key}"}
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {key}"}):
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

        session = await open_session(http, system, camera_id)
        # A text frame; a binary frame of a bare header (no access unit); one shorter than a header.
        frames = ("text", protocol.MEDIA_HEADER.pack(protocol.KEYFRAME, 0), b"\x01\x00\x00")
        used: set[str] = set()
        async with heartbeats(http, system, camera_id, session):
            for malformed in frames:
                push_id = await until_value(
                    lambda: (push := agent.pushes.get(camera_id)) is not None
                    and not push.ended and push.push_id not in used and push.push_id)
                used.add(push_id)
                # The other gatherer's key, with this very push id: refused.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{media}?camera_id={camera_id}&push_id={push_id}",
                                          headers={"Authorization": f"Bearer {system.key}"})
                assert refused.value.status == 403
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
                await until(lambda w=warnings: system.relay_log.text().count("malformed media frame")
                            > w)
                # That push is over; its id is refused from now on, and the relay starts a new one
                # for the viewer still watching.
                await until(lambda p=push_id: (push := agent.pushes.get(camera_id)) is not None
                            and push.push_id != p, timeout=20)
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{media}?camera_id={camera_id}&push_id={push_id}",
                                          headers=auth)
                assert refused.value.status == 409
                assert system.pushes() == 1
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # no such camera
                await http.ws_connect(f"{media}?camera_id=999999&push_id={push_id}", headers=auth)
            assert refused.value.status in (403, 409)
        await call(http, system, camera_id, "bye", session)
        await settle(system)
        api(system.base, "del_camera", token=system.token, camera_id=camera_id)


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
    assert (status, answer) == (404, {"err_code": 404, "err_msg": "no such session"})
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
    connection by its ICE deadline, and with it the session, although the session still beats.
    The deadline is the ``ice_deadline`` setting (8 s here), not the default 20 s."""
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
        await asyncio.wait_for(ended.wait(), 30)
    elapsed = time.monotonic() - offered
    assert elapsed > VIEWER_TIMEOUT + 1  # the heartbeats did keep it alive
    # By the setting's deadline (with room for a slow machine), well before the default 20 s.
    assert elapsed < ICE_DEADLINE + 8, elapsed
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
            assert "camera is offline" in refusal(body, 409) and body["state"] == "offline", body
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


async def test_the_mse_socket_sends_video_uncompressed(system: LiveSystem,
                                                      http: aiohttp.ClientSession):
    """fMP4 fragments are compressed video already: the MSE socket refuses permessage-deflate even
    when the client offers it (aiohttp's client does), so no send ever goes through a compressor
    (whose sends aiohttp runs as tasks of their own, which outlived a closed tab)."""
    await settle(system)
    camera_id = system.cameras[0]
    session = await open_session(http, system, camera_id)
    async with heartbeats(http, system, camera_id, session):
        ws = await http.ws_connect(f"{system.base}/play/live/{camera_id}/mse",
                                   params={"session": session}, compress=15)
        try:
            assert ws.compress == 0
            assert "Sec-WebSocket-Extensions" not in ws._response.headers  # type: ignore[union-attr]
            describe = await asyncio.wait_for(ws.receive(), 20)
            assert describe.type == aiohttp.WSMsgType.TEXT and "avc1." in describe.data, describe
            init = await asyncio.wait_for(ws.receive(), 20)
            assert init.type == aiohttp.WSMsgType.BINARY and init.data[4:8] == b"ftyp"
            fragment = await asyncio.wait_for(ws.receive(), 20)
            assert fragment.type == aiohttp.WSMsgType.BINARY and fragment.data[4:8] == b"moof"
        finally:
            await ws.close()
    await settle(system)


async def test_a_page_that_goes_during_the_mse_upgrade_is_no_error(system: LiveSystem,
                                                                    http: aiohttp.ClientSession):
    """A tab killed right after asking for the MSE socket: the relay finds the connection gone
    when it answers the upgrade. That once logged "Error handling request" with a traceback."""
    await settle(system)
    camera_id = system.cameras[0]
    host, port = system.base.removeprefix("http://").split(":")
    for _ in range(10):
        session = await open_session(http, system, camera_id)
        upgrade = (f"GET /play/live/{camera_id}/mse?session={session} HTTP/1.1\r\nHost: x\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(upgrade)  # and gone at once: the request and the close arrive together
        await call(http, system, camera_id, "bye", session)
    await settle(system)
    await asyncio.sleep(1)  # the relay's last lines reach its log
    assert "Error handling request" not in system.relay_log.text()


async def test_live_log_lines_name_viewers_and_pushes_by_number(system: LiveSystem,
                                                                http: aiohttp.ClientSession):
    """A session id lets its holder watch, a push id let an agent publish: the controller's lines
    say "viewer #12" and "push #3" instead, and no session id (nor a prefix of one) appears."""
    await settle(system)
    camera_id = system.cameras[1]
    sessions = [await open_session(http, system, camera_id) for _ in range(2)]
    await until(lambda: "first frame of push" in system.relay_log.text(), timeout=20)
    for session in sessions:
        await call(http, system, camera_id, "bye", session)
    await settle(system)
    lines = [line for line in system.relay_log.text().splitlines()
             if " relay.live.controller: " in line or " relay.live.webrtc: " in line
             or " relay.live.routes: " in line]
    viewers = [word for line in lines for word in re.findall(r"\bviewer (\S+)", line)]
    pushes = [word for line in lines for word in re.findall(r"\bpush ([^\s(]\S*)", line)]
    assert viewers and all(re.fullmatch(r"#\d+:?", word) for word in viewers), lines
    assert pushes and all(re.fullmatch(r"#\d+[,)]?", word) for word in pushes), lines
    for session in sessions:
        assert not [line for line in lines if session[:6] in line], session


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
