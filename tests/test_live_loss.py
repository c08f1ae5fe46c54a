"""A Chromium viewer on a lossy link recovers: lost packets come back (NACK, RTX from the lean
sender's history), and a blackout ends in a keyframe request (PLI) and a playing video again.

The loss is real: Chromium runs in a network namespace of its own (``ip netns exec`` around
``/usr/bin/chromium``), joined to the relay by a veth pair, and an nftables rule in that namespace
drops UDP from the relay at random (RTCP from Chromium to the relay goes through untouched; this
kernel has no ``tc netem``). The
relay listens and gathers ICE on its end of the pair only. The namespace and veth are this
test's own and are deleted after it (the CI runs as root, as ``ip netns`` needs).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import launch_chromium
from live_system import LiveSystem, close_tab, embed, metric, no_tracebacks
from playwright.async_api import Browser, Page

SUBNET = f"10.209.{os.getpid() % 250}"
RELAY_END, VIEWER_END = f"{SUBNET}.1", f"{SUBNET}.2"
NAMESPACE = f"tloss{os.getpid()}"
RELAY_LINK, VIEWER_LINK = f"tl{os.getpid()}r", f"tl{os.getpid()}v"

#: Every RTCPeerConnection a frame makes is kept in ``window.peers`` (for its getStats).
KEEP_PEERS = """(() => {
  const Original = window.RTCPeerConnection;
  if (!Original) return;
  window.peers = [];
  window.RTCPeerConnection = function (...args) {
    const peer = new Original(...args);
    window.peers.push(peer);
    return peer;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def loss(percent: int) -> None:
    """What the relay sends to the viewer's namespace over UDP is lost at this rate from now on
    (an nftables rule in that namespace's input hook; 0 removes it)."""
    rules = "add table inet loss\ndelete table inet loss\n"
    if percent:
        rules += ("table inet loss {\n chain incoming {\n  type filter hook input priority 0;\n"
                  f"  ip saddr {RELAY_END} meta l4proto udp"
                  f" {f'numgen random mod 100 < {percent} ' if percent < 100 else ''}drop\n"
                  " }\n}\n")
    subprocess.run(["ip", "netns", "exec", NAMESPACE, "nft", "-f", "-"], input=rules.encode(),
                   check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The namespace, its veth pair, and a Chromium that starts inside it."""
    ip("netns", "add", NAMESPACE)
    try:
        ip("link", "add", RELAY_LINK, "type", "veth", "peer", "name", VIEWER_LINK)
        ip("link", "set", VIEWER_LINK, "netns", NAMESPACE)
        ip("addr", "add", f"{RELAY_END}/24", "dev", RELAY_LINK)
        ip("link", "set", RELAY_LINK, "up")
        ip("-n", NAMESPACE, "addr", "add", f"{VIEWER_END}/24", "dev", VIEWER_LINK)
        ip("-n", NAMESPACE, "link", "set", VIEWER_LINK, "up")
        ip("-n", NAMESPACE, "link", "set", "lo", "up")
        loss(0)
        chromium = tmp_path_factory.mktemp("netns") / "chromium"
        chromium.write_text(f'#!/bin/sh\nexec ip netns exec {NAMESPACE} /usr/bin/chromium "$@"\n')
        chromium.chmod(0o755)
        yield chromium
    finally:
        subprocess.run(["ip", "link", "del", RELAY_LINK], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def live(link: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    with LiveSystem.running(tmp_path_factory.mktemp("loss"), host=RELAY_END) as system:
        yield system
        agent_log = system.agent_log()
    no_tracebacks({"agent": agent_log,
                   **{f"relay run {n}": log for n, log in enumerate(system.relay_logs)}})


@pytest.fixture
async def viewer_browser(link: Path) -> AsyncIterator[Browser]:
    try:
        async with launch_chromium(str(link)) as chromium:
            yield chromium
    finally:
        loss(0)


async def video_stats(page: Page) -> dict[str, Any]:
    """The player's inbound video RTP stats (Chromium's getStats), and frames the video shows."""
    frame = next(f for f in page.frames if "/play/live/" in f.url)
    return await frame.evaluate("""async () => {
        const found = {};
        for (const peer of window.peers || []) {
          (await peer.getStats()).forEach(s => {
            if (s.type === 'inbound-rtp' && s.kind === 'video') Object.assign(found, s);
          });
        }
        const v = document.getElementById('video');
        found.shown = v.getVideoPlaybackQuality().totalVideoFrames;
        found.mode = v.dataset.mode || '';
        return found;
    }""")


async def until_stats(page: Page, check: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if any("/play/live/" in f.url for f in page.frames):
            stats = await video_stats(page)
            if check(stats):
                return stats
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {stats}")


async def playing(page: Page) -> dict[str, Any]:
    return await until_stats(page, lambda s: s.get("framesDecoded", 0) > 25 and s["mode"] == "webrtc",
                             30)


async def test_lost_packets_are_sent_again_and_the_video_plays_on(live: LiveSystem,
                                                                  viewer_browser: Browser):
    page = await embed(viewer_browser, live.play_url(live.cameras[0]), KEEP_PEERS)
    before = await playing(page)
    loss(5)
    await asyncio.sleep(6)
    loss(0)
    during = await video_stats(page)
    after = await until_stats(page, lambda s: s["framesDecoded"] > during["framesDecoded"] + 50, 15)
    assert during["packetsLost"] > before["packetsLost"] or during["nackCount"] > before["nackCount"]
    assert after["nackCount"] > before["nackCount"], (before, after)
    assert after.get("retransmittedPacketsReceived", 0) > before.get("retransmittedPacketsReceived", 0)
    # 6 s at 25 fps: what was lost came back, so most frames decoded (a lost keyframe's GOP, if
    # one is not repaired in time, may be skipped: not more than that).
    assert during["framesDecoded"] - before["framesDecoded"] > 100, (before, during)
    await close_tab(page)


async def test_a_blackout_ends_in_a_keyframe_request_and_the_video_plays_again(
        live: LiveSystem, viewer_browser: Browser):
    page = await embed(viewer_browser, live.play_url(live.cameras[1]), KEEP_PEERS)
    before = await playing(page)
    requests = metric(live.base, "relay_live_keyframe_requests_total")
    loss(100)
    await asyncio.sleep(4)  # (Chromium asks for a keyframe after 3 s without a decodable frame)
    stopped = await video_stats(page)
    loss(0)
    after = await until_stats(page, lambda s: s["framesDecoded"] > stopped["framesDecoded"] + 50, 15)
    assert stopped["framesDecoded"] - before["framesDecoded"] < 25  # (it did stop: 4 s at 25 fps)
    assert after["pliCount"] > before["pliCount"], (before, after)
    # The PLI reached the lean sender, which asked the camera for a keyframe (shared, rate-limited).
    assert metric(live.base, "relay_live_keyframe_requests_total") > requests
    assert after["mode"] == "webrtc"  # (recovered on WebRTC, not by falling back to MSE)
    await close_tab(page)
