"""A camera's live feed: the access units its agent pushes, fanned out to every viewer unchanged.

Each frame becomes one ``av.Packet`` (Annex-B H.264, 90 kHz pts) that every subscriber shares: the
relay encodes nothing per viewer. The feed keeps the current GOP (from the last keyframe) so a new
viewer starts decoding at once. A subscriber that falls behind drops whole GOPs: once its queue is
full it skips everything up to the next keyframe, never a single frame mid-GOP.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Generic, TypeVar

import av

from ..link.protocol import MEDIA_CLOCK
from . import census

TIME_BASE = Fraction(1, MEDIA_CLOCK)
MAX_GOP_FRAMES = 600
MAX_GOP_BYTES = 16 * 1024 * 1024


def make_packet(payload: bytes, pts: int, keyframe: bool) -> av.Packet:
    packet = av.Packet(payload)
    packet.pts = packet.dts = pts
    packet.time_base = TIME_BASE
    packet.is_keyframe = keyframe
    return packet


T = TypeVar("T")


class Subscription(Generic[T]):
    """One viewer's queue of shared items (packets, or MP4 fragments), dropping whole GOPs."""

    def __init__(self, limit: int) -> None:
        self._queue: deque[T] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._skipping = False
        self.closed = False
        self.dropped = 0
        census.track("subscription", self)

    def offer(self, item: T, keyframe: bool) -> None:
        if self.closed:
            return
        if self._skipping:
            if not keyframe:
                self.dropped += 1
                return
            self._skipping = False
        if len(self._queue) >= self._limit:
            # Too far behind: throw away what is queued and wait for the next keyframe.
            self.dropped += len(self._queue) + 1
            self._queue.clear()
            if not keyframe:
                self._skipping = True
                return
        self._queue.append(item)
        self._wake()

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
        return self._queue.popleft()


class LiveFeed:
    def __init__(self, request_keyframe: Callable[[], None]) -> None:
        self._gop: list[av.Packet] = []
        self._gop_bytes = 0
        self._subscribers: set[Subscription[av.Packet]] = set()
        self._request_keyframe = request_keyframe
        self.first_packet = asyncio.Event()
        self.frames = 0

    def publish(self, payload: bytes, pts: int, keyframe: bool) -> av.Packet | None:
        """Take one frame from the agent; returns its packet (None when it cannot start a GOP)."""
        if keyframe:
            self._gop, self._gop_bytes = [], 0
        elif not self._gop:
            return None  # nothing decodable before the first keyframe
        packet = make_packet(payload, pts, keyframe)
        if len(self._gop) < MAX_GOP_FRAMES and self._gop_bytes + len(payload) <= MAX_GOP_BYTES:
            self._gop.append(packet)
            self._gop_bytes += len(payload)
        self.frames += 1
        self.first_packet.set()
        for subscription in self._subscribers:
            subscription.offer(packet, keyframe)
        return packet

    def subscribe(self, limit: int = 300) -> Subscription[av.Packet]:
        """A new viewer's queue, primed with the current GOP so it can decode at once."""
        subscription: Subscription[av.Packet] = Subscription(limit)
        for packet in self._gop:
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
        self._gop, self._gop_bytes = [], 0
        self.first_packet.clear()

    def close(self) -> None:
        for subscription in self._subscribers:
            subscription.close()
        self._subscribers.clear()
        self.reset()
