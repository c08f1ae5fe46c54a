"""Fragmented MP4 of one H.264 stream, in memory: an init segment, then one fragment per frame."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import av

from .h264 import START_CODE, codec_string
from .timeline import TIME_BASE

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
        self._stream.codec_context.extradata = START_CODE + sps + START_CODE + pps
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
