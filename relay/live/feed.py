"""A camera's live feed: the access units its agent pushes, fanned out to every viewer unchanged.

Each frame becomes one ``av.Packet`` (Annex-B H.264, 90 kHz pts) that every subscriber shares: the
relay encodes nothing per viewer. The feed keeps the current GOP (from the last keyframe) so a new
viewer starts decoding at once. A subscriber that falls behind drops whole GOPs: once its queue is
full it skips everything up to the next keyframe, never a single frame mid-GOP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import av

from ..media.frames import make_packet
from ..media.gop import GopCache
from ..media.gop_queue import WholeGopQueue
from . import census

MAX_GOP_FRAMES = 600
MAX_GOP_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


class Subscription(Generic[T]):
    """One viewer's queue of shared items (packets, or MP4 fragments), awaited: a
    :class:`WholeGopQueue` that catches up, so a viewer that fell behind comes back live."""

    def __init__(self, limit: int) -> None:
        self._queue: WholeGopQueue[T] = WholeGopQueue(limit, catch_up=True)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        census.track("subscription", self)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def offer(self, item: T, keyframe: bool) -> None:
        if not self.closed and self._queue.offer(item, keyframe):
            self._wake()

    def skip_to_keyframe(self) -> None:
        self._queue.skip_to_keyframe()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def get(self) -> T | None:
        """The next item, or None once the subscription is closed."""
        while not self._queue:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.pop()


class LiveFeed:
    def __init__(self, request_keyframe: Callable[[], None]) -> None:
        self._gop: GopCache[av.Packet] = GopCache(MAX_GOP_FRAMES, MAX_GOP_BYTES)
        self._subscribers: set[Subscription[av.Packet]] = set()
        self._request_keyframe = request_keyframe
        self.first_packet = asyncio.Event()
        self.frames = 0

    def publish(self, payload: bytes, pts: int, keyframe: bool) -> av.Packet | None:
        """Take one frame from the agent; returns its packet (None when it cannot start a GOP)."""
        if not keyframe and not self._gop.synced:
            return None  # nothing decodable before the first keyframe
        packet = make_packet(payload, pts, keyframe)
        self._gop.add(packet, keyframe, len(payload))
        self.frames += 1
        self.first_packet.set()
        for subscription in self._subscribers:
            subscription.offer(packet, keyframe)
        return packet

    def subscribe(self, limit: int = 300) -> Subscription[av.Packet]:
        """A new viewer's queue, primed with the current GOP so it can decode at once."""
        subscription: Subscription[av.Packet] = Subscription(limit)
        for packet in self._gop.frames():
            subscription.offer(packet, packet.is_keyframe)
        self._subscribers.add(subscription)
        self._request_keyframe()
        return subscription

    def unsubscribe(self, subscription: Subscription[av.Packet]) -> None:
        subscription.close()
        self._subscribers.discard(subscription)

    def request_keyframe(self) -> None:
        self._request_keyframe()

    def reset(self) -> None:
        """The push ended: forget its GOP (a new push starts from a new keyframe)."""
        self._gop.reset()
        self.first_packet.clear()

    def close(self) -> None:
        for subscription in self._subscribers:
            subscription.close()
        self._subscribers.clear()
        self.reset()
