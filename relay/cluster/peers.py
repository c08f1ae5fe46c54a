"""One persistent command WebSocket from this node to each other node it sends commands to.

A command for a gatherer linked elsewhere used to be one HTTP POST each; a whole request and
response cost the forwarding node about half a millisecond of CPU. Now each node keeps one
WebSocket per peer (opened at the first command, opened again after it drops) and many commands
share it at once: ``{"id", "gather_id", "action", "data", "timeout"}`` out, ``{"id", ...answer}``
back, matched by id, in whatever order the answers come.

What a caller learns, so the hub keeps its codes and delivers at most once:

* ``Unreachable``: the link could not be opened, so nothing was sent (the hub answers 10002);
* ``LinkLost``: the link went (or a send failed) while the command was out: it may have been
  delivered, so it is never sent again (10004);
* ``TimeoutError``: no answer in time (10003).

The node is the key, not its URL: a node that restarts is a new node (its id is new) and gets a
new link. A link to a node that died ends by the WebSocket heartbeat or at the next failed send.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

COMMANDS_PATH = "/cluster/v1/commands"
#: Seconds to open a link to a peer: a node that cannot be reached in this time is taken for gone.
CONNECT_TIMEOUT = 2.0
#: Largest message either way (a command's data is bounded far below by the API).
MAX_MESSAGE = 256 * 1024
HEARTBEAT = 10.0


class Unreachable(Exception):
    """The peer's link could not be opened: nothing was sent."""


class LinkLost(Exception):
    """The peer's link went while a command was out: it may have been delivered."""


class PeerLink:
    """The command link to one peer node; its reader matches answers to waiting commands."""

    def __init__(self, http: aiohttp.ClientSession, node: str, url: str) -> None:
        self.node = node
        self.url = url
        self._http = http
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._opening = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def call(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        ws = await self._open(min(timeout, CONNECT_TIMEOUT))
        message_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = answer
        try:
            try:
                await ws.send_str(json.dumps({"id": message_id, **body}))
            except (ConnectionError, RuntimeError) as exc:
                raise LinkLost(exc.__class__.__name__) from exc
            async with asyncio.timeout(timeout):
                return await answer
        finally:
            self._waiting.pop(message_id, None)

    async def _open(self, timeout: float) -> aiohttp.ClientWebSocketResponse:
        ws = self._ws
        if ws is not None and not ws.closed:
            return ws
        async with self._opening:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            try:
                async with asyncio.timeout(timeout):
                    ws = await self._http.ws_connect(self.url + COMMANDS_PATH,
                                                     heartbeat=HEARTBEAT,
                                                     max_msg_size=MAX_MESSAGE)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise Unreachable(exc.__class__.__name__) from exc
            self._ws = ws
            self._reader = asyncio.create_task(self._read(ws), name=f"peer {self.node} reader")
            log.info("command link to node %s open", self.node)
            return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    answer = json.loads(message.data)
                    waiting = self._waiting.get(answer.pop("id"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("node %s sent a malformed command answer; closing its link",
                                self.node)
                    break
                if waiting is not None and not waiting.done():  # (else it timed out meanwhile)
                    waiting.set_result(answer)
        finally:
            await ws.close()
            if self._ws is ws:
                self._ws = None
            lost = LinkLost("the link to the node closed")
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(lost)
            log.info("command link to node %s closed", self.node)

    @property
    def idle(self) -> bool:
        """Closed with nothing waiting: it can be forgotten."""
        return self._ws is None and not self._waiting and not self._opening.locked()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class Peers:
    """This node's command links, one per peer node."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._links: dict[str, PeerLink] = {}

    async def call(self, node: str, url: str, body: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        link = self._links.get(node)
        if link is None or link.url != url:
            if link is not None:
                await link.close()
            for old in [old for old in self._links.values() if old.idle]:  # dead nodes' links
                del self._links[old.node]
            link = self._links[node] = PeerLink(self._http, node, url)
        return await link.call(body, timeout)

    async def forget(self, node: str) -> None:
        """A node gone for good: its link (if any) is closed."""
        link = self._links.pop(node, None)
        if link is not None:
            await link.close()

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
