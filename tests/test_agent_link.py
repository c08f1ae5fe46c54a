"""Peers that misbehave on /agent: each is refused or closed with a logged reason, never served.

The relay's catalogue is a SQLite file; the tests where the link's registration and presence
reach the catalogue (``BOTH``) run on a fresh PostgreSQL database too. Those refused before any
catalogue call (bad keys, messages, floods, silence, admission) do not, for CI's time.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import (
    RelayProcess,
    eventually,
    fresh_postgres,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
    stop_relay,
)

from relay.link import protocol

#: A test whose link reaches the catalogue: on SQLite and on PostgreSQL.
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Relay:
    process: RelayProcess
    key: str

    @property
    def url(self) -> str:
        return self.process.base_url + "/agent"

    def log(self) -> str:
        return stop_relay(self.process)


@pytest.fixture
async def backend(request) -> AsyncIterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The relay's environment: RELAY_DATABASE_URL of a fresh PostgreSQL database for the
    postgresql run of a ``BOTH`` test, nothing (its SQLite file) otherwise."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield {}
        return
    async with fresh_postgres() as url:
        yield {"RELAY_DATABASE_URL": url}


@pytest.fixture
def relay(tmp_path: Path, backend: dict[str, str]) -> Iterator[Relay]:
    process = start_relay(tmp_path / "data", "--agent-heartbeat", "1", env=backend)
    try:
        key = run_relay("agent-key", "add", "lab", "--gatherers", "10", "--data",
                        str(tmp_path / "data"), env=backend).stdout.strip()
        # On PostgreSQL the relay really is there: no SQLite catalogue appears beside it.
        assert (tmp_path / "data" / "relay.sqlite3").exists() == (not backend)
        yield Relay(process, key)
    finally:
        stop_relay(process)


def hello(mac: str = "02:00:00:00:00:aa", **extra) -> dict:
    return {"type": "hello", "protocol": protocol.PROTOCOL, "version": "test", "mac_addr": mac,
            "ip_addr": "127.0.0.1", "name_pc": "probe", "os_name": "test", "devices": [], **extra}


async def connect(http: aiohttp.ClientSession, relay: Relay, key: str | None = None, **kwargs):
    return await http.ws_connect(relay.url, headers={"Authorization": f"Bearer {key or relay.key}"},
                                 **kwargs)


async def welcomed(http, relay: Relay, mac: str = "02:00:00:00:00:aa", **kwargs):
    ws = await connect(http, relay, **kwargs)
    await ws.send_json(hello(mac))
    message = await ws.receive_json(timeout=5)
    assert message["type"] == "welcome"
    return ws, message


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> int | None:
    message = await ws.receive(timeout=timeout)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR), message
    return message.data if message.type == aiohttp.WSMsgType.CLOSE else ws.close_code


async def test_unknown_and_missing_keys_are_refused_before_upgrade(relay: Relay, http):
    for headers in ({}, {"Authorization": "Bearer rk_" + "x" * 43},
                    {"Authorization": f"Basic {relay.key}"}, {"Authorization": "Bearer " + "y" * 999}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(relay.url, headers=headers)
        assert refused.value.status == 401
    log = relay.log()
    assert log.count("refused agent from 127.0.0.1") == 4
    assert "x" * 43 not in log and relay.key not in log


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("this is not json", "garbage before hello"),
        (json.dumps({"type": "status", "camera_id": 1, "status": 1}), "spoke before saying hello"),
        (json.dumps(hello(mac="not-a-mac")), "hello: bad mac_addr"),
        (json.dumps(hello(protocol=99)), "unsupported protocol"),
        (json.dumps(hello(devices=[{"device_ip": "1.2.3.4; rm -rf /"}])), "hello: bad device_ip"),
        (json.dumps(hello(name_pc="x" * 500)), "hello: bad name_pc"),
    ],
)
async def test_a_bad_first_message_closes_the_link(relay: Relay, http, first, reason):
    ws = await connect(http, relay)
    await ws.send_str(first)
    assert await closed_with(ws) == 4001
    assert reason in relay.log()


async def test_messages_nested_too_deep_or_with_huge_numbers_are_refused_cleanly(relay: Relay, http):
    """Once a RecursionError and an OverflowError that dropped the link with a traceback."""
    deep = json.dumps(hello())[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    ws = await connect(http, relay)
    await ws.send_str(deep)
    assert await closed_with(ws) == 4001
    for report in ({"type": "status", "camera_id": 2**70, "status": 1},
                   {"type": "status", "camera_id": True, "status": 1},
                   {"type": "status", "camera_id": 1, "status": True},
                   {"type": "status", "camera_id": 1, "status": 1, "err_msg": {"a": 1}}):
        ws, _ = await welcomed(http, relay)
        await ws.send_json(report)
        assert await closed_with(ws) == 4002, report
    for report in ({"type": "recording", "camera_id": 1, "recording": 2},
                   {"type": "recording", "camera_id": 1, "recording": 1, "spool_bytes": 2**70},
                   {"type": "recording", "camera_id": 1, "recording": 1, "spool_bytes": -1},
                   {"type": "recording", "camera_id": 1, "recording": 1, "upload_error": [1]},
                   {"type": "recording", "camera_id": 0, "recording": 1}):
        ws, _ = await welcomed(http, relay)
        await ws.send_json(report)
        assert await closed_with(ws) == 4002, report
    ws, _ = await welcomed(http, relay)
    await ws.send_str('{"type": "status", "camera_id": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert await closed_with(ws) == 4002
    log = relay.log()
    assert "Traceback" not in log and "Error" not in log, log[-3000:]
    assert log.count("malformed status report") == 4 and "nested too deep" in log
    assert log.count("malformed recording report") == 5


async def test_no_hello_in_time(relay: Relay, http):
    ws = await connect(http, relay)
    assert await closed_with(ws, timeout=15) == 4001
    assert "no hello in time" in relay.log()


async def test_garbage_after_hello_closes_the_link(relay: Relay, http):
    for junk in ("{not json", "[1, 2]", json.dumps({"type": "party"}),
                 json.dumps({"type": "status", "camera_id": "1", "status": 7})):
        ws, _ = await welcomed(http, relay)
        await ws.send_str(junk)
        assert await closed_with(ws) == 4002
        await ws.close()
    log = relay.log()
    for reason in ("garbage: not JSON", "not a JSON object", "unknown message type",
                   "malformed status report"):
        assert reason in log


async def test_binary_and_oversized_messages_close_the_link(relay: Relay, http):
    ws, _ = await welcomed(http, relay)
    await ws.send_bytes(b"\x00" * 10)
    assert await closed_with(ws) == 4002
    ws, _ = await welcomed(http, relay)
    await ws.send_str(json.dumps({"type": "status", "pad": "x" * (protocol.MAX_MESSAGE + 1)}))
    assert await closed_with(ws) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert "unexpected BINARY frame" in relay.log()


async def test_a_flood_is_cut_off(relay: Relay, http):
    ws, _ = await welcomed(http, relay)
    report = json.dumps({"type": "status", "camera_id": 999, "status": 0})
    for _ in range(int(protocol.BURST) + 500):
        if ws.closed:
            break
        await ws.send_str(report)
    assert await closed_with(ws, timeout=10) == 4002
    assert "flooding" in relay.log()


async def test_a_silent_link_is_dropped(relay: Relay, http):
    ws, _ = await welcomed(http, relay, autoping=False)
    started = asyncio.get_running_loop().time()
    while True:  # read (and ignore) the relay's pings without answering them
        message = await ws.receive(timeout=10)
        if message.type != aiohttp.WSMsgType.PING:
            break
    assert ws.closed or message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert asyncio.get_running_loop().time() - started < 5  # heartbeat 1 s here; 30 s by default


@BOTH
async def test_the_newer_of_two_links_with_one_mac_wins(relay: Relay, http):
    older, first = await welcomed(http, relay)
    newer, second = await welcomed(http, relay)
    assert first["gather_id"] == second["gather_id"]
    assert await closed_with(older) == 4000
    await newer.send_json({"type": "status", "camera_id": 1, "status": 0})
    with urllib.request.urlopen(relay.process.base_url + "/metrics", timeout=5) as response:
        assert "relay_agents_connected 1.0" in response.read().decode()
    assert not newer.closed
    await newer.close()
    assert "a newer connection from 127.0.0.1 replaces" in relay.log()


@BOTH
async def test_an_agent_cannot_report_another_gatherers_camera(relay: Relay, http, tmp_path):
    # Gatherer A gets a camera through registering an IP camera; B then claims it.
    ws = await connect(http, relay)
    await ws.send_json(hello("02:00:00:00:00:0a", devices=[
        {"camera_name": "门口", "device_ip": "10.0.0.9", "device_user": "admin",
         "device_pass": "YWRtaW4=", "device_cmd_port": 8000}]))
    state = (await ws.receive_json(timeout=5))["state"]
    [camera] = state["cameras"]
    assert camera["stream_prop"] == 0 and camera["device_ip"] == "10.0.0.9"
    b, _ = await welcomed(http, relay, mac="02:00:00:00:00:0b")
    await b.send_json({"type": "status", "camera_id": camera["camera_id"], "status": 1})
    await asyncio.sleep(0.5)
    await ws.close()
    await b.close()
    assert f"reported camera {camera['camera_id']}, which is not one of its cameras" in relay.log()


async def test_agents_beyond_what_the_relay_admits_are_told_when_to_come_back(tmp_path, http):
    """A reconnect storm: the relay lets in ``agent_admit`` at once and answers the others at once
    with 503 and a Retry-After, rather than keeping them waiting for a welcome they give up on."""
    process = start_relay(tmp_path / "data", "--agent-admit", "3")
    key = run_relay("agent-key", "add", "lab", "--gatherers", "10", "--data",
                    str(tmp_path / "data")).stdout.strip()
    relay = Relay(process, key)
    try:
        holding = [await connect(http, relay) for _ in range(3)]  # let in, no hello yet
        with pytest.raises(aiohttp.WSServerHandshakeError) as busy:
            await connect(http, relay)
        assert busy.value.status == 503
        assert 1 <= int(busy.value.headers["Retry-After"]) <= 30
        agent = start_agent(process.base_url, key, tmp_path / "agent")
        try:
            eventually(lambda: "the relay is busy; coming back in" in agent.log(), timeout=20)
            for ws in holding:  # their places free up: the agent gets in on its next try
                await ws.close()
            eventually(lambda: "connected to" in agent.log(), timeout=60)
        finally:
            stop_agent(agent)
        assert "Traceback" not in agent.log()
    finally:
        log = relay.log()
    assert "Traceback" not in log


@BOTH
async def test_agents_that_leave_before_their_welcome_cost_nothing_and_stay_offline(relay, http):
    """Once, welcomes were sent into sockets their agents had closed: a traceback each."""
    for _ in range(3):  # nine machines (the key may have ten), leaving three times over
        sockets = []
        for index in range(9):
            ws = await connect(http, relay)
            await ws.send_json(hello(f"02:00:00:00:00:{index:02x}"))
            sockets.append(ws)
        await asyncio.gather(*(ws.close() for ws in sockets))
    await asyncio.sleep(1)
    with urllib.request.urlopen(relay.process.base_url + "/metrics", timeout=5) as response:
        assert "relay_agents_connected 0.0" in response.read().decode()
    ws, _ = await welcomed(http, relay, mac="02:00:00:00:ff:01")  # the relay still serves
    await ws.close()
    log = relay.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
