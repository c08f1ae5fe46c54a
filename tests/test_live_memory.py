"""A viewer that leaves leaves nothing behind in the relay, without waiting for the garbage collector.

A real relay and agent; viewers are clients speaking the live page's calls: WebRTC (aiortc peers
that connect over loopback ICE and receive video) and MSE (the fMP4 WebSocket), half of them saying
goodbye and half abandoned (the client just goes: the session ends by heartbeat timeout, or when
the socket closes). Once every session and push has ended, ``relay_live_objects`` (viewers, peer
connections, feed subscriptions: counted until freed) must be back to zero within a few reconcile
passes. ``relay serve`` freezes its startup heap out of the collector's full passes, so an object
left in a reference cycle can stay for hours: that is how a relay under viewer churn kept every
closed viewer's connection (with its OpenSSL and SRTP state) and grew by about 0.25 MB per viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from live_system import (
    LiveSystem,
    call,
    heartbeats,
    live_objects,
    no_tracebacks,
    open_session,
    settle,
    until,
)

VIEWERS = 8  # 4 WebRTC, 4 MSE; of each, half say goodbye


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    with LiveSystem.running(tmp_path_factory.mktemp("live-memory")) as live:
        yield live
        agent_log = live.agent_log()
    no_tracebacks({"agent": agent_log,
                   **{f"relay run {n}": log for n, log in enumerate(live.relay_logs)}})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def watch_webrtc(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int,
                       session: str) -> None:
    """Connect as the page does and take a few frames' worth of video."""
    client = RTCPeerConnection()
    try:
        client.addTransceiver("video", direction="recvonly")
        track_arrived: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        client.on("track", lambda track: track_arrived.done() or track_arrived.set_result(track))
        await client.setLocalDescription(await client.createOffer())
        status, _, answer = await call(http, system, camera_id, "webrtc", session,
                                       json={"sdp": client.localDescription.sdp})
        assert status == 200 and answer, answer
        await client.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        track = await asyncio.wait_for(track_arrived, 30)
        for _ in range(3):
            await asyncio.wait_for(track.recv(), 30)  # type: ignore[attr-defined]
    finally:
        await client.close()


async def watch_mse(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int,
                    session: str) -> None:
    """Open the fMP4 socket and take the codec message, the init segment and a fragment."""
    async with http.ws_connect(f"{system.base}/play/live/{camera_id}/mse",
                               params={"session": session}) as ws:
        for _ in range(3):
            message = await asyncio.wait_for(ws.receive(), 30)
            assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), message


async def test_viewers_that_leave_free_everything_they_held(system: LiveSystem,
                                                            http: aiohttp.ClientSession):
    await settle(system)
    assert live_objects(system.base) == {"viewer": 0, "peer_connection": 0, "subscription": 0}
    camera_id = system.cameras[0]
    for number in range(VIEWERS):
        session = await open_session(http, system, camera_id)
        watch = watch_webrtc if number % 2 == 0 else watch_mse
        async with heartbeats(http, system, camera_id, session):
            await watch(http, system, camera_id, session)
        if number % 4 < 2:  # goodbye; the others are abandoned
            status, _, _ = await call(http, system, camera_id, "bye", session)
            assert status == 204
    held = live_objects(system.base)
    assert held["viewer"] <= VIEWERS, held
    await settle(system)  # every session ended (abandoned ones by timeout), then the push
    with contextlib.suppress(AssertionError):  # the camera's feed goes at the next reconcile pass
        await until(lambda: not any(live_objects(system.base).values()), timeout=20)
    assert live_objects(system.base) == {"viewer": 0, "peer_connection": 0, "subscription": 0}, (
        f"while {VIEWERS} viewers came and went the relay held {held}")
