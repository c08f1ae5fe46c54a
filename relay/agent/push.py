"""Live push: a camera's video as protocol media frames, and the socket that carries them.

A source's packets become :class:`MediaFrame` objects (one H.264 access unit in Annex-B form, SPS and
PPS in front of every IDR, pts in 90 kHz) through one of two pipelines, run in the source's thread:

* :class:`Passthrough` for H.264 Baseline / Constrained Baseline without B-frames: only the
  ``h264_mp4toannexb`` bitstream filter (plus SPS/PPS put back in front of IDRs that lack them);
* :class:`Transcoder` for anything else: decoded and encoded once with libx264, constrained
  baseline, zerolatency, GOP about 2 s, at the gatherer's ``sub_rate`` — only while a push runs.

A :class:`Push` is one ``/agent/media`` WebSocket. Frames reach it from the source thread through
``call_soon_threadsafe`` into a bounded :class:`FrameQueue`; when the relay reads too slowly whole GOPs
are dropped (everything until the next keyframe), never single frames in the middle of a GOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple, Protocol

import aiohttp
import av
import av.bitstream
from av.video.frame import PictureType

from ..link import protocol

log = logging.getLogger(__name__)

NAL_SLICE, NAL_IDR, NAL_SPS, NAL_PPS = 1, 5, 7, 8
START_CODE = b"\x00\x00\x00\x01"
PASSTHROUGH_PROFILES = ("Baseline", "Constrained Baseline")

#: The GOP a source keeps and the frames a push may queue: at most this many, and this many bytes.
MAX_FRAMES = 300
MAX_BYTES = 8 * 1024 * 1024
#: The largest access unit a media frame may carry (the relay's message limit, less our header).
MAX_PAYLOAD = protocol.MAX_MEDIA_FRAME - protocol.MEDIA_HEADER.size
DEFAULT_KBPS = 512
GOP_SECONDS = 2.0
MEDIA_TIME_BASE = Fraction(1, protocol.MEDIA_CLOCK)


class MediaFrame(NamedTuple):
    data: bytes  # one access unit, Annex-B
    keyframe: bool  # an IDR, with SPS and PPS in front
    pts: int  # 90 kHz


# H.264 Annex-B


def nal_spans(data: bytes) -> list[tuple[int, int, int]]:
    """``(nal_type, start, end)`` of each NAL unit (start code excluded, trailing zeros kept)."""
    spans: list[tuple[int, int, int]] = []
    at = data.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(data):
        start = at + 3
        at = data.find(b"\x00\x00\x01", start)
        spans.append((data[start] & 0x1F, start, len(data) if at < 0 else at))
    return spans


def nal_types(data: bytes) -> list[int]:
    return [nal_type for nal_type, _, _ in nal_spans(data)]


class ParameterSets:
    """The latest SPS and PPS seen, to put in front of IDRs that arrive without them (RTSP sources
    often carry them only in the SDP)."""

    def __init__(self, extradata: bytes | None) -> None:
        self.sps = self.pps = b""
        if extradata and not extradata.startswith(b"\x01"):  # Annex-B, not avcC
            self.learn(extradata)

    def learn(self, data: bytes) -> None:
        for nal_type, start, end in nal_spans(data):
            if nal_type in (NAL_SPS, NAL_PPS):
                nal = START_CODE + data[start:end].rstrip(b"\x00")
                if nal_type == NAL_SPS:
                    self.sps = nal
                else:
                    self.pps = nal

    def frame(self, data: bytes, pts: int) -> MediaFrame:
        types = nal_types(data)
        if NAL_SPS in types or NAL_PPS in types:
            self.learn(data)
        keyframe = NAL_IDR in types
        if keyframe and (NAL_SPS not in types or NAL_PPS not in types):
            data = self.sps + self.pps + data
        return MediaFrame(data, keyframe, pts)


def is_passthrough(codec_context: Any) -> bool:
    """H.264 that browsers and the relay take as it is: (constrained) baseline, no B-frames."""
    return (codec_context.name == "h264" and codec_context.profile in PASSTHROUGH_PROFILES
            and not codec_context.has_b_frames)


# Timestamps


class Clock90:
    """Source timestamps → 90 kHz pts that only ever increase, across file loops and reopenings:
    each pass (an open, or a loop of a file) continues one frame after the last pts given."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.step = protocol.MEDIA_CLOCK // 25
        self._offset = 0
        self._rebase = True

    def new_pass(self, rate: Fraction | None = None) -> None:
        self._rebase = True
        if rate:
            self.step = max(1, round(protocol.MEDIA_CLOCK / rate))

    def stamp(self, pts: int | None, time_base: Fraction | None) -> int:
        if pts is None or time_base is None:
            at = (self.last + self.step) if self.last is not None else 0
        else:
            relative = round(pts * time_base * protocol.MEDIA_CLOCK)
            if self._rebase:
                self._offset = (self.last + self.step if self.last is not None else 0) - relative
            at = self._offset + relative
            if self.last is not None and at <= self.last:  # a source that jumped back
                self._offset += self.last + self.step - at
                at = self.last + self.step
        self._rebase = False
        self.last = at
        return at


