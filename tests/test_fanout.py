"""relay.live._fanout (the C send loop) against Python doing the same: byte for byte.

SRTP with the same key, SSRC and packet index gives the same bytes, so a twin pylibsrtp session
fed the headers Python's path builds is the judge of what the C path sent over a real socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pylibsrtp import Policy, Session

from relay.live import fanout

KEY = bytes(range(30))  # (AES-128 key and salt)
SSRC = 0x11223344
EXTENSIONS = b"\xbe\xde\x00\x01\x32\x01\x02\x03"  # (abs-send-time, one-byte form)


def session(direction: int) -> Session:
    policy = Policy(key=KEY, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    return Session(policy)


def address_of(sess: Session) -> int:
    return int(fanout._ffi.cast("uintptr_t", sess._srtp[0]))


def python_packets(payloads: list[bytes], sequence: int, timestamp: int) -> list[bytes]:
    """What LeanSender's Python path sends for the frame (with a twin session)."""
    twin = session(Policy.SSRC_ANY_OUTBOUND)
    last = len(payloads) - 1
    return [twin.protect(struct.pack("!BBHII", 0x90, 102 | (0x80 if i == last else 0),
                                     (sequence + i) & 0xFFFF, timestamp, SSRC) + EXTENSIONS + p)
            for i, p in enumerate(payloads)]


def send(sess: Session, fd: int, address: bytes, payloads: list[bytes], sequence: int,
         timestamp: int = 123456) -> tuple[int, list[bytes] | None, int]:
    return fanout._fanout.send_frame(fanout.PROTECT, address_of(sess), fd, address, 0x90, 102,
                                     sequence, timestamp, SSRC, EXTENSIONS, payloads)


def test_the_c_path_is_built_and_bound_to_libsrtp() -> None:
    assert fanout.unavailable == ""
    assert fanout.PROTECT != 0


def test_a_frame_leaves_as_python_would_send_it() -> None:
    payloads = [os.urandom(n) for n in (1188, 1188, 700, 3, 1188)] * 20  # 100: two sendmmsg batches
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender.setblocking(False)
    try:
        sess = session(Policy.SSRC_ANY_OUTBOUND)
        address = fanout._fanout.sockaddr("127.0.0.1", receiver.getsockname()[1])
        sent, unsent, failed = send(sess, sender.fileno(), address, payloads, 65500)  # (wraps)
        assert (unsent, failed) == (None, 0)
        received = [receiver.recv(2048) for _ in payloads]
        assert received == python_packets(payloads, 65500, 123456)
        assert sent == sum(map(len, received))
        # And a viewer's session opens them: this SSRC, numbers in a row, the marker on the last.
        inbound = session(Policy.SSRC_ANY_INBOUND)
        opened = [inbound.unprotect(packet) for packet in received]
        assert [struct.unpack("!H", p[2:4])[0] for p in opened] == [
            (65500 + i) & 0xFFFF for i in range(len(payloads))]
        assert [p[1] >> 7 for p in opened] == [0] * (len(payloads) - 1) + [1]
        assert [p[12 + len(EXTENSIONS):] for p in opened] == payloads
    finally:
        receiver.close()
        sender.close()


def test_what_a_full_socket_cannot_take_comes_back_in_order() -> None:
    """A datagram socket nobody reads (AF_UNIX: its queue holds ~10) blocks part way: the rest
    is handed back, protected, for the caller's queue; nothing is lost or reordered."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "s")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        try:
            packed = struct.pack("=H", socket.AF_UNIX) + path.encode() + b"\0"
            payloads = [os.urandom(200) for _ in range(150)]
            sess = session(Policy.SSRC_ANY_OUTBOUND)
            sent, unsent, failed = send(sess, sender.fileno(), packed, payloads, 7)
            assert failed == 0 and unsent and 0 < len(unsent) < len(payloads)
            receiver.setblocking(False)
            arrived = []
            while True:
                try:
                    arrived.append(receiver.recv(2048))
                except BlockingIOError:
                    break
            assert arrived + unsent == python_packets(payloads, 7, 123456)
            assert sent == sum(map(len, arrived + unsent))
        finally:
            receiver.close()
            sender.close()


def test_a_packet_the_kernel_refuses_is_dropped_and_counted() -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    try:
        ipv6 = fanout._fanout.sockaddr("::1", 9)  # (not an address an IPv4 socket can send to)
        sent, unsent, failed = send(session(Policy.SSRC_ANY_OUTBOUND), sender.fileno(), ipv6,
                                    [b"a", b"b", b"c"], 1)
        assert (sent, unsent, failed) == (0, None, 3)
    finally:
        sender.close()


def test_bad_input_is_a_clear_error() -> None:
    sess = session(Policy.SSRC_ANY_OUTBOUND)
    with pytest.raises(ValueError, match="too long"):
        send(sess, -1, b"", [b"x" * 1900], 1)
    with pytest.raises(TypeError, match="must be bytes"):
        send(sess, -1, b"", [b"x", "y"], 1)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="11 arguments"):
        fanout._fanout.send_frame(1, 2)
    with pytest.raises(ValueError, match="numeric address"):
        fanout._fanout.sockaddr("example.org", 9)
    with pytest.raises(ValueError, match="port"):
        fanout._fanout.sockaddr("127.0.0.1", 70000)
    assert fanout.route_of(sess, object(), ("127.0.0.1", 9)) is None  # (not a UDP transport)


def test_without_the_extension_the_reason_is_plain(tmp_path: Path) -> None:
    """An install made without a C compiler: the Python path, and a reason a person can act on
    (what ``relay serve`` logs as its warning)."""
    source = Path(fanout.__file__).resolve().parents[2] / "relay"
    shutil.copytree(source, tmp_path / "relay", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    answer = subprocess.run(
        [sys.executable, "-c", "from relay.live import fanout; print(fanout.PROTECT, fanout.unavailable)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert answer.stdout.strip() == ("0 relay/live/_fanout.c was not compiled at install: install "
                                     "again with a C compiler and Python's headers present")
