"""Benchmark live video: time to the first decoded frame in Chromium, and relay CPU per viewer.

    .venv/bin/python bench/live.py [--runs 5] [--viewers 1,10,50] [--window 20] [--cpu-rounds 2]
                                   [--client light|full] [--compare-full 1,10] [--video busy|demo]
                                   [--skip-latency] [--skip-cpu] [--no-mse] [--results FILE]

Setup (both parts): a temporary dir; a PyAV-made MP4, 640x360, 25 fps, constrained baseline, GOP 2 s,
10 s looped. ``make_demo_video`` with its defaults asks x264 for 1 Mbit/s but its picture is so easy
to code that it gets ~330 kbit/s, so ``--video busy`` (default) makes it with ``noise_rows=24`` (a band
of fresh noise in the bottom 24 rows), which brings it to ~1 Mbit/s; ``--video demo`` uses
make_demo_video as it is. The real bitrate of both is measured and reported. Then a real
``relay serve`` on a free 127.0.0.1 port with ``--ice-addresses 127.0.0.1 --live-close-after 1``
(everything else default: heartbeat 12 s, viewer timeout 30 s, WebRTC fallback after 4 s); an agent
key made with ``relay agent-key add``; a real ``relay agent`` process; one camera (mode 1, the MP4).

Part 1, first frame. Headless Debian Chromium (Playwright, the flags of tests/conftest.py (CHROMIUM_ARGS)).
Each measured tab is a page of another origin embedding the camera's play_url in an iframe, as the
tests' ``embed()`` does. An init script in the player's iframe records ``performance.now()`` (so: ms
from the *iframe's* navigation start, which is when the play page's request begins) at the first
video frame: the earliest of the first ``requestVideoFrameCallback`` and a 4 ms poll of
``getVideoPlaybackQuality().totalVideoFrames > 0``. The end-to-end figure is the same instant on the
wall clock (``performance.timeOrigin + now``) minus Python's ``time.time()`` taken just before
``page.set_content()`` of the embedding page; it adds the embedding page and the iframe's creation.

* cold: nobody watches, so the agent is not pushing; before each cold run the relay's ``/metrics``
  must show ``relay_live_pushes 0`` and ``relay_live_viewers 0``;
* warm: the cold run's tab is left playing (1 s more), then a second tab opens the same camera.

The probe also records milestones (the player's fetches from resource timing, its RTCPeerConnection's
ICE gathering / connection / track events, its WebSocket's open and first binary message), printed
as a "where the time goes" table of medians.

Per round: cold WebRTC, warm WebRTC, cold MSE, warm MSE (``&mode=mse``), so load changes on this
shared machine hit all four alike; one discarded warm-up round first (Chromium's first decoder and
WebRTC stack start-up). The default play_url (no mode) is WebRTC with MSE fallback after 4 s: the
mode that actually played is checked, and a run that fell back is counted and flagged.

Part 2, relay CPU per viewer. Chromium is closed first (50 tabs would not fit 2 cores). Viewers are
aiortc peers in a separate process (this script, ``--role viewers``), signalling as player/live.js
does: ``POST /play/live/<id>/session?ticket=…``, a recvonly video transceiver whose offer is posted
to ``/webrtc?session=…``, ``/heartbeat`` at the interval the session answer gives (12 s). They never
decode. aiortc's receiver always hands complete frames to a decoder thread, so two receive paths:

* ``--client light`` (default): the peer's DTLS transport decrypts each SRTP packet and this script
  counts its RTP header (sequence number, marker bit, size) and goes no further; the peer sends one
  RTCP receiver report a second of its own (what a browser sends at least). Cheap enough that 50
  viewers fit beside the relay on this machine.
* ``--client full``: aiortc's whole receive path (RTP parsing, NACK generator, REMB estimator, jitter
  buffer, its RTCP reports, NACKs and PLIs), only the decoder worker replaced by a frame counter.
  Closer to a browser's feedback, but about 1 % of a core per viewer in the client: at 50 viewers on
  a loaded 2-core machine the client falls behind and loses packets. ``--compare-full 1,10`` (the
  default) measures these counts once more with this client, after the main rounds.

From the sequence numbers each viewer receives, the script knows how many packets the relay sent it
(received or lost), so it can tell a relay that fell behind from a client that did.

Baseline (N=0): the agent pushes to the relay and a "holder" session (opened by the viewer process,
heartbeats only, no transport) keeps the push open; the holder stays at every N, so the stages
differ only by their N WebRTC viewers. Odd rounds go 0, 1, 10, 50; even rounds 50, 10, 1, 0 (so a
drifting machine load does not favour one end). After each change of N: wait until the relay counts
the sessions, then 3 s to settle, then the window. The relay's CPU is ``utime+stime`` (all threads)
from ``/proc/PID/stat`` over ``--window`` seconds, as % of one core; the per-viewer increment is
(cpu_N - cpu_0) / N, paired within each round, median over rounds.

Every process this starts is stopped by its PID and the temporary dir removed on the way out,
failures and Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from common import (
    CLOCK_TICKS,
    Processes,
    cpu_ticks,
    http_get,
    interrupt,
    start_relay_serve,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCRIPT = str(Path(__file__).resolve())
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--allow-loopback-in-peer-connection",
                 "--autoplay-policy=no-user-gesture-required"]
RELAY_FLAGS = ["--ice-addresses", "127.0.0.1", "--live-close-after", "1"]
COLD_GOAL_MS, WARM_GOAL_MS = 500, 400

# Runs in every frame before its scripts; only the live player's iframe records anything.
FIRST_FRAME_PROBE = """
(() => {
  if (!location.pathname.startsWith('/play/live/')) return;
  const mark = window.__bench = {timeOrigin: performance.timeOrigin};
  const at = (name) => { if (mark[name] === undefined) mark[name] = performance.now(); };
  // Milestones only: the player's own objects, watched through their events.
  const NativePC = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new NativePC(...args);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') at('gathered');
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'connected') at('connected');
    });
    pc.addEventListener('track', () => at('track'));
    return pc;
  };
  window.RTCPeerConnection.prototype = NativePC.prototype;
  const NativeWS = window.WebSocket;
  window.WebSocket = function (...args) {
    const ws = new NativeWS(...args);
    ws.addEventListener('open', () => at('ws_open'));
    ws.addEventListener('message', (event) => { if (typeof event.data !== 'string') at('ws_media'); });
    return ws;
  };
  window.WebSocket.prototype = NativeWS.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
  const watch = () => {
    const video = document.getElementById('video');
    video.requestVideoFrameCallback(() => at('rvfc'));
    video.addEventListener('playing', () => at('playing'));
    const poll = () => {
      if (video.getVideoPlaybackQuality().totalVideoFrames > 0) at('poll');
      else setTimeout(poll, 4);
    };
    poll();
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', watch);
  else watch();
})();
"""
# Read from the player's iframe: the probe's marks, the resource timings of its calls, its mode.
READ_MARKS = """() => {
  const m = Object.assign({}, window.__bench || {});
  for (const e of performance.getEntriesByType('resource')) {
    const name = e.name.includes('/session?') ? 'session' : e.name.includes('/webrtc?') ? 'offer'
               : e.name.endsWith('/player/live.js') ? 'script' : '';
    if (name && m[name + '_end'] === undefined) {
      m[name + '_start'] = e.startTime;
      m[name + '_end'] = e.responseEnd;
    }
  }
  const v = document.getElementById('video');
  m.mode = v ? (v.dataset.mode || '') : '';
  return m;
}"""
#: Milestones shown in the breakdown, as (mark, label).
MILESTONES = [("script_end", "live.js loaded"), ("session_end", "session answered"),
              ("gathered", "ICE gathered"), ("offer_start", "offer posted"),
              ("offer_end", "answer received"), ("connected", "WebRTC connected"),
              ("ws_open", "MSE socket open"), ("ws_media", "first MSE fragment"),
              ("first", "first frame")]


# --------------------------------------------------------------------------- processes


def api(base: str, name: str, **params: Any) -> dict[str, Any]:
    answer = json.loads(http_get(f"{base}/api/v1/{name}?{urlencode(params)}", timeout=30))
    if answer.get("err_code", 0) != 0:
        raise RuntimeError(f"{name}: {answer}")
    return answer


def metric(base: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", http_get(base + "/metrics").decode(), re.M)
    return float(match.group(1)) if match else 0.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return total - idle, total


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------- the live system


@dataclass
class System:
    base: str
    token: str
    camera_id: int
    relay: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]
    video: Path
    video_info: dict[str, Any]
    logs: list[Path] = field(default_factory=list)

    def play_url(self, **extra: str) -> str:
        url = api(self.base, "play_camera", token=self.token, camera_id=self.camera_id, width=640,
                  height=360)["play_url"]
        return url + "".join(f"&{key}={value}" for key, value in extra.items())

    def pushes(self) -> float:
        return metric(self.base, "relay_live_pushes")

    def viewers(self) -> float:
        return metric(self.base, "relay_live_viewers")


def video_info(path: Path) -> dict[str, Any]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sizes, keyframes, count = 0, 0, 0
        for packet in container.demux(stream):
            if packet.size:
                sizes += packet.size
                keyframes += bool(packet.is_keyframe)
                count += 1
        rate = float(stream.average_rate or 25)
        seconds = count / rate
        return {"width": stream.codec_context.width, "height": stream.codec_context.height,
                "fps": rate, "seconds": seconds, "frames": count, "keyframes": keyframes,
                "kbps": sizes * 8 / seconds / 1000, "profile": stream.codec_context.profile}


def start_system(procs: Processes, tmp: Path, kind: str) -> System:
    from relay.agent.demo_video import make_demo_video

    demo = make_demo_video(tmp / "demo.mp4", 640, 360, 25, 10)
    video = demo if kind == "demo" else make_demo_video(tmp / "busy.mp4", 640, 360, 25, 10,
                                                        noise_rows=24)
    info = video_info(video)
    info["demo_kbps"] = video_info(demo)["kbps"]
    info["kind"] = kind
    data, relay_log = tmp / "data", tmp / "relay.log"
    served = start_relay_serve(procs, data, relay_log, RELAY_FLAGS)
    relay, base, token = served.child, served.base, served.token
    key = subprocess.run([sys.executable, "-m", "relay", "agent-key", "add", "bench", "--data",
                          str(data)], capture_output=True, text=True, timeout=60, check=True,
                         stdin=subprocess.DEVNULL, cwd=ROOT).stdout.strip()
    agent_log = tmp / "agent.log"
    (tmp / "agent").mkdir()
    with open(agent_log, "wb") as log:
        agent = procs.start([sys.executable, "-m", "relay", "agent", "--server", base, "--data",
                             str(tmp / "agent")], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            env={**os.environ, "RELAY_AGENT_KEY": key}, cwd=ROOT)
    gatherers = wait_until(lambda: api(base, "list_gather", token=token)["data"], 30, "agent registers",
                           interval=0.2)
    camera_id = api(base, "add_camera", token=token, camera_name="bench", stream_prop=1,
                    gather_id=gatherers[0]["gather_id"], stream_mp4=str(video))["camera_id"]
    wait_until(lambda: api(base, "get_camera_status", token=token, camera_id=camera_id)["status"] == 1,
               30, "camera online", interval=0.2)
    return System(base, token, camera_id, relay, agent, video, info, [relay_log, agent_log])


# --------------------------------------------------------------------------- part 1: first frame


@dataclass
class FirstFrame:
    kind: str  # cold / warm
    mode: str  # requested: webrtc (default URL) / mse
    played: str  # the mode that played
    iframe_ms: float
    e2e_ms: float
    marks: dict[str, Any]


async def wait_first_frame(page: Any, started_wall: float, timeout: float = 20.0) -> tuple[Any, FirstFrame]:
    deadline = time.monotonic() + timeout
    mark: dict[str, Any] = {}
    frame = None
    while time.monotonic() < deadline:
        frame = next((f for f in page.frames if "/play/live/" in f.url), None)
        if frame is not None:
            with contextlib.suppress(Exception):  # the frame may still be navigating
                mark = await frame.evaluate(READ_MARKS) or {}
            firsts = [mark[k] for k in ("rvfc", "poll") if mark.get(k) is not None]
            if firsts:
                first = mark["first"] = min(firsts)
                return frame, FirstFrame("", "", mark.get("mode", ""), first,
                                         mark["timeOrigin"] + first - started_wall * 1000, mark)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no decoded frame within {timeout:g} s: {mark}")


async def open_player(context: Any, url: str) -> tuple[Any, FirstFrame]:
    page = await context.new_page()
    started = time.time()
    await page.set_content(f"<iframe id=player src='{url}' width=660 height=380 allow='autoplay'></iframe>")
    _, result = await wait_first_frame(page, started)
    return page, result


async def close_tab(page: Any) -> None:
    """As a user closes a tab: the documents unload (pagehide says goodbye), then it goes."""
    with contextlib.suppress(Exception):
        await page.goto("about:blank")
    await page.close()


def wait_idle(system: System, timeout: float = 15.0) -> None:
    wait_until(lambda: system.pushes() == 0 and system.viewers() == 0, timeout,
               "relay_live_pushes 0 and relay_live_viewers 0")


async def first_frame_part(system: System, runs: int, modes: list[str]) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    results: list[FirstFrame] = []
    first_packets: list[float] = []
    loads: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.add_init_script(FIRST_FRAME_PROBE)
            for round_no in range(runs + 1):  # round 0: warm-up, discarded
                loads.append(loadavg())
                for mode in modes:
                    extra = {"mode": "mse"} if mode == "mse" else {}
                    wait_idle(system)
                    await asyncio.sleep(0.3)
                    fp_sum = metric(system.base, "relay_live_first_packet_seconds_sum")
                    fp_count = metric(system.base, "relay_live_first_packet_seconds_count")
                    url = system.play_url(**extra)
                    holder, cold = await open_player(context, url)
                    if system.pushes() != 1:
                        raise RuntimeError("a cold viewer plays but the relay shows no push")
                    count = metric(system.base, "relay_live_first_packet_seconds_count") - fp_count
                    if count == 1 and round_no:
                        first_packets.append(
                            (metric(system.base, "relay_live_first_packet_seconds_sum") - fp_sum) * 1000)
                    await asyncio.sleep(1.0)
                    url = system.play_url(**extra)
                    page, warm = await open_player(context, url)
                    await close_tab(page)
                    await close_tab(holder)
                    cold.kind, cold.mode, warm.kind, warm.mode = "cold", mode, "warm", mode
                    label = "warm-up" if round_no == 0 else f"run {round_no}"
                    for r in (cold, warm):
                        flag = "" if r.played == r.mode else f"  (played {r.played}!)"
                        print(f"  {label:8} {r.kind} {r.mode:6}: {r.iframe_ms:7.1f} ms in iframe, "
                              f"{r.e2e_ms:7.1f} ms end to end{flag}", flush=True)
                    if round_no:
                        results += [cold, warm]
        finally:
            await browser.close()
    wait_idle(system)
    return {"results": results, "first_packet_ms": first_packets, "loads": loads}


def stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def first_frame_table(part: dict[str, Any], modes: list[str]) -> list[str]:
    rows = ["| case | runs | in iframe: median | min | max | end to end: median | min | max | goal |",
            "|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        for kind in ("cold", "warm"):
            picked = [r for r in part["results"] if r.kind == kind and r.mode == mode]
            if not picked:
                continue
            inner = stats([r.iframe_ms for r in picked])
            outer = stats([r.e2e_ms for r in picked])
            goal = COLD_GOAL_MS if kind == "cold" else WARM_GOAL_MS
            fell = sum(r.played != r.mode for r in picked)
            label = f"{kind}, {'WebRTC (default URL)' if mode == 'webrtc' else 'MSE (&mode=mse)'}"
            if fell:
                label += f" ({fell} fell back)"
            verdict = ("met" if inner[0] <= goal else "missed") + f" (<= {goal} ms, median in iframe)"
            rows.append(f"| {label} | {len(picked)} | {inner[0]:.0f} | {inner[1]:.0f} | {inner[2]:.0f} | "
                        f"{outer[0]:.0f} | {outer[1]:.0f} | {outer[2]:.0f} | "
                        f"{verdict if mode == 'webrtc' else '-'} |")
    return rows


def breakdown_table(part: dict[str, Any], modes: list[str]) -> list[str]:
    """Median ms from the iframe's navigation start to each milestone the player passed."""
    cases = [(kind, mode) for mode in modes for kind in ("cold", "warm")]
    picked = {case: [r for r in part["results"] if (r.kind, r.mode) == case] for case in cases}
    rows = ["| milestone (median ms in iframe) | " + " | ".join(f"{k} {m}" for k, m in cases) + " |",
            "|---|" + "---|" * len(cases)]
    for key, label in MILESTONES:
        cells = []
        for case in cases:
            values = [r.marks[key] for r in picked[case] if r.marks.get(key) is not None]
            cells.append(f"{statistics.median(values):.0f}" if values else "-")
        if any(cell != "-" for cell in cells):
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


