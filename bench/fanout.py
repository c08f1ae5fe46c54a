"""WebRTC fan-out, our relay side by side with Janus in one run: server CPU per Mbps, and joins.

    .venv/bin/python bench/fanout.py [--viewers 1,10,25,50] [--window 20] [--reps 2] [--join 50]
                                     [--observe 10] [--only ours|janus] [--results FILE]

Janus: 1.1 from Debian, installed with ``apt-get install -y janus`` (not in .ci/setup; the bench
says so and stops when ``/usr/bin/janus`` is missing). Its streaming plugin has one RTP mountpoint
(``bench/janus/*.jcfg``, templates filled in per run): H.264 fed over UDP by this script's
``--role feed``, which reads the same MP4 the relay's agent pushes (bench/live.py's busy video:
640x360, 25 fps, constrained baseline, GOP 2 s, ~1 Mbit/s, 10 s looped), puts it through
``h264_mp4toannexb`` and aiortc's own H.264 packetizer (the relay's packetizer too) and sends each
access unit when its pts is due, looping as the agent does. Janus is as shipped (debug level 4,
no keyframe buffer), except: plugins and transports other than streaming and HTTP disabled, ICE on
the media veth only.

Ours: ``relay serve --ice-addresses 10.201.0.1 --live-close-after 1`` (other settings default,
SQLite) and a real ``relay agent`` pushing the MP4 (one camera, mode 1).

Network: Janus offers no 127.0.0.1 candidates, so the servers run in a network namespace of their
own (``bfan<PID>s``) and the viewers in another (``bfan<PID>v``), joined by a veth pair,
10.201.0.1/24 (servers) and 10.201.0.2/24 (viewers); a second veth pair, 10.201.1.1 ↔ 10.201.1.2,
lets this script (root namespace) call the servers' HTTP APIs. Both namespaces and their veths are
deleted on the way out, failures and Ctrl-C included (after every child is stopped by its PID).
The viewers' own namespace means its ``/proc/net/snmp`` counts only their UDP sockets.

CPU: the server (``relay serve`` or ``janus``) pinned to CPU 0 with ``taskset``, everything else
(viewers, agent, feeder) to CPU 1; CPU is utime+stime (all threads) from ``/proc/PID/stat`` over the
window, as % of one core. Mbps delivered: RTP bytes (header + payload, after SRTP) all viewers
received a second. Mbps per core = Mbps delivered / (server CPU % / 100).

Viewers (``--role viewers``, one process): aiortc peers that do not decode, bench/live.py's light
receive path imported and used as it is (``live.viewers_main``: each decrypted RTP packet's header
counted and nothing more; only its signalling loop is replaced with this script's, which speaks
either our relay's live API — session, /webrtc offer, heartbeats, bye, as player/live.js and
live.py do — or Janus's HTTP API: create a session, attach janus.plugin.streaming, ``watch`` the
mountpoint, answer Janus's JSEP offer with aiortc, ``start``, keepalive every 25 s, ``destroy``).
Peers join all at once (not live.py's batches of 5), and send one RTCP receiver report a second,
as live.py's light client does. A thin wrapper over the counting path also notes, per peer, the
arrival (monotonic) of every access unit's last packet (RTP marker bit) with a CRC of its payload,
and the first packet carrying an IDR or SPS.

Stages, per rep and server: 1 viewer (the reference), then the join test, then N = 50, 25, 10, 1
(closing viewers), each after 3 s to settle and a ``--window`` s window. Servers alternate per rep
(rep 1 ours then Janus, rep 2 Janus then ours); each is started fresh for its rep.

Join test: with the reference viewer settled, ``--join`` viewers join at once, then ``--observe`` s.
* Kernel drops: deltas of UDP InErrors and RcvbufErrors in the viewers' namespace over the join.
* Lateness of a frame at a joiner = its arrival minus the arrival of the same frame (same payload
  CRC of the marker packet; the most recent one at most 50 ms later) at the reference viewer, which
  has been watching at the live edge for seconds. So a joiner served a cached GOP burst sees its
  first frames up to 2 s late, then catches up; a joiner kept behind stays late. A joiner is at the
  live edge from the first frame after which no frame is more than 300 ms late (within the
  observation); times from the join command and from its own "connected".
* Per-frame gap: time between consecutive marker packets at a viewer (all viewers pooled), p99;
  in the join test from each joiner's first frame on, in the stages over the window.

Prints the tables and appends a section to bench/RESULTS.md. Waits first for other benches
(bench/common.py's ``wait_for_other_benches``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import live
from common import (
    CLOCK_TICKS,
    Processes,
    cpu_ticks,
    drain,
    http_get,
    interrupt,
    read_banner,
    wait_for_other_benches,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(__file__).resolve())
JANUS = "/usr/bin/janus"
JANUS_TEMPLATES = ROOT / "bench" / "janus"
SRV_ADDR, VIEW_ADDR = "10.201.0.1", "10.201.0.2"  # the media veth pair
CTL_SRV, CTL_ROOT = "10.201.1.1", "10.201.1.2"  # the control veth pair (this script's API calls)
RELAY_PORT, JANUS_PORT, RTP_PORT = 8080, 8088, 5004
SERVER_CPU, OTHERS_CPU = "0", "1"
LIVE_EDGE_S = 0.300
SETTLE_S = 3.0


# --------------------------------------------------------------------------- namespaces


@dataclass
class Namespaces:
    """The servers' and the viewers' network namespaces of this run."""

    srv: str
    view: str

    def run_in(self, ns: str, cpu: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``ns`` pinned to ``cpu`` (both tools exec: the PID is argv's)."""
        return ["ip", "netns", "exec", ns, "taskset", "-c", cpu, *argv]


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def namespaces() -> Any:
    """Two namespaces and two veth pairs (see the docstring); deleted whatever happens."""
    if "10.201." in subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout:
        raise RuntimeError("10.201.x.x is already in use here (another bench/fanout.py?)")
    pid = os.getpid()
    ns = Namespaces(f"bfan{pid}s", f"bfan{pid}v")
    media_s, media_v, ctl_s, ctl_r = f"bfm{pid}s", f"bfm{pid}v", f"bfc{pid}s", f"bfc{pid}r"
    made: list[str] = []
    try:
        for name in (ns.srv, ns.view):
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("link", "add", media_s, "type", "veth", "peer", "name", media_v)
        ip("link", "set", media_s, "netns", ns.srv)
        ip("link", "set", media_v, "netns", ns.view)
        ip("-n", ns.srv, "addr", "add", f"{SRV_ADDR}/24", "dev", media_s)
        ip("-n", ns.view, "addr", "add", f"{VIEW_ADDR}/24", "dev", media_v)
        ip("-n", ns.srv, "link", "set", media_s, "up")
        ip("-n", ns.view, "link", "set", media_v, "up")
        ip("link", "add", ctl_r, "type", "veth", "peer", "name", ctl_s)
        made.append(ctl_r)
        ip("link", "set", ctl_s, "netns", ns.srv)
        ip("-n", ns.srv, "addr", "add", f"{CTL_SRV}/24", "dev", ctl_s)
        ip("addr", "add", f"{CTL_ROOT}/24", "dev", ctl_r)
        ip("-n", ns.srv, "link", "set", ctl_s, "up")
        ip("link", "set", ctl_r, "up")
        yield ns, media_s
    finally:
        for name in reversed(made):
            argv = ["link", "del", name] if name == ctl_r else ["netns", "del", name]
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                ip(*argv)


