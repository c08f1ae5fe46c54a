"""Randomized faults on a live cluster: tabs on any node join, leave and crash, the agent restarts,
and nodes are SIGKILLed (and started again on their port) — the agent's holder among them.

The 100-cycle live fault test (test_live_faults.py) on three nodes, PostgreSQL and a Redis of its
own, with real Chromium pages and a real agent that knows every node. Every ten cycles, once things
settle: each watched camera has exactly one push in the whole cluster; the viewers every node
counts add up to the open tabs plus one node-to-node link per camera and pulling node; every open
tab's video advances. At the end, with every tab closed: zero pushes and zero viewers on every
node's ``/metrics``, and no traceback in any node's or the agent's log.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_system import Cluster, running_cluster
from conftest import eventually, stop_agent
from live_system import CLOSE_AFTER, RELAY_ARGS, VIEWER_TIMEOUT, embed, metric
from playwright.async_api import Browser
from test_live_faults import Tab, kill_tab, leave_tab, plays, steady

from relay.agent.demo_video import make_demo_video

SEED = int(os.environ.get("RELAY_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
CYCLES = int(os.environ.get("RELAY_FAULTS_CYCLES") or 100)
NODE_KILLS = 5
MAX_TABS = 4
CHECK_EVERY = 10
SETTLE_TIMEOUT = 60.0
QUIET_TIMEOUT = VIEWER_TIMEOUT + CLOSE_AFTER + 5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3, *RELAY_ARGS, "--node-lease", "3",
                         "--command-timeout", "5") as cluster:
        yield cluster


async def test_random_faults_with_node_kills_end_with_nothing_running(cluster: Cluster,
                                                                      browser: Browser) -> None:
    print(f"cluster faults: seed {SEED} (replay with RELAY_FAULTS_SEED={SEED}), {CYCLES} cycles")
    rng = random.Random(SEED)
    kills = set(rng.sample(range(5, max(CYCLES - 3, 6)), min(NODE_KILLS, CYCLES // 8)))
    video = make_demo_video(cluster.tmp / "cam.mp4", seconds=4)
    servers = ",".join(cluster.node(index).base_url for index in range(3))
    agent_args = (servers, cluster.agent_key())
    cluster.start_agent(*agent_args)
    eventually(lambda: [g["status"] for g in cluster.api(0).gatherers()] == [1], timeout=20)
    gather_id = cluster.api(0).gatherers()[0]["gather_id"]
    cameras = [cluster.api(0).call("add_camera", camera_name=f"cam{n}", gather_id=gather_id,
                                   stream_prop=1, stream_mp4=str(video))["camera_id"]
               for n in range(2)]
    eventually(lambda: all(cluster.api(0).call("get_camera_status", camera_id=c)["status"] == 1
                           for c in cameras), timeout=20)
    tabs: list[tuple[Tab, int]] = []  # each tab and the node its page came from
    history: list[str] = []
    started = time.monotonic()

    def where() -> str:
        return f"seed {SEED}; last actions: {history[-12:]}; tabs {[(t.camera_id, n) for t, n in tabs]}"

    def gauges(name: str) -> list[float]:
        try:
            return [metric(node.base_url, name) if node is not None else -1
                    for node in cluster.nodes]
        except OSError:
            return [-1, -1, -1]

    def counts() -> tuple[float, float]:
        pushes, viewers = gauges("relay_live_pushes"), gauges("relay_live_viewers")
        return (-1, -1) if -1 in pushes + viewers else (sum(pushes), sum(viewers))

    def expected() -> tuple[int, int]:
        holders = [index for index, agents in enumerate(gauges("relay_agents_connected"))
                   if agents == 1]
        holder = holders[0] if len(holders) == 1 else -1
        watched = {tab.camera_id for tab, _ in tabs}
        links = {(tab.camera_id, node) for tab, node in tabs if node != holder}
        return len(watched), len(tabs) + len(links)

    async def settled(timeout: float) -> None:
        check = steady(lambda: counts() == expected(), CLOSE_AFTER + 1)
        try:
            await asyncio.to_thread(eventually, check, timeout, 0.2)
        except AssertionError:
            pytest.fail(f"wanted (pushes, viewers) == {expected()}, have {counts()} "
                        f"(per node {gauges('relay_live_pushes')}, "
                        f"{gauges('relay_live_viewers')}); {where()}")
        stuck = [problem for problem in await asyncio.gather(*(plays(tab, 30) for tab, _ in tabs))
                 if problem]
        assert not stuck, f"{stuck}; {where()}"

    for cycle in range(CYCLES):
        choices = {"open": 5 if len(tabs) < MAX_TABS else 0, "close": 3 if tabs else 0,
                   "kill": 2 if tabs else 0, "agent": 1}
        action = "node" if cycle in kills else \
            rng.choices(list(choices), weights=list(choices.values()))[0]
        if action == "open":
            camera_id, node = rng.choice(cameras), rng.randrange(3)
            mode = rng.choice(["", "", "mse"])
            url = cluster.api(node).call("play_camera", camera_id=camera_id, width=320,
                                         height=180)["play_url"] + (f"&mode={mode}" if mode else "")
            tabs.append((Tab(await embed(browser, url), camera_id, mode), node))
            history.append(f"{cycle}: open camera {camera_id} {mode or 'webrtc'} on node {node}")
        elif action in ("close", "kill"):
            tab, node = tabs.pop(rng.randrange(len(tabs)))
            history.append(f"{cycle}: {action} camera {tab.camera_id} on node {node}")
            await (leave_tab(tab.page) if action == "close" else kill_tab(tab.page))
        elif action == "agent":
            history.append(f"{cycle}: restart the agent")
            await asyncio.to_thread(stop_agent, cluster.agents.pop())
            await asyncio.to_thread(cluster.start_agent, *agent_args)  # its data dir, its log
        else:
            node = rng.randrange(3)
            history.append(f"{cycle}: SIGKILL node {node} and start it again")
            await asyncio.to_thread(cluster.kill_node, node)
            await asyncio.sleep(rng.uniform(0, 1))
            await asyncio.to_thread(cluster.start_node, node)
        await asyncio.sleep(rng.uniform(0, 0.3))
        if cycle % CHECK_EVERY == CHECK_EVERY - 1:
            await settled(SETTLE_TIMEOUT)
            history.append(f"{cycle}: settled at {time.monotonic() - started:.0f} s")

    while tabs:
        await leave_tab(tabs.pop()[0].page)
    closed = time.monotonic()

    def quiet() -> bool:
        return gauges("relay_live_pushes") == [0, 0, 0] and gauges("relay_live_viewers") == [0, 0, 0]

    try:
        await asyncio.to_thread(eventually, quiet, QUIET_TIMEOUT, 0.2)
    except AssertionError:
        pytest.fail(f"still running: pushes {gauges('relay_live_pushes')}, viewers "
                    f"{gauges('relay_live_viewers')} {time.monotonic() - closed:.1f} s after the "
                    f"last tab closed; {where()}")
    print(f"cluster faults: {CYCLES} cycles ({sum('SIGKILL' in h for h in history)} node kills, "
          f"{sum('restart the agent' in h for h in history)} agent restarts) in "
          f"{time.monotonic() - started:.0f} s; quiet {time.monotonic() - closed:.1f} s after the "
          "last tab closed")
    print("\n".join(history))