# Pipelines (run in the source's thread)


def source_rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return min(max(Fraction(rate), Fraction(1)), Fraction(120))


class Passthrough:
    """H.264 the relay can take: the bitstream filter only; the source's GOP is kept even when
    nobody watches, so a push starts with the current GOP."""

    keeps_gop = True
    label = "passed through"

    def __init__(self, stream: Any, clock: Clock90) -> None:
        self._filter = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        self._params = ParameterSets(stream.codec_context.extradata)
        self._clock = clock

    def feed(self, packet: av.Packet, watched: bool) -> list[MediaFrame]:
        frames = []
        for out in self._filter.filter(packet):
            data = bytes(out)
            if data:
                pts = out.pts if out.pts is not None else packet.pts
                frames.append(self._params.frame(data, self._clock.stamp(pts, packet.time_base)))
        return frames

    def end_pass(self) -> list[MediaFrame]:
        return []

    def request_keyframe(self) -> bool:
        return False  # a passed-through source cannot be asked for an IDR

    def close(self) -> None:
        pass


class Transcoder:
    """Anything else: decoded and encoded with libx264 (constrained baseline, zerolatency, no
    B-frames), only while watched. The source's packets since its last keyframe are kept, so a push
    that starts mid-GOP decodes them at once and begins with an IDR of the current picture."""

    keeps_gop = False
    label = "re-encoded while pushed"

    def __init__(self, stream: Any, clock: Clock90, kbps: Callable[[], int]) -> None:
        self._decoder = stream.codec_context
        self._time_base = stream.time_base
        self._rate = source_rate(stream)
        self._clock = clock
        self._kbps = kbps
        self._raw: deque[av.Packet] = deque()
        self._raw_bytes = 0
        self._raw_ok = False  # the raw packets start at a keyframe
        self._decoding = False
        self._encoder: Any = None
        self._force = False

    def feed(self, packet: av.Packet, watched: bool) -> list[MediaFrame]:
        self._keep(packet)
        if not watched:
            if self._decoding:
                self._decoding, self._encoder = False, None
            return []
        if self._decoding:
            return [out for frame in self._decode(packet) for out in self._encode(frame)]
        if not self._raw_ok:
            return []  # wait for the source's next keyframe
        self._decoder.flush_buffers()
        self._decoding, self._force = True, True
        decoded = [frame for raw in list(self._raw) for frame in self._decode(raw)]
        return [out for frame in decoded[-1:] for out in self._encode(frame)]

    def end_pass(self) -> list[MediaFrame]:
        """A file loops: drain the decoder so the frames of this pass come out before the next."""
        if not self._decoding:
            return []
        frames = [out for frame in self._decode(None) for out in self._encode(frame)]
        self._decoder.flush_buffers()
        return frames

    def request_keyframe(self) -> bool:
        self._force = True
        return True

    def close(self) -> None:
        self._encoder = None
        self._raw.clear()

    def _keep(self, packet: av.Packet) -> None:
        if packet.is_keyframe:
            self._raw.clear()
            self._raw_bytes, self._raw_ok = 0, True
        if not self._raw_ok:
            return
        if len(self._raw) >= MAX_FRAMES or self._raw_bytes + packet.size > MAX_BYTES:
            self._raw.clear()
            self._raw_bytes, self._raw_ok = 0, False
            return
        self._raw.append(packet)
        self._raw_bytes += packet.size

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return list(self._decoder.decode(packet))
        except av.FFmpegError as exc:
            log.debug("skipping a packet that does not decode: %s", exc)
            return []

    def _open_encoder(self, width: int, height: int) -> Any:
        kbps = min(max(int(self._kbps() or DEFAULT_KBPS), 64), 20_000)
        gop = max(1, round(self._rate * Fraction(GOP_SECONDS)))
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.time_base = MEDIA_TIME_BASE
        encoder.framerate = self._rate
        encoder.bit_rate = kbps * 1000
        encoder.gop_size = gop
        encoder.options = {
            "profile": "baseline", "preset": "veryfast", "tune": "zerolatency", "bf": "0",
            "g": str(gop), "forced-idr": "1",
            "x264-params": f"scenecut=0:vbv-maxrate={kbps}:vbv-bufsize={kbps}",
        }  # fmt: skip
        log.info("encoding %dx%d at %d kbps, GOP %d", width, height, kbps, gop)
        return encoder

    def _encode(self, frame: av.VideoFrame) -> list[MediaFrame]:
        width, height = frame.width & ~1, frame.height & ~1
        if width < 2 or height < 2:
            return []
        pts = self._clock.stamp(frame.pts, self._time_base)
        if self._encoder is None or (self._encoder.width, self._encoder.height) != (width, height):
            self._encoder, self._force = self._open_encoder(width, height), True
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
            frame = frame.reformat(width, height, "yuv420p")
        frame.pts, frame.time_base = pts, MEDIA_TIME_BASE
        # A decoded frame keeps its source picture type; left as it is, libx264 makes IDRs of them.
        # (The flag is set from the event loop: cleared only once seen, so no request is lost.)
        frame.pict_type = PictureType.NONE
        if self._force:
            self._force = False
            frame.pict_type = PictureType.I
        out = []
        for packet in self._encoder.encode(frame):
            data = bytes(packet)
            types = nal_types(data)
            out.append(MediaFrame(data, NAL_IDR in types, pts if packet.pts is None else packet.pts))
        return out


