"""Agent keys own their gatherers: what another site's key can no longer do, against a real relay.

The agents here are this test speaking the agent protocol over real sockets (so it can try what a
hostile agent would); the relay is a real ``relay serve`` process with its real catalogue, on a
SQLite file and on a fresh PostgreSQL database (``relay agent-key`` commands run beside it on the
same catalogue, as an operator's would).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from conftest import RelayProcess, postgres_database, run_relay, start_relay, stop_relay

from relay.link import protocol

FAST = ("--agent-key-recheck", "1", "--command-timeout", "5")


@dataclass
class Site:
    relay: RelayProcess
    token: str
    env: dict[str, str] | None = None  # RELAY_DATABASE_URL on PostgreSQL

    @property
    def data(self) -> str:
        return str(self.relay.data)

    async def cli(self, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        """A ``relay`` command on this site's data dir, off the loop (the test's agents must
        keep answering the relay's pings meanwhile)."""
        return await asyncio.to_thread(run_relay, *args, "--data", self.data, env=self.env,
                                       check=check)

    async def key(self, name: str) -> str:
        return (await self.cli("agent-key", "add", name)).stdout.strip()

    async def api(self, name: str, **params: Any) -> dict[str, Any]:
        """One API call, without blocking the loop the test's agents answer on."""
        query = urlencode({"token": self.token, **params})
        async with aiohttp.ClientSession() as http, \
                http.get(f"{self.relay.base_url}/api/v1/{name}?{query}") as answer:
            return await answer.json()

    def log(self) -> str:
        return stop_relay(self.relay)


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request, tmp_path: Path) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        env = None
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database())
            env = {"RELAY_DATABASE_URL": url}
        relay = start_relay(tmp_path / "data", *FAST, env=env)
        stack.callback(stop_relay, relay)
        with urllib.request.urlopen(
                f"{relay.base_url}/api/v1/access_token?unionid={relay.credential}") as answer:
            token = json.load(answer)["token"]
        yield Site(relay, token, env)


def hello(mac: str, name: str = "pc") -> dict[str, Any]:
    return {"type": "hello", "protocol": protocol.PROTOCOL, "version": "test", "mac_addr": mac,
            "ip_addr": "127.0.0.1", "name_pc": name, "os_name": "test", "devices": []}


async def link(http: aiohttp.ClientSession, site: Site, key: str, mac: str):  # type: ignore[no-untyped-def]
    """Say hello; the open socket and the relay's first answer (a welcome, or the close)."""
    ws = await http.ws_connect(site.relay.base_url + "/agent",
                               headers={"Authorization": f"Bearer {key}"})
    await ws.send_json(hello(mac))
    return ws, await ws.receive(timeout=10)


async def welcomed(http: aiohttp.ClientSession, site: Site, key: str, mac: str):  # type: ignore[no-untyped-def]
    ws, first = await link(http, site, key, mac)
    assert first.type == aiohttp.WSMsgType.TEXT, (first, ws.close_code)
    return ws, json.loads(first.data)


async def refused(http: aiohttp.ClientSession, site: Site, key: str, mac: str) -> str:
    _ws, first = await link(http, site, key, mac)
    assert first.type == aiohttp.WSMsgType.CLOSE, first
    assert first.data == protocol.REFUSED_GATHERER
    return first.extra


