"""Live pages through the balancer (deploy/haproxy.cfg) in front of three nodes, real Chromium:
the page's session is kept on the node that opened it; when that node is SIGKILLed, the page gets
a new session on a living node by itself and plays again, without a reload."""

from __future__ import annotations

import asyncio
import csv
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_system import Api, Balancer, Cluster, drop_cluster_database, start_cluster
from conftest import eventually, free_port
from live_system import RELAY_ARGS, close_tab, embed, metric, no_tracebacks
from playwright.async_api import Browser
from test_cluster_live import frames
from test_live_browser import decoded

from relay.agent.demo_video import make_demo_video


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Cluster, Balancer]]:
    port = free_port()  # play URLs name the balancer: every node's public_url
    cluster = start_cluster(tmp_path, 3, *RELAY_ARGS, "--node-lease", "3",
                            "--public-url", f"http://127.0.0.1:{port}")
    balancer = Balancer(tmp_path / "balancer", cluster.ports)
    balancer.port = port
    try:
        balancer.start()
        yield cluster, balancer
    finally:
        balancer.stop()
        logs = cluster.close()
        drop_cluster_database(cluster)
    no_tracebacks(logs)


def live_calls(balancer: Balancer) -> dict[int, int]:
    """How many requests each node took in the balancer's live backend (its stats page)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{balancer.stats_port}/;csv", timeout=2) as r:
        rows = csv.DictReader(r.read().decode().lstrip("# ").splitlines())
        return {int(row["svname"].removeprefix("node")): int(row["stot"] or 0) for row in rows
                if row["pxname"] == "relay_live" and row["svname"].startswith("node")}


async def test_a_page_whose_node_died_plays_again_on_another(system: tuple[Cluster, Balancer],
                                                             browser: Browser) -> None:
    cluster, balancer = system
    video = make_demo_video(cluster.tmp / "cam.mp4", seconds=4)
    cluster.start_agent(balancer.url, cluster.agent_key())
    api = Api(balancer.url, cluster.credential)
    eventually(lambda: [g["status"] for g in api.gatherers()] == [1], timeout=20)
    gather_id = api.gatherers()[0]["gather_id"]
    camera_id = api.call("add_camera", camera_name="hall", gather_id=gather_id, stream_prop=1,
                         stream_mp4=str(video))["camera_id"]
    eventually(lambda: api.call("get_camera_status", camera_id=camera_id)["status"] == 1,
               timeout=20)
    play_url = api.call("play_camera", camera_id=camera_id, width=640, height=360)["play_url"]
    assert play_url.startswith(balancer.url)
    page = await embed(browser, play_url)
    await decoded(page, timeout=30)
    await asyncio.sleep(2)  # heartbeats go on: every call of the session reached one node
    # The page's session is on one node: the one with a viewer and no push (its media pulled
    # from the holder), or, when it is the holder too, the only node with a viewer.
    gauges = {index: (metric(cluster.node(index).base_url, "relay_live_viewers"),
                      metric(cluster.node(index).base_url, "relay_live_pushes"))
              for index in range(3)}
    watching = [index for index, (viewers, _) in gauges.items() if viewers]
    pulling = [index for index in watching if not gauges[index][1]]
    [page_node] = pulling or watching
    assert live_calls(balancer)[page_node] >= 4  # its session, offer and heartbeats went there
    killed = time.monotonic()
    cluster.kill_node(page_node)
    before = await frames(page)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and await frames(page) < before + 25:
        await asyncio.sleep(0.3)
    assert await frames(page) >= before + 25, "the page did not play again"
    print(f"the page played again {time.monotonic() - killed:.2f} s after its node was killed")
    living = [index for index in range(3) if index != page_node]
    assert sum(metric(cluster.node(index).base_url, "relay_live_pushes") for index in living) == 1
    await close_tab(page)
    eventually(lambda: all(metric(cluster.node(index).base_url, "relay_live_viewers") == 0
                           for index in living), timeout=15)
