"""Benchmark a cluster of relay nodes (issue 11, "Done when"): what crossing nodes costs.

    .venv/bin/python bench/cluster.py [--only 1,2,3] [--rounds 5] [--duration 5] [--callers 16]
                                      [--agents 1000] [--ff-runs 8] [--keep]

Every part starts its own cluster: a fresh PostgreSQL database (made on ``--postgres``'s server,
dropped afterwards), a redis-server of this bench's own on a free port (never the machine's shared
one), and N ``relay serve`` nodes on free 127.0.0.1 ports with ``--database-url``, ``--redis-url``,
``--redis-prefix`` and ``--node-lease`` (tests/cluster_system.py does the same with the RELAY_*
variables). The first node creates the catalogue (its banner names the API credential); the
others start on fresh data dirs. Before each part the bench waits while another bench runs
(``pgrep -f "bench/(commands|api|live|record).py"``: another helper may be measuring) and records
the load average. Where two sides are compared they take turns in rounds (the order flipped every
round), and the tables are medians with the ratio or difference.

Part 1, command round trip via another node vs the same node (goal: <= +1 ms p50). Two nodes; one
simulated agent (bench/commands.py ``--role agent``) linked to node A; one camera on it, started;
wrk calls ``GET /api/v1/start_camera`` (a started camera: nothing is written) on A (the holder:
same node) and on B (forwarded to A with the cluster secret), with 1 and ``--callers`` connections.
Answers are checked to carry the agent's reply: A's ``relay_command_seconds_count`` must grow by
the number of requests ("unanswered" otherwise). Each run also tells each node's CPU per request
(``/proc/PID/stat``); ``--profile DIR`` adds one more run of node B with ``--callers`` under py-spy
(on each node in turn; not a measured run) and prints where the time goes.

Part 2, failover of ``--agents`` agents (goal: p95 <= 5 s). Three nodes; simulated agents
(bench/commands.py ``--role agent --reconnect`` with all three URLs) that behave like ``relay agent``:
a random first URL, the next one after a connection that failed, the reference backoff, a 503's
Retry-After. Once every node's ``relay_agents_connected`` adds up to all of them, the node holding
the most is SIGKILLed; each of its agents is timed (client clock, from the SIGKILL) until it has a
welcome again (from another node: the killed one is gone), and the living nodes' ``/metrics`` must
count all agents again. Then, past the dead node's lease and two sweeps (``--online-after``), the
catalogue (PostgreSQL, read directly) must still show every gatherer online: they are all linked.

Part 3, first decoded frame for a viewer on a non-holder node vs the holder (goal <= +100 ms).
Two nodes; a real ``relay agent`` linked to node A pushing a PyAV-made MP4 (bench/live.py's busy
video: 640x360, 25 fps, ~1 Mbit/s); headless Chromium with bench/live.py's probe (ms from the
player iframe's navigation start to the first decoded frame, WebRTC, the default play URL). Per
round: cold (no push anywhere: ``relay_live_pushes`` and ``relay_live_viewers`` 0 on every node
first) then warm (the cold tab still playing, a second tab), on the holder and on node B, the order
of the two nodes flipped each round; one warm-up round discarded.

Part 4 (WebRTC fan-out of one camera, viewers over two nodes vs all on one, goal >= 1.7x viewers
at the same loss) is not written yet: on this 2-core machine both nodes, the aiortc viewers and the
agent share the same two cores, so the capacity of two nodes cannot show here as it would on two
machines.

Every process this starts is stopped by its PID on the way out (failures and Ctrl-C too), the
temporary dir removed and the database dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
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
from urllib.parse import urlencode

import commands
from common import (
    POSTGRES_ADMIN,
    Processes,
    cpu_seconds,
    fresh_postgres,
    http_json,
    interrupt,
    metric,
    restart_relay_serve,
    start_redis,
    start_relay_serve,
    wait_for_other_benches,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
P50_GOAL_MS = 1.0
FAILOVER_P95_GOAL_S = 5.0
FIRST_FRAME_GOAL_MS = 100.0


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def tree_state() -> str:
    return commands.tree_state(ROOT)


def quantile(values: list[float], fraction: float) -> float:
    """The nearest-rank quantile of ``values`` (sorted or not); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    index: int
    child: subprocess.Popen[Any]
    base: str
    log: Path

    def agents(self) -> int:
        value = metric(self.base, "relay_agents_connected", timeout=10)
        return -1 if math.isnan(value) else int(value)


