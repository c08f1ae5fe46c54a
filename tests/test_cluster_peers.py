"""The command link between two nodes (``relay.cluster.peers``), against a real WebSocket server
that plays the holder's end: answers matched by id whatever their order, and the three outcomes
the hub turns into codes (unreachable: nothing sent; link lost: maybe delivered; no answer in
time). The whole path between real nodes is in tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.cluster.peers import COMMANDS_PATH, LinkLost, Peers, Unreachable


class Holder:
    """A node's end of command links: what arrived, and how each command is answered."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.links = 0
        self.sockets: list[web.WebSocketResponse] = []
        self.answering: set[asyncio.Task[None]] = set()
        self.reply: Callable[[dict[str, Any]], Any] = lambda command: {"transmit": {
            "err_code": 0, "echo": command["data"]}}

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        assert request.headers["Authorization"] == "Bearer s"
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.links += 1
        self.sockets.append(ws)
        async for message in ws:
            command = json.loads(message.data)
            self.received.append(command)
            task = asyncio.create_task(self._answer(ws, command))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
        return ws

    async def _answer(self, ws: web.WebSocketResponse, command: dict[str, Any]) -> None:
        reply = self.reply(command)
        if asyncio.iscoroutine(reply):
            reply = await reply
        if reply is not None:
            await ws.send_str(json.dumps({"id": command["id"], **reply}))


@pytest.fixture
async def holder() -> AsyncIterator[tuple[Holder, str]]:
    holder = Holder()
    app = web.Application()
    app.router.add_get(COMMANDS_PATH, holder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield holder, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer s"}) as http:
        peers = Peers(http)
        yield peers
        await peers.close()


def command(n: int) -> dict[str, Any]:
    return {"gather_id": 1, "action": "camera.stop", "data": {"n": n}, "timeout": 1}


async def test_many_commands_share_one_link_and_get_their_own_answers(holder, peers) -> None:  # type: ignore[no-untyped-def]
    server, url = holder

    async def slow_first(command: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.2 if command["data"]["n"] == 0 else 0)
        return {"transmit": {"err_code": 0, "echo": command["data"]}}

    server.reply = slow_first
    answers = await asyncio.gather(*(peers.call("a", url, command(n), 2) for n in range(50)))
    assert [answer["transmit"]["echo"]["n"] for answer in answers] == list(range(50))
    assert server.links == 1 and len(server.received) == 50
    assert len({command["id"] for command in server.received}) == 50


async def test_a_link_lost_mid_command_says_so_and_the_next_command_opens_a_new_one(holder, peers) -> None:  # type: ignore[no-untyped-def]
    server, url = holder
    server.reply = lambda command: None  # never answers
    out = asyncio.create_task(peers.call("a", url, command(1), 5))
    while not server.received:
        await asyncio.sleep(0.01)
    await server.sockets[0].close()
    with pytest.raises(LinkLost):
        await out
    server.reply = lambda command: {"transmit": {"err_code": 0}}
    assert await peers.call("a", url, command(2), 2) == {"transmit": {"err_code": 0}}
    assert server.links == 2


async def test_no_answer_in_time_is_a_timeout_and_the_link_stays(holder, peers) -> None:  # type: ignore[no-untyped-def]
    server, url = holder
    server.reply = lambda command: None if command["data"]["n"] == 1 else {"moved": True}
    with pytest.raises(TimeoutError):
        await peers.call("a", url, command(1), 0.3)
    assert await peers.call("a", url, command(2), 2) == {"moved": True}
    assert server.links == 1


async def test_a_node_nobody_listens_at_is_unreachable_and_nothing_waits(peers) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(Unreachable):
        await peers.call("gone", f"http://127.0.0.1:{port}", command(1), 2)
    # Somewhere that drops the connection without a word (a firewall): unreachable in time.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unreachable):
            await peers.call("silent", f"http://127.0.0.1:{silent.getsockname()[1]}",
                             command(1), 0.5)
        assert asyncio.get_running_loop().time() - started < 1.5


async def test_a_new_node_at_the_same_address_gets_its_own_link(holder, peers) -> None:  # type: ignore[no-untyped-def]
    server, url = holder
    await peers.call("old", url, command(1), 2)
    await server.sockets[0].close()  # that node stopped; another started at its address
    await asyncio.sleep(0.05)
    await peers.call("new", url, command(2), 2)
    assert server.links == 2
    assert list(peers._links) == ["new"]  # the dead node's closed link is forgotten
