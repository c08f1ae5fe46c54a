"""Live video in a real Chromium: the iframe player over WebRTC and MSE, and pushes that stop.

Everything is real: ``relay serve``, ``relay agent`` pushing a PyAV-made H.264 file, Chromium
driven by Playwright. Timings are shortened by settings so the stop rules are checked in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import eventually
from live_system import CLOSE_AFTER, VIEWER_TIMEOUT, LiveSystem, close_tab, embed, no_tracebacks
from playwright.async_api import Browser, Page


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    with LiveSystem.running(tmp_path_factory.mktemp("live")) as system:
        yield system
        agent_log = system.agent_log()
    no_tracebacks({"agent": agent_log,
                   **{f"relay run {n}": log for n, log in enumerate(system.relay_logs)}})


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


async def test_webrtc_in_an_iframe_decodes_the_camera(live: LiveSystem, browser: Browser):
    page = await embed(browser, live.play_url(live.cameras[0]))
    state = await decoded(page)
    assert (state["width"], state["height"]) == (640, 360)
    assert state["mode"] == "webrtc"
    events = await page.evaluate("window.events")
    assert {"source": "relay-player", "event": "playing", "mode": "webrtc"} in events
    await close_tab(page)
    eventually(lambda: live.pushes() == 0, timeout=CLOSE_AFTER + 5)


async def test_mse_mode_decodes_too(live: LiveSystem, browser: Browser):
    page = await embed(browser, live.play_url(live.cameras[0], mode="mse"))
    state = await decoded(page)
    assert (state["width"], state["height"]) == (640, 360)
    assert state["mode"] == "mse"
    await close_tab(page)
    eventually(lambda: live.pushes() == 0, timeout=CLOSE_AFTER + 5)


async def test_two_tabs_share_one_push_which_stops_after_both_close(live: LiveSystem, browser: Browser):
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


async def test_a_killed_tab_stops_its_push_by_heartbeat_timeout(live: LiveSystem, browser: Browser):
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


async def test_a_ticket_for_one_camera_cannot_open_another(live: LiveSystem, browser: Browser):
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
