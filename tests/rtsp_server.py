"""A small, real RTSP server for tests: IP cameras (mode 0) and rtsp:// sources (mode 2).

Serves named paths (``/main``, ``/sub`` ...), each from an H.264 MP4 file, looped in real time, to
any number of clients, over RTP interleaved in the RTSP TCP connection (what FFmpeg's client does
with ``rtsp_transport=tcp``, as the agent opens every network source). It speaks OPTIONS, DESCRIBE
(SDP with ``packetization-mode=1`` and ``sprop-parameter-sets``), SETUP (TCP interleaved only:
anything else is 461), PLAY, GET_PARAMETER (keepalive) and TEARDOWN; RTP per RFC 6184, a NAL unit
per packet or FU-A fragments (no STAP-A), SPS and PPS in band before every IDR as cameras send
them. With ``user``/``password`` it asks for Basic authentication, so a test sees the credentials
the client really sent. It counts connections per path, so a test can tell which stream a client
has open and when it lets go.

It runs in a thread with its own event loop (``start``/``stop``, or ``with RtspServer(...)``);
``stop`` closes every connection, cancels every task and frees the port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import random
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import av

CLOCK = 90_000  # RTP clock of H.264 video
PAYLOAD_TYPE = 96
MAX_PAYLOAD = 1400  # bytes of RTP payload per packet: larger NAL units go as FU-A fragments
FU_A = 28
SESSION_TIMEOUT = 60
METHODS = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"


@dataclass(frozen=True)
class Frame:
    dts: int  # 90 kHz, from 0: when it is sent
    pts: int  # 90 kHz: its RTP timestamp
    keyframe: bool
    nals: tuple[bytes, ...]


@dataclass(frozen=True)
class Media:
    """One MP4's video, ready to packetize: its parameter sets and its access units."""

    width: int
    height: int
    sps: bytes
    pps: bytes
    frames: tuple[Frame, ...]
    period: int  # 90 kHz ticks of one pass (the next pass's timestamps start there)

    @classmethod
    def load(cls, path: Path) -> Media:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            extradata = stream.codec_context.extradata or b""
            length_size, sps, pps = _avcc(extradata)
            scale = stream.time_base * CLOCK
            packets = [packet for packet in container.demux(stream)
                       if packet.size and packet.pts is not None]
            first = packets[0].dts if packets[0].dts is not None else packets[0].pts
            frames = tuple(Frame(round(((p.dts if p.dts is not None else p.pts) - first) * scale),
                                 round((p.pts - first) * scale), p.is_keyframe,
                                 tuple(_split(bytes(p), length_size)))
                           for p in packets)
            rate = stream.average_rate or 25
            period = frames[-1].dts + round(CLOCK / rate)
            return cls(stream.codec_context.width, stream.codec_context.height, sps, pps, frames,
                       period)

    def sdp(self) -> str:
        sets = ",".join(base64.b64encode(unit).decode() for unit in (self.sps, self.pps))
        return ("v=0\r\n"
                "o=- 0 0 IN IP4 127.0.0.1\r\n"
                "s=test camera\r\n"
                "c=IN IP4 0.0.0.0\r\n"
                "t=0 0\r\n"
                "a=control:*\r\n"
                "a=range:npt=0-\r\n"
                f"m=video 0 RTP/AVP {PAYLOAD_TYPE}\r\n"
                f"a=rtpmap:{PAYLOAD_TYPE} H264/{CLOCK}\r\n"
                f"a=fmtp:{PAYLOAD_TYPE} packetization-mode=1;profile-level-id={self.sps[1:4].hex()};"
                f"sprop-parameter-sets={sets}\r\n"
                f"a=framesize:{PAYLOAD_TYPE} {self.width}-{self.height}\r\n"
                "a=control:trackID=0\r\n")


