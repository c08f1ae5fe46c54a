"""A source's packets → :class:`~.frames.MediaFrame` objects, run in the thread that reads the source.

Every frame is one H.264 access unit in Annex-B form, SPS and PPS in front of every IDR, pts in 90 kHz:

* :class:`Passthrough` for H.264 Baseline / Constrained Baseline without B-frames: only the
  ``h264_mp4toannexb`` bitstream filter (plus SPS/PPS put back in front of IDRs that lack them);
* :class:`Transcoder` for anything else: decoded and encoded once with libx264, constrained
  baseline, zerolatency, GOP about 2 s, at a given bit rate — only while watched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import av.bitstream
from av.video.frame import PictureType

from .frames import MediaFrame
from .gop import GopCache
from .h264 import NAL_IDR, ParameterSets, nal_types
from .timeline import TIME_BASE, Clock90

log = logging.getLogger(__name__)

PASSTHROUGH_PROFILES = ("Baseline", "Constrained Baseline")
DEFAULT_KBPS = 512
GOP_SECONDS = 2.0


def is_passthrough(codec_context: Any) -> bool:
    """H.264 that browsers and the relay take as it is: (constrained) baseline, no B-frames."""
    return (codec_context.name == "h264" and codec_context.profile in PASSTHROUGH_PROFILES
            and not codec_context.has_b_frames)


def source_rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return min(max(Fraction(rate), Fraction(1)), Fraction(120))


def _copy(packet: av.Packet) -> av.Packet:
    copy = av.Packet(bytes(packet))
    copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
    copy.is_keyframe = packet.is_keyframe
    return copy


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
        # The filter empties the packet it is given, and the source's packet is also kept (its raw
        # GOP, for stream taps): the filter gets a copy.
        time_base, source_pts = packet.time_base, packet.pts
        for out in self._filter.filter(_copy(packet)):
            data = bytes(out)
            if data:
                pts = out.pts if out.pts is not None else source_pts
                data, keyframe = self._params.complete(data)
                frames.append(MediaFrame(data, keyframe,
                                         self._clock.stamp(pts, out.time_base or time_base)))
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
        self._raw: GopCache[av.Packet] = GopCache()
        self._decoding = False
        self._encoder: Any = None
        self._force = False

    def feed(self, packet: av.Packet, watched: bool) -> list[MediaFrame]:
        self._raw.add(packet, packet.is_keyframe, packet.size)
        if not watched:
            if self._decoding:
                self._decoding, self._encoder = False, None
            return []
        if self._decoding:
            return [out for frame in self._decode(packet) for out in self._encode(frame)]
        raw = self._raw.frames()
        if not raw:
            return []  # wait for the source's next keyframe
        self._decoder.flush_buffers()
        self._decoding, self._force = True, True
        decoded = [frame for packet in raw for frame in self._decode(packet)]
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
        self._raw.forget()

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
        encoder.time_base = TIME_BASE
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
        frame.pts, frame.time_base = pts, TIME_BASE
        # A decoded frame keeps its source picture type; left as it is, libx264 makes IDRs of them.
        # (The flag is set from the event loop: cleared only once seen, so no request is lost.)
        frame.pict_type = PictureType.NONE
        if self._force:
            self._force = False
            frame.pict_type = PictureType.I
        out = []
        for packet in self._encoder.encode(frame):
            data = bytes(packet)
            out.append(MediaFrame(data, NAL_IDR in nal_types(data),
                                  pts if packet.pts is None else packet.pts))
        return out
