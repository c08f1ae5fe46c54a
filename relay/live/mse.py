"""MSE viewers: the camera's packets as fragmented MP4 over a WebSocket, for networks without UDP.

One muxer per camera serves all its MSE viewers (``MseFeed``, with :mod:`relay.media.fmp4`): PyAV's
mp4 muxer writes an init segment (ftyp + moov) and then one fragment (moof + mdat) per frame; nothing
is re-encoded. A viewer receives a JSON text message naming the codec and size, the init segment, the
fragments of the current GOP, then live fragments; a new text message and init segment follow if the
stream's parameters change. Slow viewers drop whole GOPs.

The muxer, and the page's SourceBuffer, need timestamps that only go forward, but a new push may
start anywhere: an agent that restarted counts from zero again, and a push restarted within a GOP
begins with that GOP again. ``MseFeed`` keeps one timeline (:class:`relay.media.timeline.Timeline`): a
frame that would not move it forward is placed one frame after the last.
"""

from __future__ import annotations

import asyncio
import json
import logging

import av

from .. import tasks
from ..media.fmp4 import Fmp4Segmenter
from ..media.gop import GopCache
from ..media.h264 import parameter_sets
from ..media.timeline import Timeline
from .feed import MAX_GOP_BYTES, MAX_GOP_FRAMES, LiveFeed, Subscription

log = logging.getLogger(__name__)


class MseFeed:
    """The fMP4 form of one camera's feed, shared by that camera's MSE viewers."""

    def __init__(self, feed: LiveFeed) -> None:
        self._feed = feed
        self._viewers: set[Subscription[bytes]] = set()
        self._segmenter: Fmp4Segmenter | None = None
        self._header: list[bytes] = []  # the codec message and init segment
        self._gop: GopCache[bytes] = GopCache(MAX_GOP_FRAMES, MAX_GOP_BYTES)  # fragments
        self._previous_keyframe = False
        self._timeline = Timeline()
        self._task = asyncio.create_task(self._run(), name="mse muxer")

    def subscribe(self, limit: int = 300) -> Subscription[bytes]:
        viewer: Subscription[bytes] = Subscription(limit)
        gop = self._gop.frames()
        for index, item in enumerate(self._header + gop):
            viewer.offer(item, index == 0)
        if not gop:
            viewer.skip_to_keyframe()  # the stream's next fragments are mid-GOP until a keyframe
        self._viewers.add(viewer)
        self._feed.request_keyframe()
        return viewer

    def unsubscribe(self, viewer: Subscription[bytes]) -> None:
        viewer.close()
        self._viewers.discard(viewer)

    @property
    def idle(self) -> bool:
        return not self._viewers

    async def close(self) -> None:
        for viewer in self._viewers:
            viewer.close()
        self._viewers.clear()
        await tasks.stop(self._task)
        self._end_stream()

    def _broadcast(self, item: bytes, keyframe: bool) -> None:
        for viewer in self._viewers:
            viewer.offer(item, keyframe)

    async def _run(self) -> None:
        source = self._feed.subscribe(limit=600)
        try:
            while (packet := await source.get()) is not None:
                try:
                    self._take(packet)
                except (av.FFmpegError, ValueError) as exc:  # the stream goes on from a keyframe
                    log.warning("mse: the muxer refused a frame (%s): starting again", exc)
                    self._end_stream()
        finally:
            self._feed.unsubscribe(source)

    def _take(self, packet: av.Packet) -> None:
        if packet.is_keyframe:
            parameters = parameter_sets(bytes(packet))
            if parameters and (self._segmenter is None
                               or parameters != self._segmenter.parameters) \
                    and self._start_stream(packet, *parameters):
                return
        if self._segmenter is None:
            return
        fragment = self._segmenter.push(packet, self._timeline.place(packet.pts))
        if fragment:
            # This is the previous frame's fragment: a GOP starts with the keyframe's fragment.
            self._gop.add(fragment, self._previous_keyframe, len(fragment))
            self._broadcast(fragment, self._previous_keyframe)
        self._previous_keyframe = packet.is_keyframe

    def _start_stream(self, keyframe: av.Packet, sps: bytes, pps: bytes) -> bool:
        try:
            segmenter = Fmp4Segmenter(keyframe, sps, pps)
        except (ValueError, av.FFmpegError) as exc:
            log.warning("mse: cannot start a stream: %s", exc)
            return False
        self._end_stream()
        self._segmenter = segmenter
        # Writes the init segment; the keyframe's fragment comes next.
        segmenter.push(keyframe, self._timeline.place(keyframe.pts))
        self._previous_keyframe = True
        describe = json.dumps({"codec": segmenter.codec, "width": segmenter.width,
                               "height": segmenter.height}).encode()
        self._header = [describe, segmenter.init]
        self._gop.reset()
        self._broadcast(describe, True)
        self._broadcast(segmenter.init, False)
        return True

    def _end_stream(self) -> None:
        """Forget the muxer: the next keyframe starts a new stream (codec message, init segment)."""
        if self._segmenter is not None:
            self._segmenter.close()
        self._segmenter = None