def udp_counters(ns: str) -> dict[str, int]:
    """The ``Udp:`` line of ``/proc/net/snmp`` as seen inside ``ns``."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True,
                          text=True, check=True, timeout=30).stdout
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")][:2]
    return dict(zip(names, map(int, values), strict=True))


# --------------------------------------------------------------------------- --role feed (Janus's source)


def feed_main(args: argparse.Namespace) -> None:
    """The MP4 as plain RTP to Janus's mountpoint, each access unit when due, looped."""
    import av
    import av.bitstream
    from aiortc.codecs.h264 import H264Encoder

    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    packer = H264Encoder()
    ssrc, seq, ts0 = random.getrandbits(32), random.getrandbits(16), random.getrandbits(32)
    started, offset = time.monotonic(), 0.0
    while True:
        with av.open(args.video) as container:
            stream = container.streams.video[0]
            step = 1 / float(stream.average_rate or 25)
            bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
            last = 0.0
            for packet in container.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                pts, time_base = packet.pts, packet.time_base
                for out in bsf.filter(packet):
                    out.pts, out.time_base = pts, time_base
                    at = float(pts * time_base)
                    delay = started + offset + at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    payloads, _ = packer.pack(out)
                    stamp = (ts0 + round((offset + at) * 90000)) & 0xFFFFFFFF
                    for i, payload in enumerate(payloads):
                        marker = 0x80 if i == len(payloads) - 1 else 0
                        sock.sendto(struct.pack("!BBHII", 0x80, marker | 96, seq, stamp, ssrc) + payload,
                                    target)
                        seq = (seq + 1) & 0xFFFF
                    last = max(last, at)
            offset += last + step


# --------------------------------------------------------------------------- --role viewers

#: id(DTLS transport) -> {"first": t, "key": t, "marks": deque of (t, ssrc, crc)}; filled by
#: :func:`timed`, read by the commands of :func:`fanout_loop`.
TIMING: dict[int, dict[str, Any]] = {}


def payload_of(data: bytes) -> bytes:
    """An RTP packet's payload: past the CSRCs and the header extension (which differ per viewer)."""
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= start + 4:
        start += 4 + 4 * int.from_bytes(data[start + 2:start + 4], "big")
    return data[start:]


def starts_keyframe(payload: bytes) -> bool:
    """Whether an H.264 RTP payload carries an SPS or an IDR slice (single NAL, STAP-A, FU-A start)."""
    if not payload:
        return False
    kind = payload[0] & 0x1F
    if kind == 24 and len(payload) > 3:  # STAP-A: the first aggregated NAL's header
        kind = payload[3] & 0x1F
    elif kind == 28 and len(payload) > 1:  # FU-A: the fragment's NAL type, start bit set
        kind = payload[1] & 0x1F if payload[1] & 0x80 else 0
    return kind in (5, 7)