# Sending


class Tappable(Protocol):
    def add_tap(self, tap: Callable[[MediaFrame], None]) -> list[MediaFrame]: ...

    def remove_tap(self, tap: Callable[[MediaFrame], None]) -> None: ...


class FrameQueue:
    """Frames waiting for the socket. Bounded: a frame that does not fit starts a drop that lasts
    until the next keyframe; a keyframe that does not fit replaces what waits (a GOP's tail)."""

    def __init__(self, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES) -> None:
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._frames: deque[MediaFrame] = deque()
        self._bytes = 0
        self._dropping = True  # a push starts at a keyframe
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: MediaFrame) -> bool:
        if len(frame.data) > MAX_PAYLOAD:
            self._dropping = True
        elif frame.keyframe:
            if not self._fits(frame):
                self.dropped += len(self._frames)
                self._frames.clear()
                self._bytes = 0
            self._dropping = not self._fits(frame)
        elif not self._fits(frame):
            self._dropping = True
        if self._dropping:
            self.dropped += 1
            return False
        self._frames.append(frame)
        self._bytes += len(frame.data)
        return True

    def pop(self) -> MediaFrame | None:
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self._bytes -= len(frame.data)
        return frame

    def _fits(self, frame: MediaFrame) -> bool:
        return len(self._frames) < self.max_frames and self._bytes + len(frame.data) <= self.max_bytes


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
