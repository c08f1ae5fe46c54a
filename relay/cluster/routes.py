"""Node-to-node HTTP: what one node asks of another, refused without the cluster secret.

The secret is derived from the catalogue's signing key (``cluster_secret``), which every node of a
cluster shares already: nothing more to configure or leak. A request without it, or with another,
is answered 401 and logged with the caller's address only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import weakref
from typing import Any

from aiohttp import WSMsgType, web

from ..hub import LinkFacts
from ..ids import parse_id
from ..link import protocol
from ..live.controller import LiveRefused
from ..live.ingest import LIVE
from ..live.pull import LIVE_PATH
from ..services import SERVICES
from .hub import FACTS_PATH, ClusterHub
from .peers import COMMANDS_PATH, HEARTBEAT, MAX_MESSAGE

log = logging.getLogger(__name__)

#: Largest node-to-node request body or message (a command's data is bounded far below by the API).
MAX_BODY = MAX_MESSAGE


def cluster_secret(signing_key: bytes) -> str:
    return hmac.new(signing_key, b"relay cluster nodes v1", hashlib.sha256).hexdigest()


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"err_code": status, "err_msg": reason}, status=status)


def _from_a_node(request: web.Request) -> bool:
    hub = request.app[SERVICES].hub
    assert isinstance(hub, ClusterHub)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                          hub.secret.encode()):
        return True
    log.warning("refused a node-to-node request from %s: %s", request.remote,
                "wrong cluster secret" if given else "no cluster secret")
    return False


def _command(message: Any) -> tuple[int, tuple[int, str, dict[str, Any], float] | None]:
    """A command message's id, and its fields when they are what a node sends (else None)."""
    body: Any = json.loads(message)
    message_id = body["id"]
    if type(message_id) is not int:
        raise TypeError("id")
    try:
        gather_id, action, data = body["gather_id"], body["action"], body["data"]
        timeout = float(body["timeout"])
    except (ValueError, KeyError, TypeError):
        return message_id, None
    valid = (type(gather_id) is int and gather_id > 0 and isinstance(action, str)
             and action in protocol.ACTIONS and isinstance(data, dict) and 0 < timeout < 3600)
    return message_id, (gather_id, action, data, timeout) if valid else None


async def command_link(request: web.Request) -> web.StreamResponse:
    """Another node's command link (``peers.py``): each message a command for a gatherer linked
    here, answered with the same id as soon as the agent answers (many at once). A message that
    is not a command with an id ends the link: that peer does not speak this protocol."""
    hub = request.app[SERVICES].hub
    assert isinstance(hub, ClusterHub)
    if not _from_a_node(request):
        return _refuse(401, "node-to-node requests need the cluster secret")
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_BODY)
    try:
        await ws.prepare(request)
    except (ConnectionError, RuntimeError):
        return ws
    request.app[COMMAND_LINKS].add(ws)
    running: set[asyncio.Task[None]] = set()

    async def answer(message_id: int, command: tuple[int, str, dict[str, Any], float] | None
                     ) -> None:
        reply = (await hub.forwarded(*command) if command is not None
                 else {"refused": "expected {id, gather_id, action, data, timeout}"})
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"id": message_id, **reply}))

    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                break
            try:
                message_id, command = _command(message.data)
            except (ValueError, KeyError, TypeError):
                log.warning("node %s sent a malformed command; closing its link", request.remote)
                await ws.close(code=1003, message=b"expected a command")
                break
            task = asyncio.create_task(answer(message_id, command))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in list(running):
            task.cancel()
        for task in list(running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return ws


async def facts(request: web.Request) -> web.Response:
    """What this node's links to these gatherers tell (``Hub.facts``), for another node."""
    if not _from_a_node(request):
        return _refuse(401, "node-to-node requests need the cluster secret")
    try:
        body: Any = json.loads(await request.content.read(MAX_BODY + 1))
        gather_ids = body["gather_ids"]
        valid = isinstance(gather_ids, list) and len(gather_ids) <= 100_000 and all(
            type(gather_id) is int for gather_id in gather_ids)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        valid = False
    if not valid:
        return _refuse(400, "expected {gather_ids: [...]}")
    hub = request.app[SERVICES].hub
    here = {gather_id: LinkFacts.of(link) for gather_id in gather_ids
            if (link := hub.link(gather_id)) is not None}
    return web.json_response({"facts": {str(gather_id): value.to_json()
                                        for gather_id, value in here.items()}})


async def live_link(request: web.Request) -> web.StreamResponse:
    """Another node's one media link for a camera whose gatherer is linked here: a viewer of it
    here (so the push and its close-after rule count it), fed the camera's packets as they come,
    its current GOP first. ``keyframe`` text messages ask the agent for one (rate-limited)."""
    if not _from_a_node(request):
        return _refuse(401, "node-to-node requests need the cluster secret")
    camera_id = parse_id(request.match_info["camera_id"])
    if camera_id is None:
        return _refuse(404, "no such camera")
    controller = request.app[LIVE]
    try:
        viewer = await controller.open_viewer(camera_id, here_only=True)
    except LiveRefused as refusal:
        return _refuse(refusal.status, str(refusal))
    ws = web.WebSocketResponse(heartbeat=10, max_msg_size=4096)
    viewer.transport = "node"
    viewer.closers.append(ws.close)
    feed = controller.feed(camera_id)
    subscription = feed.subscribe()
    try:
        await ws.prepare(request)
    except (ConnectionError, RuntimeError):
        feed.unsubscribe(subscription)
        await controller.close_viewer(viewer.viewer_id, "node link gone")
        return ws

    async def send() -> None:
        while (packet := await subscription.get()) is not None:
            header = protocol.MEDIA_HEADER.pack(protocol.KEYFRAME if packet.is_keyframe else 0,
                                                packet.pts)
            await ws.send_bytes(header + bytes(packet))

    async def keep_alive() -> None:  # the socket is this viewer's heartbeat
        while True:
            await asyncio.sleep(controller.timings.viewer_timeout / 3)
            controller.heartbeat(viewer.viewer_id)

    tasks = [asyncio.create_task(send()), asyncio.create_task(keep_alive())]
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "keyframe":
                feed.request_keyframe()
            elif message.type != WSMsgType.TEXT:
                break
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        feed.unsubscribe(subscription)
        await controller.close_viewer(viewer.viewer_id, "node link closed")
    return ws


#: The command links other nodes hold open to this one (closed on shutdown: aiohttp would wait
#: for each, and a node took 10 s to stop on SIGINT).
COMMAND_LINKS = web.AppKey("command_links", weakref.WeakSet[web.WebSocketResponse])


async def _close_command_links(app: web.Application) -> None:
    """On shutdown: end the other nodes' command links here (they open new ones elsewhere or,
    when this node is back, here)."""
    await asyncio.gather(*(ws.close(code=1001, message=b"node shutting down")
                           for ws in list(app[COMMAND_LINKS])), return_exceptions=True)


def add_routes(app: web.Application) -> None:
    app[COMMAND_LINKS] = weakref.WeakSet()
    app.on_shutdown.append(_close_command_links)
    app.router.add_get(COMMANDS_PATH, command_link)
    app.router.add_post(FACTS_PATH, facts)
    app.router.add_get(LIVE_PATH, live_link)