def _avcc(extradata: bytes) -> tuple[int, bytes, bytes]:
    """The NAL length size, first SPS and first PPS of an ``avcC`` record (ISO 14496-15)."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("the MP4's H.264 stream has no avcC record")
    length_size = (extradata[4] & 3) + 1
    at = 5
    found: list[list[bytes]] = []
    for mask in (0x1F, 0xFF):  # the SPS count is 5 bits, the PPS count 8
        count = extradata[at] & mask
        at += 1
        units = []
        for _ in range(count):
            (size,) = struct.unpack_from("!H", extradata, at)
            units.append(extradata[at + 2:at + 2 + size])
            at += 2 + size
        found.append(units)
    [sps, pps] = found
    if not sps or not pps:
        raise ValueError("the avcC record has no SPS or PPS")
    return length_size, sps[0], pps[0]


def _split(data: bytes, length_size: int) -> list[bytes]:
    """Length-prefixed NAL units (MP4) as a list."""
    units, at = [], 0
    while at + length_size <= len(data):
        size = int.from_bytes(data[at:at + length_size], "big")
        at += length_size
        units.append(data[at:at + size])
        at += size
    return [unit for unit in units if unit]


def payloads(nal: bytes) -> list[bytes]:
    """RFC 6184 payloads of one NAL unit: itself when it fits, else FU-A fragments."""
    if len(nal) <= MAX_PAYLOAD:
        return [nal]
    indicator = (nal[0] & 0xE0) | FU_A
    kind = nal[0] & 0x1F
    body = nal[1:]
    step = MAX_PAYLOAD - 2
    chunks = [body[at:at + step] for at in range(0, len(body), step)]
    return [bytes([indicator, kind | (0x80 if index == 0 else 0)
                   | (0x40 if index == len(chunks) - 1 else 0)]) + chunk
            for index, chunk in enumerate(chunks)]


class RtpSender:
    """One client's RTP stream: sequence numbers, timestamps and its SSRC."""

    def __init__(self, channel: int) -> None:
        self.channel = channel
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.base = random.getrandbits(32)

    def frame(self, media: Media, frame: Frame, offset: int) -> bytes:
        """The interleaved RTP packets (``$``, channel, length, packet) of one access unit."""
        nals = list(frame.nals)
        if frame.keyframe and not any(nal[0] & 0x1F == 7 for nal in nals):
            nals = [media.sps, media.pps, *nals]
        parts = [payload for nal in nals for payload in payloads(nal)]
        timestamp = (self.base + offset + frame.pts) & 0xFFFFFFFF
        out = bytearray()
        for index, payload in enumerate(parts):
            marker = 0x80 if index == len(parts) - 1 else 0
            header = struct.pack("!BBHII", 0x80, marker | PAYLOAD_TYPE, self.seq, timestamp, self.ssrc)
            self.seq = (self.seq + 1) & 0xFFFF
            out += struct.pack("!cBH", b"$", self.channel, len(header) + len(payload))
            out += header + payload
        return bytes(out)


class RtspServer:
    """Serves ``streams`` (path → MP4) on 127.0.0.1 at ``port`` (0: a free one) once started."""

    def __init__(self, streams: dict[str, Path], port: int = 0, user: str | None = None,
                 password: str | None = None) -> None:
        self.media = {"/" + name.strip("/"): Media.load(path) for name, path in streams.items()}
        self.port = port
        self._credentials = (base64.b64encode(f"{user}:{password}".encode()).decode()
                             if user is not None else None)
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()  # connections now open, by the path they asked for
        self._opened: Counter[str] = Counter()  # connections ever, by path
        self._playing: Counter[str] = Counter()  # sessions now sending RTP, by path
        self.auth_failures = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.authorized: list[tuple[str, str]] = []  # (method, stream) that passed authentication
        self.events: list[tuple[float, str, str]] = []  # (unix time, stream, "open" | "close")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions = itertools.count(0x1A2B3C4D)

    # Counting, for tests (any thread)

    def connections(self, path: str) -> int:
        """Connections now open that asked for ``path``."""
        with self._lock:
            return self._open["/" + path.strip("/")]

    def connections_ever(self, path: str) -> int:
        with self._lock:
            return self._opened["/" + path.strip("/")]

    def playing(self, path: str) -> int:
        """Clients ``path`` is streaming to now."""
        with self._lock:
            return self._playing["/" + path.strip("/")]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"rtsp://{host}:{self.port}/{path.strip('/')}"

    # Starting and stopping (from the test's thread)

    def start(self) -> RtspServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._connection, "127.0.0.1", self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="rtsp-server", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    # One connection (in the server's loop)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = _Connection(self, reader, writer)
        try:
            await connection.serve()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # stop(): ends normally (asyncio 3.11 logs a handler task that ends cancelled)
        finally:
            await connection.close()
            self._tasks.discard(task)

    def _count(self, counter: Counter[str], path: str, delta: int) -> None:
        with self._lock:
            counter[path] += delta
            if counter is self._open:
                self._opened[path] += delta > 0
                self.events.append((time.time(), path, "open" if delta > 0 else "close"))