def install_timing() -> None:
    """Wrap the receive path live.viewers_main installed (live.py's counting) with arrival notes."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    counting = RTCDtlsTransport._handle_rtp_data

    async def timed(self: Any, data: bytes, arrival_time_ms: int) -> None:
        if len(data) >= 12:
            now = time.monotonic()
            note = TIMING.get(id(self))
            if note is None:
                note = TIMING[id(self)] = {"first": now, "key": None, "marks": deque(maxlen=3000)}
            if note["key"] is None and starts_keyframe(payload_of(data)):
                note["key"] = now
            if data[1] & 0x80:
                note["marks"].append((now, int.from_bytes(data[8:12], "big"),
                                      zlib.crc32(payload_of(data))))
        await counting(self, data, arrival_time_ms)

    RTCDtlsTransport._handle_rtp_data = timed  # type: ignore[method-assign]


def media_marks(note: dict[str, Any], since: float) -> list[tuple[float, int]]:
    """(arrival, CRC) of the marker packets of the stream with the most of them, from ``since``."""
    marks = list(note["marks"])
    if not marks:
        return []
    ssrcs: dict[int, int] = {}
    for _, ssrc, _ in marks:
        ssrcs[ssrc] = ssrcs.get(ssrc, 0) + 1
    media = max(ssrcs, key=lambda s: ssrcs[s])
    return [(t, crc) for t, ssrc, crc in marks if ssrc == media and t >= since]


def frame_gaps(marks: list[tuple[float, int]]) -> list[float]:
    return [b[0] - a[0] for a, b in itertools.pairwise(marks)]


class OursSignal:
    """Our relay's live API, as player/live.js speaks it (session, offer, heartbeats, bye)."""

    def __init__(self, http: Any, args: argparse.Namespace) -> None:
        self.http, self.base, self.ticket = http, f"{args.base}/play/live/{args.camera}", args.ticket

    async def open(self, pc: Any, peer: dict[str, Any]) -> None:
        from aiortc import RTCSessionDescription

        async with self.http.post(f"{self.base}/session", params={"ticket": self.ticket}) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"session: {r.status} {body.get('error', '')}")
        self.ticket = body["ticket"]
        peer["session"] = body["session"]
        peer["beat"] = asyncio.create_task(self.heartbeats(peer, float(body["heartbeat"])))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with self.http.post(f"{self.base}/webrtc", params={"session": peer["session"]},
                                  json={"sdp": pc.localDescription.sdp}) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"webrtc: {r.status}")
        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "answer"))

    async def heartbeats(self, peer: dict[str, Any], interval: float) -> None:
        import aiohttp

        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.post(f"{self.base}/heartbeat", params={"session": peer["session"]}) as r:
                    if r.status == 404:
                        peer["lost"] = True
                        return
                    self.ticket = (await r.json()).get("ticket") or self.ticket

    async def close(self, peer: dict[str, Any]) -> None:
        import aiohttp

        if peer.get("session"):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.post(f"{self.base}/bye", params={"session": peer["session"]}):
                    pass


