"""What the live page talks to. Every call names its viewer session; the session comes from a
valid play ticket for that one camera.

* ``POST /play/live/<id>/session?ticket=T`` opens a viewer session: ``{"session", "heartbeat",
  "fallback_after", "ticket"}`` (a renewed ticket), or 403 (ticket) / 409 (camera offline).
* ``POST /play/live/<id>/webrtc?session=S`` with ``{"sdp": offer}`` answers ``{"sdp": answer}``.
* ``GET /play/live/<id>/mse?session=S`` is the fMP4 WebSocket (see relay.live.mse).
* ``POST /play/live/<id>/heartbeat?session=S`` keeps the session alive, answering a renewed ticket
  and the live state; 404 once the session has ended (the page then opens a new one).
* ``POST /play/live/<id>/bye?session=S`` ends it (the page's ``sendBeacon`` on pagehide).

A session has one transport at a time: opening WebRTC or MSE closes the other. When the current
transport closes (WebRTC failed or closed, the MSE socket gone), the session ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from ..services import SERVICES
from ..tickets import TicketError, check_ticket, issue_ticket
from .controller import LiveController, LiveRefused, Viewer
from .ingest import LIVE
from .webrtc import SdpError, answer_offer

log = logging.getLogger(__name__)

_HEADERS = {"Cache-Control": "no-store"}


def _json(body: dict, status: int = 200) -> web.Response:  # type: ignore[type-arg]
    return web.json_response(body, status=status, headers=_HEADERS)


def _camera_id(request: web.Request) -> int:
    raw = request.match_info["target"]
    if not raw.isdigit() or not 0 < int(raw) <= 2**53:
        raise web.HTTPNotFound()
    return int(raw)


def _renewed_ticket(request: web.Request, camera_id: int) -> str:
    services = request.app[SERVICES]
    return issue_ticket(services.signer, services.clock(), "live", camera_id,
                        services.settings.play_ticket_ttl)


def _viewer(request: web.Request) -> Viewer:
    viewer = request.app[LIVE].viewer(request.query.get("session", ""))
    if viewer is None or viewer.camera_id != _camera_id(request):
        raise web.HTTPNotFound(text='{"error": "no such session"}', content_type="application/json")
    return viewer


async def open_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    camera_id = _camera_id(request)
    try:
        check_ticket(services.signer, services.clock, "live", request.query.get("ticket"), camera_id)
    except TicketError as refusal:
        return _json({"error": str(refusal)}, 403)
    try:
        viewer = await request.app[LIVE].open_viewer(camera_id)
    except LiveRefused as refusal:
        return _json({"error": str(refusal), "state": "offline"}, 409)
    settings = services.settings
    return _json({
        "session": viewer.viewer_id,
        "heartbeat": settings.live_heartbeat,
        "fallback_after": settings.webrtc_fallback_after,
        "ticket": _renewed_ticket(request, camera_id),
    })


async def _attach(controller: LiveController, viewer: Viewer, kind: str,
                  close: Callable[[], Awaitable[None]]) -> None:
    """Make ``close`` the viewer's transport, closing the one it replaces."""
    previous, viewer.closers = viewer.closers, [close]
    viewer.transport = kind
    for old in previous:
        result = old()
        if asyncio.iscoroutine(result):
            await result


def _on_transport_closed(controller: LiveController, viewer: Viewer, kind: str,
                         close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def closed() -> None:
        if viewer.closers and viewer.closers[0] is close:  # still the current transport
            await controller.close_viewer(viewer.viewer_id, f"{kind} closed")

    return closed


async def webrtc_offer(request: web.Request) -> web.Response:
    controller = request.app[LIVE]
    settings = request.app[SERVICES].settings
    viewer = _viewer(request)
    try:
        body = await request.json()
        offer = body["sdp"] if isinstance(body, dict) else None
        if not isinstance(offer, str):
            raise ValueError
    except web.HTTPRequestEntityTooLarge:  # the app's body limit: an offer is a few kB
        return _json({"error": "the offer is too large"}, 400)
    except (ValueError, KeyError):
        return _json({"error": "send {\"sdp\": offer}"}, 400)
    if not controller.is_open(viewer):  # it ended while the offer arrived
        return _json({"error": "no such session"}, 404)
    holder: dict[str, Callable[[], Awaitable[None]]] = {}

    async def on_closed() -> None:
        await _on_transport_closed(controller, viewer, "webrtc", holder["close"])()

    try:
        close, answer = await answer_offer(offer, controller.feed(viewer.camera_id),
                                           settings.ice_public_ip, on_closed)
    except SdpError as refusal:
        log.info("camera %d: refused an offer: %s", viewer.camera_id, refusal)
        return _json({"error": str(refusal)}, 400)
    holder["close"] = close
    if not controller.is_open(viewer):  # it ended while we answered
        await close()
        return _json({"error": "no such session"}, 404)
    await _attach(controller, viewer, "webrtc", close)
    return _json({"sdp": answer})


async def mse_socket(request: web.Request) -> web.StreamResponse:
    controller = request.app[LIVE]
    viewer = _viewer(request)
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
    await ws.prepare(request)
    if not controller.is_open(viewer):  # it ended during the upgrade
        await ws.close(code=4004, message=b"no such session")
        return ws
    mse = controller.mse_feed(viewer.camera_id)
    subscription = mse.subscribe()

    async def close() -> None:
        mse.unsubscribe(subscription)
        await ws.close()

    await _attach(controller, viewer, "mse", close)

    async def pump() -> None:
        while (item := await subscription.get()) is not None:
            if item[:1] == b"{":
                await ws.send_str(item.decode())
            else:
                await ws.send_bytes(item)

    sender = asyncio.create_task(pump())
    try:
        async for message in ws:  # the page sends nothing; a message ends the socket
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
    finally:
        sender.cancel()
        mse.unsubscribe(subscription)
        await _on_transport_closed(controller, viewer, "mse", close)()
        await controller.release_mse(viewer.camera_id)
    return ws


async def heartbeat(request: web.Request) -> web.Response:
    controller = request.app[LIVE]
    viewer = controller.heartbeat(request.query.get("session", ""))
    camera_id = _camera_id(request)
    if viewer is None or viewer.camera_id != camera_id:
        return _json({"error": "no such session"}, 404)
    return _json({"ticket": _renewed_ticket(request, camera_id),
                  **controller.state_of(camera_id)})


async def goodbye(request: web.Request) -> web.Response:
    controller = request.app[LIVE]
    viewer = controller.viewer(request.query.get("session", ""))
    if viewer is not None and viewer.camera_id == _camera_id(request):
        await controller.close_viewer(viewer.viewer_id, "goodbye")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/play/live/{target}/session", open_session)
    app.router.add_post("/play/live/{target}/webrtc", webrtc_offer)
    app.router.add_get("/play/live/{target}/mse", mse_socket)
    app.router.add_post("/play/live/{target}/heartbeat", heartbeat)
    app.router.add_post("/play/live/{target}/bye", goodbye)