@dataclass
class Cluster:
    """The nodes of one part, on one database and one Redis of the bench's own."""

    processes: Processes
    work: Path
    database_url: str
    redis_url: str
    prefix: str
    flags: list[str]
    nodes: list[Node] = field(default_factory=list)
    token: str = ""

    def cluster_flags(self) -> list[str]:
        return ["--database-url", self.database_url, "--redis-url", self.redis_url,
                "--redis-prefix", self.prefix, *self.flags]

    def start_node(self) -> Node:
        index = len(self.nodes)
        data, log = self.work / f"{self.prefix}-node{index}", self.work / f"{self.prefix}-node{index}.log"
        if index == 0:
            served = start_relay_serve(self.processes, data, log, self.cluster_flags())
            child, base, self.token = served.child, served.base, served.token
        else:
            base = f"http://127.0.0.1:{commands.free_port()}"
            child, _ = restart_relay_serve(self.processes, data, log, base, self.cluster_flags())
        node = Node(index, child, base, log)
        self.nodes.append(node)
        return node

    def agent_key(self, gatherers: int = commands.GATHERERS) -> str:
        return subprocess.run(
            [sys.executable, "-m", "relay", "agent-key", "add", "bench", "--gatherers",
             str(gatherers), "--data", str(self.work / f"{self.prefix}-node0")],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=True,
            stdin=subprocess.DEVNULL, env={**os.environ, "RELAY_DATABASE_URL": self.database_url},
        ).stdout.strip()

    def api(self, node: Node, name: str, **params: Any) -> dict[str, Any]:
        answer = http_json(f"{node.base}/api/v1/{name}?{urlencode({'token': self.token, **params})}")
        if answer.get("err_code") != 0:
            raise RuntimeError(f"{name} on node {node.index} answered {answer}")
        return answer

    def url(self, node: Node, name: str, **params: Any) -> str:
        return f"{node.base}/api/v1/{name}?{urlencode({'token': self.token, **params})}"

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.processes.stop(node.child, grace=20)

    def problems(self) -> list[str]:
        """Tracebacks, ERROR and WARNING lines of every node's log, counted, commonest kinds."""
        lines = []
        for node in self.nodes:
            count = commands.count_log(node.log)
            lines.append(f"node {node.index} log: {count.tracebacks} tracebacks, {count.errors} "
                         f"ERROR, {count.warnings} WARNING lines")
            lines += [f"  node {node.index}, {number:,}x: {kind}" for number, kind in count.kinds]
        return lines


@contextlib.contextmanager
def cluster(args: argparse.Namespace, processes: Processes, work: Path, tag: str, nodes: int,
            flags: list[str]) -> Any:
    """A fresh database and Redis, ``nodes`` nodes; everything stopped and dropped afterwards."""
    with fresh_postgres(f"cluster_{tag}", args.postgres) as database_url:
        redis, redis_url = start_redis(processes, work / f"redis-{tag}")
        group = Cluster(processes, work, database_url, redis_url, f"bench{os.getpid()}{tag}",
                        ["--node-lease", str(args.node_lease), "--log-level", "warning", *flags])
        try:
            for _ in range(nodes):
                group.start_node()
            print(f"cluster {tag}: redis PID {redis.pid} ({redis_url}); nodes "
                  + ", ".join(f"{n.index} PID {n.child.pid} {n.base}" for n in group.nodes),
                  flush=True)
            yield group
        finally:
            group.stop()
            processes.stop(redis)


