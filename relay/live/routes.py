"""What the live page calls. Every call names its viewer session; the session comes from a
valid play ticket for that one camera.

* ``POST /play/live/<id>/session?ticket=T`` opens a viewer session: ``{"session", "heartbeat",
  "fallback_after", "ticket"}`` (a renewed ticket), or 403 (ticket), 409 (camera offline: the
  page tries again) or 404 (the camera no longer exists).
* ``POST /play/live/<id>/webrtc?session=S`` with ``{"sdp": offer}`` answers ``{"sdp": answer}``.
* ``GET /play/live/<id>/mse?session=S`` is the fMP4 WebSocket (see relay.live.mse).
* ``POST /play/live/<id>/heartbeat?session=S`` keeps the session alive, answering a renewed ticket
  and the live state; 404 once the session has ended (the page then opens a new one).
* ``POST /play/live/<id>/bye?session=S`` ends it (the page's ``sendBeacon`` on pagehide).

Every refusal has the shape of every other error of the relay, ``{"err_code": <the HTTP status>,
"err_msg": "<why>"}``, plus fields the page acts on (``"state": "offline"`` with a 409). An id in
the path that is not 1-16 ASCII digits naming 1..2**31-1 is 404 "no such camera".

A session has one transport at a time: opening WebRTC or MSE closes the other. When the current
transport closes (WebRTC failed or closed, the MSE socket gone), the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from ..catalogue import NotFound
from ..ids import parse_id
from ..services import SERVICES
from ..tickets import TicketError, check_ticket, issue_ticket
from .controller import LiveController, LiveRefused, Viewer
from .ingest import LIVE
from .webrtc import SdpError, answer_offer

log = logging.getLogger(__name__)

_HEADERS = {"Cache-Control": "no-store"}
SESSION_HEADER = "X-Relay-Session"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=_HEADERS)


class Refused(Exception):
    """A refusal a handler raises; answered as ``{"err_code", "err_msg", **extra}``."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.extra = extra


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return _json({"err_code": status, "err_msg": reason, **extra}, status)


