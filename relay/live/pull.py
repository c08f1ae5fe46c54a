"""A camera's media pulled from the node that holds its agent: one node-to-node link per camera.

In a cluster the node holding the gatherer's link owns the camera's live state and the agent's one
push. A node whose viewers watch a camera held elsewhere opens one WebSocket to the holder
(``relay.cluster.routes`` ``/cluster/v1/live/<camera_id>``, with the cluster secret), however many
viewers it has, and publishes what comes into its own feed: its GOP cache, its viewers, its MSE
muxer work as for a local push. On the holder that link is one viewer, alive as long as the
socket is, so the holder's close-after rule and the push stop as for any viewer. Keyframe
requests from this node's viewers (joins, PLI/FIR) go up the link as ``keyframe`` text messages.

Frames travel as the agent sends them (``protocol.MEDIA_HEADER``: flags, 90 kHz pts; then the
Annex-B access unit). The link is reopened with a short backoff while viewers remain (the holder
restarted the push, or the gatherer moved: the owner is looked up again each time).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiohttp

from .. import tasks
from ..link import protocol
from .feed import LiveFeed

log = logging.getLogger(__name__)

LIVE_PATH = "/cluster/v1/live/{camera_id}"


class NodePull:
    def __init__(self, camera_id: int, feed: LiveFeed, holder: Callable[[], Awaitable[str | None]],
                 headers: dict[str, str], first_frame: Callable[[], None]) -> None:
        self.camera_id = camera_id
        self._feed = feed
        self._holder = holder
        self._headers = headers
        self._first_frame = first_frame
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.error = ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pull camera {self.camera_id}")

    async def close(self) -> None:
        """End the link for good. The flag, not only the cancellation, ends the loop: a library
        that swallows a cancellation (``relay.tasks``) would otherwise leave a link running
        that nobody owns, keeping the holder's push alive."""
        self._closed = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        await tasks.stop(self._task)
        self._task = None

    def request_keyframe(self) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            task = asyncio.ensure_future(ws.send_str("keyframe"))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _run(self) -> None:
        failures = 0
        async with aiohttp.ClientSession(headers=self._headers) as http:
            while not self._closed:
                url = await self._holder()
                if self._closed:
                    break
                if url is None:
                    self.error = "采集端离线 · the gatherer is offline"
                else:
                    try:
                        if await self._pull(http, url):
                            failures = 0
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        self.error = "the node holding the camera is unreachable"
                        log.warning("camera %d: media link to %s failed: %s", self.camera_id, url,
                                    exc.__class__.__name__)
                failures += 1
                self._feed.reset()
                await asyncio.sleep(min(5.0, 0.25 * 2 ** min(failures, 5)) * random.uniform(0.5, 1))

    async def _pull(self, http: aiohttp.ClientSession, url: str) -> bool:
        """One link until it ends; True when frames came over it."""
        address = url.replace("http", "ws", 1) + LIVE_PATH.format(camera_id=self.camera_id)
        frames = 0
        async with http.ws_connect(address, heartbeat=10, max_msg_size=protocol.MAX_MEDIA_FRAME,
                                   timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            self._ws = ws
            log.info("camera %d: media link to the holding node %s open", self.camera_id, url)
            try:
                async for message in ws:
                    if self._closed or message.type != aiohttp.WSMsgType.BINARY or \
                            len(message.data) <= protocol.MEDIA_HEADER.size:
                        break
                    flags, pts = protocol.MEDIA_HEADER.unpack_from(message.data)
                    packet = self._feed.publish(message.data[protocol.MEDIA_HEADER.size:], pts,
                                                bool(flags & protocol.KEYFRAME))
                    if packet is not None and not frames:
                        self.error = ""
                        self._first_frame()
                    frames += 1
            finally:
                self._ws = None
            log.info("camera %d: media link to %s closed after %d frames (%s)", self.camera_id,
                     url, frames, ws.close_code)
        return frames > 0