# --------------------------------------------------------------------------- part 2: viewers process


def viewers_main(args: argparse.Namespace) -> None:
    """``--role viewers``: aiortc peers that receive without decoding, driven over stdin/stdout."""
    import aioice.ice
    import aiortc.rtcrtpreceiver
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    frames: dict[int, list[int]] = {}  # id(track queue) -> [frames, bytes] out of the jitter buffer
    rtp: dict[int, dict[int, list[int]]] = {}  # id(DTLS transport) -> ssrc -> STREAM_FIELDS

    def counting_worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
        counter = frames.setdefault(id(output_q), [0, 0])
        while True:
            task = input_q.get()
            if task is None:
                asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
                break
            counter[0] += 1
            counter[1] += len(task[1].data)

    handle_rtp = RTCDtlsTransport._handle_rtp_data
    full = args.client == "full"

    async def counting_rtp(self: Any, data: bytes, arrival_time_ms: int) -> None:
        """Every decrypted RTP packet: counted from its header, then aiortc's own handling (full) or
        nothing more (light)."""
        if len(data) >= 12:
            ssrc = int.from_bytes(data[8:12], "big")
            seq = int.from_bytes(data[2:4], "big")
            stream = rtp.setdefault(id(self), {}).setdefault(ssrc, [0, 0, 0, -1, 0, -1])
            stream[0] += 1
            stream[1] += len(data)
            stream[2] += data[1] >> 7  # the marker bit: the last packet of an access unit
            if stream[3] < 0:
                stream[3] = seq
            else:
                ahead = (seq - stream[3]) % 65536
                if 0 < ahead < 32768:
                    stream[3] += ahead  # the highest sequence number, unwrapped
                else:
                    stream[4] += 1  # not new: a retransmission, duplicate or reordered packet
            stamp = int.from_bytes(data[4:8], "big")
            if stream[5] < 0:
                stream[5] = stamp
            elif 0 < (later := (stamp - stream[5]) % 2**32) < 2**31:
                stream[5] += later  # the highest RTP timestamp, unwrapped (frames the relay sent)
        if full:
            await handle_rtp(self, data, arrival_time_ms)

    aiortc.rtcrtpreceiver.decoder_worker = counting_worker  # receive, reassemble, never decode
    RTCDtlsTransport._handle_rtp_data = counting_rtp  # type: ignore[method-assign]
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    asyncio.run(viewers_loop(args, frames, rtp))


