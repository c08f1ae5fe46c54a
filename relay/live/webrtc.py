"""WebRTC viewers: the feed's H.264 packets passed through aiortc, never re-encoded.

Chrome's offer is answered with one sendonly H.264 transceiver (added, with its codec preference,
before the remote description, or Chrome's VP8 would win and H.264 bytes would go out as VP8).
mDNS (``.local``) candidates are dropped from offers: resolving them costs aioice a second and the
browser reaches us anyway (we learn its address from its checks). ``ice_addresses`` limits the
addresses we gather on (tests use 127.0.0.1, which aioice otherwise skips); ``ice_public_ip``
advertises each host candidate again under the NAT's public address (1:1 NAT). A PLI or FIR from
the browser becomes the camera's shared, rate-limited keyframe request.

A connection that has not connected within the ``ice_deadline`` setting (20 s by default) is closed:
a client that posted an offer and vanished, or one whose network never lets ICE through, holds
nothing longer than that.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import aioice.ice
import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from . import census
from .feed import LiveFeed, Subscription

log = logging.getLogger(__name__)

MAX_SDP = 64 * 1024
_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ host(.*)$")


class SdpError(ValueError):
    """The offer is not an SDP offer we can answer."""


def limit_ice_addresses(addresses: list[str]) -> None:
    """Gather ICE candidates on these local addresses only (process-wide; empty: all but loopback)."""
    if addresses:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


def strip_mdns(sdp: str) -> str:
    return "\r\n".join(line for line in sdp.splitlines()
                       if not (line.startswith("a=candidate:") and ".local " in line)) + "\r\n"


def add_public_address(sdp: str, public_ip: str) -> str:
    if not public_ip:
        return sdp
    lines: list[str] = []
    for line in sdp.splitlines():
        lines.append(line)
        match = _CANDIDATE.match(line)
        if match and match.group(5) != public_ip:
            foundation, component, transport, priority, _ip, port, rest = match.groups()
            lines.append(f"a=candidate:{foundation}p {component} {transport} {int(priority) - 1} "
                         f"{public_ip} {port} typ host{rest}")
    return "\r\n".join(lines) + "\r\n"


class FeedTrack(MediaStreamTrack):
    """A video track whose frames are the feed's shared packets."""

    kind = "video"

    def __init__(self, subscription: Subscription[av.Packet]) -> None:
        super().__init__()
        self._subscription = subscription

    async def recv(self):  # type: ignore[no-untyped-def, override]
        packet = await self._subscription.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet


def _unlink(pc: RTCPeerConnection) -> None:
    """Drop the listeners aiortc leaves on a closed connection's transports and track.

    They are bound methods of the connection, so the connection and its transports (DTLS with its
    OpenSSL and SRTP state, ICE) hold each other in reference cycles that only a full garbage
    collection frees: with the startup heap frozen (``relay serve``), minutes or hours away. A
    relay under viewer churn kept every closed viewer's connection that long (measured: 15 of 25
    viewers still in memory, idle, after all had left, and 0.25 MB of RSS per viewer). Without
    those listeners, closing a connection frees it at once."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport or transceiver.receiver.transport
        ice = dtls.transport if dtls is not None else None
        for emitter in (transceiver.sender.track, dtls, ice, ice.iceGatherer if ice else None):
            if emitter is not None:
                emitter.remove_all_listeners()


async def answer_offer(
    offer_sdp: str, feed: LiveFeed, public_ip: str, ice_deadline: float, label: str,
    on_closed: Callable[[], Awaitable[None]], spawn: Callable[[Awaitable[None]], None],
) -> tuple[Callable[[], Awaitable[None]], str]:
    """Answer ``offer_sdp`` with a peer connection that sends ``feed``.

    Returns the connection's ``close()`` and the SDP answer. ``on_closed()`` runs once, when the
    connection closes for any reason (``close()``, ICE failure, the browser leaving); a connection
    that has not connected within ``ice_deadline`` seconds is closed. ``spawn`` runs a close the
    connection starts by itself as a task its owner keeps and awaits (never one left to itself).
    ``label`` names the viewer in log lines (a sequence number: nothing that grants anything).
    """
    if len(offer_sdp) > MAX_SDP or not offer_sdp.startswith("v=0") or "m=video" not in offer_sdp:
        raise SdpError("not an SDP offer with video")
    pc = RTCPeerConnection()
    census.track("peer_connection", pc)
    subscription = feed.subscribe()
    closed = False

    async def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            deadline.cancel()
            feed.unsubscribe(subscription)
            await pc.close()
            _unlink(pc)
            await on_closed()

    def give_up() -> None:
        if pc.connectionState != "connected":
            log.info("%s: ICE did not complete within %g s", label, ice_deadline)
            spawn(close())

    deadline = asyncio.get_running_loop().call_later(ice_deadline, give_up)

    @pc.on("connectionstatechange")
    def _state_changed() -> None:
        log.info("%s: WebRTC connection %s", label, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            spawn(close())

    try:
        transceiver = pc.addTransceiver(FeedTrack(subscription), direction="sendonly")
        h264 = [codec for codec in RTCRtpSender.getCapabilities("video").codecs
                if codec.mimeType.lower() in ("video/h264", "video/rtx")]
        transceiver.setCodecPreferences(h264)
        transceiver.sender._send_keyframe = feed.request_keyframe  # PLI/FIR → the agent
        await pc.setRemoteDescription(RTCSessionDescription(strip_mdns(offer_sdp), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        # aiortc refuses an offer it cannot take with all sorts of exceptions (ValueError,
        # AssertionError, its own InvalidStateError and OperationError…): each means a bad offer.
        closed = True
        deadline.cancel()
        feed.unsubscribe(subscription)
        await pc.close()
        _unlink(pc)
        raise SdpError(f"cannot answer this offer: {exc.__class__.__name__}") from exc
    return close, add_public_address(pc.localDescription.sdp, public_ip)