def before_part(name: str) -> str:
    waited = wait_for_other_benches()
    state = f"load average {load()}" + (f" (waited {waited:.0f} s for another bench)" if waited
                                        else "")
    print(f"== {name}; {state}", flush=True)
    return state


# --------------------------------------------------------------------------- part 1


def part_commands(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    state = before_part("part 1: command round trip via another node vs the same node")
    with cluster(args, processes, work, "p1", 2, ["--command-timeout", "10"]) as group:
        holder, other = group.nodes
        key = group.agent_key()
        fleet = commands.AgentFleet(processes, holder.base.replace("http", "ws") + "/agent", key,
                                    1, 1, 10, 1, 3, work, tag="p1-agent")
        fleet.target(1)
        gather_id = wait_until(lambda: fleet.gather_ids.get(0), 30, "the agent's gather_id",
                               interval=0.1)
        camera = group.api(holder, "add_camera", camera_name="bench", gather_id=gather_id,
                           stream_prop=1, stream_mp4="/srv/bench.mp4")
        commands.check_transmit(camera, "add_camera")
        camera_id = camera["camera_id"]
        urls = {node.index: group.url(node, "start_camera", camera_id=camera_id)
                for node in (holder, other)}
        for node in (holder, other):
            commands.check_transmit(http_json(urls[node.index]), f"start_camera on node {node.index}")
        relay = commands.Relay(holder.child, holder.base, group.token, key, holder.log)

        def answered() -> int:
            return relay.commands_answered("camera.start")

        pairs = [(commands.Target(f"same node c={callers}", urls[holder.index], callers, answered,
                                  server_pid=holder.child.pid),
                  commands.Target(f"other node c={callers}", urls[other.index], callers, answered,
                                  server_pid=other.child.pid))
                 for callers in (1, args.callers)]
        if args.warmup > 0:
            for pair in pairs:
                for target in pair:
                    target.run(processes, args.warmup)
        cpu: dict[str, list[tuple[float, float]]] = {}  # target: (holder, other) µs per request
        for number in range(args.rounds):
            for pair in pairs:
                for target in (pair if number % 2 == 0 else pair[::-1]):
                    before = [cpu_seconds(node.child.pid) for node in (holder, other)]
                    run = target.run(processes, args.duration)
                    spent = [(cpu_seconds(node.child.pid) - was) / max(run.requests, 1) * 1e6
                             for node, was in zip((holder, other), before, strict=True)]
                    cpu.setdefault(target.name, []).append((spent[0], spent[1]))
                    target.runs.append(run)
                    print(f"  round {number + 1}/{args.rounds} {target.name:<16} {run.rps:8,.0f} "
                          f"req/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  CPU "
                          f"µs/request holder {spent[0]:4.0f} other {spent[1]:4.0f}  "
                          f"({run.requests:,} requests, {run.errors} errors, {run.unanswered} "
                          f"unanswered)", flush=True)
        if args.profile:  # where the forwarding node's time goes (py-spy, not measured runs)
            far = pairs[-1][1]
            for node in (other, holder):
                spy = commands.Spy(processes, node.child.pid,
                                   args.profile / f"node{node.index}-{far.callers}-callers.txt")
                far.run(processes, args.duration)
                spy.stop()
        afterwards = [problem for problem in (
            commands.still_answers(urls[0], "start_camera on the holder"),
            commands.still_answers(urls[1], "start_camera on the other node")) if problem]
        problems = group.problems()
        fleet.quit()
        for child in fleet.children:
            processes.stop(child)
    end_load = load()
    lines = [
        f"Two nodes on one PostgreSQL and one Redis of the bench's own; one simulated agent "
        f"(bench/commands.py `--role agent`) linked to node A; `GET /api/v1/start_camera` on a "
        f"started camera (nothing written). wrk -t1 --latency, {args.duration:g} s per run, "
        f"{args.rounds} rounds alternating the two nodes, medians of the rounds; nproc "
        f"{os.cpu_count()}, Python {platform.python_version()}; {state}, at the end {end_load}; "
        f"relay code {tree_state()}",
        "",
        "| target | callers | req/s | p50 ms | p99 ms | CPU µs/request: holder | other node "
        "| requests | errors | unanswered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in pairs:
        for target in pair:
            spent = cpu[target.name]
            lines.append(
                f"| {target.name.rsplit(' ', 1)[0]} | {target.callers} | "
                f"{target.median('rps'):,.0f} | {target.median('p50_ms'):.2f} | "
                f"{target.median('p99_ms'):.2f} | {statistics.median(h for h, _ in spent):.0f} | "
                f"{statistics.median(o for _, o in spent):.0f} | "
                f"{sum(r.requests for r in target.runs):,} | "
                f"{sum(r.errors for r in target.runs)} | {sum(r.unanswered for r in target.runs)} |")
    lines += ["", "| callers | p50 other - same ms | p50 other/same | p99 other/same "
              "| req/s other/same | goal p50 <= +1 ms |", "|---:|---:|---:|---:|---:|---|"]
    ok = True
    for same, far in pairs:
        diff = far.median("p50_ms") - same.median("p50_ms")
        met = diff <= P50_GOAL_MS
        ok = ok and (met or same.callers != 1)
        lines.append(f"| {same.callers} | {diff:+.2f} | "
                     f"{far.median('p50_ms') / same.median('p50_ms'):.2f} | "
                     f"{far.median('p99_ms') / same.median('p99_ms'):.2f} | "
                     f"{far.median('rps') / same.median('rps'):.2f} | {'met' if met else 'missed'} |")
    lines += ["", "| target | " + " | ".join(f"round {n + 1} p50 ms / req/s"
                                          for n in range(args.rounds)) + " |",
              "|---|" + "---:|" * args.rounds]
    for pair in pairs:
        for target in pair:
            lines.append(f"| {target.name} | " + " | ".join(
                f"{run.p50_ms:.2f} / {run.rps:,.0f}" for run in target.runs) + " |")
    lines += ["", *problems, *(f"after the runs: {problem}" for problem in afterwards)]
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    clean = not afterwards and not any(r.errors or r.unanswered for pair in pairs for t in pair
                                       for r in t.runs)
    return {"table": table, "ok": clean, "goal_met": ok,
            "targets": {t.name: [r.__dict__ for r in t.runs] for pair in pairs for t in pair}}


# --------------------------------------------------------------------------- part 2


def catalogue_online(database_url: str) -> int:
    """Gatherers the catalogue shows online (status not 0), read straight from PostgreSQL."""
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM gatherers WHERE status != 0"))
        finally:
            await conn.close()

    return asyncio.run(count())


def part_failover(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    state = before_part(f"part 2: {args.agents:,} agents fail over from a SIGKILLed node")
    limits = commands.raise_nofile(args.agents * 3 + 4096)
    print(f"RLIMIT_NOFILE now {limits[0]} (hard {limits[1]})", flush=True)
    with cluster(args, processes, work, "p2", 3, []) as group:
        key = group.agent_key()
        urls = ",".join(node.base.replace("http", "ws") + "/agent" for node in group.nodes)
        fleet = commands.AgentFleet(processes, urls, key, args.agents, args.agent_procs, 1, 1, 1,
                                    work, reconnect=True, tag="p2-agents")
        wait_until(fleet.reporting, 60, "the agent processes' first reports", interval=0.1)
        released = time.monotonic()
        fleet.target(args.agents)

        def counts() -> list[int]:
            return [node.agents() for node in group.nodes]

        wait_until(lambda: sum(counts()) >= args.agents, args.limit,
                   f"all {args.agents:,} agents counted on the nodes' /metrics", interval=0.5)
        connected_s = time.monotonic() - released
        time.sleep(args.settle)
        before = counts()
        victim = group.nodes[max(range(len(before)), key=before.__getitem__)]
        living = [node for node in group.nodes if node is not victim]
        print(f"all {args.agents:,} connected in {connected_s:.1f} s; per node {before}; "
              f"SIGKILL node {victim.index} (PID {victim.child.pid}, {before[victim.index]:,} "
              f"agents)", flush=True)
        totals_before = fleet.totals()
        dropped_before = totals_before.get("dropped", 0)
        fleet.mark()
        time.sleep(0.5)  # the mark has reached every client process
        killed_at = time.monotonic()
        os.kill(victim.child.pid, signal.SIGKILL)
        victim.child.wait(30)
        processes.stop(victim.child)  # reaped: only forgets it
        expected = before[victim.index]
        metrics_all_s = math.nan
        living_counts: list[int] = []
        stopped = ""
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            back = fleet.back_since(killed_at)
            if math.isnan(metrics_all_s):
                with contextlib.suppress(OSError, ValueError):
                    living_counts = [node.agents() for node in living]
                    if sum(living_counts) >= args.agents:
                        metrics_all_s = time.monotonic() - killed_at
            if len(back) >= expected and not math.isnan(metrics_all_s):
                break
            if now - killed_at > args.limit:
                stopped = (f"not all back: {len(back):,} of {expected:,} welcomed again, /metrics "
                           f"of the living nodes {living_counts} after {args.limit:g} s")
                break
        time.sleep(1.0)  # the clients' next progress reports
        back = [moment - killed_at for moment in fleet.back_since(killed_at)]
        online_before = catalogue_online(group.database_url)
        # Past the dead node's lease and two sweeps: every linked gatherer must still show online.
        online_after_s = args.online_after or 2 * args.node_lease + 2
        time.sleep(max(0.0, killed_at + online_after_s - time.monotonic()))
        online_after = catalogue_online(group.database_url)
        totals = fleet.totals()
        with contextlib.suppress(OSError, ValueError):
            living_counts = [node.agents() for node in living]
        delta = {name: totals[name] - totals_before.get(name, 0) for name in
                 ("welcomed", "timeouts", "unwelcomed", "connect_errors", "refused", "busy",
                  "retries", "dropped") if isinstance(totals.get(name), int | float)}
        errors = sorted(set(totals["errors"]))[:3]
        problems = group.problems()
        fleet.quit()
        for child in fleet.children:
            processes.stop(child, grace=30)
    p95 = quantile(back, 0.95)
    met = not stopped and len(back) >= expected and p95 <= FAILOVER_P95_GOAL_S
    lines = [
        f"Three nodes on one PostgreSQL and one Redis of the bench's own (`--node-lease "
        f"{args.node_lease:g}`, everything else default); {args.agents:,} simulated agents "
        f"(bench/commands.py `--role agent --reconnect`, all three URLs, the reference agent's "
        f"failover and backoff) over {args.agent_procs} client processes; {state}, at the end "
        f"{load()}; relay code {tree_state()}",
        "",
        "| agents | on killed node | welcomed again | p50 s | p95 s | p99 s | max s "
        "| living nodes' /metrics all s | goal p95 <= 5 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {args.agents:,} | {expected:,} | {len(back):,} | {quantile(back, 0.5):.2f} | "
        f"{p95:.2f} | {quantile(back, 0.99):.2f} | {max(back, default=math.nan):.2f} | "
        f"{metrics_all_s:.2f} | {'met' if met else 'missed'} |",
        "",
        f"Times from the SIGKILL to each agent's next welcome (the clients' clock). Per node before "
        f"the kill {before} (all connected {connected_s:.1f} s after the release); the living "
        f"nodes' `relay_agents_connected` afterwards {living_counts} (sum {sum(living_counts):,}); "
        f"links dropped before the kill {dropped_before:,}; gatherers online in the catalogue "
        f"when all were back {online_before:,}, {online_after_s:g} s after the SIGKILL "
        f"{online_after:,} (of {args.agents:,}: every agent is linked). "
        f"Clients meanwhile: " + ", ".join(f"{name} {value:,}" for name, value in delta.items()),
    ]
    if stopped:
        lines.append(f"stopped: {stopped}")
    lines += [f"an agent process's last error: {error}" for error in errors]
    lines += problems
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return {"table": table, "ok": not stopped and online_after == args.agents, "goal_met": met,
            "back_s": back, "online": [online_before, online_after],
            "expected": expected, "before": before, "after": living_counts}


# --------------------------------------------------------------------------- part 3


def wait_idle(bases: list[str], timeout: float = 20.0) -> None:
    """No push and no viewer on any node (cold means cold everywhere)."""
    wait_until(lambda: all(metric(base, "relay_live_pushes") == 0
                           and metric(base, "relay_live_viewers") == 0 for base in bases),
               timeout, "relay_live_pushes 0 and relay_live_viewers 0 on every node", interval=0.1)


async def first_frames(group: Cluster, camera_id: int, runs: int) -> dict[str, Any]:
    import live
    from playwright.async_api import async_playwright

    holder, other = group.nodes
    bases = [node.base for node in group.nodes]
    results: dict[tuple[str, str], list[float]] = {}
    played: dict[tuple[str, str], list[str]] = {}
    marks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    loads = []

    def play_url(node: Node) -> str:
        url = group.api(holder, "play_camera", camera_id=camera_id, width=640,
                        height=360)["play_url"]
        if not url.startswith(holder.base):
            raise RuntimeError(f"play_url {url.split('?')[0]} is not on the holder {holder.base}")
        return node.base + url[len(holder.base):]

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=live.CHROMIUM,
                                                   args=live.CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.add_init_script(live.FIRST_FRAME_PROBE)
            for round_no in range(runs + 1):  # round 0: warm-up, discarded
                loads.append(load())
                order = [(holder, "holder"), (other, "other node")]
                for node, where in (order if round_no % 2 == 0 else order[::-1]):
                    await asyncio.to_thread(wait_idle, bases)
                    await asyncio.sleep(0.3)
                    tab, cold = await live.open_player(context, play_url(node))
                    pushes = [int(metric(base, "relay_live_pushes")) for base in bases]
                    viewers = [int(metric(base, "relay_live_viewers")) for base in bases]
                    if viewers[node.index] < 1 or sum(pushes) != 1:
                        raise RuntimeError(f"a cold viewer on node {node.index} plays, but the "
                                           f"nodes count viewers {viewers}, pushes {pushes}")
                    await asyncio.sleep(1.0)
                    page, warm = await live.open_player(context, play_url(node))
                    await live.close_tab(page)
                    await live.close_tab(tab)
                    label = "warm-up" if round_no == 0 else f"run {round_no}"
                    for kind, result in (("cold", cold), ("warm", warm)):
                        print(f"  {label:8} {where:10} {kind}: {result.iframe_ms:7.1f} ms in "
                              f"iframe (played {result.played}); at the cold frame: pushes "
                              f"per node {pushes}, viewers {viewers}",
                              flush=True)
                        if round_no:
                            results.setdefault((where, kind), []).append(result.iframe_ms)
                            played.setdefault((where, kind), []).append(result.played)
                            marks.setdefault((where, kind), []).append(result.marks)
        finally:
            await browser.close()
    await asyncio.to_thread(wait_idle, bases)
    return {"results": results, "played": played, "marks": marks, "loads": loads}


def part_first_frame(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    from relay.agent.demo_video import make_demo_video

    state = before_part("part 3: first decoded frame, viewer on a non-holder node vs the holder")
    media = work / "media"
    media.mkdir()
    video = make_demo_video(media / "busy.mp4", 640, 360, 25, 10, noise_rows=24)
    flags = ["--ice-addresses", "127.0.0.1", "--live-close-after", "1"]
    with cluster(args, processes, work, "p3", 2, flags) as group:
        holder = group.nodes[0]
        key = group.agent_key(1)
        (work / "p3-agent").mkdir()
        agent_log = work / "p3-agent.log"
        with agent_log.open("wb") as log:
            agent = processes.start(
                [sys.executable, "-m", "relay", "agent", "--server", holder.base, "--data",
                 str(work / "p3-agent")], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, "RELAY_AGENT_KEY": key}, cwd=ROOT)
        gatherers = wait_until(lambda: group.api(holder, "list_gather")["data"], 30,
                               "the agent registers", interval=0.2)
        camera_id = group.api(holder, "add_camera", camera_name="bench", stream_prop=1,
                              gather_id=gatherers[0]["gather_id"],
                              stream_mp4=str(video))["camera_id"]
        wait_until(lambda: group.api(holder, "get_camera_status",
                                     camera_id=camera_id)["status"] == 1,
                   30, "camera online", interval=0.2)
        print(f"agent PID {agent.pid} linked to node 0; camera {camera_id}", flush=True)
        part = asyncio.run(first_frames(group, camera_id, args.ff_runs))
        problems = group.problems()
        processes.stop(agent)
    results, played = part["results"], part["played"]
    lines = [
        f"Two nodes on one PostgreSQL and one Redis of the bench's own (`--ice-addresses "
        f"127.0.0.1 --live-close-after 1`); a real `relay agent` linked to node A pushing "
        f"bench/live.py's busy MP4 (640x360, 25 fps, ~1 Mbit/s); headless Chromium, bench/live.py's "
        f"probe (ms from the player iframe's navigation start to the first decoded frame), the "
        f"default play URL (WebRTC). {args.ff_runs} rounds after a discarded warm-up, each "
        f"cold then warm on both nodes, the order of the nodes flipped every round; {state}, at "
        f"the end {load()}; loads per round {part['loads'][1:]}; relay code {tree_state()}",
        "",
        "| case | runs | median ms | min | max | played |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind in ("cold", "warm"):
        for where in ("holder", "other node"):
            values = results.get((where, kind), [])
            modes = ", ".join(f"{mode} {count}" for mode, count in sorted(
                {m: played[(where, kind)].count(m) for m in played.get((where, kind), [])}.items()))
            if values:
                lines.append(f"| {kind}, viewer on the {where} | {len(values)} | "
                             f"{statistics.median(values):.0f} | {min(values):.0f} | "
                             f"{max(values):.0f} | {modes} |")
    lines += ["", "| case | median other - holder ms | goal <= +100 ms |", "|---|---:|---|"]
    met_all = True
    for kind in ("cold", "warm"):
        near, far = results.get(("holder", kind)), results.get(("other node", kind))
        if near and far:
            diff = statistics.median(far) - statistics.median(near)
            met_all = met_all and diff <= FIRST_FRAME_GOAL_MS
            lines.append(f"| {kind} | {diff:+.0f} | {'met' if diff <= FIRST_FRAME_GOAL_MS else 'missed'} |")
    import live

    cases = [(where, kind) for kind in ("cold", "warm") for where in ("holder", "other node")]
    lines += ["", "Where the time goes (bench/live.py's milestones, median ms from the iframe's "
              "navigation start):", "",
              "| milestone | " + " | ".join(f"{kind}, {where}" for where, kind in cases) + " |",
              "|---|" + "---:|" * len(cases)]
    for mark, label in live.MILESTONES:
        cells = []
        for case in cases:
            values = [m[mark] for m in part["marks"].get(case, []) if m.get(mark) is not None]
            cells.append(f"{statistics.median(values):.0f}" if values else "-")
        if any(cell != "-" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", *problems]
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return {"table": table, "ok": True, "goal_met": met_all,
            "results": {f"{w} {k}": v for (w, k), v in results.items()}}


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="1,2,3", metavar="N[,N]",
                        type=lambda text: sorted({int(v) for v in text.split(",") if v}),
                        help="parts to run (default 1,2,3; part 4 is not written yet)")
    parser.add_argument("--rounds", type=int, default=5, help="part 1 rounds (default 5)")
    parser.add_argument("--duration", type=float, default=5,
                        help="part 1: seconds of wrk per target and round (default 5)")
    parser.add_argument("--warmup", type=float, default=2,
                        help="part 1: seconds of wrk on each target first (default 2)")
    parser.add_argument("--callers", type=int, default=16,
                        help="part 1: the larger number of connections (default 16)")
    parser.add_argument("--agents", type=int, default=1000, help="part 2 agents (default 1000)")
    parser.add_argument("--agent-procs", type=int, default=2,
                        help="part 2 client processes (default 2)")
    parser.add_argument("--settle", type=float, default=3,
                        help="part 2: seconds between all connected and the SIGKILL (default 3)")
    parser.add_argument("--limit", type=float, default=120,
                        help="part 2: give up waiting after this many seconds (default 120)")
    parser.add_argument("--online-after", type=float, default=0, metavar="S",
                        help="part 2: count the catalogue's online gatherers S s after the SIGKILL "
                        "(default 2 leases + 2 s: past the dead node's lease and two sweeps)")
    parser.add_argument("--ff-runs", type=int, default=8,
                        help="part 3 rounds after the warm-up (default 8)")
    parser.add_argument("--node-lease", type=float, default=6.0,
                        help="every node's --node-lease (default 6, relay's default)")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, metavar="URL",
                        help="PostgreSQL server where each part makes its own database")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="part 1: py-spy profiles of both nodes during an extra run of the "
                        "other node with --callers, summed up in the output (raw stacks in DIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.only or set(args.only) - {1, 2, 3}:
        raise SystemExit("bench: --only takes parts 1, 2 and 3 (part 4 is not written yet)")
    if min(args.rounds, args.duration, args.callers, args.agents, args.agent_procs, args.ff_runs,
           args.limit, args.node_lease) <= 0 or args.settle < 0:
        raise SystemExit("bench: counts, rates and durations must be positive")
    if 1 in args.only and shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (part 1 needs it)")
    if shutil.which("redis-server") is None:
        raise SystemExit("bench: redis-server is not installed")
    signal.signal(signal.SIGTERM, interrupt)
    processes = Processes(kill_wait=10.0, close_pipes=True)
    work = Path(tempfile.mkdtemp(prefix="relay-bench-cluster-"))
    results: dict[str, Any] = {"argv": sys.argv, "nproc": os.cpu_count()}
    started = time.monotonic()
    parts = {1: ("commands", part_commands), 2: ("failover", part_failover),
             3: ("first_frame", part_first_frame)}
    command = "$ .venv/bin/python " + " ".join(
        [re.sub(r"^.*?bench/", "bench/", sys.argv[0]), *sys.argv[1:]])
    try:
        for number in args.only:
            name, run = parts[number]
            try:
                results[name] = run(args, processes, work)
            finally:
                processes.stop_all()  # (connections go before a part's database does)
        print(f"bench finished in {time.monotonic() - started:.0f} s", flush=True)
        return 0 if all(part.get("ok", True) for part in results.values()
                        if isinstance(part, dict)) else 1
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        for log in sorted([*work.glob("*.log"), *work.glob("*.stderr")]):
            tail = log.read_text(errors="replace")[-1500:]
            if tail.strip():
                print(f"--- {log.name} (tail)\n{tail}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish on a second Ctrl-C
        processes.stop_all()
        if args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(command + "\n\n" + "\n\n".join(
                part["table"] for part in results.values()
                if isinstance(part, dict) and "table" in part) + "\n")


if __name__ == "__main__":
    sys.exit(main())
