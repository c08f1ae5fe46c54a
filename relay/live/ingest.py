"""``/agent/media``: where an agent pushes a camera's frames while someone watches.

The socket must carry a valid agent key and the camera's current push id (from ``live.start``);
anything else is refused before the upgrade. Frames are checked and handed to the camera's feed;
a malformed, text or oversized frame closes the socket with a logged reason.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from ..link import protocol
from ..link.endpoint import agent_key
from ..services import SERVICES
from .controller import LiveController

log = logging.getLogger(__name__)

LIVE = web.AppKey("live", LiveController)


async def media_endpoint(request: web.Request) -> web.StreamResponse:
    controller = request.app[LIVE]
    if await agent_key(request) is None:
        return web.json_response({"error": "unknown or revoked agent key"}, status=401)
    camera, push_id = request.query.get("camera_id", ""), request.query.get("push_id", "")
    if not camera.isdigit() or not 0 < len(push_id) <= 64:
        return web.json_response({"error": "camera_id and push_id are required"}, status=400)
    camera_id = int(camera)
    ws = web.WebSocketResponse(max_msg_size=protocol.MAX_MEDIA_FRAME,
                               heartbeat=request.app[SERVICES].settings.agent_heartbeat)

    async def close() -> None:
        await ws.close(code=4010, message=b"push stopped")

    feed = controller.accept_push(camera_id, push_id, close)
    if feed is None:
        log.info("camera %d: refused media for push %s: not the current push", camera_id, push_id)
        return web.json_response({"error": "not the current push"}, status=409)
    await ws.prepare(request)
    frames, started = 0, False
    try:
        async for message in ws:
            if message.type != WSMsgType.BINARY or len(message.data) <= protocol.MEDIA_HEADER.size:
                log.warning("camera %d: closing push %s: malformed media frame", camera_id, push_id)
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
        log.info("camera %d: media socket of push %s closed after %d frames", camera_id, push_id,
                 frames)
    return ws
