"""``/agent``: where gatherer agents dial in, prove their key, say hello and stay connected.

An unknown or revoked key is refused before the WebSocket upgrade (401) and logged without the
key. After the upgrade the first message must be a valid hello within ``HELLO_TIMEOUT``; the agent
is then registered (gatherer online, its cameras at -1 until reported), becomes the gatherer's live
link in the hub (closing an older link for the same MAC) and receives its full desired state. A
hello for a gatherer another key owns, or one more gatherer than the key may have, is refused
(closed with ``REFUSED_GATHERER`` and logged) before anything of the gatherer is sent or changed.

While links are up, ``KeyWatch`` rechecks each agent key in use every ``agent_key_recheck`` seconds,
once for all the links that use it, and ends those links when the key has been revoked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from ..catalogue import AgentKey, GathererRefused
from ..catalogue.errors import DATABASE_DOWN
from ..services import SERVICES
from . import protocol
from .admission import Admission
from .messages import Refused, parse_hello
from .presence import Presence
from .registrar import Registrar
from .session import AgentSession

log = logging.getLogger(__name__)

async def agent_key(request: web.Request) -> AgentKey | None:
    """The valid agent key a request carries in ``Authorization: Bearer``; a refusal is logged
    (without the key) and answered None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    key = value.strip() if scheme.lower() == "bearer" else ""
    record = await request.app[SERVICES].catalogue.agent_keys.check(key) if key else None
    if record is None:
        log.warning("refused agent from %s: %s", request.remote,
                    "unknown or revoked key" if key else "no key")
    return record


async def _read_hello(ws: web.WebSocketResponse) -> dict[str, Any]:
    try:
        # One deadline for the whole wait: receive(timeout=) restarts it on every pong.
        message = await asyncio.wait_for(ws.receive(), protocol.HELLO_TIMEOUT)
    except TimeoutError as exc:
        raise Refused("no hello in time") from exc
    if message.type != WSMsgType.TEXT:
        raise Refused(f"expected hello, got {message.type.name}")
    return parse_hello(message.data)


async def agent_endpoint(request: web.Request) -> web.StreamResponse:
    links = request.app[LINKS]
    if not links.admission.enter():  # before anything costs (a key check is a digest and a read)
        delay = links.admission.retry_after()
        log.debug("agent from %s asked to come back in %d s (%d being let in)", request.remote,
                  delay, links.admission.pending)
        return web.json_response({"err_code": 503, "err_msg": "busy: come back later"},
                                 status=503, headers={"Retry-After": str(delay)})
    session = None
    try:
        record = await agent_key(request)
        if record is None:
            return web.json_response({"err_code": 401, "err_msg": "unknown or revoked agent key"},
                                     status=401)
        ws = web.WebSocketResponse(heartbeat=request.app[SERVICES].settings.agent_heartbeat,
                                   max_msg_size=protocol.MAX_MESSAGE)
        await ws.prepare(request)
        session = await _welcome(request, record, ws)
    finally:
        links.admission.leave(session is not None)
    if session is not None:
        await _serve(request, record, session)
    return ws


async def _welcome(request: web.Request, record: AgentKey, ws: web.WebSocketResponse
                   ) -> AgentSession | None:
    """Hello, registration, the gatherer's live link, the welcome: the session once welcomed;
    None when the agent was refused or left on the way (the socket is closed, nothing left)."""
    hub, links, peer = request.app[SERVICES].hub, request.app[LINKS], request.remote or "?"
    try:
        hello = await _read_hello(ws)
    except Refused as refusal:
        log.warning("closed agent link from %s (key %r): %s", peer, record.name, refusal)
        await ws.close(code=4001, message=str(refusal).encode())
        return None
    epoch = hub.new_epoch()
    try:
        gather_id, state = await links.registrar.register(record.key_id, hello, epoch)
    except GathererRefused as refusal:
        log.warning("refused agent %s (%s) from %s (key %r): %s", hello["name_pc"],
                    hello["mac_addr"], peer, record.name, refusal)
        await ws.close(code=protocol.REFUSED_GATHERER, message=str(refusal).encode()[:120])
        return None
    except DATABASE_DOWN as exc:  # the agent tries again by itself (1013: try again later)
        log.warning("agent %s from %s not registered: the catalogue is unavailable (%s)",
                    hello["mac_addr"], peer, exc.__class__.__name__)
        await ws.close(code=1013, message=b"the relay's catalogue is unavailable; try again")
        return None
    if ws.closed:  # it gave up while its registration waited: nothing to attach
        await links.presence.gatherer_offline(gather_id, epoch)
        return None
    session = AgentSession(ws, gather_id, peer, record.key_id, hello["version"], epoch)
    previous = await hub.attach(session)
    if previous is not None:
        log.warning("gatherer %d (%s): a newer connection from %s replaces the one from %s",
                    gather_id, hello["mac_addr"], peer, previous.peer)
        await previous.close("replaced by a newer connection for the same gatherer")
    log.info("agent %s (key %r, version %s) connected from %s as gatherer %d", hello["name_pc"],
             record.name, hello["version"], peer, gather_id)
    if hub.link(gather_id) is session and await session.welcome(state):
        return session
    if await hub.detach(session):  # it left before its welcome went out
        await links.presence.gatherer_offline(gather_id, epoch)
    return None


