"""Randomized faults on a live system: tabs join, leave and crash, the agent and the relay restart.

Everything is real (``relay serve``, ``relay agent`` pushing a PyAV-made file, one Chromium), with
the short timings of live_system.py. A seeded ``random.Random`` picks each cycle's action (the
seed is printed; ``RELAY_FAULTS_SEED=<n>`` replays one, ``RELAY_FAULTS_CYCLES=<n>`` changes the
count); short random pauses between actions let them race. The relay restarts at a few random
cycles only (each costs a start and the pages' recovery); the other actions are drawn each cycle.

Every ten cycles, once things settle, each watched camera must have exactly one push, each open tab
one viewer session, and every open tab's video must be advancing (a frozen player keeps its session
all the same). At the end, with every tab closed, nothing may run: zero pushes and zero viewers at
``/metrics`` within viewer timeout + close-after + a few seconds. Neither the agent's log nor any run
of the relay may show a traceback; a failure shows each one whole (live_system.tracebacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import eventually
from live_system import CLOSE_AFTER, VIEWER_TIMEOUT, LiveSystem, close_tab, embed, no_tracebacks
from playwright.async_api import Browser, Page

SEED = int(os.environ.get("RELAY_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
CYCLES = int(os.environ.get("RELAY_FAULTS_CYCLES") or 100)
RELAY_RESTARTS = 4  # at random cycles: each costs a relay start and the pages' recovery
MAX_TABS = 4
CHECK_EVERY = 10
#: From a page finding its session gone to it playing again can take the agent's back-off (the page
#: finds the camera offline until the agent is back after a relay restart), the page's retry (2 s at
#: most) and a push start; generous for a loaded machine.
SETTLE_TIMEOUT = 60.0
#: Every tab closed: sessions of killed tabs time out, then their pushes close.
QUIET_TIMEOUT = VIEWER_TIMEOUT + CLOSE_AFTER + 5


@pytest.fixture
def system(tmp_path: Path) -> Iterator[LiveSystem]:
    with LiveSystem.running(tmp_path) as live:
        yield live
        agent_log = live.agent_log()
    # Each run of the relay (restarts included) and the agent; every traceback shown whole.
    no_tracebacks({"agent": agent_log,
                   **{f"relay run {n}": log for n, log in enumerate(live.relay_logs)}})


@dataclass
class Tab:
    page: Page
    camera_id: int
    mode: str


async def kill_tab(page: Page) -> None:
    """Crash the tab's renderer (no pagehide, no goodbye), then drop what is left of it."""
    with contextlib.suppress(Exception):
        cdp = await page.context.new_cdp_session(page)
        with contextlib.suppress(Exception):  # the crash also ends the session that sent it
            await asyncio.wait_for(cdp.send("Page.crash"), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(page.context.close(), 10)


async def leave_tab(page: Page) -> None:
    try:
        await asyncio.wait_for(close_tab(page), 15)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(page.context.close(), 10)


async def video_frames(page: Page) -> tuple[int, str]:
    """The player's decoded frame count and status line."""
    frame = next((f for f in page.frames if "/play/live/" in f.url), None)
    if frame is None:
        return 0, "no player frame"
    return tuple(await frame.evaluate("""() => [
        document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames,
        (document.getElementById('video').dataset.mode || '') + ' ' +
            document.getElementById('status').textContent]"""))  # type: ignore[return-value]


async def plays(tab: Tab, timeout: float) -> str:
    """Wait until the tab's video decodes new frames; '' when it does, else what it shows."""
    deadline = time.monotonic() + timeout
    first, state = await video_frames(tab.page)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        frames, state = await video_frames(tab.page)
        if frames >= first + 5:
            return ""
    return f"camera {tab.camera_id} {tab.mode or 'webrtc'}: stuck at {first} frames, {state}"


def steady(check: Callable[[], bool], hold: float) -> Callable[[], bool]:
    """``check`` that only passes once it has held for ``hold`` seconds in a row."""
    since: float | None = None

    def held() -> bool:
        nonlocal since
        if not check():
            since = None
            return False
        since = since if since is not None else time.monotonic()
        return time.monotonic() - since >= hold

    return held


async def test_random_faults_end_with_no_push_and_no_viewer(system: LiveSystem, browser: Browser):
    print(f"live faults: seed {SEED} (replay with RELAY_FAULTS_SEED={SEED}), {CYCLES} cycles")
    rng = random.Random(SEED)
    relay_restarts = set(rng.sample(range(5, max(CYCLES - 3, 6)), min(RELAY_RESTARTS, CYCLES // 8)))
    tabs: list[Tab] = []
    history: list[str] = []
    started = time.monotonic()

    def where() -> str:
        return (f"seed {SEED}; last actions: {history[-12:]}; "
                f"tabs {[(t.camera_id, t.mode) for t in tabs]}")

    def counts() -> tuple[float, float]:
        try:
            return system.pushes(), system.viewers()
        except OSError:
            return -1, -1

    async def settled(timeout: float) -> None:
        watched = {tab.camera_id for tab in tabs}
        expected = (len(watched), len(tabs))
        # Steady for longer than close-after: a push left over from a camera nobody watches would
        # have ended within that time and broken the count.
        check = steady(lambda: counts() == expected, CLOSE_AFTER + 1)
        try:
            await asyncio.to_thread(eventually, check, timeout, 0.2)
        except AssertionError:
            pytest.fail(f"wanted (pushes, viewers) == {expected}, have {counts()}; {where()}")
        # And every open tab shows live video (a stalled player would hold its session all the same).
        stuck = [problem for problem in await asyncio.gather(*(plays(tab, 30) for tab in tabs))
                 if problem]
        assert not stuck, f"{stuck}; {where()}"

    for cycle in range(CYCLES):
        choices = {"open": 5 if len(tabs) < MAX_TABS else 0, "close": 3 if tabs else 0,
                   "kill": 2 if tabs else 0, "agent": 1}
        action = "relay" if cycle in relay_restarts else \
            rng.choices(list(choices), weights=list(choices.values()))[0]
        if action == "open":
            camera_id = rng.choice(system.cameras)
            mode = rng.choice(["", "", "mse"])
            page = await embed(browser, system.play_url(camera_id, mode, 320, 180))
            tabs.append(Tab(page, camera_id, mode))
            history.append(f"{cycle}: open camera {camera_id} {mode or 'webrtc'}")
        elif action in ("close", "kill"):
            tab = tabs.pop(rng.randrange(len(tabs)))
            history.append(f"{cycle}: {action} camera {tab.camera_id} {tab.mode or 'webrtc'}")
            await (leave_tab(tab.page) if action == "close" else kill_tab(tab.page))
        elif action == "agent":
            history.append(f"{cycle}: restart the agent")
            await asyncio.to_thread(system.restart_agent)
        else:
            history.append(f"{cycle}: restart the relay")
            await asyncio.to_thread(system.restart_relay)
        await asyncio.sleep(rng.uniform(0, 0.3))
        if cycle % CHECK_EVERY == CHECK_EVERY - 1:
            await settled(SETTLE_TIMEOUT)
            history.append(f"{cycle}: settled at {time.monotonic() - started:.0f} s")

    while tabs:
        await leave_tab(tabs.pop().page)
    closed = time.monotonic()
    try:
        await asyncio.to_thread(eventually, lambda: counts() == (0, 0), QUIET_TIMEOUT, 0.2)
    except AssertionError:
        pytest.fail(f"still running (pushes, viewers) = {counts()} {time.monotonic() - closed:.1f} s "
                    f"after the last tab closed; {where()}")
    print(f"live faults: {CYCLES} cycles ({sum('restart the relay' in h for h in history)} relay "
          f"restarts, {sum('restart the agent' in h for h in history)} agent restarts) in "
          f"{time.monotonic() - started:.0f} s; quiet {time.monotonic() - closed:.1f} s after the "
          "last tab closed")
    print("\n".join(history))
