"""Live video in a real Chromium: the iframe player over WebRTC and MSE, and pushes that stop.

Everything is real: ``relay serve``, ``relay agent`` pushing a PyAV-made H.264 file, Chromium
driven by Playwright. Timings are shortened by settings so the stop rules are checked in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import eventually, run_relay, start_agent, start_relay, stop_agent, stop_relay
from playwright.async_api import Browser, Page, async_playwright

from relay.agent.demo_video import make_demo_video

CLOSE_AFTER, VIEWER_TIMEOUT = 2.0, 4.0
RELAY_ARGS = ("--ice-addresses", "127.0.0.1", "--live-close-after", str(CLOSE_AFTER),
              "--live-viewer-timeout", str(VIEWER_TIMEOUT), "--live-heartbeat", "1",
              "--live-reconcile", "1", "--webrtc-fallback-after", "6")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--allow-loopback-in-peer-connection",
                 "--autoplay-policy=no-user-gesture-required"]


def api(base: str, name: str, **params) -> dict:  # type: ignore[no-untyped-def, type-arg]
    with urllib.request.urlopen(f"{base}/api/v1/{name}?{urlencode(params)}", timeout=30) as answer:
        return json.load(answer)


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        match = re.search(rf"^{name} (\S+)$", response.read().decode(), re.M)
    return float(match.group(1)) if match else 0.0


@dataclass
class Live:
    base: str
    token: str
    cameras: list[int]

    def play_url(self, camera_id: int, **extra: str) -> str:
        url = api(self.base, "play_camera", token=self.token, camera_id=camera_id, width=640,
                  height=360)["play_url"]
        return url + "".join(f"&{key}={value}" for key, value in extra.items())

    def pushes(self) -> float:
        return metric(self.base, "relay_live_pushes")

    def viewers(self) -> float:
        return metric(self.base, "relay_live_viewers")


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> AsyncIterator[Live]:  # type: ignore[misc]
    tmp = tmp_path_factory.mktemp("live")
    video = make_demo_video(tmp / "cam.mp4", seconds=4)
    relay = start_relay(tmp / "data", *RELAY_ARGS)
    agent = None
    try:
        key = run_relay("agent-key", "add", "lab", "--data", str(tmp / "data")).stdout.strip()
        agent = start_agent(relay.base_url, key, tmp / "agent")
        token = api(relay.base_url, "access_token", unionid=relay.credential)["token"]
        eventually(lambda: api(relay.base_url, "list_gather", token=token)["data"])
        [gatherer] = api(relay.base_url, "list_gather", token=token)["data"]
        cameras = [api(relay.base_url, "add_camera", token=token, camera_name=f"cam{i}",
                       gather_id=gatherer["gather_id"], stream_prop=1, stream_mp4=str(video)
                       )["camera_id"] for i in range(2)]
        for camera_id in cameras:
            eventually(lambda c=camera_id: api(relay.base_url, "get_camera_status", token=token,
                                               camera_id=c)["status"] == 1)
        yield Live(relay.base_url, token, cameras)
    finally:
        if agent is not None:
            stop_agent(agent)
        stop_relay(relay)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                   args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def embed(browser: Browser, play_url: str) -> Page:
    """A page of another origin that embeds ``play_url`` in an iframe and records its messages."""
    page = await browser.new_page()
    await page.set_content(
        "<script>window.events = []; addEventListener('message', e => events.push(e.data));</script>"
        f"<iframe id=player src='{play_url}' width=660 height=380 allow='autoplay'></iframe>"
    )
    return page


async def close_tab(page: Page) -> None:
    """Close a tab the way a user does: its documents unload (pagehide fires), then it goes.
    (Playwright's ``page.close()`` alone removes the tab without unloading it.)"""
    await page.goto("about:blank")
    await page.close()


async def decoded(page: Page, timeout: float = 20) -> dict:  # type: ignore[type-arg]
    """Wait until the player's video has decoded frames; return what the video reports."""
    deadline = time.monotonic() + timeout
    state: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        frame = next((f for f in page.frames if "/play/live/" in f.url), None)
        if frame is not None:
            state = await frame.evaluate("""() => {
                const v = document.getElementById('video');
                return {frames: v.getVideoPlaybackQuality().totalVideoFrames, width: v.videoWidth,
                        height: v.videoHeight, mode: v.dataset.mode || '',
                        status: document.getElementById('status').textContent};
            }""")
            if state["frames"] > 0 and state["width"]:
                return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"no decoded frames: {state}")


async def test_webrtc_in_an_iframe_decodes_the_camera(live: Live, browser: Browser):
    page = await embed(browser, live.play_url(live.cameras[0]))
    state = await decoded(page)
    assert (state["width"], state["height"]) == (640, 360)
    assert state["mode"] == "webrtc"
    events = await page.evaluate("window.events")
    assert {"source": "relay-player", "event": "playing", "mode": "webrtc"} in events
    await close_tab(page)
    eventually(lambda: live.pushes() == 0, timeout=CLOSE_AFTER + 5)


async def test_mse_mode_decodes_too(live: Live, browser: Browser):
    page = await embed(browser, live.play_url(live.cameras[0], mode="mse"))
    state = await decoded(page)
    assert (state["width"], state["height"]) == (640, 360)
    assert state["mode"] == "mse"
    await close_tab(page)
    eventually(lambda: live.pushes() == 0, timeout=CLOSE_AFTER + 5)


async def test_two_tabs_share_one_push_which_stops_after_both_close(live: Live, browser: Browser):
    camera_id = live.cameras[1]
    first = await embed(browser, live.play_url(camera_id))
    second = await embed(browser, live.play_url(camera_id))
    await decoded(first)
    await decoded(second)
    assert live.pushes() == 1 and live.viewers() == 2
    await close_tab(first)
    assert live.pushes() == 1  # the other tab still watches
    await close_tab(second)
    closed = time.monotonic()
    eventually(lambda: live.pushes() == 0, timeout=CLOSE_AFTER + 1, interval=0.05)
    assert time.monotonic() - closed <= CLOSE_AFTER + 1
    assert live.viewers() == 0


async def test_a_killed_tab_stops_its_push_by_heartbeat_timeout(live: Live, browser: Browser):
    page = await embed(browser, live.play_url(live.cameras[0]))
    await decoded(page)
    assert live.pushes() == 1
    cdp = await page.context.new_cdp_session(page)
    killed = time.monotonic()
    with contextlib.suppress(Exception):  # the crash also ends the session that sent it
        await asyncio.wait_for(cdp.send("Page.crash"), 2)  # no pagehide, no goodbye
    eventually(lambda: live.pushes() == 0, timeout=VIEWER_TIMEOUT + CLOSE_AFTER + 2, interval=0.1)
    assert time.monotonic() - killed <= VIEWER_TIMEOUT + CLOSE_AFTER + 2
    assert live.viewers() == 0


async def test_a_ticket_for_one_camera_cannot_open_another(live: Live, browser: Browser):
    url_a = live.play_url(live.cameras[0])
    url_b = url_a.replace(f"/play/live/{live.cameras[0]}?", f"/play/live/{live.cameras[1]}?")
    page = await browser.new_page()
    response = await page.goto(url_b)
    assert response is not None and response.status == 403
    assert "not for this camera" in await page.content()
    await page.close()
    assert live.pushes() == 0


def test_embedding_page_is_plain_files():
    """The player needs no build step: plain HTML and JS in player/."""
    player = Path(__file__).resolve().parent.parent / "player"
    assert {p.name for p in player.iterdir()} >= {"live.html", "live.js", "record.html",
                                                  "record.js", "player.css"}