async def _serve(request: web.Request, record: AgentKey, session: AgentSession) -> None:
    """The welcomed link, until it ends; then, unless a newer link took its place, the gatherer
    goes offline. (Nothing of the hello or the welcome is kept: this lasts as long as the link.)"""
    services, links = request.app[SERVICES], request.app[LINKS]
    gather_id = session.gather_id
    links.keys.watch(record.key_id, session,
                     lambda: services.catalogue.agent_keys.owned(record.key_id),
                     services.settings.agent_key_recheck)
    try:
        await session.run(lambda camera_id, status, err_msg: links.presence.camera_status(
            gather_id, camera_id, status, err_msg))
    finally:
        links.keys.forget(record.key_id, session)
        if await services.hub.detach(session):
            await asyncio.shield(links.presence.gatherer_offline(gather_id, session.epoch))


class KeyWatch:
    """Rechecks each agent key in use every ``interval`` seconds and ends the links it no longer
    grants: all of them once the key is revoked, and a link whose gatherer an operator has given
    to another key (``relay agent-key rebind``).

    One catalogue read per key and interval, however many links use the key (a per-link check
    was one read per link: 10,000 agents on one key made 333 reads a second on an idle relay, and
    a sleeping task per link). A link learns of its key's revocation within ``interval``, as before.
    """

    def __init__(self) -> None:
        self._links: dict[int, set[AgentSession]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def watch(self, key_id: int, session: AgentSession,
              owned: Callable[[], Awaitable[set[int] | None]], interval: float) -> None:
        """``owned()`` answers the gatherers the key owns now, None once it is revoked."""
        self._links.setdefault(key_id, set()).add(session)
        if key_id not in self._tasks:
            self._tasks[key_id] = asyncio.create_task(self._recheck(key_id, owned, interval))

    def forget(self, key_id: int, session: AgentSession) -> None:
        links = self._links.get(key_id)
        if links is None:
            return
        links.discard(session)
        if not links:  # the key's last link is gone: stop checking it
            del self._links[key_id]
            task = self._tasks.pop(key_id, None)
            if task is not None:
                task.cancel()

    async def _recheck(self, key_id: int, owned: Callable[[], Awaitable[set[int] | None]],
                       interval: float) -> None:
        try:
            while self._links.get(key_id):
                await asyncio.sleep(interval)
                try:
                    gatherers = await owned()
                except Exception as exc:  # the catalogue is unreachable: keep the links, try again
                    log.warning("could not recheck agent key %d: %s", key_id, exc)
                    continue
                if gatherers is None:
                    # Forget the key before closing, so a link that joins meanwhile gets a new check.
                    links = self._links.pop(key_id, set())
                    if self._tasks.get(key_id) is asyncio.current_task():
                        del self._tasks[key_id]
                    await asyncio.gather(*(link.close("agent key revoked", code=4003)
                                           for link in links), return_exceptions=True)
                    return
                lost = [link for link in self._links.get(key_id, ()) if link.gather_id not in gatherers]
                await asyncio.gather(*(link.close("the gatherer now belongs to another agent key",
                                                  code=protocol.REFUSED_GATHERER)
                                       for link in lost), return_exceptions=True)
        finally:
            if self._tasks.get(key_id) is asyncio.current_task():
                del self._tasks[key_id]

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self._links.clear()


@dataclass
class Links:
    """What the ``/agent`` endpoint shares between links."""

    admission: Admission
    registrar: Registrar
    presence: Presence
    keys: KeyWatch


LINKS = web.AppKey("agent_links", Links)


async def close_all(app: web.Application) -> None:
    """On shutdown: tell every agent we are going, so it reconnects as soon as we are back."""
    hub = app[SERVICES].hub
    await asyncio.gather(*(link.close("relay shutting down", code=1001)
                           for link in hub.links()), return_exceptions=True)


async def _stop(app: web.Application) -> None:
    links = app[LINKS]
    links.keys.stop()
    await links.registrar.close()
    await links.presence.close()


def add_routes(app: web.Application) -> None:
    services = app[SERVICES]
    app[LINKS] = Links(Admission(services.settings.agent_admit),
                       Registrar(services.catalogue, services.settings.timezone),
                       Presence(services.catalogue), KeyWatch())
    app.router.add_get("/agent", agent_endpoint)
    app.on_shutdown.append(close_all)
    app.on_cleanup.append(_stop)
