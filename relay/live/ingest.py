"""``/agent/media``: where an agent pushes a camera's frames while someone watches.

The socket must carry the agent key that owns the camera's gatherer (another site's key is refused
even with the right push id) and the camera's current push id (from ``live.start``); anything else
is refused before the upgrade. Frames are checked and handed to the camera's feed; a malformed,
text or oversized frame closes the socket with a logged reason. Logs name a push by
``protocol.push_label``, never by its id.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from ..ids import parse_id
from ..link import protocol
from ..link.endpoint import agent_key
from ..services import SERVICES
from .controller import LiveController

log = logging.getLogger(__name__)

LIVE = web.AppKey("live", LiveController)


def _refusal(status: int, reason: str) -> web.Response:
    return web.json_response({"err_code": status, "err_msg": reason}, status=status)


async def media_endpoint(request: web.Request) -> web.StreamResponse:
    controller = request.app[LIVE]
    record = await agent_key(request)
    if record is None:
        return _refusal(401, "unknown or revoked agent key")
    camera_id = parse_id(request.query.get("camera_id"))
    push_id = request.query.get("push_id", "")
    if camera_id is None or not 0 < len(push_id) <= 64:
        return _refusal(400, "camera_id and push_id are required")
    label = protocol.push_label(push_id)
    if await request.app[SERVICES].catalogue.cameras.owner_key(camera_id) != record.key_id:
        log.warning("camera %d: refused media from %s (key %r): the camera is not one of its "
                    "gatherers'", camera_id, request.remote, record.name)
        return _refusal(403, "this camera does not belong to this agent key")
    ws = web.WebSocketResponse(max_msg_size=protocol.MAX_MEDIA_FRAME,
                               heartbeat=request.app[SERVICES].settings.agent_heartbeat)

    async def close() -> None:
        await ws.close(code=4010, message=b"push stopped")

    feed = controller.accept_push(camera_id, push_id, close)
    if feed is None:
        log.info("camera %d: refused media for push %s: not the current push", camera_id, label)
        return _refusal(409, "not the current push")
    await ws.prepare(request)
    frames, started = 0, False
    try:
        async for message in ws:
            if message.type != WSMsgType.BINARY or len(message.data) <= protocol.MEDIA_HEADER.size:
                log.warning("camera %d: closing push %s: malformed media frame", camera_id, label)
                await ws.close(code=4002, message=b"malformed media frame")
                break
            flags, pts = protocol.MEDIA_HEADER.unpack_from(message.data)
            payload = message.data[protocol.MEDIA_HEADER.size:]
            packet = feed.publish(payload, pts, bool(flags & protocol.KEYFRAME))
            if packet is not None and not started:
                started = True
                controller.first_packet(camera_id, push_id)
            frames += 1
    finally:
        controller.push_ended(camera_id, push_id)
        log.info("camera %d: media socket of push %s closed after %d frames", camera_id, label,
                 frames)
    return ws
