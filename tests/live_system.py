"""What the live-video test modules share, in one copy (test modules importing each other is fragile).

A real ``relay serve`` with short live timings (so the stop rules are checked in seconds) and a real
``relay agent`` pushing a PyAV-made H.264 file to two cameras, plus helpers for the API, ``/metrics``
and a page embedding the player; the viewer-session calls of player/live.js as an HTTP client makes
them (open_session, call, heartbeats) and ``settle``; ``tracebacks``/``no_tracebacks``, which every
live test module runs over the logs it produced. The ``browser`` fixture is in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import av
from conftest import (
    AgentProcess,
    RelayProcess,
    eventually,
    free_port,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
    stop_relay,
)
from playwright.async_api import Browser, Page

from relay.agent.demo_video import make_demo_video
from relay.signing import Signer

CLOSE_AFTER, VIEWER_TIMEOUT = 2.0, 4.0
#: Shorter than the default 20 s, so a test can tell the setting from the default.
ICE_DEADLINE = 8.0
RELAY_ARGS = ("--ice-addresses", "127.0.0.1", "--live-close-after", str(CLOSE_AFTER),
              "--live-viewer-timeout", str(VIEWER_TIMEOUT), "--live-heartbeat", "1",
              "--live-reconcile", "1", "--webrtc-fallback-after", "6",
              "--ice-deadline", str(ICE_DEADLINE))


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a log record's first line


def annexb_frames(path: Path, count: int | None = None) -> list[tuple[bytes, int, bool]]:
    """A video file's access units as an agent pushes them: Annex-B bytes, 90 kHz pts, keyframe."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", stream)
        for packet in container.demux(stream):
            for out in bsf.filter(packet):
                frames.append((bytes(out), int(out.pts * out.time_base * 90_000), out.is_keyframe))
            if count is not None and len(frames) >= count:
                return frames[:count]
    return frames


def tracebacks(log: str) -> list[str]:
    """Every traceback in ``log``, each whole: from the first line of the record that logged it
    ("Task exception was never retrieved", say) to the next record, chained exceptions included.
    Text that is not a record (the interpreter's "Exception ignored in" at exit) starts one line
    before its traceback. A failing test shows these, not a tail that may cut the traceback off."""
    lines = log.splitlines()
    blocks: list[str] = []
    index = 0
    while index < len(lines):
        if not lines[index].startswith("Traceback (most recent call last):"):
            index += 1
            continue
        start = next((at for at in range(index, max(index - 5, -1), -1) if _RECORD.match(lines[at])),
                     max(index - 1, 0))
        end = next((at for at in range(index + 1, len(lines)) if _RECORD.match(lines[at])),
                   len(lines))
        blocks.append("\n".join(lines[start:end]))
        index = end
    return blocks


def no_tracebacks(logs: dict[str, str]) -> None:
    """Fail, showing each traceback whole, when any of these logs (name: text) has one."""
    found = [f"--- {name}, traceback {number}:\n{block}" for name, log in logs.items()
             for number, block in enumerate(tracebacks(log), 1)]
    assert not found, "tracebacks in the logs:\n" + "\n\n".join(found)


def api(base: str, name: str, **params: Any) -> dict[str, Any]:
    """One API call over real HTTP, as a client of the relay makes it."""
    with urllib.request.urlopen(f"{base}/api/v1/{name}?{urlencode(params)}", timeout=30) as answer:
        return json.load(answer)


def metric(base: str, name: str) -> float:
    """A gauge from ``/metrics``: how the tests see what runs inside the relay (0 when absent)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        match = re.search(rf"^{name} (\S+)$", response.read().decode(), re.M)
    return float(match.group(1)) if match else 0.0


def live_objects(base: str) -> dict[str, float]:
    """``relay_live_objects`` by kind: the per-viewer objects that exist in the relay (a kind the
    relay does not report is absent, so a test cannot pass on a missing gauge)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {kind: float(value) for kind, value in
            re.findall(r'^relay_live_objects\{kind="(\w+)"\} (\S+)$', text, re.M)}


