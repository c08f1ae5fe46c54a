"""The unit both sides pass around: one H.264 access unit (Annex-B) with its 90 kHz pts."""

from __future__ import annotations

from typing import NamedTuple

import av

from .timeline import TIME_BASE


class MediaFrame(NamedTuple):
    data: bytes  # one access unit, Annex-B
    keyframe: bool  # an IDR, with SPS and PPS in front
    pts: int  # 90 kHz


def make_packet(payload: bytes, pts: int, keyframe: bool) -> av.Packet:
    """An access unit as an ``av.Packet`` at 90 kHz (what the relay's muxers and encoders take)."""
    packet = av.Packet(payload)
    packet.pts = packet.dts = pts
    packet.time_base = TIME_BASE
    packet.is_keyframe = keyframe
    return packet