def _answers(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as refusal:
            return _error(refusal.status, str(refusal), **refusal.extra)

    return answer


def _camera_id(request: web.Request) -> int:
    camera_id = parse_id(request.match_info["target"])
    if camera_id is None:
        raise Refused(404, "no such camera")
    return camera_id


async def _camera(request: web.Request, camera_id: int) -> dict[str, Any]:
    try:
        return await request.app[SERVICES].catalogue.cameras.get(camera_id)
    except NotFound:
        raise Refused(404, "no such camera") from None


def _renewed_ticket(request: web.Request, camera: dict[str, Any]) -> str:
    services = request.app[SERVICES]
    return issue_ticket(services.signer, services.clock(), "live", camera,
                        services.settings.play_ticket_ttl)


def _viewer(request: web.Request) -> Viewer:
    camera_id = _camera_id(request)
    viewer = request.app[LIVE].viewer(request.query.get("session", ""))
    if viewer is None or viewer.camera_id != camera_id:
        raise Refused(404, "no such session")
    return viewer


async def open_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    camera_id = _camera_id(request)
    try:
        ticket = check_ticket(services.signer, services.clock, "live", request.query.get("ticket"),
                              camera_id)
        camera = await _camera(request, camera_id)
        ticket.require(camera)
    except TicketError as refusal:
        raise Refused(403, str(refusal)) from None
    try:
        viewer = await request.app[LIVE].open_viewer(camera_id)
    except LiveRefused as refusal:
        if refusal.status != 409:
            raise Refused(refusal.status, str(refusal)) from None
        raise Refused(409, str(refusal), state="offline") from None
    settings = services.settings
    answer = _json({
        "session": viewer.viewer_id,
        "heartbeat": settings.live_heartbeat,
        "fallback_after": settings.webrtc_fallback_after,
        "ticket": _renewed_ticket(request, camera),
    })
    # A balancer in front of several nodes learns from it which node holds the session, and
    # sends the session's later calls (``?session=``) there (deploy/haproxy.cfg: stick-table).
    answer.headers[SESSION_HEADER] = viewer.viewer_id
    return answer


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
        raise Refused(400, "the offer is too large") from None
    except (ValueError, KeyError):
        raise Refused(400, "send {\"sdp\": offer}") from None
    if not controller.is_open(viewer):  # it ended while the offer arrived
        raise Refused(404, "no such session")
    holder: dict[str, Callable[[], Awaitable[None]]] = {}

    async def on_closed() -> None:
        close = holder.pop("close", None)  # popped: holder -> close -> on_closed -> holder is a cycle
        if close is not None:
            await _on_transport_closed(controller, viewer, "webrtc", close)()

    try:
        close, answer = await answer_offer(
            offer, controller.feed(viewer.camera_id), settings.ice_public_ip,
            controller.timings.ice_deadline, f"camera {viewer.camera_id}: viewer #{viewer.number}",
            on_closed, controller.spawn)
    except SdpError as refusal:
        log.info("camera %d: viewer #%d: refused an offer: %s", viewer.camera_id, viewer.number,
                 refusal)
        raise Refused(400, str(refusal)) from None
    holder["close"] = close
    if not controller.is_open(viewer):  # it ended while we answered
        await close()
        raise Refused(404, "no such session")
    await _attach(controller, viewer, "webrtc", close)
    return _json({"sdp": answer})


async def mse_socket(request: web.Request) -> web.StreamResponse:
    """The fMP4 WebSocket. Its frames are H.264 already: no permessage-deflate (``compress=False``;
    per-message ``compress=False`` would not do, the negotiated extension would still compress),
    which also keeps every send synchronous up to the write buffer, so the one sender task stops
    the moment it is cancelled, and is awaited before the handler returns. A page that goes while
    the upgrade is being answered (a killed tab) is no error."""
    controller = request.app[LIVE]
    viewer = _viewer(request)
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096, compress=False)
    await ws.prepare(request)  # a page that goes meanwhile: json_errors answers 499, quietly
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
        try:
            while (item := await subscription.get()) is not None:
                if item[:1] == b"{":
                    await ws.send_str(item.decode())
                else:
                    await ws.send_bytes(item)
        except ConnectionResetError:  # the page went while a fragment was on its way
            pass

    sender = asyncio.create_task(pump())
    try:
        async for message in ws:  # the page sends nothing; a message ends the socket
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        mse.unsubscribe(subscription)
        await _on_transport_closed(controller, viewer, "mse", close)()
        await controller.release_mse(viewer.camera_id)
    return ws


async def heartbeat(request: web.Request) -> web.Response:
    controller = request.app[LIVE]
    camera_id = _camera_id(request)
    viewer = controller.viewer(request.query.get("session", ""))
    if viewer is None or viewer.camera_id != camera_id:  # another camera's beat keeps nothing
        raise Refused(404, "no such session")
    controller.heartbeat(viewer.viewer_id)
    return _json({"ticket": _renewed_ticket(request, await _camera(request, camera_id)),
                  **controller.state_of(camera_id)})


async def goodbye(request: web.Request) -> web.Response:
    controller = request.app[LIVE]
    camera_id = _camera_id(request)
    viewer = controller.viewer(request.query.get("session", ""))
    if viewer is not None and viewer.camera_id == camera_id:
        await controller.close_viewer(viewer.viewer_id, "goodbye")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/play/live/{target}/session", _answers(open_session))
    app.router.add_post("/play/live/{target}/webrtc", _answers(webrtc_offer))
    app.router.add_get("/play/live/{target}/mse", _answers(mse_socket))
    app.router.add_post("/play/live/{target}/heartbeat", _answers(heartbeat))
    app.router.add_post("/play/live/{target}/bye", _answers(goodbye))
