"""One agent's live link: sends commands and matches replies, reads status reports, polices the peer.

The session owns its WebSocket. Commands wait until the welcome (the full desired state) has gone
out, so an agent never sees a command before the state it applies to. Whatever ends the link (the
peer, a newer link for the same gatherer, a revoked key, garbage or a flood), every command still
waiting gets a ``ConnectionError`` at once, never a hang. Only what the agent sends unasked (status
reports, stray replies) counts towards the flood limit, not its replies to our own commands.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from . import messages, protocol
from .messages import Refused

log = logging.getLogger(__name__)


class TokenBucket:
    """Allows ``rate`` events a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class AgentSession:
    def __init__(self, ws: web.WebSocketResponse, gather_id: int, peer: str, key_id: int,
                 version: str = "", epoch: int = 0) -> None:
        self.ws = ws
        self.gather_id = gather_id
        self.epoch = epoch  # this link's place in the order of links (``relay.hub``)
        self.peer = peer
        self.key_id = key_id  # the agent key this link proved
        self.version = version  # what the agent's hello said it runs (the console shows it)
        self.since = time.time()  # when this link was made (wall clock, for people)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._welcomed = asyncio.Event()
        self._closed_reason = ""
        self._reported: dict[int, tuple[int, str]] = {}
        #: The agent's last recording report per camera (see ``messages.recording``).
        self.recordings: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<agent link gatherer={self.gather_id} peer={self.peer}>"

    async def welcome(self, state: dict[str, Any]) -> bool:
        """Send the desired state; False when the agent has gone meanwhile (nothing is sent)."""
        if not self.ws.closed:
            try:
                await self.ws.send_json({"type": "welcome", "gather_id": self.gather_id,
                                         "state": state})
            except ConnectionError:  # it closed while the welcome was being sent
                pass
            else:
                self._welcomed.set()
                return True
        self._closed_reason = self._closed_reason or "the agent left before its welcome"
        self._welcomed.set()  # commands waiting for the welcome now fail at once
        return False

    async def request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for the agent's reply (the hub bounds the wait)."""
        await self._welcomed.wait()
        if self.ws.closed:
            raise ConnectionError(self._closed_reason or "link closed")
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            await self.ws.send_json(  # into a closed socket: a ConnectionError, the hub's 10004
                {"type": "command", "id": command_id, "action": action, "data": data}
            )
            return await future
        finally:
            self._pending.pop(command_id, None)

    async def close(self, reason: str, code: int = 4000) -> None:
        if not self._closed_reason:
            self._closed_reason = reason
            log.info("closing %r: %s", self, reason)
        self._fail_pending()
        self._welcomed.set()
        await self.ws.close(code=code, message=reason.encode()[:120])

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(self._closed_reason or "link closed"))

    async def run(self, on_status) -> None:  # type: ignore[no-untyped-def]
        """Read the agent's messages until the link ends; ``on_status(camera_id, status, err_msg)``
        handles reports. (The endpoint's ``KeyWatch`` ends the link when its key is revoked.)"""
        bucket = TokenBucket(protocol.RATE, protocol.BURST)
        try:
            async for message in self.ws:
                if message.type != WSMsgType.TEXT:
                    raise Refused(f"unexpected {message.type.name} frame")
                parsed = messages.parse_json(message.data, "garbage")
                # A reply to a command we are waiting on is traffic we asked for, as fast as we send
                # commands, so it never counts as flooding (a busy relay would cut its own agent off).
                if self._answer(parsed):
                    continue
                if not bucket.take():
                    raise Refused("flooding: too many messages")
                await self._dispatch(parsed, on_status)
            if not self._closed_reason:
                self._closed_reason = f"agent disconnected (code {self.ws.close_code})"
                log.info("%r: %s", self, self._closed_reason)
        except Refused as refusal:
            await self.close(str(refusal), code=4002)
        finally:
            self._fail_pending()

    def _answer(self, message: dict[str, Any]) -> bool:
        """Hand ``message`` to the command waiting for it, if it is that command's reply."""
        command_id = messages.reply_id(message)
        future = self._pending.get(command_id) if command_id is not None else None
        if future is None or future.done():
            return False
        future.set_result(messages.reply(message))
        return True

    async def _dispatch(self, message: dict[str, Any], on_status) -> None:  # type: ignore[no-untyped-def]
        """What the agent sent unasked: a status report, or a reply nobody waits for (ignored)."""
        kind = message.get("type")
        if kind == "reply":
            return  # late (the command timed out) or a repeat: nothing waits for it
        if kind == "status":
            camera_id, status, err_msg = messages.status(message)
            if self._reported.get(camera_id) != (status, err_msg):  # repeats cost nothing
                if len(self._reported) > 10_000:
                    self._reported.clear()
                self._reported[camera_id] = (status, err_msg)
                await on_status(camera_id, status, err_msg)
        elif kind == "recording":
            camera_id, report = messages.recording(message)
            if camera_id in self.recordings or len(self.recordings) < protocol.MAX_CAMERAS:
                self.recordings[camera_id] = report
        else:
            raise Refused(f"unknown message type {str(kind)[:32]!r}")

