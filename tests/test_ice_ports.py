"""``ice_ports``: the relay's WebRTC UDP sockets stay inside one port range, the range a container
publishes (docs/DOCKER.md). A real relay and agent, real viewers (aiortc clients and Chromium's
player page); the ports are read from the SDP answers, from the viewers' nominated pairs and from
the relay process's own sockets (/proc), never taken on trust."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from conftest import start_relay
from live_system import (
    RELAY_ARGS,
    Drain,
    LiveSystem,
    call,
    close_tab,
    embed,
    heartbeats,
    no_tracebacks,
    open_session,
    settle,
)
from playwright.async_api import Browser

from relay.config import ConfigError, load_settings
from relay.live.webrtc import _bind_in

SPAN = 6


def free_udp_range(span: int) -> range:
    """``span`` consecutive UDP ports free on 127.0.0.1 right now."""
    for _ in range(200):
        first = random.randrange(20_000, 30_000)
        ports = range(first, first + span)
        with contextlib.ExitStack() as stack:
            try:
                for port in ports:
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return ports
    raise RuntimeError("no free UDP port range")


PORTS = free_udp_range(SPAN)


class PortedSystem(LiveSystem):
    """The live test system with ``--ice-ports`` on the relay."""

    def start_relay(self) -> None:
        self.relay = start_relay(self.tmp / "data", *RELAY_ARGS, "--ice-ports",
                                 f"{PORTS[0]}-{PORTS[-1]}", port=self.port)
        self.relay_log = Drain(self.relay.process.stderr)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    with PortedSystem.running(tmp_path_factory.mktemp("ice-ports")) as live:
        yield live
        agent_log = live.agent_log()
    logs = {f"relay run {n}": log for n, log in enumerate(live.relay_logs)}
    no_tracebacks({"agent": agent_log, **logs})
    assert f"WebRTC host candidates bind UDP ports {PORTS[0]}-{PORTS[-1]}" in logs["relay run 0"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def udp_ports(pid: int) -> set[int]:
    """The local ports of the UDP sockets process ``pid`` holds (its fds matched to /proc/net)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as file:
            for line in file.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def answer_ports(sdp: str) -> list[int]:
    return [int(port) for port in re.findall(r"^a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host",
                                             sdp, re.M)]


async def webrtc_viewer(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int,
                        stack: contextlib.AsyncExitStack) -> tuple[list[int], int]:
    """Connect as the page does, take frames, stay connected (until ``stack`` closes); return the
    relay's candidate ports in the answer and the relay port of the pair ICE nominated."""
    session = await open_session(http, system, camera_id)
    await stack.enter_async_context(heartbeats(http, system, camera_id, session))
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only
    stack.push_async_callback(client.close)
    transceiver = client.addTransceiver("video", direction="recvonly")
    arrived: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    client.on("track", lambda track: arrived.done() or arrived.set_result(track))
    await client.setLocalDescription(await client.createOffer())
    status, _, answer = await call(http, system, camera_id, "webrtc", session,
                                   json={"sdp": client.localDescription.sdp})
    assert status == 200 and answer, answer
    await client.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    track = await asyncio.wait_for(arrived, 30)
    for _ in range(3):
        await asyncio.wait_for(track.recv(), 30)  # type: ignore[attr-defined]
    ice = transceiver.receiver.transport.transport._connection  # aioice's Connection
    [pair] = ice._nominated.values()
    return answer_ports(answer["sdp"]), pair.remote_candidate.port


async def test_webrtc_viewers_reach_the_relay_on_ports_of_the_range(
        system: LiveSystem, http: aiohttp.ClientSession):
    await settle(system)
    async with contextlib.AsyncExitStack() as stack:
        seen = [await webrtc_viewer(http, system, system.cameras[n % 2], stack) for n in range(3)]
        held = udp_ports(system.relay.process.pid)
    offered = [port for ports, _ in seen for port in ports]
    assert len(offered) == 3 and all(port in PORTS for port in offered), (offered, PORTS)
    assert len(set(offered)) == 3  # one port per viewer
    assert [nominated for _, nominated in seen] == offered
    assert set(offered) <= held and held <= set(PORTS), (held, PORTS)
    await settle(system)


async def test_chromium_plays_webrtc_through_the_range(system: LiveSystem, browser: Browser):
    await settle(system)
    page = await embed(browser, system.play_url(system.cameras[0]))
    deadline = time.monotonic() + 30
    state: dict[str, object] = {}
    while time.monotonic() < deadline and not state.get("frames"):
        frame = next((f for f in page.frames if "/play/live/" in f.url), None)
        if frame is not None:
            state = await frame.evaluate("""() => {
                const v = document.getElementById('video');
                return {frames: v.getVideoPlaybackQuality().totalVideoFrames,
                        mode: v.dataset.mode || ''};
            }""")
        await asyncio.sleep(0.2)
    assert state.get("frames") and state["mode"] == "webrtc", state  # not the MSE fallback
    held = udp_ports(system.relay.process.pid)
    assert held and held <= set(PORTS), (held, PORTS)
    await close_tab(page)
    await settle(system)


async def test_a_viewer_past_a_full_range_is_answered_without_candidates(
        system: LiveSystem, http: aiohttp.ClientSession):
    """Every port taken (here by the test): the answer has no host candidate, so the page's WebRTC
    cannot connect and it falls back to MSE, as docs/DOCKER.md says; the relay logs why."""
    await settle(system)
    camera_id = system.cameras[0]
    with contextlib.ExitStack() as stack:
        for port in PORTS:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind(("127.0.0.1", port))
        session = await open_session(http, system, camera_id)
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            client.addTransceiver("video", direction="recvonly")
            await client.setLocalDescription(await client.createOffer())
            status, _, answer = await call(http, system, camera_id, "webrtc", session,
                                           json={"sdp": client.localDescription.sdp})
        finally:
            await client.close()
    assert status == 200 and answer and answer_ports(answer["sdp"]) == [], answer
    why = f"every port of ice_ports {PORTS[0]}-{PORTS[-1]} is in use"
    for _ in range(50):  # the log comes through a pipe and a reading thread: it may lag the answer
        if why in system.relay_log.text():
            break
        await asyncio.sleep(0.1)
    assert why in system.relay_log.text()
    assert (await call(http, system, camera_id, "bye", session))[0] == 204
    await settle(system)


def test_a_full_range_refuses_and_a_freed_port_is_used_again():
    ports = free_udp_range(3)
    with contextlib.ExitStack() as stack:
        taken = [stack.enter_context(_bind_in(ports, "127.0.0.1")) for _ in ports]
        assert sorted(sock.getsockname()[1] for sock in taken) == list(ports)
        with pytest.raises(OSError, match="in use"):
            _bind_in(ports, "127.0.0.1")
        freed = taken.pop(1)
        port = freed.getsockname()[1]
        freed.close()
        with _bind_in(ports, "127.0.0.1") as again:
            assert again.getsockname()[1] == port


@pytest.mark.parametrize("value", ["40099-40000", "0-10", "40000-70000", "forty", "1-2-3"])
def test_a_bad_range_is_refused_by_name(value: str):
    with pytest.raises(ConfigError, match="ice_ports"):
        load_settings({"ice_ports": value}, environ={})


def test_a_range_and_a_single_port_are_read(tmp_path: Path):
    assert load_settings({"ice_ports": "40000-40099", "data": str(tmp_path)},
                         environ={}).ice_port_range == range(40000, 40100)
    assert load_settings({"ice_ports": "40000", "data": str(tmp_path)},
                         environ={}).ice_port_range == range(40000, 40001)
