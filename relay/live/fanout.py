"""The C send path of WebRTC fan-out (``_fanout.c``), and what it needs from aiortc's SRTP.

Per viewer and frame, :class:`~relay.live.rtp_sender.LeanSender` hands its shared payloads to
``_fanout.send_frame``: headers, libsrtp's ``srtp_protect`` and ``sendmmsg`` for all of the
frame's packets in one call (issue 12: in Python that loop was most of the relay's time left).
The SRTP function is the one aiortc already calls, through pylibsrtp's cffi binding; its
address and the address of each viewer's session are read from there.

The C path is used only where it sends exactly what the Python path would: the extension
built (it is optional at install: no C compiler, no extension), pylibsrtp's ``srtp_protect``
of the signature it was written for, and a plain UDP socket under the nominated ICE pair with
nothing queued in front (a TURN relay or a socket that blocked keep the Python path for that
frame). :data:`unavailable` says why it is off, for ``relay serve``'s log.
"""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

try:
    from . import _fanout  # type: ignore[attr-defined]
except ImportError as error:
    _fanout = None
    if importlib.util.find_spec(f"{__package__}._fanout") is None:  # (installed without a compiler)
        _not_built = ("relay/live/_fanout.c was not compiled at install: install again with a C "
                      "compiler and Python's headers present")
    else:
        _not_built = f"relay/live/_fanout.c was compiled but does not load ({error})"

#: The signature ``_fanout.c`` calls (libsrtp 2's, as pylibsrtp 1.0 binds it).
PROTECT_SIGNATURE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"


def _bind() -> tuple[int, Any, str]:
    """The address of pylibsrtp's ``srtp_protect``, pylibsrtp's cffi ``ffi``, and why the C
    path is off ("" when it is on)."""
    if _fanout is None:
        return 0, None, _not_built
    from pylibsrtp._binding import ffi, lib

    function = ffi.addressof(lib, "srtp_protect")
    signature = ffi.getctype(ffi.typeof(function))
    if signature != PROTECT_SIGNATURE:
        return 0, ffi, f"pylibsrtp's srtp_protect is {signature!r}, not {PROTECT_SIGNATURE!r}"
    return int(ffi.cast("uintptr_t", function)), ffi, ""


PROTECT, _ffi, unavailable = _bind()


class Route:
    """One viewer's way out in C: its SRTP session, socket and peer address, as ``send_frame``
    takes them. Made per nominated pair (:func:`route_of`); ``None`` when not possible."""

    __slots__ = ("address", "fd", "remote", "session", "session_address", "transport")

    def __init__(self, session: Any, transport: Any, fd: int, remote: tuple[str, int],
                 address: bytes) -> None:
        self.session = session  # (kept: its srtp_t lives as long as this reference)
        self.session_address = int(_ffi.cast("uintptr_t", session._srtp[0]))
        self.transport = transport
        self.fd = fd
        self.remote = remote
        self.address = address

    def usable(self) -> bool:
        """Nothing queued in the transport: the C path must not overtake it. (That it is open,
        the sender's ``_route`` has just checked.)"""
        return not self.transport.get_write_buffer_size()

    def send(self, first: int, payload_type: int, sequence: int, timestamp: int, ssrc: int,
             extensions: bytes, payloads: list[bytes]) -> int:
        """Send a frame's packets; returns the SRTP bytes handed on (queued ones included)."""
        sent, unsent, _failed = _fanout.send_frame(
            PROTECT, self.session_address, self.fd, self.address, first, payload_type, sequence,
            timestamp, ssrc, extensions, payloads)
        if unsent:
            for packet in unsent:  # the socket was full: asyncio queues them, in order
                self.transport.sendto(packet, self.remote)
        return sent


def route_of(session: Any, transport: Any, remote: tuple[str, int]) -> Route | None:
    """A C route for ``session`` over ``transport`` to ``remote``, if the C path can take it."""
    if not PROTECT or not hasattr(transport, "get_write_buffer_size"):
        return None
    # (asyncio's UDP transport is no DatagramTransport subclass in 3.11; an aioice TURN relay's
    # transport has no socket: what it sends must be wrapped for the TURN server.)
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_DGRAM:
        return None
    try:
        address = _fanout.sockaddr(remote[0], remote[1])
    except (TypeError, ValueError):
        return None
    return Route(session, transport, sock.fileno(), remote, address)
