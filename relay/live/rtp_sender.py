"""A lean RTP sender for pass-through H.264: per viewer only what must differ (issue 12).

aiortc's ``RTCRtpSender`` builds an ``RtpPacket`` object per packet, serializes its header
extensions through a map, reads the clock twice per packet and sends through four coroutine
layers (DTLS, ICE transport, ICE connection, STUN protocol). For a viewer of a camera, everything
but a few numbers is the same as for every other viewer, so :class:`LeanSender` keeps aiortc's
sender for what it does well (its RTCP: receiver reports, NACK and PLI/FIR routing, REMB, sender
reports, BYE; and its start/stop lifecycle) and replaces only its RTP loop:

* a frame published while the viewer waits at the live edge is handed to it inside the feed's
  ``publish`` (``FeedTrack.attach_sink``): no task switch per viewer and frame; a backlog (a
  paced join) goes through the track's queue and this sender's task as before;
* the frame's payloads come split once for all viewers (``rtp_once.payloads_of``);
* per packet only the 12-byte header (this viewer's SSRC, sequence number and timestamp offset)
  is packed, followed by header-extension bytes made once per frame (abs-send-time, mid);
* headers, SRTP with this viewer's own keys and the send to the nominated ICE pair's socket
  happen in C for all of a frame's packets at once (``fanout.py``: ``sendmmsg``), or in Python
  where the C path is not available;
* a NACK is answered from a history of the frames sent (first sequence number, timestamp and a
  reference to the shared payloads, not a copy), sent again as RTX when the viewer negotiated it;
* PLI/FIR reach ``_send_keyframe`` (the camera's shared, rate-limited request, set by
  ``webrtc.py``). REMB changes nothing (aiortc's handler finds no encoder: pass-through cannot
  change the bitrate); TWCC is never negotiated (aiortc's answer has no transport-cc extension).

It touches a few of aiortc 1.x's private names (the sender's started/exited events, its
counters for sender reports, the DTLS transport's SRTP session and the ICE connection's
nominated pair); ``tests/test_rtp_sender.py`` checks them against the installed aiortc.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Any

import av
from aiortc import RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.utils import random32

from . import fanout
from .rtp_once import ntp_now, payloads_of

log = logging.getLogger(__name__)

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
#: Frames per viewer kept for retransmission (~5 s at 25 fps).
HISTORY = 128
_HEADER = struct.Struct("!BBHII")

#: (first sequence number, RTP timestamp, shared payloads) of a frame sent.
Sent = tuple[int, int, list[bytes]]


class LeanSender(RTCRtpSender):
    """aiortc's sender with a lean RTP loop for pre-encoded H.264 (see the module docstring).
    Made from the sender aiortc created: :func:`make_lean`."""

    _extension_ids: tuple[int, int]  # abs-send-time, mid (0: not negotiated)
    _mid_element: bytes
    _payload_type: int
    _rtx: int | None
    _sequence: int
    _rtx_sequence: int
    _origin: int
    _history: deque[Sent]
    _route_pair: Any
    _route_session: Any
    _fast: fanout.Route | None

    def _prepare(self) -> None:
        self._extension_ids = (0, 0)
        self._mid_element = b""
        self._payload_type = 0
        self._rtx = None
        self._sequence = random_sequence_number()
        self._rtx_sequence = random_sequence_number()
        self._origin = random32()
        self._history = deque(maxlen=HISTORY)
        self._route_pair = self._route_session = self._fast = None

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        self._extension_ids = (ids.get(ABS_SEND_TIME, 0), ids.get(MID, 0))
        mid = (parameters.muxId or "").encode()
        if self._extension_ids[1] and 0 < len(mid) <= 16:  # (one-byte form: 1 to 16 bytes)
            self._mid_element = bytes([(self._extension_ids[1] << 4) | (len(mid) - 1)]) + mid
        main = parameters.codecs[0].payloadType
        self._payload_type = main
        self._rtx = next((codec.payloadType for codec in parameters.codecs
                          if is_rtx(codec) and codec.parameters.get("apt") == main), None)
        await super().send(parameters)

    def _extensions(self, ntp: int) -> bytes:
        """The one-byte header extensions (RFC 8285) of every packet sent now."""
        abs_id = self._extension_ids[0]
        body = self._mid_element
        if abs_id:
            body = bytes([(abs_id << 4) | 2]) + ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big") + body
        if not body:
            return b""
        body += b"\x00" * (-len(body) % 4)
        return b"\xbe\xde" + (len(body) // 4).to_bytes(2, "big") + body

    def _route(self) -> tuple[Any, Any, tuple[str, int], fanout.Route | None]:
        """This viewer's SRTP ``protect``, its socket's ``sendto``, its address, and its C
        route (``None``: the C path cannot take it)."""
        dtls = self.transport
        if dtls.state != "connected":
            raise ConnectionError("DTLS is not connected")
        pair = dtls.transport._connection._nominated.get(1)
        socket = pair.protocol.transport if pair is not None else None
        if socket is None or socket.is_closing():
            raise ConnectionError("no ICE pair to send on")
        session = dtls._tx_srtp
        if pair is not self._route_pair or session is not self._route_session:
            self._route_pair, self._route_session = pair, session
            self._fast = fanout.route_of(session, socket, pair.remote_addr)
        return session.protect, socket.sendto, pair.remote_addr, self._fast

    def send_frame(self, payloads: list[bytes], timestamp: int) -> None:
        """Send one frame's shared payloads as this viewer's RTP packets."""
        protect, sendto, address, fast = self._route()
        timestamp = (self._origin + timestamp) & 0xFFFFFFFF
        ntp = ntp_now()
        extensions = self._extensions(ntp)
        first = 0x90 if extensions else 0x80
        sequence = self._sequence
        if fast is not None and fast.usable():
            sent = fast.send(first, self._payload_type, sequence, timestamp, self._ssrc,
                             extensions, payloads)
        else:
            sent = 0
            ssrc, payload_type, last = self._ssrc, self._payload_type, len(payloads) - 1
            for index, payload in enumerate(payloads):
                data = protect(_HEADER.pack(first, payload_type | (0x80 if index == last else 0),
                                            (sequence + index) & 0xFFFF, timestamp, ssrc)
                               + extensions + payload)
                sendto(data, address)
                sent += len(data)
        self._history.append((sequence, timestamp, payloads))
        self._sequence = (sequence + len(payloads)) & 0xFFFF
        # What aiortc's sender reports (RTCP SR) and its stats read.
        self._RTCRtpSender__ntp_timestamp = ntp
        self._RTCRtpSender__rtp_timestamp = timestamp
        self._RTCRtpSender__packet_count += len(payloads)
        self._RTCRtpSender__octet_count += sum(map(len, payloads))
        self.transport._RTCDtlsTransport__tx_packets += len(payloads)
        self.transport._RTCDtlsTransport__tx_bytes += sent

    def _sent(self, sequence_number: int) -> tuple[int, bool, bytes] | None:
        """The timestamp, marker bit and payload of a packet still in the history."""
        for first, timestamp, payloads in reversed(self._history):
            offset = (sequence_number - first) & 0xFFFF
            if offset < len(payloads):
                return timestamp, offset == len(payloads) - 1, payloads[offset]
        return None

    async def _retransmit(self, sequence_number: int) -> None:
        """Answer a NACK from the history (as RTX when negotiated)."""
        kept = self._sent(sequence_number)
        if kept is None:
            return  # too old: the viewer's PLI will bring a keyframe
        try:
            protect, sendto, address, _fast = self._route()
        except ConnectionError:
            return
        timestamp, marker, payload = kept
        extensions = self._extensions(ntp_now())
        first = 0x90 if extensions else 0x80
        if self._rtx is None:
            header = _HEADER.pack(first, self._payload_type | (0x80 if marker else 0),
                                  sequence_number, timestamp, self._ssrc)
        else:
            header = _HEADER.pack(first, self._rtx | (0x80 if marker else 0), self._rtx_sequence,
                                  timestamp, self._rtx_ssrc)
            payload = sequence_number.to_bytes(2, "big") + payload
            self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        sendto(protect(header + extensions + payload), address)

    def send_packet(self, packet: av.Packet) -> None:
        """Send one access unit (from the track's queue, or handed over by the feed)."""
        if self._enabled:
            payloads, timestamp = payloads_of(packet)
            if payloads:
                self.send_frame(payloads, timestamp)

    def _take(self, packet: av.Packet) -> None:
        """The feed's direct hand-over (inside its ``publish``): a failure is this viewer's
        alone, never the feed's pass over its other viewers."""
        try:
            self.send_packet(packet)
        except ConnectionError:
            self._detach()  # the connection is closing: its close ends this sender
        except Exception:
            log.exception("RTP sender: a frame handed over failed")
            self._detach()  # the next frames go through the queue (and its error handling)

    def _detach(self) -> None:
        attach = getattr(self.track, "attach_sink", None)
        if attach is not None:
            attach(None)

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        if codec.mimeType.lower() != "video/h264":
            await super()._run_rtp(codec)  # (not negotiated by webrtc.py: aiortc's own loop)
            return
        self._RTCRtpSender__rtp_started.set()
        track = self.track
        attach = getattr(track, "attach_sink", None)  # a FeedTrack: live packets handed over
        try:
            if attach is not None:
                attach(self._take)
            while True:
                packet = await track.recv()  # a backlog, a paced join, a slow moment
                if isinstance(packet, av.Packet):
                    self.send_packet(packet)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            log.exception("RTP sender stopped")  # stop() waits for the exited event: set it
        finally:
            self._detach()
            track.stop()
            self._RTCRtpSender__rtp_exited.set()


def make_lean(sender: RTCRtpSender) -> LeanSender:
    """Turn a sender aiortc made (``addTransceiver``), not started yet, into a lean one."""
    sender.__class__ = LeanSender
    assert isinstance(sender, LeanSender)
    sender._prepare()
    return sender
