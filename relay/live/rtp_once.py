"""aiortc's RTP sender, made to do per frame what it did per viewer (issue 12, first step).

Every WebRTC viewer of a camera is handed the same ``av.Packet`` (``feed.py``); aiortc's sender
then split it into RTP payloads again for each viewer, and read the clock through ``datetime``
arithmetic twice per RTP packet (``aiortc.clock.current_ntp_time``: the abs-send-time header
extension and the sender-report clock). Two process-wide changes, put in by ``setup_live`` like
``limit_ice_addresses``; the rest of aiortc's sender (sequence numbers, SSRC, timestamp offset,
header extensions, SRTP, NACK history, RTCP) is unchanged and still per viewer:

* H.264 pass-through: a packet is split into payloads (FU-A, STAP-A: aiortc's own packetizer)
  once, and every viewer's sender gets that same list. The last ``RECENT_FRAMES`` splits are kept,
  each with the packet it came from (so a packet's ``id`` cannot be reused while its split is
  kept); a viewer far enough behind that its frame was forgotten gets it split again.
* the NTP clock from ``time.time_ns()``: the same 64-bit NTP timestamp, without ``datetime``.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import av
from aiortc import clock, rtcrtpsender
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

#: Frames whose payloads are kept for the viewers still to send them (a few frames of every
#: camera being watched: all of a camera's viewers send a frame within a tick or two).
RECENT_FRAMES = 512
#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_TO_UNIX = 2_208_988_800

_recent: OrderedDict[int, tuple[av.Packet, list[bytes], int]] = OrderedDict()


class SharedH264Packer(H264Encoder):
    """aiortc's H.264 packer for pre-encoded packets, splitting each packet once for all viewers."""

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:  # type: ignore[override]
        kept = _recent.get(id(packet))
        if kept is not None and kept[0] is packet:
            return kept[1], kept[2]
        payloads, timestamp = super().pack(packet)
        _recent[id(packet)] = (packet, payloads, timestamp)
        if len(_recent) > RECENT_FRAMES:
            _recent.popitem(last=False)
        return payloads, timestamp


def _encoder_for(codec: RTCRtpCodecParameters) -> Encoder:
    if codec.mimeType.lower() == "video/h264":
        return SharedH264Packer()
    return get_encoder(codec)


def current_ntp_time() -> int:
    """Now as a 64-bit NTP timestamp (what ``aiortc.clock.current_ntp_time`` answers)."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return ((seconds + NTP_TO_UNIX) << 32) | ((nanoseconds << 32) // 1_000_000_000)


def install() -> None:
    """Put both changes into aiortc (idempotent)."""
    rtcrtpsender.get_encoder = _encoder_for  # type: ignore[attr-defined]
    clock.current_ntp_time = current_ntp_time