async def viewers_loop(args: argparse.Namespace, frames: dict[int, list[int]],
                       rtp: dict[int, dict[int, list[int]]]) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    base = f"{args.base}/play/live/{args.camera}"
    state = {"ticket": args.ticket}
    peers: list[dict[str, Any]] = []
    lost = [0]

    async def heartbeats(http: aiohttp.ClientSession, peer: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(peer["heartbeat"])
            try:
                async with http.post(f"{base}/heartbeat", params={"session": peer["session"]}) as r:
                    if r.status == 404:
                        lost[0] += 1
                        return
                    state["ticket"] = (await r.json()).get("ticket") or state["ticket"]
            except aiohttp.ClientError:
                pass

    async def open_session(http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.post(f"{base}/session", params={"ticket": state["ticket"]}) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"session: {r.status} {body}")
        state["ticket"] = body["ticket"]
        peer: dict[str, Any] = {"session": body["session"], "heartbeat": body["heartbeat"], "pc": None,
                                "track": None}
        peer["beat"] = asyncio.create_task(heartbeats(http, peer))
        return peer

    async def open_peer(http: aiohttp.ClientSession) -> dict[str, Any]:
        peer = await open_session(http)
        pc = peer["pc"] = RTCPeerConnection()
        connected = asyncio.get_running_loop().create_future()

        @pc.on("track")
        def on_track(track: Any) -> None:
            peer["track"] = track

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("connected", "failed", "closed") and not connected.done():
                connected.set_result(pc.connectionState)

        transceiver = pc.addTransceiver("video", direction="recvonly")
        peer["transport"] = transceiver.receiver.transport
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(f"{base}/webrtc", params={"session": peer["session"]},
                             json={"sdp": pc.localDescription.sdp}) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"webrtc: {r.status} {body}")
        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "answer"))
        outcome = await asyncio.wait_for(connected, 30)
        if outcome != "connected":
            raise RuntimeError(f"peer {outcome}")
        if args.client == "light":
            peer["reports"] = asyncio.create_task(receiver_reports(peer, transceiver))
        return peer

    async def receiver_reports(peer: dict[str, Any], transceiver: Any) -> None:
        """Light client: the one RTCP receiver report a second a browser sends at least (aiortc's
        receiver builds its reports from the statistics the light path skips)."""
        from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

        while True:
            await asyncio.sleep(0.5 + random.random())
            streams = rtp.get(id(peer["transport"]), {})
            if not streams:
                continue
            ssrc, stream = max(streams.items(), key=lambda item: item[1][0])
            lost = max(stream[3] - stream[0] + stream[4], 0)
            report = RtcpReceiverInfo(ssrc=ssrc, fraction_lost=0, packets_lost=lost,
                                      highest_sequence=stream[3] & 0xFFFFFFFF, jitter=0, lsr=0, dlsr=0)
            await transceiver.receiver._send_rtcp(RtcpRrPacket(ssrc=transceiver.sender._ssrc,
                                                               reports=[report]))

    async def close_peer(http: aiohttp.ClientSession, peer: dict[str, Any]) -> None:
        peer["beat"].cancel()
        if peer.get("reports") is not None:
            peer["reports"].cancel()
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(f"{base}/bye", params={"session": peer["session"]}):
                pass
        if peer["pc"] is not None:
            await peer["pc"].close()

    def frame_counts() -> list[list[int]]:
        """Per peer, COUNT_FIELDS: frames and bytes out of the jitter buffer (full client only), then
        of its media stream RTP packets, bytes, marker bits, the highest sequence number (unwrapped)
        and packets that were not new; then packets of its other streams (RTX); last, the media
        stream's highest RTP timestamp (unwrapped: bench/cluster.py tells frames dropped before
        sending from its span)."""
        out = []
        for peer in peers:
            track = peer["track"]
            row = list(frames.get(id(track._queue), [0, 0])) if track is not None else [0, 0]
            streams = sorted(rtp.get(id(peer["transport"]), {}).values(), key=lambda s: -s[0])
            media = streams[0] if streams else [0, 0, 0, 0, 0, 0]
            out.append(row + media[:5] + [sum(s[0] for s in streams[1:]), media[5]])
        return out

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        holder = await open_session(http)
        reply({"ready": True})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = line.split()
            if not command or command[0] == "quit":
                break
            try:
                if command[0] == "set":  # add peers, or close the newest ones, to have this many
                    started = time.monotonic()
                    wanted = int(command[1])
                    while len(peers) < wanted:
                        batch = [open_peer(http) for _ in range(min(5, wanted - len(peers)))]
                        peers.extend(await asyncio.gather(*batch))
                    if len(peers) > wanted:
                        await asyncio.gather(*(close_peer(http, peer) for peer in peers[wanted:]))
                        del peers[wanted:]
                    reply({"peers": len(peers), "seconds": time.monotonic() - started})
                elif command[0] == "counts":
                    reply({"counts": frame_counts(), "lost": lost[0]})
                else:
                    reply({"error": f"unknown command {command[0]}"})
            except Exception as exc:
                reply({"error": f"{exc.__class__.__name__}: {exc}"})
        await asyncio.gather(*(close_peer(http, peer) for peer in peers))
        await close_peer(http, holder)