class JanusSignal:
    """Janus's HTTP API: session, streaming handle, watch → Janus's offer, our answer, start."""

    def __init__(self, http: Any, args: argparse.Namespace) -> None:
        self.http, self.base, self.mountpoint = http, f"{args.base}/janus", int(args.camera)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": f"{random.getrandbits(48):x}"}
        async with self.http.post(self.base + path, json=body) as r:
            answer = await r.json(content_type=None)
        if answer.get("janus") not in ("success", "ack"):
            raise RuntimeError(f"janus {body['janus']}: {answer.get('error')}")
        return answer

    async def open(self, pc: Any, peer: dict[str, Any]) -> None:
        from aiortc import RTCSessionDescription

        session = (await self.call("", {"janus": "create"}))["data"]["id"]
        peer["janus"] = f"/{session}"
        handle = (await self.call(peer["janus"], {"janus": "attach",
                                                   "plugin": "janus.plugin.streaming"}))["data"]["id"]
        path = f"/{session}/{handle}"
        await self.call(path, {"janus": "message", "body": {"request": "watch", "id": self.mountpoint}})
        offer = None
        deadline = time.monotonic() + 30
        while offer is None and time.monotonic() < deadline:
            async with self.http.get(f"{self.base}/{session}", params={"maxev": "5"}) as r:
                events = await r.json(content_type=None)
            for event in events if isinstance(events, list) else [events]:
                if event.get("janus") == "event" and event.get("jsep"):
                    offer = event["jsep"]
        if offer is None:
            raise RuntimeError("janus: no offer within 30 s")
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.call(path, {"janus": "message", "body": {"request": "start"},
                               "jsep": {"type": "answer", "sdp": pc.localDescription.sdp}})
        await self.call(path, {"janus": "trickle", "candidate": {"completed": True}})
        peer["beat"] = asyncio.create_task(self.keepalive(peer))

    async def keepalive(self, peer: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(25)
            try:
                await self.call(peer["janus"], {"janus": "keepalive"})
            except Exception:
                peer["lost"] = True
                return

    async def close(self, peer: dict[str, Any]) -> None:
        if peer.get("janus"):
            with contextlib.suppress(Exception):
                await self.call(peer["janus"], {"janus": "destroy"})


async def fanout_loop(args: argparse.Namespace, frames: dict[int, list[int]],
                      rtp: dict[int, dict[int, list[int]]]) -> None:
    """The viewers process's commands (stdin, one JSON answer a line on stdout), run by
    live.viewers_main in place of live.viewers_loop, so live.py's counting path fills ``rtp``."""
    import aiohttp
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [VIEW_ADDR]  # live.py pins 127.0.0.1
    install_timing()
    peers: list[dict[str, Any]] = []

    async def receiver_reports(peer: dict[str, Any]) -> None:
        """One RTCP receiver report a second, as live.py's light client sends."""
        while True:
            await asyncio.sleep(0.5 + random.random())
            streams = rtp.get(id(peer["transport"]), {})
            if not streams:
                continue
            ssrc, stream = max(streams.items(), key=lambda item: item[1][0])
            lost = max(stream[3] - stream[0] + stream[4], 0)
            report = RtcpReceiverInfo(ssrc=ssrc, fraction_lost=0, packets_lost=lost,
                                      highest_sequence=stream[3] & 0xFFFFFFFF, jitter=0, lsr=0, dlsr=0)
            transceiver = peer["transceiver"]
            await transceiver.receiver._send_rtcp(RtcpRrPacket(ssrc=transceiver.sender._ssrc,
                                                               reports=[report]))

    async def open_peer(signal_: Any) -> dict[str, Any]:
        peer: dict[str, Any] = {"asked": time.monotonic(), "connected": None}
        pc = peer["pc"] = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        connected = asyncio.get_running_loop().create_future()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("connected", "failed", "closed") and not connected.done():
                connected.set_result(pc.connectionState)

        try:
            await signal_.open(pc, peer)
            peer["transceiver"] = pc.getTransceivers()[0]
            peer["transport"] = peer["transceiver"].receiver.transport
            outcome = await asyncio.wait_for(connected, 30)
        except BaseException:
            await close_peer(signal_, peer)
            raise
        if outcome != "connected":
            await close_peer(signal_, peer)
            raise RuntimeError(f"peer {outcome}")
        peer["connected"] = time.monotonic()
        peer["reports"] = asyncio.create_task(receiver_reports(peer))
        return peer

    async def close_peer(signal_: Any, peer: dict[str, Any]) -> None:
        for task in ("beat", "reports"):
            if peer.get(task) is not None:
                peer[task].cancel()
        await signal_.close(peer)
        await peer["pc"].close()

    def counts() -> list[list[int]]:
        """Per peer: live.py's count fields (jitter-buffer frames and bytes, then of the media
        stream packets, bytes, marker bits, highest sequence number, packets not new; then packets
        of its other streams)."""
        out = []
        for peer in peers:
            streams = sorted(rtp.get(id(peer["transport"]), {}).values(), key=lambda s: -s[0])
            media = streams[0] if streams else [0, 0, 0, 0, 0]
            out.append([0, 0, *media, sum(s[0] for s in streams[1:])])
        return out

    def gaps(since: float) -> dict[str, Any]:
        pooled = [g for peer in peers
                  for g in frame_gaps(media_marks(TIMING.get(id(peer["transport"]), {"marks": []}), since))]
        return {"p99_ms": percentile(pooled, 99) * 1000, "max_ms": max(pooled, default=0) * 1000,
                "gaps": len(pooled)}

    def timing(since: float) -> list[dict[str, Any]]:
        out = []
        for peer in peers:
            note = TIMING.get(id(peer["transport"]), {"marks": [], "first": None, "key": None})
            out.append({"asked": peer["asked"], "connected": peer["connected"], "first": note["first"],
                        "key": note["key"], "marks": media_marks(note, since)})
        return out

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        signal_ = OursSignal(http, args) if args.server == "ours" else JanusSignal(http, args)
        reply({"ready": True, "now": time.monotonic()})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = line.split()
            if not command or command[0] == "quit":
                break
            try:
                if command[0] in ("set", "join"):  # join: add this many at once; set: have this many
                    started = time.monotonic()
                    wanted = int(command[1]) + (len(peers) if command[0] == "join" else 0)
                    if len(peers) < wanted:
                        peers.extend(await asyncio.gather(*(open_peer(signal_)
                                                            for _ in range(wanted - len(peers)))))
                    if len(peers) > wanted:
                        await asyncio.gather(*(close_peer(signal_, peer) for peer in peers[wanted:]))
                        del peers[wanted:]
                    reply({"peers": len(peers), "started": started, "seconds": time.monotonic() - started})
                elif command[0] == "counts":
                    reply({"counts": counts(), "lost": sum(bool(p.get("lost")) for p in peers),
                           "now": time.monotonic()})
                elif command[0] == "gaps":
                    reply(gaps(float(command[1])))
                elif command[0] == "timing":
                    reply({"peers": timing(float(command[1]))})
                else:
                    reply({"error": f"unknown command {command[0]}"})
            except Exception as exc:
                reply({"error": f"{exc.__class__.__name__}: {exc}"})
        await asyncio.gather(*(close_peer(signal_, peer) for peer in peers), return_exceptions=True)


def viewers_role(args: argparse.Namespace) -> None:
    args.client = "light"
    live.viewers_loop = fanout_loop  # live.viewers_main installs its counting path, then runs this
    live.viewers_main(args)


# --------------------------------------------------------------------------- the servers


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


@dataclass
class Server:
    """One server under test, running in the servers' namespace, and the source that feeds it."""

    name: str  # ours / janus
    child: subprocess.Popen[Any]
    source: subprocess.Popen[Any]
    viewer_base: str  # as the viewers reach it (media veth)
    camera: str  # our camera id, or Janus's mountpoint id
    ticket: str = ""
    logs: list[Path] = field(default_factory=list)


def start_ours(procs: Processes, tmp: Path, ns: Namespaces, video: Path) -> Server:
    data, log = tmp / "ours-data", tmp / "ours-relay.log"
    if data.exists():
        shutil.rmtree(data)
    flags = ["--data", str(data), "--listen", f"0.0.0.0:{RELAY_PORT}",
             "--public-url", f"http://{SRV_ADDR}:{RELAY_PORT}", "--ice-addresses", SRV_ADDR,
             "--live-close-after", "1"]
    with log.open("wb") as stderr:
        child = procs.start(ns.run_in(ns.srv, SERVER_CPU, [sys.executable, "-m", "relay", "serve", *flags]),
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, cwd=ROOT)
    banner = read_banner(child)
    drain(child.stdout)
    credential = re.search(r"API credential:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
    base = f"http://{CTL_SRV}:{RELAY_PORT}"
    wait_until(lambda: _answers(base + "/healthz"), 60, "relay /healthz", interval=0.2)
    token = live.api(base, "access_token", unionid=credential)["token"]
    key = subprocess.run([sys.executable, "-m", "relay", "agent-key", "add", "bench", "--data", str(data)],
                         capture_output=True, text=True, timeout=60, check=True,
                         stdin=subprocess.DEVNULL, cwd=ROOT).stdout.strip()
    agent_log = tmp / "ours-agent.log"
    shutil.rmtree(tmp / "ours-agent", ignore_errors=True)
    (tmp / "ours-agent").mkdir()
    with agent_log.open("wb") as out:
        agent = procs.start(ns.run_in(ns.srv, OTHERS_CPU, [
            sys.executable, "-m", "relay", "agent", "--server", f"http://127.0.0.1:{RELAY_PORT}",
            "--data", str(tmp / "ours-agent")]), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            env={**os.environ, "RELAY_AGENT_KEY": key}, cwd=ROOT)
    gatherers = wait_until(lambda: live.api(base, "list_gather", token=token)["data"], 30,
                           "agent registers", interval=0.2)
    camera = live.api(base, "add_camera", token=token, camera_name="bench", stream_prop=1,
                      gather_id=gatherers[0]["gather_id"], stream_mp4=str(video))["camera_id"]
    wait_until(lambda: live.api(base, "get_camera_status", token=token, camera_id=camera)["status"] == 1,
               30, "camera online", interval=0.2)
    url = live.api(base, "play_camera", token=token, camera_id=camera, width=640, height=360)["play_url"]
    ticket = unquote(re.search(r"[?&]ticket=([^&]+)", url).group(1))  # type: ignore[union-attr]
    return Server("ours", child, agent, f"http://{SRV_ADDR}:{RELAY_PORT}", str(camera), ticket,
                  [log, agent_log])


def _answers(url: str) -> bool:
    try:
        http_get(url, timeout=1)
        return True
    except OSError:
        return False


def start_janus(procs: Processes, tmp: Path, ns: Namespaces, iface: str, video: Path) -> Server:
    configs = tmp / "janus"
    configs.mkdir(exist_ok=True)
    values = {"CONFIGS": str(configs), "ICE_IFACE": iface, "HTTP_PORT": str(JANUS_PORT),
              "RTP_PORT": str(RTP_PORT)}
    for template in JANUS_TEMPLATES.glob("*.jcfg"):
        text = template.read_text()
        for name, value in values.items():
            text = text.replace(f"@{name}@", value)
        (configs / template.name).write_text(text)
    log = tmp / "janus.log"
    child = procs.start(ns.run_in(ns.srv, SERVER_CPU, [JANUS, "-C", str(configs / "janus.jcfg"),
                                                       "-F", str(configs), "-N", "-o", "-L", str(log)]),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    base = f"http://{CTL_SRV}:{JANUS_PORT}/janus"
    wait_until(lambda: child.poll() is not None or _answers(base + "/info"), 60, "janus /info",
               interval=0.2)
    if child.poll() is not None:
        raise RuntimeError(f"janus exited with {child.returncode}")
    feed_log = tmp / "janus-feed.log"
    with feed_log.open("wb") as out:
        feeder = procs.start(ns.run_in(ns.srv, OTHERS_CPU, [
            sys.executable, SCRIPT, "--role", "feed", "--video", str(video),
            "--target", f"127.0.0.1:{RTP_PORT}"]), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            cwd=ROOT)
    time.sleep(2.5)  # a keyframe has gone by: the mountpoint knows its stream
    return Server("janus", child, feeder, f"http://{SRV_ADDR}:{JANUS_PORT}", "1", "", [log, feed_log])


class Viewers(live.ViewersProcess):
    """This script's ``--role viewers`` in the viewers' namespace on CPU 1 (live.py's
    ViewersProcess for the stdin/stdout protocol)."""

    def __init__(self, procs: Processes, ns: Namespaces, server: Server, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.procs = procs
        self.child = procs.start(ns.run_in(ns.view, OTHERS_CPU, [
            sys.executable, SCRIPT, "--role", "viewers", "--server", server.name, "--base",
            server.viewer_base, "--camera", server.camera, "--ticket", server.ticket or "-"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT)
        self.call_answer(None, 60)


# --------------------------------------------------------------------------- measuring


@dataclass
class Stage:
    server: str
    rep: int
    n: int
    server_cpu: float  # % of one core
    source_cpu: float
    viewers_cpu: float
    mbps: float  # all viewers
    kbps_median: float  # per viewer
    fps_median: float
    fps_min: float
    loss_pct: float
    gap_p99_ms: float
    gap_max_ms: float
    load: str

    @property
    def per_core(self) -> float:
        return self.mbps / (self.server_cpu / 100) if self.server_cpu > 0 else float("nan")


def measure(server: Server, viewers: Viewers, rep: int, n: int, window: float) -> Stage:
    pids = (server.child.pid, server.source.pid, viewers.child.pid)
    load = live.loadavg()
    first = viewers.call_answer("counts")
    before = [cpu_ticks(pid) for pid in pids]
    started = time.monotonic()
    time.sleep(window)
    after = [cpu_ticks(pid) for pid in pids]
    elapsed = time.monotonic() - started
    last = viewers.call_answer("counts")
    gap = viewers.call_answer(f"gaps {first['now']}")
    if last["lost"]:
        raise RuntimeError(f"{last['lost']} viewer session(s) lost")
    cpu = [(a - b) / CLOCK_TICKS / elapsed * 100 for a, b in zip(after, before, strict=True)]
    delta = [[a - b for a, b in zip(x, y, strict=True)]
             for x, y in zip(last["counts"], first["counts"], strict=True)]
    seconds = last["now"] - first["now"]
    fps = [d[4] / seconds for d in delta]
    kbps = [d[3] * 8 / seconds / 1000 for d in delta]
    fresh, numbered = sum(d[2] - d[6] for d in delta), sum(d[5] for d in delta)
    return Stage(server.name, rep, n, cpu[0], cpu[1], cpu[2], sum(kbps) / 1000, statistics.median(kbps),
                 statistics.median(fps), min(fps), max(numbered - fresh, 0) / max(numbered, 1) * 100,
                 gap["p99_ms"], gap["max_ms"], load)


@dataclass
class Join:
    server: str
    rep: int
    joiners: int
    in_errors: int
    rcvbuf_errors: int
    srv_in_errors: int
    join_s: float  # the whole join command
    connected: list[float]  # s from the join command, per joiner
    first: list[float]
    keyframe: list[float]
    edge: list[float]  # s from the join command to the live edge (inf: not within the observation)
    edge_from_connected: list[float]
    late_max: list[float]  # the worst lateness a joiner saw, s
    gap_p99_ms: float
    load: str


def join_test(server: Server, viewers: Viewers, ns: Namespaces, rep: int, joiners: int,
              observe: float) -> Join:
    load = live.loadavg()
    view0, srv0 = udp_counters(ns.view), udp_counters(ns.srv)
    answer = viewers.call_answer(f"join {joiners}")
    time.sleep(observe)
    view1, srv1 = udp_counters(ns.view), udp_counters(ns.srv)
    start = answer["started"]
    peers = viewers.call_answer(f"timing {start - 15}")["peers"]
    reference, joined = peers[0], peers[-joiners:]
    seen: dict[int, list[float]] = {}
    for t, crc in reference["marks"]:
        seen.setdefault(crc, []).append(t)
    edges, from_connected, worst, gaps = [], [], [], []
    for peer in joined:
        marks = [(t, crc) for t, crc in peer["marks"] if t >= start]
        lateness = []
        for t, crc in marks:
            times = seen.get(crc, [])
            i = bisect.bisect_right(times, t + 0.05)
            if i:
                lateness.append((t, t - times[i - 1]))
        late = [i for i, (_, value) in enumerate(lateness) if value > LIVE_EDGE_S]
        if not lateness or (late and late[-1] == len(lateness) - 1):
            edge = float("inf")
        else:
            edge = lateness[late[-1] + 1 if late else 0][0]
        edges.append(edge - start)
        from_connected.append(edge - peer["connected"])
        worst.append(max((value for _, value in lateness), default=float("nan")))
        gaps += frame_gaps(marks)
    relative = lambda key: [(p[key] - start) if p[key] is not None else float("inf")  # noqa: E731
                            for p in joined]
    return Join(server.name, rep, joiners, view1["InErrors"] - view0["InErrors"],
                view1["RcvbufErrors"] - view0["RcvbufErrors"], srv1["InErrors"] - srv0["InErrors"],
                answer["seconds"], relative("connected"), relative("first"), relative("key"), edges,
                from_connected, worst, percentile(gaps, 99) * 1000, load)


def run_server(procs: Processes, tmp: Path, ns: Namespaces, iface: str, video: Path, name: str, rep: int,
               counts: list[int], window: float, joiners: int, observe: float
               ) -> tuple[list[Stage], Join | None]:
    server = (start_ours(procs, tmp, ns, video) if name == "ours"
              else start_janus(procs, tmp, ns, iface, video))
    viewers = None
    stages: list[Stage] = []
    join = None
    try:
        viewers = Viewers(procs, ns, server, tmp / f"viewers-{name}-{rep}.log")
        viewers.call_answer("set 1")
        time.sleep(SETTLE_S + 2)
        if joiners:
            join = join_test(server, viewers, ns, rep, joiners, observe)
            print(f"  rep {rep} {name:5} join {joiners}: kernel drops InErrors {join.in_errors}, "
                  f"RcvbufErrors {join.rcvbuf_errors}; live edge from join median "
                  f"{statistics.median(join.edge):.2f} s, max {max(join.edge):.2f} s; gap p99 "
                  f"{join.gap_p99_ms:.0f} ms", flush=True)
        have = 1 + joiners
        for n in sorted(counts, reverse=True):
            if n != have:
                viewers.call_answer(f"set {n}")
                have = n
                time.sleep(SETTLE_S)
            stage = measure(server, viewers, rep, n, window)
            stages.append(stage)
            print(f"  rep {rep} {name:5} N={n:3}: server {stage.server_cpu:5.1f} % of a core, "
                  f"{stage.mbps:6.2f} Mbps, {stage.per_core:6.1f} Mbps/core; source "
                  f"{stage.source_cpu:4.1f} %, viewers {stage.viewers_cpu:5.1f} %; per viewer "
                  f"{stage.kbps_median:.0f} kbit/s, {stage.fps_median:.1f} fps (min {stage.fps_min:.1f}), "
                  f"loss {stage.loss_pct:.2f} %, gap p99 {stage.gap_p99_ms:.0f} ms; load {stage.load}",
                  flush=True)
    except Exception:
        for log in server.logs:
            with contextlib.suppress(OSError):
                print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-2000:]}",
                      file=sys.stderr)
        raise
    finally:
        if viewers is not None:
            viewers.close()
        procs.stop(server.source)
        procs.stop(server.child)
    PROBLEMS[f"{name} rep {rep}"] = log_problems(server.logs)
    return stages, join


#: "server rep N" -> what its logs held that should not be there (see :func:`log_problems`).
PROBLEMS: dict[str, str] = {}


def log_problems(logs: list[Path]) -> str:
    """Tracebacks and error lines in a server's and its source's logs (Janus marks errors [ERR])."""
    text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
    errors = len(re.findall(r"ERROR|\[ERR\]", text))
    warnings = text.count("WARNING") + text.count("[WARN]")
    return (f"{text.count('Traceback')} tracebacks, {errors} ERROR/[ERR] lines, "
            f"{warnings} WARNING/[WARN] lines")


# --------------------------------------------------------------------------- tables


def fmt(value: float, digits: int = 2) -> str:
    return "∞" if value == float("inf") else f"{value:.{digits}f}"


def cell(stage: Stage | None, attr: str, digits: int) -> str:
    return f"{getattr(stage, attr):.{digits}f}" if stage else "-"


def cells(janus: Stage | None, ours: Stage | None, attr: str, digits: int) -> str:
    return f"{cell(janus, attr, digits)} / {cell(ours, attr, digits)}"


def cpu_table(stages: list[Stage], counts: list[int], reps: int) -> list[str]:
    rows = ["| N | rep | Janus CPU % | ours CPU % | Janus Mbps | ours Mbps | Janus Mbps / core | "
            "ours Mbps / core | ratio ours / Janus | kbit/s per viewer Janus / ours | fps min Janus / ours | "
            "loss % Janus / ours | frame gap p99 ms Janus / ours | viewers process CPU % Janus / ours |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|"]
    for n in counts:
        ratios = []
        for rep in range(1, reps + 1):
            pick = {s.server: s for s in stages if s.n == n and s.rep == rep}
            j, o = pick.get("janus"), pick.get("ours")
            if j is None and o is None:
                continue
            ratio = o.per_core / j.per_core if j and o else float("nan")
            ratios.append(ratio)
            rows.append(f"| {n} | {rep} | {cell(j, 'server_cpu', 2)} | {cell(o, 'server_cpu', 2)} | "
                        f"{cell(j, 'mbps', 2)} | {cell(o, 'mbps', 2)} | {cell(j, 'per_core', 0)} | "
                        f"{cell(o, 'per_core', 0)} | {ratio:.2f} | {cells(j, o, 'kbps_median', 0)} | "
                        f"{cells(j, o, 'fps_min', 1)} | {cells(j, o, 'loss_pct', 2)} | "
                        f"{cells(j, o, 'gap_p99_ms', 0)} | {cells(j, o, 'viewers_cpu', 0)} |")
        good = [r for r in ratios if r == r]
        if len(good) > 1:
            rows.append(f"| {n} | median | | | | | | | {statistics.median(good):.2f} | | | | | |")
    return rows


def join_table(joins: list[Join]) -> list[str]:
    rows = ["| server | rep | joiners | kernel UDP drops at viewers: InErrors / RcvbufErrors | at server | "
            "join command s | connected s: median / max | first packet s: median / max | first keyframe s: "
            "median / max | live edge s from join: median / p90 / max | live edge s from connected: median / "
            "max | at live edge ≤ 2 s after join / after connected | worst lateness s: median / max | "
            "frame gap p99 ms |",
            "|---|---:|---:|---|---:|---:|---|---|---|---|---|---|---|---:|"]
    for j in joins:
        within = sum(v <= 2.0 for v in j.edge)
        within_connected = sum(v <= 2.0 for v in j.edge_from_connected)
        late = [v for v in j.late_max if v == v]
        rows.append(
            f"| {j.server} | {j.rep} | {j.joiners} | {j.in_errors} / {j.rcvbuf_errors} | {j.srv_in_errors} | "
            f"{j.join_s:.2f} | {fmt(statistics.median(j.connected))} / {fmt(max(j.connected))} | "
            f"{fmt(statistics.median(j.first))} / {fmt(max(j.first))} | "
            f"{fmt(statistics.median(j.keyframe))} / {fmt(max(j.keyframe))} | "
            f"{fmt(statistics.median(j.edge))} / {fmt(percentile(j.edge, 90))} / {fmt(max(j.edge))} | "
            f"{fmt(statistics.median(j.edge_from_connected))} / {fmt(max(j.edge_from_connected))} | "
            f"{within} / {within_connected} of {j.joiners} | "
            f"{fmt(statistics.median(late) if late else float('nan'))} / "
            f"{fmt(max(late, default=float('nan')))} | {j.gap_p99_ms:.0f} |")
    return rows


def verdicts(stages: list[Stage], joins: list[Join], counts: list[int], reps: int) -> list[str]:
    """Issue 12's "done when" for fan-out, against this run."""
    lines = []
    for n in (n for n in counts if n >= 10):
        ratios = []
        for rep in range(1, reps + 1):
            pick = {s.server: s for s in stages if s.n == n and s.rep == rep}
            if len(pick) == 2:
                ratios.append(pick["ours"].per_core / pick["janus"].per_core)
        if ratios:
            shown = ", ".join(f"{r:.2f}" for r in ratios)
            lines.append(f"- N = {n}: ours / Janus Mbps per core {shown} (goal ≥ 1.0: "
                         f"{'met' if min(ratios) >= 1.0 else 'missed'})")
    for j in (j for j in joins if j.server == "ours"):
        ok = j.in_errors == 0 and max(j.edge) <= 2.0 and j.gap_p99_ms <= 100  # InErrors ⊇ RcvbufErrors
        lines.append(f"- join rep {j.rep}, ours: {j.in_errors} kernel drops (InErrors), "
                     f"{sum(v <= 2.0 for v in j.edge)} of {j.joiners} at the live edge within 2 s of "
                     f"the join, frame gap p99 {j.gap_p99_ms:.0f} ms (goal 0, all, ≤ 100 ms: "
                     f"{'met' if ok else 'missed'})")
    return lines


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "relay"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return head + (f" (relay/ uncommitted: {' '.join(dirty.split())})" if dirty else "")


def report(args: argparse.Namespace, info: dict[str, Any], stages: list[Stage], joins: list[Join],
           counts: list[int], loads: list[str], janus_version: str, waited: float) -> str:
    return "\n".join([
        "## Fan-out vs Janus (issue 12; bench/fanout.py)", "",
        "Command: `" + " ".join([".venv/bin/python", "bench/fanout.py", *sys.argv[1:]]) + "`", "",
        f"Commit {commit()}; {janus_version} (Debian, `apt-get install -y janus`); load average "
        f"(1/5/15 min) at the start, per server run and at the end: {'; '.join(loads)}"
        + (f"; waited {waited:.0f} s for other benches first" if waited else "") + ".", "",
        f"Video: bench/live.py's busy MP4, {info['width']}x{info['height']} H.264 {info['profile']}, "
        f"{info['fps']:g} fps, GOP 2 s, {info['kbps']:.0f} kbit/s measured, 10 s looped; ours pushed by "
        "a real `relay agent`, Janus fed the same MP4 as RTP by `--role feed` (aiortc's packetizer). "
        "Servers in a network namespace of their own, viewers in another, one veth pair between "
        "(10.201.0.1 / 10.201.0.2); server pinned to CPU 0, viewers, agent and feeder to CPU 1; CPU "
        "from /proc/PID/stat (% of one core); viewers: aiortc peers that do not decode (bench/live.py's "
        "light receive path), one process. Mbps delivered = RTP bytes all viewers received a second; "
        f"Mbps / core = that / server CPU. {args.window:g} s windows, {args.reps} reps, servers "
        "alternating per rep (each started fresh for its rep).", "",
        *cpu_table(stages, counts, args.reps), "",
        f"Join test: {args.join} viewers join at once beside one reference viewer that has watched for "
        f"{SETTLE_S + 2:g} s; observed {args.observe:g} s. Lateness of a frame at a joiner = its "
        "arrival minus the reference viewer's arrival of the same frame (CRC of the marker packet's "
        "payload); at the live edge from the first frame after which none is more than 300 ms late. "
        "Kernel drops: UDP InErrors / RcvbufErrors deltas of /proc/net/snmp in the viewers' namespace "
        "(and InErrors in the servers'). Frame gap: time between marker packets at a joiner, from its "
        "first frame on, pooled. Times in s from the join command unless said.", "",
        *join_table(joins), "",
        *verdicts(stages, joins, counts, args.reps), "",
        "Logs: " + "; ".join(f"{key}: {value}" for key, value in PROBLEMS.items()) + ".", ""])


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="1,10,25,50", help="viewer counts (default 1,10,25,50)")
    parser.add_argument("--window", type=float, default=20.0, help="CPU window per stage, s (default 20)")
    parser.add_argument("--reps", type=int, default=2, help="reps, servers alternating (default 2)")
    parser.add_argument("--join", type=int, default=50, help="viewers joining at once (0: no join test)")
    parser.add_argument("--observe", type=float, default=10.0, help="join test observation, s (default 10)")
    parser.add_argument("--only", choices=("ours", "janus"), help="one server only (for trying things)")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other benches first (for trying things only)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (logs) and say where")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                        help="Markdown file to append the section to ('' to not write)")
    parser.add_argument("--role", default="main", choices=("main", "viewers", "feed"), help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--camera", help=argparse.SUPPRESS)
    parser.add_argument("--ticket", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "viewers":
        viewers_role(args)
        return 0
    if args.role == "feed":
        with contextlib.suppress(KeyboardInterrupt):
            feed_main(args)
        return 0

    if not Path(JANUS).exists():
        print("bench/fanout.py needs Janus: apt-get install -y janus", file=sys.stderr)
        return 2
    counts = sorted({int(n) for n in args.viewers.split(",") if n.strip()})
    janus_version = subprocess.run([JANUS, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    procs = Processes(grace=10.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    previous = signal.signal(signal.SIGTERM, interrupt)
    code = 1
    try:
        waited = 0.0 if args.no_wait else wait_for_other_benches()
        loads = [live.loadavg()]
        print(f"bench/fanout.py: {janus_version}; load {loads[0]}", flush=True)
        from relay.agent.demo_video import make_demo_video

        video = make_demo_video(tmp / "busy.mp4", 640, 360, 25, 10, noise_rows=24)
        info = live.video_info(video)
        print(f"video {info['width']}x{info['height']} {info['fps']:g} fps {info['kbps']:.0f} kbit/s",
              flush=True)
        stages: list[Stage] = []
        joins: list[Join] = []
        with namespaces() as (ns, iface):
            try:
                for rep in range(1, args.reps + 1):
                    for name in ["ours", "janus"] if rep % 2 else ["janus", "ours"]:
                        if args.only and name != args.only:
                            continue
                        loads.append(live.loadavg())
                        got, join = run_server(procs, tmp, ns, iface, video, name, rep, counts,
                                               args.window, args.join, args.observe)
                        stages += got
                        if join is not None:
                            joins.append(join)
            finally:
                procs.stop_all()  # nothing left inside the namespaces when they go
        loads.append(live.loadavg())
        section = report(args, info, stages, joins, counts, loads, janus_version, waited)
        print(section, flush=True)
        if args.results:
            live.append_results(Path(args.results), section)
            print(f"appended to {args.results}")
        code = 0
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
    except Exception:
        traceback.print_exc()
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
