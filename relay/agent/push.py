"""Live push: a camera's frames on the socket that carries them to the relay.

A source's packets become :class:`~relay.media.frames.MediaFrame` objects in the source's thread (see
:mod:`relay.media.pipelines`). A :class:`Push` is one ``/agent/media`` WebSocket. Frames reach it from
the source thread through ``call_soon_threadsafe`` into a bounded :class:`FrameQueue`; when the relay
reads too slowly whole GOPs are dropped (everything until the next keyframe), never single frames in
the middle of a GOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import aiohttp

from ..link import protocol
from ..media.frames import MediaFrame
from ..media.gop import MAX_BYTES, MAX_FRAMES
from ..media.gop_queue import WholeGopQueue

log = logging.getLogger(__name__)

#: The largest access unit a media frame may carry (the relay's message limit, less our header).
MAX_PAYLOAD = protocol.MAX_MEDIA_FRAME - protocol.MEDIA_HEADER.size


class Tappable(Protocol):
    def add_tap(self, tap: Callable[[MediaFrame], None]) -> list[MediaFrame]: ...

    def remove_tap(self, tap: Callable[[MediaFrame], None]) -> None: ...


class FrameQueue:
    """Frames waiting for the socket: whole GOPs or nothing (a :class:`WholeGopQueue` that keeps
    what waits on overflow), and never a frame bigger than a media message."""

    def __init__(self, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES) -> None:
        self._queue: WholeGopQueue[MediaFrame] = WholeGopQueue(
            max_frames, max_bytes, max_item_bytes=MAX_PAYLOAD)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def offer(self, frame: MediaFrame) -> bool:
        return self._queue.offer(frame, frame.keyframe, len(frame.data))

    def pop(self) -> MediaFrame | None:
        return self._queue.pop()


class Push:
    """One push: the camera's frames on one ``/agent/media`` socket, until ``stop()``, the relay
    closes the socket, or it fails. ``on_end(push)`` is called once, in the event loop."""

    def __init__(self, camera_id: int, push_id: str, source: Tappable,
                 ws: aiohttp.ClientWebSocketResponse, on_end: Callable[[Push], None]) -> None:
        self.camera_id = camera_id
        self.push_id = push_id
        self.source = source
        self.queue = FrameQueue()
        self.sent = 0
        self.ended = False
        self._ws = ws
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._gone = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for frame in self.source.add_tap(self._from_thread):
            self._offer(frame)
        self._task = self._loop.create_task(self._run(), name=f"push-{self.camera_id}-{self.push_id}")

    def stop(self, reason: str) -> None:
        if self.ended:
            return
        self._finish(reason)
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})

    def _from_thread(self, frame: MediaFrame) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the agent is gone
            self._loop.call_soon_threadsafe(self._offer, frame)

    def _offer(self, frame: MediaFrame) -> None:
        if not self.ended and self.queue.offer(frame):
            self._wake.set()

    def _finish(self, reason: str) -> None:
        self.ended = True
        self.source.remove_tap(self._from_thread)
        log.info("camera %d: push %s ended (%s) after %d frame(s), %d dropped", self.camera_id,
                 protocol.push_label(self.push_id), reason, self.sent, self.queue.dropped)
        self._on_end(self)

    async def _watch(self) -> None:
        """Read the socket (pings, the close) until the relay closes it."""
        try:
            async for _ in self._ws:
                pass
        finally:
            self._gone = True
            self._wake.set()

    async def _run(self) -> None:
        watcher = self._loop.create_task(self._watch())
        reason = "stopped"
        try:
            while not self._gone:
                frame = self.queue.pop()
                if frame is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                flags = protocol.KEYFRAME if frame.keyframe else 0
                await self._ws.send_bytes(protocol.MEDIA_HEADER.pack(flags, frame.pts) + frame.data)
                self.sent += 1
            reason = f"the relay closed the media socket, code {self._ws.close_code}"
        except (ConnectionError, aiohttp.ClientError) as exc:
            reason = f"the media socket failed: {exc or exc.__class__.__name__}"
        finally:
            watcher.cancel()
            if not self.ended:
                self._finish(reason)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, TimeoutError):
                await self._ws.close()
