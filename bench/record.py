"""Benchmark stored recordings. Part "VOD": the recording page's first frame and seek-to-frame
time in Chromium.

    .venv/bin/python bench/record.py [--part vod] [--runs 7] [--seconds 60] [--video busy|demo]

Setup: a temporary dir; a PyAV-made H.264 MP4 (640x360, 25 fps, constrained baseline, GOP 2 s;
``--video busy``, the default, adds ``noise_rows=24`` for ~1 Mbit/s, as bench/live.py), remuxed with
``+faststart`` (its index first, as the agent's spool stores recordings), ``--seconds`` long. A real
``relay serve`` on a free 127.0.0.1 port. The recording goes in as a real row and real files: the
gatherer through the catalogue (on the relay's SQLite file, from this process: gatherers come from
agents, which this part does not need), the camera through the API, the record row through the
catalogue, the MP4 and its poster under ``<data>/files``; ``play_record`` gives the page's URL.

Each run is a fresh browser context (an empty HTTP cache) with a page of another origin embedding
the play_url in an iframe, as the tests' ``embed()`` does. In the iframe:

* first frame: ``performance.now()`` at the first ``requestVideoFrameCallback`` (ms from the
  iframe's navigation start: the page, which names the MP4 in its ``<video autoplay>``, then the
  MP4's index and first GOP, decode); also when its metadata loaded and ``playing`` fired;
* seek: once playing, for each target (75 %, then 25 %, then 90 % of the duration, so two are
  beyond what the browser has buffered): ``pause()``, ``currentTime = target``, ms until
  ``requestVideoFrameCallback`` shows a frame, and whether the target was already buffered.

One discarded warm-up run first (Chromium's decoder start-up). Medians of ``--runs`` (>= 5). Goal:
first frame and seek-to-frame <= 300 ms. Every process this starts is stopped by its PID and the
temporary dir removed on the way out, failures and Ctrl-C included.

Part "agent" (``--part agent``; ``--part all`` runs every part): the agent's CPU per recorded camera,
stream copy. A real ``relay serve --timezone UTC`` and a real ``relay agent`` (``minute_length``
``--minute-length``, 10 s) linked to it; the gatherer's ``slice_val`` 1 (a slice every 10 s, so
slices are cut, remuxed and uploaded during every window), ``inter_val`` 0, ``snap_val`` 1440 (the
one snapshot a camera takes when it starts falls before the windows). For each video (``--sizes``:
640x360 at 1 Mbit/s, 1920x1080 at 4 Mbit/s, PyAV-made like the demo camera's, looped) and camera
count (``--cameras`` 1,4,16, mode-1 cameras added through the API): baseline windows with every
camera started and no course (its source open and paced, nothing recorded), then a course opening
now (UTC) on every camera and the same windows while they record. ``--windows`` windows of
``--window`` seconds each (3 of 20 s), medians; CPU is utime+stime of the agent process (all
threads) from /proc. The uploads of the slices run in the agent too and are counted: that is the
real cost of recording. Printed: both figures, their ratio, (recording - baseline) / cameras
against the goal (<= 1 % of a core per camera), the relay's CPU, the slices committed in the
windows and the load average.

Part "upload" (``--part upload``): loopback throughput of one ``--upload-mb`` (200 MiB) file. The
agent's real ``Uploader`` (relay/agent/uploader.py), driven from this process over a spool holding
the file as a finished entry, against a real ``relay serve`` (declare, one PUT, commit), timed
until it removed its copy; against ``curl -T`` of the same file to a bare aiohttp PUT handler (its
own process) that writes the body to disk, with an fsync (the relay fsyncs at the commit) and
without. ``--upload-runs`` (5) of each, alternating, ``settle`` before each (``sync``, and free
memory made the host's again: see there); medians; goal: the uploader >= 0.8x curl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from common import (
    Processes,
    cpu_seconds,
    free_port,
    http_json,
    interrupt,
    start_relay_serve,
    wait_for_http,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
GOAL_MS = 300
SEEK_AT = (0.75, 0.25, 0.90)

# Runs in every frame before its scripts; only the recording page's iframe records anything.
FIRST_FRAME_PROBE = """
(() => {
  if (!location.pathname.startsWith('/play/record/')) return;
  const mark = window.__bench = {};
  const at = (name) => { if (mark[name] === undefined) mark[name] = performance.now(); };
  document.addEventListener('playing', () => at('playing'), true);  // (capture: media events
  document.addEventListener('loadedmetadata', () => at('metadata'), true);  // do not bubble)
  // The <video> as soon as the parser makes it: the page names the MP4 in it.
  const watch = new MutationObserver(() => {
    const video = document.getElementById('video');
    if (!video) return;
    watch.disconnect();
    video.requestVideoFrameCallback(() => at('first'));
  });
  watch.observe(document, {childList: true, subtree: true});
})();
"""
SEEK = """async (at) => {
  const v = document.getElementById('video');
  let buffered = false;
  for (let i = 0; i < v.buffered.length; i++) {
    if (v.buffered.start(i) <= at && at <= v.buffered.end(i)) buffered = true;
  }
  const started = performance.now();
  const next = () => new Promise((done) => v.requestVideoFrameCallback((now, meta) => done(meta)));
  let shown = next();
  v.pause();
  v.currentTime = at;
  let meta = await shown;  // a frame of the playback before the pause may come first: not it
  while (Math.abs(meta.mediaTime - at) > 0.1 && performance.now() - started < 5000) {
    shown = next();
    meta = await Promise.race([shown, new Promise((done) => setTimeout(() => done(meta), 5000))]);
  }
  return {ms: performance.now() - started, buffered, media_time: meta.mediaTime};
}"""


def make_recording(tmp: Path, seconds: int, busy: bool) -> tuple[Path, bytes]:
    """The stored MP4 (+faststart) and its poster JPEG."""
    from fractions import Fraction

    import av

    from relay.agent.demo_video import make_demo_video

    source = make_demo_video(tmp / "source.mp4", seconds=seconds, noise_rows=24 if busy else 0)
    target = tmp / "stored.mp4"
    with av.open(str(source)) as src, \
            av.open(str(target), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    with av.open(str(source)) as src:
        frame = next(src.decode(video=0))
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frame.width, frame.height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    poster = b"".join(bytes(p) for p in encoder.encode(frame.reformat(format="yuvj420p"))
                      + encoder.encode(None))
    return target, poster


async def add_recording(data: Path, base: str, token: str, video: Path, poster: bytes,
                        seconds: int) -> int:
    """A gatherer (catalogue), a camera (API), the files and the record row; its record_id."""
    from relay.catalogue import Catalogue

    catalogue = await Catalogue.open(f"sqlite+aiosqlite:///{(data / 'relay.sqlite3').resolve()}")
    try:
        gather_id = await catalogue.gatherers.register("02:00:00:00:be:01")
        camera = await asyncio.to_thread(http_json, f"{base}/api/v1/add_camera?" + urlencode({
            "token": token, "camera_name": "bench", "gather_id": gather_id, "stream_prop": 1,
            "stream_mp4": "/videos/bench.mp4"}))
        camera_id = camera["camera_id"]
        stored = data / "files" / "records" / str(camera_id) / "bench.mp4"
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, stored)
        poster_path = data / "files" / "posters" / str(camera_id) / "bench.jpg"
        poster_path.parent.mkdir(parents=True, exist_ok=True)
        poster_path.write_bytes(poster)
        start = int(time.time()) - seconds
        return await catalogue.records.add(
            camera_id, f"/files/records/{camera_id}/bench.mp4",
            f"/files/posters/{camera_id}/bench.jpg", stored.stat().st_size, seconds,
            start, start + seconds)
    finally:
        await catalogue.close()


async def one_run(browser: Any, play_url: str, seconds: int) -> dict[str, Any]:
    context = await browser.new_context()
    try:
        await context.add_init_script(FIRST_FRAME_PROBE)
        page = await context.new_page()
        await page.set_content(
            "<script>window.events = []; addEventListener('message', e => events.push(e.data));"
            "</script>"
            f"<iframe src='{play_url}' width=660 height=380 allow='autoplay'></iframe>")
        deadline = time.monotonic() + 20
        frame = None
        while time.monotonic() < deadline:
            frame = next((f for f in page.frames if "/play/record/" in f.url), None)
            events = await page.evaluate("window.events")
            if {"source": "relay-player", "event": "error"} in events:
                raise RuntimeError("the page posted error")
            if frame is not None and {"source": "relay-player", "event": "playing"} in events:
                marks = await frame.evaluate("window.__bench")
                if "first" in marks and "playing" in marks:
                    break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the recording did not play within 20 s")
        assert frame is not None
        result: dict[str, Any] = {key: marks[key] for key in ("first", "playing", "metadata")}
        for share in SEEK_AT:
            seek = await frame.evaluate(SEEK, round(seconds * share, 2))
            kind = "buffered" if seek["buffered"] else "unbuffered"
            result.setdefault(f"seek {kind}", []).append(seek["ms"])
        return result
    finally:
        await context.close()


def row(name: str, values: list[float]) -> str:
    goal = "ok" if statistics.median(values) <= GOAL_MS else "OVER"
    return (f"| {name} | {len(values)} | {statistics.median(values):.0f} | {min(values):.0f} | "
            f"{max(values):.0f} | {goal} |")


async def vod(args: argparse.Namespace, processes: Processes, tmp: Path) -> None:
    from playwright.async_api import async_playwright

    video, poster = make_recording(tmp, args.seconds, args.video == "busy")
    relay = start_relay_serve(processes, tmp / "data", tmp / "relay.log")
    record_id = await add_recording(tmp / "data", relay.base, relay.token, video, poster,
                                    args.seconds)
    runs: list[dict[str, Any]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for number in range(args.runs + 1):
                answer = await asyncio.to_thread(http_json, f"{relay.base}/api/v1/play_record?" +
                                                 urlencode({"token": relay.token,
                                                            "record_id": record_id}))
                run = await one_run(browser, answer["play_url"], args.seconds)
                if number:  # the first is the warm-up
                    runs.append(run)
        finally:
            await browser.close()
    size = video.stat().st_size
    print(f"\nVOD page, {args.runs} runs (+1 warm-up), {args.seconds} s {args.video} video, "
          f"{size / 1e6:.1f} MB ({size * 8 / args.seconds / 1e6:.2f} Mbit/s), "
          f"{platform.node()}, {platform.processor() or platform.machine()}")
    print(f"\n| measure (ms) | n | median | min | max | goal <= {GOAL_MS} ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row("first frame (from the iframe's navigation start)", [r["first"] for r in runs]))
    print(row("the MP4's metadata loaded", [r["metadata"] for r in runs]))
    print(row("`playing` event", [r["playing"] for r in runs]))
    for kind in ("unbuffered", "buffered"):
        values = [ms for r in runs for ms in r.get(f"seek {kind}", [])]
        if values:
            print(row(f"seek to frame, target {kind}", values))


# --------------------------------------------------------------------------- part "agent"

#: name: (width, height, kbit/s, noise rows): x264's picture of a moving ramp is far below its
#: target rate; the noise rows at the bottom bring it up to the target (checked and printed).
SIZES = {"360p": (640, 360, 1000, 24), "1080p": (1920, 1080, 4000, 64)}
CPU_GOAL = 1.0  # % of one core per recorded camera


def api(base: str, token: str, name: str, **params: Any) -> dict[str, Any]:
    """One API call; raises on a refusal (the bench must not measure a half-set-up system)."""
    answer = http_json(f"{base}/api/v1/{name}?" + urlencode({"token": token, **params}))
    if answer.get("err_code", 0) != 0:
        raise RuntimeError(f"{name}: {answer}")
    return answer


def make_video(path: Path, width: int, height: int, kbps: int, seconds: int, noise_rows: int
               ) -> Path:
    """A constrained-baseline H.264 MP4 (25 fps, GOP 2 s, x264 ABR at ``kbps``), as
    relay/agent/demo_video.py makes the demo camera's, with the size and rate a parameter."""
    import random
    from fractions import Fraction

    import av

    noise = random.Random(20240601)
    levels = bytes(max(16, min(235, 128 + (i - 128) * 40 // 256)) for i in range(256))
    ramp = bytes((i // 2) % 220 + 16 for i in range(2 * (width + height) + 512))
    chroma = bytes([128]) * ((width // 2) * (height // 2))
    fps = 25
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = kbps * 1000
        stream.options = {"profile": "baseline", "g": str(2 * fps), "bf": "0",
                          "preset": "veryfast", "tune": "zerolatency"}
        stream.codec_context.time_base = Fraction(1, fps)
        for t in range(fps * seconds):
            shift = (3 * t) % 256
            luma = b"".join(ramp[(y + shift) % 256:(y + shift) % 256 + width]
                            for y in range(height - noise_rows))
            luma += noise.randbytes(width * noise_rows).translate(levels)
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.planes[0].update(luma)
            frame.planes[1].update(chroma)
            frame.planes[2].update(chroma)
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@dataclass
class AgentSystem:
    """A real ``relay serve`` (zone UTC) and a real ``relay agent`` linked to it."""

    base: str
    token: str
    relay: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]
    gather_id: int

    def call(self, name: str, **params: Any) -> dict[str, Any]:
        return api(self.base, self.token, name, **params)

    def status(self, camera_id: int) -> dict[str, Any]:
        return self.call("get_camera_status", camera_id=camera_id)

    def drained(self, camera_id: int) -> bool:
        """Not recording, and nothing of it left in the agent's spool (as the agent reports)."""
        status = self.status(camera_id)
        return status["recording"] == 0 and status["spool_bytes"] == 0

    def records(self) -> tuple[int, int]:
        """(how many records the relay holds, their bytes)."""
        count, size, cur = 0, 0, 1
        while True:
            page = self.call("list_record", cur=cur, per=100)
            count, size = page["total_num"], size + sum(r["file_size"] for r in page["data"])
            if cur >= page["max_page"]:
                return count, size
            cur += 1


def start_agent_system(processes: Processes, tmp: Path, minute_length: float) -> AgentSystem:
    relay = start_relay_serve(processes, tmp / "data", tmp / "relay.log", ["--timezone", "UTC"])
    key = subprocess.run([sys.executable, "-m", "relay", "agent-key", "add", "bench", "--data",
                          str(tmp / "data")], capture_output=True, text=True, timeout=60,
                         check=True, stdin=subprocess.DEVNULL, cwd=ROOT).stdout.strip()
    config = tmp / "agent.toml"
    config.write_text(f'mac_addr = "02:00:00:00:be:02"\nname_pc = "bench"\n'
                      f"minute_length = {minute_length}\n")
    (tmp / "agent").mkdir()
    with open(tmp / "agent.log", "wb") as log:
        agent = processes.start(
            [sys.executable, "-m", "relay", "agent", "--server", relay.base, "--data",
             str(tmp / "agent"), "--config", str(config)], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, env={**os.environ, "RELAY_AGENT_KEY": key}, cwd=ROOT)
    gatherers = wait_until(lambda: api(relay.base, relay.token, "list_gather")["data"], 60,
                           "the agent registers", interval=0.2)
    system = AgentSystem(relay.base, relay.token, relay.child, agent, gatherers[0]["gather_id"])
    # One-"minute" slices; snapshots as rare as the API allows (1440 "minutes"): the one every
    # camera takes when it starts falls in the settling time, so neither phase takes any.
    system.call("mod_gather", gather_id=system.gather_id, slice_val=1, inter_val=0,
                snap_val=1440, auto_fds=1)
    return system


def course_now(needed: float) -> tuple[int, str, int]:
    """(week_id, start_time, elapse_sec) of a course opening this second, UTC (the relay's zone
    here), long enough for ``needed`` seconds and ending by 23:59:59 as the API wants."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    second = now.hour * 3600 + now.minute * 60 + now.second
    elapse = min(3600, 86_399 - second)
    if elapse < needed:
        raise RuntimeError(f"too close to midnight UTC for a {needed:.0f} s course: run it later")
    return (now.weekday() + 1) % 7, now.strftime("%H:%M:%S"), elapse


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


@dataclass
class Window:
    agent: float  # % of one core
    relay: float
    load: float  # 1-minute load average at its end


def cpu_windows(system: AgentSystem, seconds: float, count: int) -> list[Window]:
    """``count`` back-to-back windows: CPU of the agent and relay processes (all threads)."""
    windows = []
    for _ in range(count):
        agent, relay, started = (cpu_seconds(system.agent.pid), cpu_seconds(system.relay.pid),
                                 time.monotonic())
        time.sleep(seconds)
        wall = time.monotonic() - started
        windows.append(Window(100 * (cpu_seconds(system.agent.pid) - agent) / wall,
                              100 * (cpu_seconds(system.relay.pid) - relay) / wall, loadavg()))
        if system.agent.poll() is not None or system.relay.poll() is not None:
            raise RuntimeError("the agent or the relay exited during a window")
    return windows


@dataclass
class Phase:
    size: str
    cameras: int
    idle: list[Window]
    recording: list[Window]
    slices: int  # records the relay committed during the recording windows
    slice_bytes: int

    def per_camera(self) -> float:
        return (statistics.median(w.agent for w in self.recording)
                - statistics.median(w.agent for w in self.idle)) / self.cameras


def measure_cameras(system: AgentSystem, size: str, cameras: list[int], args: argparse.Namespace
                    ) -> Phase:
    """Baseline windows (every camera started, no course), then a course on every camera and the
    same windows while they record; then the courses go and the spool is drained."""
    for camera_id in cameras:
        wait_until(lambda c=camera_id: system.status(c)["status"] == 1, 60, "camera online",
                   interval=0.2)
    time.sleep(args.settle)
    idle = cpu_windows(system, args.window, args.windows)
    needed = args.settle + args.window * args.windows + 60
    courses = []
    for camera_id in cameras:
        week_id, start, elapse = course_now(needed)
        courses.append(system.call("add_course", camera_id=camera_id, week_id=week_id,
                                   start_time=start, elapse_sec=elapse)["course_id"])
    for camera_id in cameras:
        wait_until(lambda c=camera_id: system.status(c)["recording"] == 1, 30, "recording",
                   interval=0.2)
    time.sleep(args.settle)
    before = system.records()
    recording = cpu_windows(system, args.window, args.windows)
    after = system.records()
    system.call("del_course", course_id=",".join(map(str, courses)))
    for camera_id in cameras:
        wait_until(lambda c=camera_id: system.drained(c), 120, "the last slice uploaded",
                   interval=0.2)
    return Phase(size, len(cameras), idle, recording, after[0] - before[0], after[1] - before[1])


def agent_part(args: argparse.Namespace, processes: Processes, tmp: Path) -> list[Phase]:
    tmp.mkdir()
    started = time.monotonic()
    print(f"agent part: {' '.join(sys.argv)}; {platform.node()}, {os.cpu_count()} CPUs, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    system = start_agent_system(processes, tmp, args.minute_length)
    try:
        rates: dict[str, float] = {}
        phases = agent_phases(args, system, tmp, started, rates)
    finally:
        processes.stop(system.agent)
        processes.stop(system.relay)
    print(f"agent part took {time.monotonic() - started:.0f} s; load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_agent_table(args, phases, rates)
    return phases


def agent_phases(args: argparse.Namespace, system: AgentSystem, tmp: Path, started: float,
                 rates: dict[str, float]) -> list[Phase]:
    """Every size and camera count in turn (cameras are added up to each count), on one agent;
    ``rates`` gets each video's kbit/s."""
    import av

    phases: list[Phase] = []
    for size in args.sizes:
        width, height, kbps, noise_rows = SIZES[size]
        video = make_video(tmp / f"{size}.mp4", width, height, kbps, args.video_seconds,
                           noise_rows)
        with av.open(str(video)) as container:
            seconds = float(container.duration or 0) / 1e6
        rates[size] = video.stat().st_size * 8 / seconds / 1000
        cameras: list[int] = []
        for count in args.cameras:
            while len(cameras) < count:
                cameras.append(system.call(
                    "add_camera", camera_name=f"bench {size} {len(cameras) + 1}",
                    gather_id=system.gather_id, stream_prop=1, stream_mp4=str(video))["camera_id"])
            phase = measure_cameras(system, size, cameras, args)
            phases.append(phase)
            print(f"  {size} x {count}: agent idle "
                  f"{statistics.median(w.agent for w in phase.idle):.1f} %, recording "
                  f"{statistics.median(w.agent for w in phase.recording):.1f} %, "
                  f"{phase.slices} slices uploaded in the windows "
                  f"({time.monotonic() - started:.0f} s so far)", flush=True)
        system.call("del_camera", camera_id=",".join(map(str, cameras)))
        wait_until(lambda: not system.call("list_camera", per=100)["data"], 30, "cameras gone")
    return phases


def print_agent_table(args: argparse.Namespace, phases: list[Phase], rates: dict[str, float]
                      ) -> None:
    window = f"{args.windows} windows of {args.window:g} s"
    print(f"\nAgent CPU while recording (stream copy), {window} per phase, median; "
          f"{args.minute_length:g}-second slices (slice_val 1, minute_length "
          f"{args.minute_length:g}), uploaded by the same agent as they are cut; mode-1 cameras "
          f"looping a {args.video_seconds} s MP4 ("
          + ", ".join(f"{size} {rates[size]:.0f} kbit/s" for size in rates) + ")")
    print(f"\n| video | cameras | agent CPU idle % | agent CPU recording % | ratio | "
          f"recording % per camera | goal <= {CPU_GOAL:g} % | relay CPU recording % | "
          f"slices (MB) uploaded in the windows | load 1 min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for phase in phases:
        idle = statistics.median(w.agent for w in phase.idle)
        rec = statistics.median(w.agent for w in phase.recording)
        per = phase.per_camera()
        loads = [w.load for w in phase.idle + phase.recording]
        print(f"| {phase.size} | {phase.cameras} | {idle:.2f} | {rec:.2f} | "
              f"{rec / idle if idle else float('inf'):.2f} | {per:.3f} | "
              f"{'yes' if per <= CPU_GOAL else 'NO'} | "
              f"{statistics.median(w.relay for w in phase.recording):.2f} | "
              f"{phase.slices} ({phase.slice_bytes / 1e6:.1f}) | "
              f"{min(loads):.1f}-{max(loads):.1f} |")


# --------------------------------------------------------------------------- part "upload"

UPLOAD_GOAL = 0.8

#: A bare aiohttp PUT handler (its own process, as the relay is): the body to a file, optionally
#: fsynced (the relay fsyncs at the commit), then {"size": N}.
PUT_SERVER = """
import hashlib, os, sys
from aiohttp import web
root, port = sys.argv[1], int(sys.argv[2])
async def put(request):
    path = os.path.join(root, "body")
    digest = hashlib.sha256() if request.query.get("sha256") == "1" else None
    with open(path, "wb") as file:
        async for chunk in request.content.iter_chunked(1 << 20):
            file.write(chunk)
            if digest is not None:
                digest.update(chunk)
        if request.query.get("fsync") == "1":
            file.flush()
            os.fsync(file.fileno())
    return web.json_response({"size": os.path.getsize(path)})
async def health(request):
    return web.json_response({})
app = web.Application()
app.add_routes([web.put("/put", put), web.get("/healthz", health)])
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


async def register_gatherer(base: str, key: str) -> int:
    """A gatherer for the upload part's camera: a real hello on /agent, as an agent says it."""
    import aiohttp

    from relay.link import protocol

    async with aiohttp.ClientSession() as http, http.ws_connect(
            base + "/agent", headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send_json({"type": "hello", "protocol": protocol.PROTOCOL, "version": "bench",
                            "mac_addr": "02:00:00:00:be:03", "ip_addr": "127.0.0.1",
                            "name_pc": "bench", "os_name": "bench", "devices": []})
        welcome = await ws.receive(timeout=30)
        return int(json.loads(welcome.data)["gather_id"])


def spool_entry(root: Path, source: Path, camera_id: int, sha256: str) -> None:
    """A finished recording in a spool, as docs/RECORDING.md describes one: the file (a hard link
    to ``source``, since the uploader deletes its copy) and its manifest, written last."""
    root.mkdir(parents=True)
    start = time.time() - 600
    name = f"{camera_id}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(start))}-{secrets.token_hex(3)}"
    os.link(source, root / f"{name}.mp4")
    size = source.stat().st_size
    (root / f"{name}.json").write_text(json.dumps({
        "upload_id": secrets.token_hex(16), "kind": "record", "camera_id": camera_id,
        "file": f"{name}.mp4", "poster": "", "size": size, "sha256": sha256,
        "start_time": start, "end_time": start + 600, "duration": 600.0, "width": 640,
        "height": 360}))


async def upload_once(base: str, key: str, root: Path) -> tuple[float, float, float]:
    """Seconds the real Uploader takes to send the spool's one entry: declare, PUTs, commit,
    until it removed its copy (the relay answered committed); and of that, the seconds its PUTs
    and its commit took (from the session's trace: the Uploader is given the session)."""
    import aiohttp

    from relay.agent.spool import Spool
    from relay.agent.uploader import Uploader

    spool = Spool(root, 0)
    if len(spool.pending()) != 1:
        raise RuntimeError("the spool entry was not taken")
    spent: dict[str, float] = {"PUT": 0.0, "POST": 0.0}

    async def request_start(_s: Any, context: Any, params: Any) -> None:
        context.started, context.commit = time.perf_counter(), params.url.path.endswith("/commit")

    async def request_end(_s: Any, context: Any, params: Any) -> None:
        if params.method == "PUT" or context.commit:
            spent[params.method] += time.perf_counter() - context.started

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(request_start)
    trace.on_request_end.append(request_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        uploader = Uploader(http, base, key, spool, lambda: True)
        stop = asyncio.Event()
        started = time.perf_counter()
        running = asyncio.create_task(uploader.run(stop))
        try:
            while spool.pending():
                if running.done() or any(uploader.last_error.values()):
                    raise RuntimeError(f"the upload failed: {uploader.last_error}")
                await asyncio.sleep(0.005)
            return time.perf_counter() - started, spent["PUT"], spent["POST"]
        finally:
            stop.set()
            await running


def settle(warm_mb: int = 512) -> None:
    """Before every timed run, the same for every sender: ``sync`` (no run pays for the last
    one's dirty pages), then touch ``warm_mb`` of memory and free it. This VM gives freed memory
    back to its host (virtio-balloon free page reporting, about 2 s after the free); a receiver
    whose page cache lands on given-back pages pays the host's faults in its ``write`` (measured:
    twice the CPU for the same bytes, whichever receiver it hits). Touched just before, the
    free pages the run will write into are the host's again."""
    os.sync()
    block = bytearray(warm_mb << 20)
    for start in range(0, len(block), 4096):
        block[start] = 1
    del block


def curl_once(processes: Processes, url: str, path: Path, size: int) -> float:
    """``curl -T`` of the file; curl's own time_total (connect to the last byte of the answer)."""
    child = processes.start(["curl", "-sS", "-T", str(path), "-H", "Expect:", "-o", "-", "-w",
                             "\n%{http_code} %{time_total}", url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=600)
    finally:
        processes.stop(child)
    body, _, tail = out.rpartition("\n")
    code, seconds = tail.split()
    if child.returncode != 0 or code != "200" or json.loads(body)["size"] != size:
        raise RuntimeError(f"curl failed ({child.returncode}, {code}): {err or body}")
    return float(seconds)


async def upload_part(args: argparse.Namespace, processes: Processes, tmp: Path) -> None:
    import hashlib

    tmp.mkdir()
    relay = start_relay_serve(processes, tmp / "data", tmp / "relay.log")
    key = subprocess.run([sys.executable, "-m", "relay", "agent-key", "add", "bench", "--data",
                          str(tmp / "data")], capture_output=True, text=True, timeout=60,
                         check=True, stdin=subprocess.DEVNULL, cwd=ROOT).stdout.strip()
    gather_id = await register_gatherer(relay.base, key)
    camera_id = api(relay.base, relay.token, "add_camera", camera_name="bench",
                    gather_id=gather_id, stream_prop=1,
                    stream_mp4="/videos/bench.mp4")["camera_id"]
    # The bytes: random (the relay never decodes what it stores; nothing compresses them).
    source, digest = tmp / "upload.bin", hashlib.sha256()
    with source.open("wb") as file:
        for _ in range(args.upload_mb):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            file.write(chunk)
    size = source.stat().st_size
    (tmp / "put").mkdir()
    port = free_port()
    server = processes.start([sys.executable, "-c", PUT_SERVER, str(tmp / "put"), str(port)],
                             stdin=subprocess.DEVNULL, cwd=ROOT)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", server)
    times: dict[str, list[float]] = {"uploader": [], "curl fsync": [], "curl": [],
                                     "curl fsync sha256": []}
    phases: dict[str, list[float]] = {"PUT": [], "commit": []}
    loads = [loadavg()]
    for run in range(args.upload_runs):
        spool_entry(tmp / f"spool-{run}", source, camera_id, digest.hexdigest())
        settle()
        total, puts, commit = await upload_once(relay.base, key, tmp / f"spool-{run}")
        times["uploader"].append(total)
        phases["PUT"].append(puts)
        phases["commit"].append(commit)
        records = api(relay.base, relay.token, "list_record", camera_id=camera_id)["data"]
        if [r["file_size"] for r in records] != [size]:
            raise RuntimeError(f"the relay holds {records}, not one {size}-byte record")
        api(relay.base, relay.token, "del_record", record_id=records[0]["record_id"])
        settle()
        times["curl fsync"].append(await asyncio.to_thread(
            curl_once, processes, f"http://127.0.0.1:{port}/put?fsync=1", source, size))
        settle()
        times["curl"].append(await asyncio.to_thread(
            curl_once, processes, f"http://127.0.0.1:{port}/put", source, size))
        settle()
        times["curl fsync sha256"].append(await asyncio.to_thread(
            curl_once, processes, f"http://127.0.0.1:{port}/put?fsync=1&sha256=1", source, size))
        loads.append(loadavg())
    processes.stop(server)
    processes.stop(relay.child)
    mb = size / 1e6
    rate = {kind: mb / statistics.median(values) for kind, values in times.items()}
    print(f"\nUpload throughput over 127.0.0.1, one {mb:.0f} MB file, {args.upload_runs} runs "
          f"each, alternating (uploader, curl fsync, curl, curl fsync sha256), median; load 1 min "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print("\n| sender → receiver | median s | MB/s (median) | runs MB/s | ratio uploader / this "
          f"| goal >= {UPLOAD_GOAL:g}x |")
    print("| --- | --- | --- | --- | --- | --- |")
    names = {"uploader": "relay/agent/uploader.py Uploader → relay serve (declare, one PUT "
                         "hashed as it arrives, commit: sha256 check, fdatasync, rename, row)",
             "curl fsync": "curl -T → bare aiohttp PUT handler, body to disk + fsync",
             "curl": "curl -T → bare aiohttp PUT handler, body to disk (no fsync)",
             "curl fsync sha256": "curl -T → bare aiohttp PUT handler, body to disk + fsync + "
                                  "sha256 (the work the relay must do; not the goal's baseline)"}
    for kind, values in times.items():
        ratio = rate["uploader"] / rate[kind]
        goal = "" if kind in ("uploader", "curl fsync sha256") else (
            "yes" if ratio >= UPLOAD_GOAL else "NO")
        print(f"| {names[kind]} | {statistics.median(values):.2f} | {rate[kind]:.0f} | "
              + ", ".join(f"{mb / v:.0f}" for v in values)
              + f" | {'' if kind == 'uploader' else f'{ratio:.2f}'} | {goal} |")
    put, commit = statistics.median(phases["PUT"]), statistics.median(phases["commit"])
    print(f"\nOf the uploader's median {statistics.median(times['uploader']):.2f} s: its "
          f"PUT {put:.2f} s ({mb / put:.0f} MB/s), the commit {commit:.2f} s "
          f"(the relay's fdatasync, rename and row), the rest (declare, "
          f"spool reads and removal) {statistics.median(times['uploader']) - put - commit:.2f} s.")


PARTS = ("agent", "upload", "vod")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="vod",
                        help="vod, agent, upload, or all; a comma list runs several")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--video", default="busy", choices=("busy", "demo"))
    # Parts "agent" and "upload".
    parser.add_argument("--sizes", default="360p,1080p", help="agent: videos, of " + ",".join(SIZES))
    parser.add_argument("--cameras", default="1,4,16", help="agent: camera counts, ascending")
    parser.add_argument("--window", type=float, default=20.0, help="agent: seconds per CPU window")
    parser.add_argument("--windows", type=int, default=3, help="agent: windows per phase (median)")
    parser.add_argument("--settle", type=float, default=3.0, help="agent: seconds before windows")
    parser.add_argument("--minute-length", type=float, default=10.0,
                        help="agent: its minute_length, so slice_val 1 cuts a slice this often")
    parser.add_argument("--video-seconds", type=int, default=10, help="agent: the looped MP4's length")
    parser.add_argument("--upload-mb", type=int, default=200, help="upload: the file's MiB")
    parser.add_argument("--upload-runs", type=int, default=5, help="upload: runs of each sender")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs: at least 5 (the figures are medians)")
    args.part = set(PARTS) if args.part == "all" else set(args.part.split(","))
    if not args.part <= set(PARTS):
        parser.error(f"--part: of {', '.join(PARTS)} or all")
    args.sizes = args.sizes.split(",")
    args.cameras = [int(n) for n in args.cameras.split(",")]
    if not set(args.sizes) <= set(SIZES) or args.cameras != sorted(args.cameras):
        parser.error(f"--sizes: of {', '.join(SIZES)}; --cameras: ascending counts")
    if args.windows < 3 or args.upload_runs < 3:
        parser.error("--windows, --upload-runs: at least 3 (the figures are medians)")
    signal.signal(signal.SIGTERM, interrupt)
    processes = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="bench-record-"))
    try:
        if "agent" in args.part:
            agent_part(args, processes, tmp / "agent-part")
        if "upload" in args.part:
            asyncio.run(upload_part(args, processes, tmp / "upload-part"))
        if "vod" in args.part:
            asyncio.run(vod(args, processes, tmp))
    finally:
        processes.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
