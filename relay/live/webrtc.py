"""WebRTC viewers: the feed's H.264 packets passed through aiortc, never re-encoded.

Chrome's offer is answered with one sendonly H.264 transceiver (added, with its codec preference,
before the remote description, or Chrome's VP8 would win and H.264 bytes would go out as VP8).
mDNS (``.local``) candidates are dropped from offers: resolving them costs aioice a second and the
browser reaches us anyway (we learn its address from its checks). ``ice_addresses`` limits the
addresses we gather on (tests use 127.0.0.1, which aioice otherwise skips); ``ice_public_ip``
advertises each host candidate again under the NAT's public address (1:1 NAT). ``ice_ports``
binds the host candidates' UDP sockets within a port range, so a container can publish exactly
those ports (docs/DOCKER.md): aioice 0.13 has no setting for it (it binds port 0; its upstream
pull request #112 adds one), so :func:`limit_ice_ports` puts in its own host-candidate gathering.
A PLI or FIR from the browser becomes the camera's shared, rate-limited keyframe request. RTP goes
out through ``rtp_sender.LeanSender`` (aiortc's sender with a per-frame, not per-viewer, loop).

A connection that has not connected within the ``ice_deadline`` setting (20 s by default) is closed:
a client that posted an offer and vanished, or one whose network never lets ICE through, holds
nothing longer than that.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import re
import socket
from collections.abc import Awaitable, Callable

import aioice.ice
import aioice.turn
import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from . import census
from .feed import LiveFeed, Subscription
from .rtp_sender import make_lean

log = logging.getLogger(__name__)

MAX_SDP = 64 * 1024
_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ host(.*)$")


class SdpError(ValueError):
    """The offer is not an SDP offer we can answer."""


def limit_ice_addresses(addresses: list[str]) -> None:
    """Gather ICE candidates on these local addresses only (process-wide; empty: all but loopback)."""
    if addresses:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


_aioice_candidates = aioice.ice.Connection.get_component_candidates
_turns = itertools.count()


def limit_ice_ports(ports: range | None) -> None:
    """Bind every host candidate's UDP socket to a free port of ``ports`` (process-wide, like
    :func:`limit_ice_addresses`); None: any port, as aioice does by itself."""
    if ports is None:
        aioice.ice.Connection.get_component_candidates = _aioice_candidates  # type: ignore[method-assign]
        return

    async def get_component_candidates(self: aioice.ice.Connection, component: int,
                                       addresses: list[str], timeout: int = 5
                                       ) -> list[aioice.Candidate]:
        return await _candidates_in(ports, self, component, addresses, timeout)

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    log.info("WebRTC host candidates bind UDP ports %d-%d", ports[0], ports[-1])


def _bind_in(ports: range, address: str) -> socket.socket:
    """A non-blocking UDP socket on ``address`` and a free port of ``ports``. The search starts a
    little further on each time, so a port just freed is not the next one handed out."""
    family, _, _, _, sockaddr = socket.getaddrinfo(address, None, type=socket.SOCK_DGRAM,
                                                   flags=socket.AI_NUMERICHOST)[0]
    start = next(_turns)
    for step in range(len(ports)):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((sockaddr[0], ports[(start + step) % len(ports)], *sockaddr[2:]))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        sock.setblocking(False)
        return sock
    raise OSError(errno.EADDRINUSE, f"every port of ice_ports {ports[0]}-{ports[-1]} is in use")


async def _candidates_in(ports: range, connection: aioice.ice.Connection, component: int,
                         addresses: list[str], timeout: int) -> list[aioice.Candidate]:
    """aioice's ``get_component_candidates`` with the host sockets bound within ``ports``: host
    candidates, their server-reflexive ones (STUN, IPv4) and aioice's own relayed one (TURN)."""
    loop = asyncio.get_running_loop()
    candidates: list[aioice.Candidate] = []
    hosts: list[aioice.ice.StunProtocol] = []
    for address in addresses:
        try:
            sock = _bind_in(ports, address)
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), sock=sock)
        except OSError as exc:
            log.warning("no WebRTC host candidate on %s: %s", address, exc)
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        host, port = sock.getsockname()[:2]
        protocol.local_candidate = aioice.Candidate(
            foundation=aioice.ice.candidate_foundation("host", "udp", host), component=component,
            transport="udp", priority=aioice.ice.candidate_priority(component, "host"), host=host,
            port=port, type="host")
        candidates.append(protocol.local_candidate)
        hosts.append(protocol)
    connection._protocols += hosts
    reflexive = [asyncio.create_task(aioice.ice.server_reflexive_candidate(
        protocol, connection.stun_server)) for protocol in hosts if connection.stun_server and
        ipaddress.ip_address(protocol.local_candidate.host).version == 4]
    relayed = await _aioice_candidates(connection, component, [], timeout)  # no hosts: TURN only
    if reflexive:
        done, pending = await asyncio.wait(reflexive, timeout=timeout)
        candidates += [task.result()[0] for task in done if task.exception() is None]
        for task in pending:
            task.cancel()
    return candidates + relayed


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
    """A video track whose frames are the feed's shared packets (awaited, or handed to a sink)."""

    kind = "video"

    def __init__(self, subscription: Subscription[av.Packet]) -> None:
        super().__init__()
        self._subscription = subscription

    def attach_sink(self, sink: Callable[[av.Packet], None] | None) -> None:
        """Have live packets handed to ``sink`` as they are published (None: no longer)."""
        self._subscription.sink = sink

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
    subscription = feed.subscribe(paced=True)
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
        make_lean(transceiver.sender)._send_keyframe = feed.request_keyframe  # PLI/FIR → agent
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