# --------------------------------------------------------------------------- part 2: the measurement


class ViewersProcess:
    def __init__(self, procs: Processes, system: System, log: Path, client: str) -> None:
        url = system.play_url()
        ticket = re.search(r"[?&]ticket=([^&]+)", url).group(1)  # type: ignore[union-attr]
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.procs = procs
        self.child = procs.start([sys.executable, SCRIPT, "--role", "viewers", "--base", system.base,
                                  "--camera", str(system.camera_id), "--client", client, "--ticket",
                                  unquote(ticket)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                 text=True, cwd=ROOT)
        self.call_answer(None, 60)

    def call_answer(self, command: str | None, timeout: float = 300) -> dict[str, Any]:
        assert self.child.stdin is not None and self.child.stdout is not None
        if command is not None:
            self.child.stdin.write(command + "\n")
            self.child.stdin.flush()
        selector = selectors.DefaultSelector()
        selector.register(self.child.stdout, selectors.EVENT_READ)
        try:
            if not selector.select(timeout):
                raise TimeoutError(f"viewers process: no answer to {command!r} in {timeout:g} s")
        finally:
            selector.close()
        line = self.child.stdout.readline()
        if not line:
            raise RuntimeError(f"viewers process exited ({self.child.poll()}); see its log")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"viewers process: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.child.poll() is None and self.child.stdin is not None:
            with contextlib.suppress(OSError):
                self.child.stdin.write("quit\n")
                self.child.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.wait(30)
        self.procs.stop(self.child)
        self._log.close()


@dataclass
class Stage:
    round_no: int
    n: int
    relay_cpu: float  # % of one core
    client_cpu: float
    agent_cpu: float
    machine_busy: float  # % of all cores
    fps_median: float  # access units (RTP marker bits) a second, per viewer
    fps_min: float
    jitter_fps_median: float  # frames out of aiortc's jitter buffer a second (full client only)
    kbps_median: float  # RTP bytes (payload + header) a second, per viewer
    loss_pct: float  # sequence gaps / (packets + gaps), all viewers
    rtx: int  # retransmitted (or duplicate/reordered) packets received, all viewers
    sent_pps: float  # packets the relay sent a second, per viewer (from sequence numbers)
    load: str


def measure_stage(system: System, viewers: ViewersProcess, round_no: int, n: int, window: float) -> Stage:
    pids = (system.relay.pid, viewers.child.pid, system.agent.pid)
    load = loadavg()
    before_counts = viewers.call_answer("counts")["counts"]
    before = [cpu_ticks(pid) for pid in pids]
    busy0, total0 = machine_ticks()
    started = time.monotonic()
    time.sleep(window)
    after = [cpu_ticks(pid) for pid in pids]
    elapsed = time.monotonic() - started
    busy1, total1 = machine_ticks()
    answer = viewers.call_answer("counts")
    after_counts = answer["counts"]
    cpu = [(a - b) / CLOCK_TICKS / elapsed * 100 for a, b in zip(after, before, strict=True)]
    if answer["lost"]:
        raise RuntimeError(f"{answer['lost']} viewer session(s) lost")
    # jb_frames, jb_bytes, packets, bytes, marks, highest seq, not new, other streams' packets
    delta = [[a - b for a, b in zip(after, before, strict=True)]
             for after, before in zip(after_counts, before_counts, strict=True)]
    fps = [d[4] / elapsed for d in delta]
    jitter_fps = [d[0] / elapsed for d in delta]
    kbps = [d[3] * 8 / elapsed / 1000 for d in delta]
    sent = [d[5] / elapsed for d in delta]  # packets the relay numbered: sent, received or not
    fresh, numbered = sum(d[2] - d[6] for d in delta), sum(d[5] for d in delta)
    machine = (busy1 - busy0) / max(total1 - total0, 1) * 100
    return Stage(round_no, n, cpu[0], cpu[1], cpu[2], machine,
                 statistics.median(fps) if fps else 0.0, min(fps) if fps else 0.0,
                 statistics.median(jitter_fps) if fps else 0.0,
                 statistics.median(kbps) if kbps else 0.0,
                 max(numbered - fresh, 0) / max(numbered, 1) * 100,
                 sum(d[6] + d[7] for d in delta), statistics.median(sent) if sent else 0.0, load)


def cpu_part(procs: Processes, system: System, tmp: Path, counts: list[int], window: float,
             rounds: int, client: str) -> list[Stage]:
    stages: list[Stage] = []
    wait_idle(system)
    viewers = ViewersProcess(procs, system, tmp / "viewers.log", client)
    try:
        wait_until(lambda: system.pushes() == 1, 20, "the holder's push")
        wait_until(lambda: metric(system.base, "relay_live_first_packet_seconds_count") >= 1, 20,
                   "the push's first frame")
        time.sleep(3)
        have = 0
        for round_no in range(1, rounds + 1):
            order = [0, *counts] if round_no % 2 else [*reversed(counts), 0]
            for n in order:
                if n != have:
                    answer = viewers.call_answer(f"set {n}")
                    print(f"  round {round_no}: {have} -> {n} viewers ({answer['seconds']:.1f} s)",
                          flush=True)
                    have = n
                    wait_until(lambda n=n: system.viewers() == n + 1, 30, f"{n + 1} viewer sessions")
                    time.sleep(3)  # settle: joins and goodbyes done, the keyframe reached everyone
                if system.viewers() != have + 1 or system.pushes() != 1:
                    raise RuntimeError(f"relay shows {system.viewers():g} viewers, "
                                       f"{system.pushes():g} pushes; expected {have + 1}, 1")
                stage = measure_stage(system, viewers, round_no, n, window)
                stages.append(stage)
                print(f"  round {round_no} N={n:3}: relay {stage.relay_cpu:5.1f} % of a core, viewers "
                      f"process {stage.client_cpu:5.1f} %, agent {stage.agent_cpu:4.1f} %, machine "
                      f"{stage.machine_busy:4.1f} % of {os.cpu_count()} cores; per viewer "
                      f"{stage.fps_median:.1f} fps (min {stage.fps_min:.1f}, jitter buffer "
                      f"{stage.jitter_fps_median:.1f}), {stage.kbps_median:.0f} kbit/s, loss "
                      f"{stage.loss_pct:.2f} %, {stage.rtx} retransmitted; relay sent {stage.sent_pps:.0f} "
                      f"pkt/s per viewer; load {stage.load}", flush=True)
    finally:
        viewers.close()
    return stages


def cpu_table(stages: list[Stage], counts: list[int]) -> list[str]:
    """Medians over rounds. The per-viewer increment is paired within each round; "scaled" divides it
    by the share of the stream the relay really sent each viewer (packets numbered a second, against
    the N=1 stages), which matters only when the relay fell behind."""
    rows = ["| N | relay CPU % of one core: median (min-max) | per viewer: (cpu_N - cpu_0)/N | "
            "same, scaled to the full stream | relay sent, pkt/s per viewer | received fps per viewer: "
            "median (min) | kbit/s per viewer | loss % | viewers process CPU % | agent CPU % | "
            "machine busy % (2 cores = 100) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {s.round_no: s.relay_cpu for s in stages if s.n == 0}
    reference = [s.sent_pps for s in stages if s.n == min(counts)]
    full_pps = statistics.median(reference) if reference else 0.0
    for n in [0, *counts]:
        picked = [s for s in stages if s.n == n]
        if not picked:
            continue
        cpu = stats([s.relay_cpu for s in picked])
        cells = [str(n), f"{cpu[0]:.1f} ({cpu[1]:.1f}-{cpu[2]:.1f})"]
        if n:
            per = statistics.median((s.relay_cpu - base[s.round_no]) / n for s in picked)
            scaled = statistics.median((s.relay_cpu - base[s.round_no]) / (n * min(s.sent_pps / full_pps, 1))
                                       for s in picked) if full_pps else float("nan")
            cells += [f"{per:.2f}", f"{scaled:.2f}", f"{statistics.median(s.sent_pps for s in picked):.0f}",
                      f"{statistics.median(s.fps_median for s in picked):.1f} "
                      f"({min(s.fps_min for s in picked):.1f})",
                      f"{statistics.median(s.kbps_median for s in picked):.0f}",
                      f"{statistics.median(s.loss_pct for s in picked):.1f}"]
        else:
            cells += ["-"] * 6
        cells += [f"{statistics.median(s.client_cpu for s in picked):.1f}",
                  f"{statistics.median(s.agent_cpu for s in picked):.1f}",
                  f"{statistics.median(s.machine_busy for s in picked):.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    rows += ["", f"({len({s.round_no for s in stages})} round(s), each N measured once per round; "
                 f"load average per window: {', '.join(s.load for s in stages)})"]
    return rows


# --------------------------------------------------------------------------- report


def machine_facts() -> dict[str, str]:
    chromium = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.M)
        model = found.group(1) if found else ""
    import aiortc
    import av

    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "chromium": chromium, "aiortc": aiortc.__version__, "av": av.__version__,
            "kernel": platform.release()}


def report(args: argparse.Namespace, facts: dict[str, str], system: System, first: dict[str, Any] | None,
           modes: list[str], stages: list[Stage] | None, loads: list[str], started: str,
           full_stages: list[Stage] | None, compare: list[int]) -> str:
    info = system.video_info
    lines = [f"## Live video: first frame and relay CPU per viewer ({started})", "",
             "Command: `" + " ".join([".venv/bin/python", "bench/live.py", *sys.argv[1:]]) + "`", "",
             f"Machine: {facts['nproc']} cores ({facts['cpu']}), Linux {facts['kernel']}, "
             f"Python {facts['python']}, {facts['chromium']}, aiortc {facts['aiortc']}, PyAV {facts['av']}. "
             f"Load average (1/5/15 min) at the start, at each first-frame round and at the end: "
             f"{'; '.join(loads)} (the CPU tables list it per window).", "",
             f"Video ({info['kind']}): {info['width']}x{info['height']} H.264 {info['profile']}, "
             f"{info['fps']:g} fps, {info['seconds']:g} s looped, {info['keyframes']} keyframes "
             f"(GOP 2 s), measured bitrate {info['kbps']:.0f} kbit/s (all packet bytes / duration). "
             f"make_demo_video with its defaults (640x360, 25 fps, `bit_rate` 1 Mbit/s) gives only "
             f"{info['demo_kbps']:.0f} kbit/s, its picture being so easy to code; "
             + ("so this run used it with a band of fresh noise in the bottom 24 rows (same encoder "
                "settings), which makes x264 reach its 1 Mbit/s target." if info["kind"] == "busy"
                else "this run used it as it is."), "",
             "Relay: `relay serve " + " ".join(RELAY_FLAGS) + "` (other settings default), a real "
             "`relay agent` pushing the MP4, all on 127.0.0.1.", ""]
    if first is not None:
        lines += ["### Time to first decoded frame in Chromium", "",
                  "In iframe: `performance.now()` inside the player iframe (from its navigation start) at "
                  "the first video frame (first `requestVideoFrameCallback` or `totalVideoFrames > 0`, "
                  "whichever is seen first). End to end: the same instant on the wall clock minus "
                  "`time.time()` just before `page.set_content()` of the embedding page. Cold: "
                  "`relay_live_pushes 0` before the run (the agent starts a push); warm: another tab "
                  "already plays the camera. ms.", "",
                  *first_frame_table(first, modes), "",
                  "Where the time goes (medians; each milestone from the same runs, read in the "
                  "iframe: resource timings of the player's fetches, events of its RTCPeerConnection "
                  "and WebSocket):", "",
                  *breakdown_table(first, modes), ""]
        if first["first_packet_ms"]:
            fp = stats(first["first_packet_ms"])
            lines += [f"Within cold runs, the relay's `relay_live_first_packet_seconds` (asking the agent "
                      f"to push → its first frame at the relay): median {fp[0]:.0f} ms, min {fp[1]:.0f}, "
                      f"max {fp[2]:.0f} ({len(first['first_packet_ms'])} cold runs, WebRTC and MSE).", ""]
    if stages is not None:
        lines += ["### Relay CPU per WebRTC viewer (one camera)", "",
                  f"Window {args.window:g} s per stage; N=0 is the agent pushing with a heartbeat-only "
                  "session holding the push (kept at every N). Viewers: aiortc peers in one separate "
                  f"process, `--client {args.client}` receive path (see the script's docstring), nothing "
                  "decoded. % of one core from /proc/PID/stat utime+stime.", "",
                  *cpu_table(stages, sorted({int(n) for n in args.viewers.split(",") if n.strip()})), ""]
    if full_stages:
        lines += ["The same with `--client full` (aiortc's whole receive path: NACK, REMB, its own "
                  "receiver reports; one round):", "", *cpu_table(full_stages, compare), ""]
    return "\n".join(lines)


def append_results(path: Path, section: str) -> None:
    if path.exists():
        existing = path.read_text()
        text = existing + ("" if existing.endswith("\n") else "\n") + "\n" + section + "\n"
    else:
        text = "# Benchmark results\n\n" + section + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured first-frame rounds (default 5)")
    parser.add_argument("--viewers", default="1,10,50", help="viewer counts (default 1,10,50)")
    parser.add_argument("--window", type=float, default=20.0, help="CPU window per stage, s (default 20)")
    parser.add_argument("--cpu-rounds", type=int, default=2, help="rounds of the CPU stages (default 2)")
    parser.add_argument("--video", choices=("busy", "demo"), default="busy",
                        help="busy (default): the demo picture with a noise band, ~1 Mbit/s; "
                             "demo: make_demo_video as it is")
    parser.add_argument("--client", choices=("full", "light"), default="light",
                        help="viewers' receive path: light (default: SRTP decrypted, RTP headers "
                             "counted, one RTCP receiver report a second) or full (aiortc's whole "
                             "receive path, NACK/PLI/REMB and its reports; only decoding skipped)")
    parser.add_argument("--compare-full", default="1,10",
                        help="after the main rounds, these counts once more with --client full "
                             "('' to skip; default 1,10)")
    parser.add_argument("--no-mse", action="store_true", help="first frame over WebRTC only")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                        help="Markdown file to append the section to ('' to not write)")
    parser.add_argument("--role", default="main", choices=("main", "viewers"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--camera", help=argparse.SUPPRESS)
    parser.add_argument("--ticket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "viewers":
        viewers_main(args)
        return 0

    counts = sorted({int(n) for n in args.viewers.split(",") if n.strip()})
    modes = ["webrtc"] if args.no_mse else ["webrtc", "mse"]
    started = time.strftime("%Y-%m-%d %H:%M")
    facts = machine_facts()
    print(f"bench/live.py: {facts['nproc']} cores, Python {facts['python']}, {facts['chromium']}; "
          f"load {loadavg()}", flush=True)
    procs = Processes(grace=15.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    previous = signal.signal(signal.SIGTERM, interrupt)
    loads = [loadavg()]
    code = 1
    try:
        system = start_system(procs, tmp, args.video)
        info = system.video_info
        print(f"video ({info['kind']}) {info['width']}x{info['height']} {info['fps']:g} fps, "
              f"{info['kbps']:.0f} kbit/s (make_demo_video as it is: {info['demo_kbps']:.0f} kbit/s); "
              f"relay PID {system.relay.pid}, agent PID {system.agent.pid}", flush=True)
        first = stages = full_stages = None
        compare: list[int] = []
        if not args.skip_latency:
            print("part 1: first decoded frame in Chromium", flush=True)
            first = asyncio.run(first_frame_part(system, args.runs, modes))
            loads += first["loads"]
            print("\n".join(first_frame_table(first, modes)), flush=True)
            print("\n".join(breakdown_table(first, modes)), flush=True)
        if not args.skip_cpu:
            print("part 2: relay CPU per viewer", flush=True)
            stages = cpu_part(procs, system, tmp, counts, args.window, args.cpu_rounds, args.client)
            print("\n".join(cpu_table(stages, counts)), flush=True)
            compare = sorted({int(n) for n in args.compare_full.split(",") if n.strip()})
            if compare and args.client != "full":
                print("part 2b: the same with the full aiortc receive path in the viewers", flush=True)
                full_stages = cpu_part(procs, system, tmp, compare, args.window, 1, "full")
                print("\n".join(cpu_table(full_stages, compare)), flush=True)
        loads.append(loadavg())
        section = report(args, facts, system, first, modes, stages, loads, started, full_stages, compare)
        if args.results:
            append_results(Path(args.results), section)
            print(f"appended to {args.results}")
        code = 0
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
    except Exception:
        traceback.print_exc()
        for log in sorted(tmp.glob("*.log")):
            tail = log.read_text(errors="replace")[-3000:]
            print(f"--- {log.name} (tail) ---\n{tail}", file=sys.stderr)
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
