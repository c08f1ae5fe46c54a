"""What every WebRTC viewer of a camera sends, worked out once per frame: its RTP payloads.

Every viewer is handed the same ``av.Packet`` (``feed.py``). Its split into RTP payloads (FU-A,
STAP-A: aiortc's own H.264 packetizer) is the same for all of them, so it is done once and shared
(issue 12): the last ``RECENT_FRAMES`` splits are kept, each with the packet it came from (so a
packet's ``id`` cannot be reused while its split is kept); a viewer far enough behind that its
frame was forgotten gets it split again. Also the sender-report clock without ``datetime``.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import av
from aiortc.codecs.h264 import H264Encoder

#: Frames whose payloads are kept for the viewers still to send them (a few frames of every
#: camera being watched: all of a camera's viewers send a frame within a tick or two).
RECENT_FRAMES = 512
#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_TO_UNIX = 2_208_988_800

_recent: OrderedDict[int, tuple[av.Packet, list[bytes], int]] = OrderedDict()
_packer = H264Encoder()  # (its pack() keeps no state: one serves every camera)


def payloads_of(packet: av.Packet) -> tuple[list[bytes], int]:
    """The RTP payloads of an Annex-B H.264 packet and its 90 kHz timestamp (shared: never
    modify the list)."""
    kept = _recent.get(id(packet))
    if kept is not None and kept[0] is packet:
        return kept[1], kept[2]
    payloads, timestamp = _packer.pack(packet)
    _recent[id(packet)] = (packet, payloads, timestamp)
    if len(_recent) > RECENT_FRAMES:
        _recent.popitem(last=False)
    return payloads, timestamp


def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp (what ``aiortc.clock.current_ntp_time`` answers)."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return ((seconds + NTP_TO_UNIX) << 32) | ((nanoseconds << 32) // 1_000_000_000)
