"""A camera's live feed: the access units its agent pushes, fanned out to every viewer unchanged.

Each frame becomes one ``av.Packet`` (Annex-B H.264, 90 kHz pts) that every subscriber shares: the
relay encodes nothing per viewer. The feed keeps the current GOP (from the last keyframe) so a new
viewer starts decoding at once. A subscriber that falls behind drops whole GOPs: once its queue is
full it skips everything up to the next keyframe, never a single frame mid-GOP.

A WebRTC viewer's cached GOP is *paced* (``subscribe(paced=True)``): sent whole at once, up to two
seconds of video (~220 RTP packets a viewer) overflowed viewers' socket buffers when many joined
together. From its first frame it goes at ``speed`` × real time (at least ``MIN_SPEEDUP``, more for a
long backlog so that it is live within ``CATCH_UP`` s), so the viewer decodes at once and reaches the
live edge soon after; pacing ends for good once its queue is empty (it is live) or its timeline
jumps. A node-to-node link (TCP) takes the GOP unpaced: the node it feeds paces its own viewers.

A consumer may also take its items *directly* (``sink``): while it waits at the live edge (queue
empty, pacing over), an item is handed to its sink inside ``publish`` instead of waking its task,
so a frame reaches every live WebRTC viewer in one pass over them (issue 12: no task switch per
viewer and frame); a backlog, a paced join or a slow consumer still goes through its queue.
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
#: A joining viewer's backlog goes at least this many times real time...
MIN_SPEEDUP = 3.0
#: ...and faster when it is long, so that the viewer is live within about this many seconds.
CATCH_UP = 1.0
#: A frame due this far ahead of the pace is a jump in the timeline (not a backlog): pacing ends.
PACE_JUMP = 0.5

T = TypeVar("T")


class Subscription(Generic[T]):
    """One viewer's queue of shared items (packets, or MP4 fragments), awaited: a
    :class:`WholeGopQueue` that catches up, so a viewer that fell behind comes back live."""

    def __init__(self, limit: int, media_time: Callable[[T], float] | None = None) -> None:
        self._queue: WholeGopQueue[T] = WholeGopQueue(limit, catch_up=True)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        #: An item's media time in seconds, while its backlog is paced (None: not, or no longer).
        self._media_time = media_time
        self._pace: tuple[float, float, float] | None = None  # wall start, media start, speed
        #: Takes an item at once while the consumer waits at the live edge (None: never).
        self.sink: Callable[[T], None] | None = None
        census.track("subscription", self)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def offer(self, item: T, keyframe: bool) -> None:
        if self.closed or not self._queue.offer(item, keyframe):
            return
        if self.sink is not None and self._media_time is None and len(self._queue) == 1 and (
                self._waiter is not None and not self._waiter.done()):
            self._queue.pop()  # the consumer waits for exactly this: hand it over now
            self.sink(item)
        else:
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
        """The next item, or None once the subscription is closed; while a backlog is paced, not
        before its time."""
        while not self._queue:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = self._queue.pop()
        if self._media_time is not None:
            await self._wait_for_pace(item)
        return item

    async def _wait_for_pace(self, item: T) -> None:
        assert self._media_time is not None
        media, now = self._media_time(item), asyncio.get_running_loop().time()
        newest = self._queue.newest()
        if newest is None:  # nothing waits behind it: live
            self._media_time = None
            return
        if self._pace is None:  # the first frame goes at once and sets the pace
            behind = self._media_time(newest) - media
            self._pace = (now, media, max(MIN_SPEEDUP, 1 + behind / CATCH_UP))
            return
        start, media_start, speed = self._pace
        ahead = start + (media - media_start) / speed - now
        if media < media_start or ahead > PACE_JUMP:  # a new timeline, or a gap: not a backlog
            self._media_time = None
        elif ahead > 0:
            await asyncio.sleep(ahead)


def _packet_seconds(packet: av.Packet) -> float:
    return float(packet.pts * packet.time_base) if packet.pts is not None else 0.0


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

    def subscribe(self, limit: int = 300, *, paced: bool = False) -> Subscription[av.Packet]:
        """A new viewer's queue, primed with the current GOP so it can decode at once (paced for
        a viewer over UDP)."""
        subscription: Subscription[av.Packet] = Subscription(
            limit, _packet_seconds if paced else None)
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