class _Connection:
    """One client's RTSP connection: requests in, responses and RTP out."""

    def __init__(self, server: RtspServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.path = ""  # the stream this connection asked for (counted once it did)
        self.session = ""
        self.sender: RtpSender | None = None
        self.streaming: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        while True:
            first = await self.reader.readexactly(1)
            if first == b"$":  # the client's RTCP (receiver reports), interleaved
                _channel, size = struct.unpack("!BH", await self.reader.readexactly(3))
                await self.reader.readexactly(size)
                continue
            head = (first + await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            method, url, _version = [*lines[0].split(" "), "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await self.reader.readexactly(length)
            if not await self.request(method, url, headers):
                return

    async def request(self, method: str, url: str, headers: dict[str, str]) -> bool:
        """Answer one request; False ends the connection."""
        path = urlsplit(url).path.rstrip("/") or "/"
        stream = path if path in self.server.media else path.rpartition("/")[0]
        media = self.server.media.get(stream)
        self.server.requests.append((method, path))
        cseq = headers.get("cseq", "0")
        if media is not None and not self.path and method != "TEARDOWN":
            self.path = stream
            self.server._count(self.server._open, stream, 1)
        if method == "OPTIONS":
            self.respond(cseq, 200, {"Public": METHODS})
            return True
        if method not in METHODS.split(", "):
            self.respond(cseq, 501)
            return True
        if method != "TEARDOWN" and not self.authorized(headers):
            self.server.auth_failures += 1
            self.respond(cseq, 401, {"WWW-Authenticate": 'Basic realm="testcam"'})
            return True
        if self.server._credentials is not None and media is not None:
            self.server.authorized.append((method, stream))
        if method == "GET_PARAMETER":
            self.respond(cseq, 200, self.session_header())
            return True
        if method == "TEARDOWN":
            self.respond(cseq, 200, self.session_header())
            return False
        if media is None:
            self.respond(cseq, 404)
            return True
        if method == "DESCRIBE":
            body = media.sdp().encode()
            base = url if url.endswith("/") else url + "/"
            self.respond(cseq, 200, {"Content-Base": base, "Content-Type": "application/sdp"}, body)
            return True
        if method == "SETUP":
            return self.setup(cseq, headers)
        # PLAY
        if self.sender is None or headers.get("session", "").split(";")[0] != self.session:
            self.respond(cseq, 455 if self.sender is None else 454)
            return True
        self.respond(cseq, 200, {**self.session_header(), "Range": "npt=0.000-",
                                 "RTP-Info": f"url={url.rstrip('/')}/trackID=0;seq={self.sender.seq};"
                                             f"rtptime={self.sender.base}"})
        if self.streaming is None:
            self.streaming = asyncio.create_task(self.stream(media))
        return True

    def setup(self, cseq: str, headers: dict[str, str]) -> bool:
        transport = headers.get("transport", "")
        options = dict(part.partition("=")[::2] for part in transport.split(";"))
        if not transport.upper().startswith("RTP/AVP/TCP") or "interleaved" not in options:
            self.respond(cseq, 461)
            return True
        channel = int(options["interleaved"].split("-")[0])
        self.sender = RtpSender(channel)
        self.session = f"{next(self.server._sessions):08X}"
        self.respond(cseq, 200, {
            "Transport": f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1};"
                         f"ssrc={self.sender.ssrc:08X}",
            **self.session_header()})
        return True

    def authorized(self, headers: dict[str, str]) -> bool:
        expected = self.server._credentials
        if expected is None:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "basic" and value.strip() == expected

    def session_header(self) -> dict[str, str]:
        return {"Session": f"{self.session};timeout={SESSION_TIMEOUT}"} if self.session else {}

    def respond(self, cseq: str, status: int, headers: dict[str, str] | None = None,
                body: bytes = b"") -> None:
        reasons = {200: "OK", 401: "Unauthorized", 404: "Not Found", 454: "Session Not Found",
                   455: "Method Not Valid in This State", 461: "Unsupported Transport",
                   501: "Not Implemented"}
        lines = [f"RTSP/1.0 {status} {reasons.get(status, 'Error')}", f"CSeq: {cseq}",
                 "Server: tests/rtsp_server.py"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def stream(self, media: Media) -> None:
        """Send the file's access units in real time, looped, until the connection ends."""
        assert self.sender is not None
        loop = asyncio.get_running_loop()
        self.server._count(self.server._playing, self.path, 1)
        try:
            started = loop.time()
            for lap in itertools.count():
                offset = lap * media.period
                for frame in media.frames:
                    ahead = started + (offset + frame.dts) / CLOCK - loop.time()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                    self.writer.write(self.sender.frame(media, frame, offset))
                    await self.writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; serve() sees it too
        finally:
            self.server._count(self.server._playing, self.path, -1)

    async def close(self) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.streaming
        if self.path:
            self.server._count(self.server._open, self.path, -1)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