async def ended(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the relay ends the link; its close code."""
    try:
        while (await ws.receive(timeout=20)).type not in (
                aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            pass
    except aiohttp.ClientConnectionResetError:
        return None  # the relay closed it while this side answered a ping
    return ws.close_code


async def answer_commands(ws: aiohttp.ClientWebSocketResponse, seen: list[dict[str, Any]]) -> None:
    """Be a well-behaved agent: answer every command OK, and keep what came."""
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            return
        body = json.loads(message.data)
        if body.get("type") == "command":
            seen.append(body)
            if body["action"] != protocol.LIVE_START:  # the test answers live.start itself
                await ws.send_json({"type": "reply", "id": body["id"], "err_code": 0,
                                    "err_msg": "OK"})


async def test_another_keys_hello_for_a_gatherer_is_refused_and_the_owner_keeps_its_link(
        site: Site, http: aiohttp.ClientSession):
    school, intruder = await site.key("school"), await site.key("intruder")
    owner, welcome = await welcomed(http, site, school, "02:00:00:00:aa:01")
    gather_id = welcome["gather_id"]
    commands: list[dict[str, Any]] = []
    answering = asyncio.create_task(answer_commands(owner, commands))
    camera = await site.api("add_camera", camera_name="gate", gather_id=gather_id, stream_prop=2,
                      stream_url="rtsp://admin:s3cret@10.0.0.9/stream")
    assert camera["err_code"] == 0 and camera["transmit"]["err_code"] == 0
    # Any spelling of the MAC is the same machine, and it is not the intruder's.
    for spelling in ("02:00:00:00:aa:01", "02000000AA01", "02:00:0000aa01", "02-00-00-00-AA-01"):
        reason = await refused(http, site, intruder, spelling)
        assert f"gatherer {gather_id}" in reason and "another agent key" in reason
    await asyncio.sleep(0.5)
    assert not owner.closed  # the real agent was never pushed off
    [gatherer] = (await site.api("list_gather"))["data"]
    assert gatherer["gather_id"] == gather_id and gatherer["status"] == 1
    answering.cancel()
    await owner.close()
    log = site.log()
    assert log.count("refused agent pc (02:00:00:00:aa:01)") == 4
    assert "(key 'intruder')" in log and intruder not in log and "s3cret" not in log
    assert "replaces the one from" not in log


async def test_one_key_registers_as_many_gatherers_as_it_may(site: Site, http):
    key = await site.key("school")
    first, welcome = await welcomed(http, site, key, "02:00:00:00:aa:01")
    again, same = await welcomed(http, site, key, "02000000AA01")  # the same machine, relinked
    assert same["gather_id"] == welcome["gather_id"]
    reason = await refused(http, site, key, "02:00:00:00:aa:02")
    assert "may register 1 gatherer(s)" in reason
    assert len((await site.api("list_gather"))["data"]) == 1
    await site.cli("agent-key", "limit", "school", "2")
    second, other = await welcomed(http, site, key, "02:00:00:00:aa:02")
    assert other["gather_id"] != welcome["gather_id"]
    await refused(http, site, key, "02:00:00:00:aa:03")
    listing = (await site.cli("agent-key", "list")).stdout
    assert f"school\tactive\tgatherers 2/2: {welcome['gather_id']},{other['gather_id']}" in listing
    for ws in (first, again, second):
        await ws.close()


async def test_an_operator_rebinds_a_gatherer_to_new_hardware_and_to_another_key(site: Site, http):
    old_key = await site.key("school")
    old, welcome = await welcomed(http, site, old_key, "02:00:00:00:aa:01")
    gather_id = welcome["gather_id"]
    commands: list[dict[str, Any]] = []
    answering = asyncio.create_task(answer_commands(old, commands))
    camera_id = (await site.api("add_camera", camera_name="gate", gather_id=gather_id,
                                stream_prop=1, stream_mp4="/videos/gate.mp4"))["camera_id"]
    answering.cancel()
    await old.close()
    # The machine died; its replacement has another MAC, and the same key.
    assert "may register 1" in await refused(http, site, old_key, "02:00:00:00:bb:02")
    await site.cli("agent-key", "rebind", "school", str(gather_id))
    new, state = await welcomed(http, site, old_key, "02:00:00:00:bb:02")
    new_ended = asyncio.create_task(ended(new))  # reads the link (answering pings) until it ends
    assert state["gather_id"] == gather_id
    assert [c["camera_id"] for c in state["state"]["cameras"]] == [camera_id]
    [gatherer] = (await site.api("list_gather"))["data"]
    assert gatherer["mac_addr"] == "02:00:00:00:bb:02"
    # The old machine, if it comes back, is a new gatherer the key has no room for.
    await refused(http, site, old_key, "02:00:00:00:aa:01")
    # The key leaked: a new key takes the gatherer over; the old key's link goes.
    new_key = await site.key("school-2")
    await site.cli("agent-key", "rebind", "school-2", str(gather_id))
    assert await new_ended in (protocol.REFUSED_GATHERER, None)  # None: it went mid-ping
    reason = await refused(http, site, old_key, "02:00:00:00:bb:02")
    assert "another agent key" in reason
    moved, again = await welcomed(http, site, new_key, "02:00:00:00:bb:02")
    assert again["gather_id"] == gather_id
    await moved.close()
    bad = await site.cli("agent-key", "rebind", "nobody", str(gather_id), check=False)
    assert bad.returncode == 1 and "nobody" in bad.stderr
    missing = await site.cli("agent-key", "rebind", "school", "999", check=False)
    assert missing.returncode == 1 and "no gatherer 999" in missing.stderr
    log = site.log()
    assert f"gatherer {gather_id} moves from MAC 02:00:00:00:aa:01 to 02:00:00:00:bb:02" in log
    assert "the gatherer now belongs to another agent key" in log


async def test_media_is_accepted_only_from_the_key_of_the_cameras_own_gatherer(site: Site, http):
    school, other_site = await site.key("school"), await site.key("other-site")
    agent, welcome = await welcomed(http, site, school, "02:00:00:00:aa:01")
    intruder, _ = await welcomed(http, site, other_site, "02:00:00:00:ee:01")  # a gatherer of its own
    commands: list[dict[str, Any]] = []
    answering = asyncio.create_task(answer_commands(agent, commands))
    camera_id = (await site.api("add_camera", camera_name="gate", gather_id=welcome["gather_id"],
                                stream_prop=1, stream_mp4="/videos/gate.mp4"))["camera_id"]
    await agent.send_json({"type": "status", "camera_id": camera_id, "status": 1, "err_msg": ""})
    for _ in range(100):
        if (await site.api("get_camera_status", camera_id=camera_id))["status"] == 1:
            break
        await asyncio.sleep(0.1)
    play_url = (await site.api("play_camera", camera_id=camera_id))["play_url"]
    ticket = parse_qs(urlsplit(play_url).query)
    base = f"{site.relay.base_url}/play/live/{camera_id}"
    async with http.post(f"{base}/session", params={"ticket": ticket["ticket"][0]}) as response:
        assert response.status == 200, await response.text()
        session = (await response.json())["session"]
    for _ in range(100):  # the relay asks the camera's agent to push
        if any(c["action"] == protocol.LIVE_START for c in commands):
            break
        await asyncio.sleep(0.1)
    [start] = [c for c in commands if c["action"] == protocol.LIVE_START]
    push_id = start["data"]["push_id"]
    media = f"{site.relay.base_url}/agent/media?camera_id={camera_id}&push_id={push_id}"
    # Another site's valid key with the right push id: refused before the upgrade.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        await http.ws_connect(media, headers={"Authorization": f"Bearer {other_site}"})
    assert refusal.value.status == 403
    # The real agent's push goes on.
    pushing = await http.ws_connect(media, headers={"Authorization": f"Bearer {school}"})
    await agent.send_json({"type": "reply", "id": start["id"], "err_code": 0, "err_msg": "OK"})
    header = protocol.MEDIA_HEADER.pack(protocol.KEYFRAME, 0)
    await pushing.send_bytes(header + b"\x00\x00\x00\x01\x65" + b"\x88" * 64)
    with pytest.raises(aiohttp.WSServerHandshakeError) as again:  # and cannot be stopped by it
        await http.ws_connect(media, headers={"Authorization": f"Bearer {other_site}"})
    assert again.value.status == 403
    for _ in range(50):
        async with http.post(f"{base}/heartbeat", params={"session": session}) as response:
            state = await response.json()
        if state.get("pushing"):
            break
        await asyncio.sleep(0.1)
    assert state["pushing"] and not pushing.closed
    answering.cancel()
    for ws in (pushing, agent, intruder):
        await ws.close()
    log = site.log()
    assert log.count("refused media from 127.0.0.1 (key 'other-site')") == 2
    assert push_id not in log and school not in log and other_site not in log