class Drain:
    """Reads a process's stderr as it arrives and keeps the lines (a full pipe would stall the relay)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self.lines.append(line.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> str:
        self._thread.join(5)
        return self.text()


@dataclass
class LiveSystem:
    """The relay and the agent. Each can be restarted in place (same port, same data, same key)."""

    tmp: Path
    port: int
    host: str = "127.0.0.1"  # (its own address: the relay listens and gathers ICE there only)
    relay: RelayProcess = field(init=False)
    relay_log: Drain = field(init=False)
    key: str = ""
    agent: AgentProcess | None = None
    token: str = ""
    cameras: list[int] = field(default_factory=list)
    relay_logs: list[str] = field(default_factory=list)  # one for each relay run that has ended

    @classmethod
    @contextlib.contextmanager
    def running(cls, tmp: Path, host: str = "127.0.0.1") -> Iterator[LiveSystem]:
        """Start both processes and bring two cameras online. On exit, stop both by PID."""
        video = make_demo_video(tmp / "cam.mp4", seconds=4)
        live = cls(tmp, free_port(), host)
        live.start_relay()
        try:
            live.key = run_relay("agent-key", "add", "lab", "--data", str(tmp / "data")).stdout.strip()
            live.start_agent()
            live.token = api(live.base, "access_token", unionid=live.relay.credential)["token"]
            eventually(lambda: api(live.base, "list_gather", token=live.token)["data"])
            [gatherer] = api(live.base, "list_gather", token=live.token)["data"]
            live.cameras = [api(live.base, "add_camera", token=live.token, camera_name=f"cam{i}",
                                gather_id=gatherer["gather_id"], stream_prop=1, stream_mp4=str(video)
                                )["camera_id"] for i in range(2)]
            for camera_id in live.cameras:
                eventually(lambda c=camera_id: api(live.base, "get_camera_status", token=live.token,
                                                   camera_id=c)["status"] == 1)
            yield live
        finally:
            live.stop_agent()
            live.stop_relay()

    @property
    def base(self) -> str:
        return self.relay.base_url

    def pushes(self) -> float:
        return metric(self.base, "relay_live_pushes")

    def viewers(self) -> float:
        return metric(self.base, "relay_live_viewers")

    def idle(self) -> bool:
        return self.pushes() == 0 and self.viewers() == 0

    def play_url(self, camera_id: int, mode: str = "", width: int = 640, height: int = 360) -> str:
        url = api(self.base, "play_camera", token=self.token, camera_id=camera_id, width=width,
                  height=height)["play_url"]
        return url + (f"&mode={mode}" if mode else "")

    def ticket(self, camera_id: int) -> str:
        return parse_qs(urlsplit(self.play_url(camera_id)).query)["ticket"][0]

    def signer(self) -> Signer:
        """The relay's own signing key, read from the catalogue, so a test can forge an expired ticket."""
        with contextlib.closing(sqlite3.connect(self.relay.data / "relay.sqlite3")) as db:
            [(value,)] = db.execute("SELECT value FROM meta WHERE key = 'signing_key'").fetchall()
        return Signer(bytes.fromhex(value))

    def agent_log(self) -> str:
        path = self.tmp / "agent.log"  # what start_agent writes for tmp / "agent"
        return path.read_text(errors="replace") if path.exists() else ""

    def pushes_started(self, camera_id: int) -> list[str]:
        """The ids of the pushes the agent started for ``camera_id``, oldest first, from its log."""
        return re.findall(rf"camera {camera_id}: push (\S+) started", self.agent_log())

    def start_agent(self) -> None:
        self.agent = start_agent(self.base, self.key, self.tmp / "agent")

    def stop_agent(self) -> None:
        if self.agent is not None:
            stop_agent(self.agent)
            self.agent = None

    def restart_agent(self) -> None:
        self.stop_agent()
        self.start_agent()

    def start_relay(self) -> None:
        where = ("--ice-addresses", self.host, "--public-url", f"http://{self.host}:{self.port}")
        self.relay = start_relay(self.tmp / "data", *RELAY_ARGS, *where, port=self.port,
                                 host=self.host)
        self.relay_log = Drain(self.relay.process.stderr)  # type: ignore[arg-type]

    def stop_relay(self) -> None:
        tail = stop_relay(self.relay)
        self.relay_logs.append(self.relay_log.join() + tail)

    def restart_relay(self) -> None:
        self.stop_relay()
        self.start_relay()


#: How long a session nobody heartbeats (then its push) takes to go, with some slack for a busy box.
VIEWER_GONE = VIEWER_TIMEOUT + 3
PUSH_GONE = VIEWER_TIMEOUT + CLOSE_AFTER + 4


async def open_session(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int) -> str:
    async with http.post(f"{system.base}/play/live/{camera_id}/session",
                         params={"ticket": system.ticket(camera_id)}) as response:
        body = await response.json()
        assert response.status == 200, body
    return body["session"]


async def call(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int, what: str,
               session: str, **kwargs) -> tuple[int, str, dict | None]:  # type: ignore[no-untyped-def, type-arg]
    """POST to a live endpoint: status, content type and the JSON body (None when not JSON)."""
    async with http.post(f"{system.base}/play/live/{camera_id}/{what}", params={"session": session},
                         **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, response.content_type, body


@contextlib.asynccontextmanager
async def heartbeats(http: aiohttp.ClientSession, system: LiveSystem, camera_id: int, session: str,
                     ended: asyncio.Event | None = None) -> AsyncIterator[None]:
    """Keep a session alive as the page does (every second) while the block runs; ``ended`` is set
    when the relay answers 404 (the session is gone)."""

    async def beat() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, _, _ = await call(http, system, camera_id, "heartbeat", session)
                if status == 404 and ended is not None:
                    ended.set()
                    return
            await asyncio.sleep(1)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """``eventually`` that leaves the event loop running (heartbeats must go on meanwhile)."""
    await asyncio.to_thread(eventually, check, timeout)


async def settle(system: LiveSystem) -> None:
    """No viewer left, then no push: what every test ends with (and starts from)."""
    await until(lambda: system.viewers() == 0, timeout=VIEWER_GONE)
    await until(lambda: system.pushes() == 0, timeout=PUSH_GONE)


async def embed(browser: Browser, play_url: str, init_script: str = "") -> Page:
    """A page of another origin that embeds ``play_url`` in an iframe and records its messages
    (``window.events``) and when each arrived (``window.stamps``, ms since the epoch);
    ``init_script`` runs first in every frame of it."""
    page = await browser.new_page()
    if init_script:
        await page.add_init_script(init_script)
    await page.set_content(
        "<script>window.events = []; window.stamps = [];"
        " addEventListener('message', e => { events.push(e.data); stamps.push(Date.now()); });"
        "</script>"
        f"<iframe id=player src='{play_url}' width=660 height=380 allow='autoplay'></iframe>"
    )
    return page


async def close_tab(page: Page) -> None:
    """Close a tab the way a user does: its documents unload (pagehide fires), then it goes.
    (Playwright's ``page.close()`` alone removes the tab without unloading it.)"""
    await page.goto("about:blank")
    await page.close()
