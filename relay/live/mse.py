"""MSE viewers: the camera's packets as fragmented MP4 over a WebSocket, for networks without UDP.

One muxer per camera serves all its MSE viewers (``MseFeed``): PyAV's mp4 muxer writes an init
segment (ftyp + moov) and then one fragment (moof + mdat) per frame; nothing is re-encoded. A viewer
receives a JSON text message naming the codec and size, the init segment, the fragments of the
current GOP, then live fragments; a new text message and init segment follow if the stream's
parameters change. Slow viewers drop whole GOPs.

The muxer, and the page's SourceBuffer, need timestamps that only go forward, but a new push may
start anywhere: an agent that restarted counts from zero again, and a push restarted within a GOP
begins with that GOP again. ``MseFeed`` keeps one timeline: a frame that would not move it forward is
placed one frame after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from fractions import Fraction

import av

from ..link.protocol import MEDIA_CLOCK
from .feed import TIME_BASE, LiveFeed, Subscription
from .h264 import codec_string, parameter_sets

log = logging.getLogger(__name__)

MOVFLAGS = "empty_moov+default_base_moof+frag_every_frame+skip_trailer"


class _Sink:
    """The file object PyAV writes to: collects what each mux call wrote."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


class Fmp4Segmenter:
    """Fragments one stream (fixed SPS/PPS). ``push`` returns the bytes the muxer wrote, which
    are the fragment of the *previous* frame (the muxer needs the next pts for a duration)."""

    def __init__(self, keyframe: av.Packet, sps: bytes, pps: bytes) -> None:
        decoder = av.CodecContext.create("h264", "r")
        frames = decoder.decode(keyframe)
        if not frames:
            raise ValueError("the keyframe does not decode")
        self.width, self.height = frames[0].width, frames[0].height
        self.codec = codec_string(sps)
        self.parameters = (sps, pps)
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format="mp4", options={"movflags": MOVFLAGS})
        self._stream = self._container.add_stream("h264")
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.time_base = TIME_BASE
        self._stream.codec_context.extradata = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
        self.init = b""

    def push(self, packet: av.Packet, pts: int) -> bytes:
        copy = av.Packet(bytes(packet))
        copy.pts = copy.dts = pts
        copy.time_base = Fraction(TIME_BASE)
        copy.is_keyframe = packet.is_keyframe
        copy.stream = self._stream
        self._container.mux(copy)
        written = self._sink.take()
        if not self.init:
            self.init, written = written, b""
        return written

    def close(self) -> None:
        with contextlib.suppress(av.FFmpegError, ValueError):
            self._container.close()


class MseFeed:
    """The fMP4 form of one camera's feed, shared by that camera's MSE viewers."""

    def __init__(self, feed: LiveFeed) -> None:
        self._feed = feed
        self._viewers: set[Subscription[bytes]] = set()
        self._segmenter: Fmp4Segmenter | None = None
        self._header: list[bytes] = []  # the codec message and init segment
        self._gop: list[bytes] = []
        self._previous_keyframe = False
        self._last_pts: int | None = None  # the last pts muxed, on our timeline
        self._offset = 0  # from the feed's pts to our timeline
        self._step = MEDIA_CLOCK // 25  # a frame's duration, as last seen
        self._task = asyncio.create_task(self._run())

    def subscribe(self, limit: int = 300) -> Subscription[bytes]:
        viewer: Subscription[bytes] = Subscription(limit)
        for index, item in enumerate(self._header + self._gop):
            viewer.offer(item, index == 0)
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
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
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

    def _timeline(self, pts: int) -> int:
        at = pts + self._offset
        if self._last_pts is not None:
            if at <= self._last_pts:  # a new push, from an earlier time: continue after the last
                self._offset += self._last_pts + self._step - at
                at = self._last_pts + self._step
            elif at - self._last_pts <= MEDIA_CLOCK:
                self._step = at - self._last_pts
        return at

    def _take(self, packet: av.Packet) -> None:
        if packet.is_keyframe:
            parameters = parameter_sets(bytes(packet))
            if parameters and (self._segmenter is None
                               or parameters != self._segmenter.parameters) \
                    and self._start_stream(packet, *parameters):
                return
        if self._segmenter is None:
            return
        pts = self._timeline(packet.pts)
        fragment = self._segmenter.push(packet, pts)
        self._last_pts = pts
        if fragment:
            # This is the previous frame's fragment: a GOP starts with the keyframe's fragment.
            if self._previous_keyframe:
                self._gop = []
            self._gop.append(fragment)
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
        pts = self._timeline(keyframe.pts)
        segmenter.push(keyframe, pts)  # writes the init segment; the keyframe's fragment comes next
        self._last_pts = pts
        self._previous_keyframe = True
        describe = json.dumps({"codec": segmenter.codec, "width": segmenter.width,
                               "height": segmenter.height}).encode()
        self._header, self._gop = [describe, segmenter.init], []
        self._broadcast(describe, True)
        self._broadcast(segmenter.init, False)
        return True

    def _end_stream(self) -> None:
        """Forget the muxer: the next keyframe starts a new stream (codec message, init segment)."""
        if self._segmenter is not None:
            self._segmenter.close()
        self._segmenter = None
