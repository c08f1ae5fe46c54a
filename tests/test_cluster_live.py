"""Live video across cluster nodes, with real processes and real Chromium: the agent is linked to
one node (the camera's holder); viewers on two other nodes decode frames while the agent pushes
once; each of those nodes pulls the camera over one node-to-node link, whatever its number of
viewers; closing every page stops the push within close-after + 1 s; nothing is left running."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_system import Cluster, running_cluster
from conftest import eventually
from live_system import CLOSE_AFTER, RELAY_ARGS, close_tab, embed, metric
from playwright.async_api import Browser
from test_live_browser import decoded

from relay.agent.demo_video import make_demo_video


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3, *RELAY_ARGS, "--node-lease", "3",
                         "--command-timeout", "5") as cluster:
        yield cluster


def play_url(cluster: Cluster, index: int, camera_id: int) -> str:
    return cluster.api(index).call("play_camera", camera_id=camera_id, width=640,
                                   height=360)["play_url"]


def gauge(cluster: Cluster, index: int, name: str) -> float:
    return metric(cluster.node(index).base_url, name)


def camera_of(cluster: Cluster, via: int) -> int:
    """A camera on the one gatherer (a PyAV-made file), added through node ``via``, once it is
    online; the agent must be linked already or soon."""
    video = make_demo_video(cluster.tmp / "cam.mp4", seconds=4)
    api = cluster.api(via)
    eventually(lambda: [g["status"] for g in api.gatherers()] == [1], timeout=20)
    camera_id = api.call("add_camera", camera_name="hall", gather_id=api.gatherer()["gather_id"],
                         stream_prop=1, stream_mp4=str(video))["camera_id"]
    eventually(lambda: api.status(camera_id) == 1, timeout=20)
    return camera_id


async def test_viewers_on_two_other_nodes_share_the_holders_one_push(cluster: Cluster,
                                                                     browser: Browser) -> None:
    agent = cluster.start_agent(cluster.node(0).base_url, cluster.agent_key())
    camera_id = camera_of(cluster, via=2)
    pages = [await embed(browser, play_url(cluster, index, camera_id)) for index in (1, 2, 2)]
    for page in pages:
        state = await decoded(page, timeout=30)
        assert (state["width"], state["height"]) == (640, 360)
    assert gauge(cluster, 0, "relay_live_pushes") == 1  # one push, at the holder
    assert gauge(cluster, 1, "relay_live_pushes") == 0 and gauge(cluster, 2, "relay_live_pushes") == 0
    # The holder sees one viewer per pulling node, not one per page.
    assert gauge(cluster, 0, "relay_live_viewers") == 2
    assert gauge(cluster, 1, "relay_live_viewers") == 1 and gauge(cluster, 2, "relay_live_viewers") == 2
    pushes = re.findall(rf"camera {camera_id}: push \S+ started", agent.log())
    assert len(pushes) == 1, agent.log()  # the agent pushed once
    for page in pages:
        await close_tab(page)
    closed = time.monotonic()
    eventually(lambda: gauge(cluster, 0, "relay_live_pushes") == 0, timeout=CLOSE_AFTER + 5,
               interval=0.05)
    stopped = time.monotonic() - closed
    print(f"push stopped {stopped:.2f} s after the last page closed (close-after {CLOSE_AFTER})")
    assert stopped <= CLOSE_AFTER + 1
    for index in range(3):
        eventually(lambda index=index: gauge(cluster, index, "relay_live_viewers") == 0, timeout=5)


async def frames(page) -> int:  # type: ignore[no-untyped-def]
    frame = next(f for f in page.frames if "/play/live/" in f.url)
    return await frame.evaluate(
        "() => document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames")


async def test_the_holder_killed_both_pages_play_again_without_a_reload(cluster: Cluster,
                                                                       browser: Browser) -> None:
    servers = ",".join(cluster.node(index).base_url for index in range(3))
    agent = cluster.start_agent(servers, cluster.agent_key())
    camera_id = camera_of(cluster, via=0)
    [holder] = [index for index in range(3) if gauge(cluster, index, "relay_agents_connected")]
    others = [index for index in range(3) if index != holder]
    pages = [await embed(browser, play_url(cluster, index, camera_id)) for index in others]
    for page in pages:
        await decoded(page, timeout=30)
    killed = time.monotonic()
    cluster.kill_node(holder)
    eventually(lambda: sum(gauge(cluster, index, "relay_agents_connected") for index in others)
               == 1, timeout=10, interval=0.05)
    relinked = time.monotonic() - killed
    assert relinked <= 5, relinked
    before = [await frames(page) for page in pages]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # both pages decode new frames, on the same sessions
        now = [await frames(page) for page in pages]
        if all(after > was + 25 for after, was in zip(now, before, strict=True)):
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError(f"the pages did not play again: {before} -> {now}")
    print(f"agent relinked {relinked:.2f} s after the kill; both pages played again "
          f"{time.monotonic() - killed:.2f} s after it")
    assert sum(gauge(cluster, index, "relay_live_pushes") for index in others) == 1
    pushes = re.findall(rf"camera {camera_id}: push \S+ started", agent.log())
    assert len(pushes) == 2, agent.log()  # one before the kill, one after
    for page in pages:
        await close_tab(page)
    eventually(lambda: sum(gauge(cluster, index, "relay_live_pushes") for index in others) == 0,
               timeout=CLOSE_AFTER + 5)


async def test_redis_gone_for_10_s_the_pages_play_on_and_no_push_is_left(cluster: Cluster,
                                                                         browser: Browser) -> None:
    cluster.start_agent(cluster.node(0).base_url, cluster.agent_key())
    camera_id = camera_of(cluster, via=1)
    pages = [await embed(browser, play_url(cluster, index, camera_id)) for index in (0, 1)]
    for page in pages:
        await decoded(page, timeout=30)
    cluster.redis.stop()
    await asyncio.sleep(10)
    during = [await frames(page) for page in pages]
    cluster.redis.start()
    await asyncio.sleep(3)
    after = [await frames(page) for page in pages]
    assert all(b > a + 25 for a, b in zip(during, after, strict=True)), (during, after)
    assert gauge(cluster, 0, "relay_live_pushes") == 1
    for page in pages:
        await close_tab(page)
    closed = time.monotonic()
    eventually(lambda: gauge(cluster, 0, "relay_live_pushes") == 0, timeout=CLOSE_AFTER + 5,
               interval=0.05)
    assert time.monotonic() - closed <= CLOSE_AFTER + 1
    for index in range(3):
        eventually(lambda index=index: gauge(cluster, index, "relay_live_viewers") == 0, timeout=5)
