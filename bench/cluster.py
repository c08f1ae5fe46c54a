"""Benchmark a cluster of relay nodes (issue 11, "Done when"): what crossing nodes costs.

    .venv/bin/python bench/cluster.py [--only 1,2,3] [--rounds 5] [--duration 5] [--callers 16]
                                      [--agents 1000] [--ff-runs 8] [--keep]
    .venv/bin/python bench/cluster.py --only 4 [--fanout-rounds 3] [--fanout-viewers 10,20,40,...]
                                      [--fanout-window 10] [--loss 1] [--cpu-a 0] [--cpu-b 1]
                                      [--cpu-clients 0,1]

Every part starts its own cluster: a fresh PostgreSQL database (made on ``--postgres``'s server,
dropped afterwards), a redis-server of this bench's own on a free port (never the machine's shared
one), and N ``relay serve`` nodes on free 127.0.0.1 ports with ``--database-url``, ``--redis-url``,
``--redis-prefix`` and ``--node-lease`` (tests/cluster_system.py does the same with the RELAY_*
variables). The first node creates the catalogue (its banner names the API credential); the
others start on fresh data dirs. Before each part the bench waits
while another bench runs (common.wait_for_other_benches: ``pgrep -f`` for bench/commands, api,
live, record, cluster or fanout.py not started by this one; another helper may be measuring) and
records the load average. Where two sides are compared they take turns in rounds (the order flipped every
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

Part 4, WebRTC fan-out of one camera, viewers over two nodes vs all on one (goal >= 1.7x viewers
at the same loss). Two nodes with ``--ice-addresses 127.0.0.1 --live-close-after 1``; a real
``relay agent`` linked to node A pushing the busy MP4 (as part 3). Viewers are bench/live.py's
``--role viewers`` processes (``live.ViewersProcess``, ``--client light``: aiortc peers that sign
in like player/live.js, decrypt SRTP and count RTP headers; each process also keeps one
heartbeat-only session), always two of them with N/2 peers each, so the viewers' side costs the
same in both arrangements: (1 node) both on node A, the holder; (2 nodes) one on A, one on B, which
pulls the camera from A over one node-to-node link and fans it out itself. The capacity of an
arrangement is the largest N of the ramp ``--fanout-viewers`` (20, 60, 100, 140, then every 20
to 300, 340, 400) whose loss stays <= ``--loss`` (1 %), below the first N over it (a ramp stops
there; N that did not join within ``--fanout-connect`` s counts as over). Loss is what a viewer
never got: the RTP packets never received (sequence numbers, as bench/live.py counts them) plus
the frames never sent (marker bits short of the frames the RTP timestamps went through: a relay
that falls behind drops whole GOPs before numbering them, which sequence numbers alone would not
show; the viewers process records the highest RTP timestamp for this). Frames received short of
25 fps on the wall clock (stalls: late, not lost) are reported as "late %", not in the loss.
At each N: join (N/2 per process, in parallel), wait until the nodes count the sessions,
``--fanout-settle`` s, then ``--fanout-window`` s measured: the loss and each process's CPU
(``/proc/PID/stat``). Each step checks that the agent pushes once, to A (``relay_live_pushes``
A 1, B 0; at most one "push started" in the agent's log per ramp: one, unless the last ramp's
push was still running) and that B pulls over one link (A's ``relay_live_viewers`` less the
sessions on A: 1); a step that fails a check, or whose viewers are refused, counts as over.
``--fanout-rounds`` (3) rounds, each ramping both arrangements, the order flipped every round;
the capacity is the median of the rounds', the ratio 2 nodes / 1 node.

Pinning (taskset, ``--cpu-a/--cpu-b/--cpu-clients``): node A on CPU 0 in both arrangements, node B
on CPU 1 (idle in the 1-node arrangement), the agent and the viewers processes on both CPUs: the
viewers cost about what the relay does per viewer, so there is no core where they would not
disturb a node; unpinned, the scheduler puts them where there is room (CPU 1 when A is busy), so
the 1-node arrangement is not starved by them more than the 2-node one. On two machines node B
would add a core; here the two arrangements share the same two cores with the viewers, so the
ratio measures whether a second node (a second core for the relay) helps when the clients take
what is left, not what two machines would do.

Part 4 takes 10-15 minutes; ``--only`` defaults to 1,2,3 (about 3.5 minutes), ``--only 4`` runs
it. Run the bench directly, not under ``timeout``: common's wait for another bench would take the
wrapper (a process naming bench/cluster.py that is not this one's child) for another bench. Two
benches that both wait before measuring wait for each other (up to common's limit, 30 min).

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
    CLOCK_TICKS,
    POSTGRES_ADMIN,
    Processes,
    cpu_seconds,
    cpu_ticks,
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


def node_play_url(group: Cluster, camera_id: int, node: Node) -> str:
    """A fresh play URL of the camera (asked of the holder, node A) pointed at ``node``."""
    holder = group.nodes[0]
    url = group.api(holder, "play_camera", camera_id=camera_id, width=640, height=360)["play_url"]
    if not url.startswith(holder.base):
        raise RuntimeError(f"play_url {url.split('?')[0]} is not on the holder {holder.base}")
    return node.base + url[len(holder.base):]


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
        return node_play_url(group, camera_id, node)

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


LIVE_FLAGS = ["--ice-addresses", "127.0.0.1", "--live-close-after", "1"]


def busy_video(directory: Path) -> Path:
    """bench/live.py's busy MP4: 640x360, 25 fps, 10 s, a band of noise (~1 Mbit/s)."""
    from relay.agent.demo_video import make_demo_video

    directory.mkdir()
    return make_demo_video(directory / "busy.mp4", 640, 360, 25, 10, noise_rows=24)


def start_camera_agent(group: Cluster, data: Path, video: Path
                       ) -> tuple[subprocess.Popen[Any], int, Path]:
    """A real ``relay agent`` linked to node A (the first node) with one camera playing
    ``video``, online: the agent process, the camera's id and the agent's log."""
    holder = group.nodes[0]
    key = group.agent_key(1)
    data.mkdir()
    agent_log = data.with_suffix(".log")
    with agent_log.open("wb") as log:
        agent = group.processes.start(
            [sys.executable, "-m", "relay", "agent", "--server", holder.base, "--data",
             str(data)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
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
    return agent, camera_id, agent_log


def part_first_frame(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    state = before_part("part 3: first decoded frame, viewer on a non-holder node vs the holder")
    video = busy_video(work / "media-p3")
    with cluster(args, processes, work, "p3", 2, LIVE_FLAGS) as group:
        agent, camera_id, _ = start_camera_agent(group, work / "p3-agent", video)
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


# --------------------------------------------------------------------------- part 4

FANOUT_GOAL = 1.7
FANOUT_RAMP = "20,60,100,140,160,180,200,220,240,260,280,300,340,400"
ONE, TWO = "1 node", "2 nodes"


def pin(pid: int, cpus: str) -> None:
    """Every thread of ``pid`` onto ``cpus`` (taskset's list form); threads it makes later
    inherit that."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=10)


@dataclass
class Watched:
    """What bench/live.py's ``ViewersProcess`` needs of a live system (``base``, ``camera_id``,
    ``play_url()``), for one node of the cluster: its viewers sign in and play on that node."""

    group: Cluster
    node: Node
    camera_id: int

    @property
    def base(self) -> str:
        return self.node.base

    def play_url(self) -> str:
        return node_play_url(self.group, self.camera_id, self.node)


@dataclass
class Step:
    """One measured N of one arrangement in one round."""

    arrangement: str
    round_no: int
    n: int
    loss_pct: float  # packet_loss_pct + dropped_pct; 100 when the step failed
    packet_loss_pct: float  # packets numbered that the viewers never received
    dropped_pct: float  # frames never sent: short of what the RTP timestamps span
    late_pct: float  # frames received short of the video's rate on the wall clock (stalls)
    loss_by_process: list[float]  # loss_pct of each viewers process's peers
    fps_min: float  # the worst viewer's frames a second
    cpu: dict[str, float]  # % of one core: A, B, viewers, agent; machine: % of all cores
    connect_s: float
    load: str
    failed: str = ""


def ask_all(viewers: list[Any], commands_: list[str], timeout: float = 300) -> list[dict[str, Any]]:
    """One command to each viewers process at once (they work in parallel), then their answers."""
    for viewer, command in zip(viewers, commands_, strict=True):
        viewer.child.stdin.write(command + "\n")
        viewer.child.stdin.flush()
    return [viewer.call_answer(None, timeout) for viewer in viewers]


def counts_at(viewers: list[Any]) -> tuple[float, list[list[list[int]]]]:
    """Every peer's counters, per viewers process, and when (the middle of the asking)."""
    asked = time.monotonic()
    answers = ask_all(viewers, ["counts"] * len(viewers), 60)
    at = (asked + time.monotonic()) / 2
    if lost := sum(answer["lost"] for answer in answers):
        raise RuntimeError(f"{lost} viewer session(s) lost (heartbeat answered 404)")
    return at, [answer["counts"] for answer in answers]


def window_loss(deltas: list[list[int]], before: list[list[int]], elapsed: float, fps: float
                ) -> tuple[float, float, float, list[float]]:
    """(packet loss %, frames dropped %, frames late %, each peer's fps) of some peers' counter
    deltas (bench/live.py's fields: jitter-buffer frames and bytes, packets, bytes, marker bits,
    highest sequence number, not new, other streams' packets, highest RTP timestamp). Sequence
    numbers and timestamps only of peers that had their first packet before the window."""
    counted = [d for d, row in zip(deltas, before, strict=True) if row[2] > 0]
    numbered = sum(d[5] for d in counted)
    packet_loss = max(numbered - sum(d[2] - d[6] for d in counted), 0) / max(numbered, 1) * 100
    spanned = sum(d[8] for d in counted) / 90000 * fps  # frames the timestamps went through
    dropped = max(0.0, 1 - sum(d[4] for d in counted) / spanned) * 100 if spanned else 100.0
    if len(counted) < len(deltas):  # a peer that got nothing yet: all of it lost
        packet_loss = max(packet_loss, 100.0 * (len(deltas) - len(counted)) / len(deltas))
    rates = [d[4] / elapsed for d in deltas]
    late = max(0.0, 1 - sum(rates) / (len(rates) * fps)) * 100 if rates else 100.0
    return packet_loss, dropped, late, rates


def fanout_window(viewers: list[Any], pids: dict[str, list[int]], window: float, fps: float,
                  ) -> tuple[tuple[float, float, float, list[float]], list[float], dict[str, float]]:
    """Loss over ``window`` s (of all peers, and each process's loss %) and CPU."""
    import live

    before_at, before = counts_at(viewers)
    ticks = {name: sum(cpu_ticks(pid) for pid in group) for name, group in pids.items()}
    busy, total = live.machine_ticks()
    started = time.monotonic()
    time.sleep(window)
    spent = time.monotonic() - started
    cpu = {name: (sum(cpu_ticks(pid) for pid in group) - ticks[name]) / CLOCK_TICKS / spent * 100
           for name, group in pids.items()}
    busy1, total1 = live.machine_ticks()
    cpu["machine"] = (busy1 - busy) / max(total1 - total, 1) * 100
    after_at, after = counts_at(viewers)
    elapsed = after_at - before_at
    deltas = [[[a - b for a, b in zip(row_after, row_before, strict=True)]
               for row_after, row_before in zip(rows_after, rows_before, strict=True)]
              for rows_after, rows_before in zip(after, before, strict=True)]
    each = [window_loss(d, b, elapsed, fps) for d, b in zip(deltas, before, strict=True)]
    whole = window_loss([row for d in deltas for row in d], [row for b in before for row in b],
                        elapsed, fps)
    return whole, [packets + dropped for packets, dropped, _, _ in each], cpu


def agent_pushes(agent_log: Path, camera_id: int) -> int:
    """Pushes of the camera the agent has started so far (its log's info lines)."""
    return len(re.findall(rf"camera {camera_id}: push \S+ started",
                          agent_log.read_text(errors="replace")))


def fanout_ramp(args: argparse.Namespace, group: Cluster, camera_id: int, agent: Any,
                agent_log: Path, arrangement: str, round_no: int, fps: float,
                checks: list[str]) -> list[Step]:
    """One arrangement's ramp of N in one round: two viewers processes (N/2 peers each), both on
    node A (1 node) or one on A and one on B (2 nodes); up to the first N over ``--loss``."""
    import live

    holder, other = group.nodes
    bases = [node.base for node in group.nodes]
    try:
        wait_idle(bases, 60)
    except TimeoutError:  # (after an overload: measured anyway, each step's checks still apply)
        print(f"  round {round_no} {arrangement}: not idle after 60 s: pushes "
              f"{[metric(b, 'relay_live_pushes') for b in bases]}, viewers "
              f"{[metric(b, 'relay_live_viewers') for b in bases]}; starting anyway", flush=True)
    try:  # (after an overload the holder may still be claiming its links again)
        wait_until(lambda: group.api(holder, "get_camera_status",
                                     camera_id=camera_id)["status"] == 1,
                   60, "camera online", interval=0.5)
    except TimeoutError:
        print(f"  round {round_no} {arrangement}: the camera not online after 60 s; starting "
              f"anyway", flush=True)
    pushes_before = agent_pushes(agent_log, camera_id)
    places = [holder, holder if arrangement == ONE else other]
    viewers = []
    steps: list[Step] = []
    try:
        try:
            for index, node in enumerate(places):
                viewers.append(live.ViewersProcess(
                    group.processes, Watched(group, node, camera_id),
                    group.work / f"p4-viewers-r{round_no}-{arrangement[0]}-{index}.log", "light"))
                pin(viewers[-1].child.pid, args.cpu_clients)
        except (RuntimeError, TimeoutError) as exc:  # its first session refused: over at once
            log = group.work / f"p4-viewers-r{round_no}-{arrangement[0]}-{len(viewers)}.log"
            reason = log.read_text(errors="replace").strip().splitlines()[-1:] or [str(exc)]
            step = Step(arrangement, round_no, args.fanout_viewers[0], 100.0, math.nan, math.nan,
                        math.nan, [], math.nan, {}, 0.0, load(),
                        failed=f"a viewers process did not start: {reason[0][:200]}")
            print(f"  round {round_no} {arrangement:7}: failed: {step.failed}", flush=True)
            return [step]
        pids = {"A": [holder.child.pid], "B": [other.child.pid],
                "viewers": [viewer.child.pid for viewer in viewers], "agent": [agent.pid]}
        for n in args.fanout_viewers:
            split = [n // 2, n - n // 2]
            on_a = split[0] + (split[1] if arrangement == ONE else 0)
            # each viewers process also keeps a heartbeat-only session; B's pull is one on A
            expected = ([on_a + 2, 0] if arrangement == ONE else [on_a + 2, split[1] + 1])
            load_now = load()
            started = time.monotonic()
            try:
                ask_all(viewers, [f"set {count}" for count in split], args.fanout_connect)
                connect_s = time.monotonic() - started
                wait_until(lambda expected=expected: [int(metric(b, "relay_live_viewers"))
                                                      for b in bases] == expected,
                           30, f"viewer sessions per node {expected}", interval=0.2)
                time.sleep(args.fanout_settle)
                pushes = [int(metric(base, "relay_live_pushes")) for base in bases]
                seen = [int(metric(base, "relay_live_viewers")) for base in bases]
                links = seen[0] - (on_a + (2 if arrangement == ONE else 1))
                agent_started = agent_pushes(agent_log, camera_id) - pushes_before
                check = (f"{arrangement} N={n}: pushes per node {pushes}, node links into A "
                         f"{links}, pushes the agent started {agent_started}")
                want_links = 0 if arrangement == ONE else 1
                if pushes != [1, 0] or links != want_links or agent_started > 1:
                    raise RuntimeError(f"expected pushes [1, 0], {want_links} node link(s), at "
                                       f"most one push started: {check}")
                checks.append(check)
                (packet_loss, dropped, late, rates), each, cpu = fanout_window(
                    viewers, pids, args.fanout_window, fps)
                step = Step(arrangement, round_no, n, packet_loss + dropped, packet_loss, dropped,
                            late, each, min(rates, default=0.0), cpu, connect_s, load_now)
            except (RuntimeError, TimeoutError) as exc:
                step = Step(arrangement, round_no, n, 100.0, math.nan, math.nan, math.nan, [],
                            math.nan, {}, time.monotonic() - started, load_now,
                            failed=str(exc)[:200])
            steps.append(step)
            if step.failed:
                print(f"  round {round_no} {arrangement:7} N={n:3}: failed: {step.failed}",
                      flush=True)
                break
            print(f"  round {round_no} {arrangement:7} N={n:3} ({split[0]}+{split[1]}, joined in "
                  f"{step.connect_s:4.1f} s): loss {step.loss_pct:5.2f} % (packets "
                  f"{step.packet_loss_pct:.2f} + frames dropped {step.dropped_pct:.2f}; per "
                  f"process {'/'.join(f'{v:.2f}' for v in step.loss_by_process)}; late "
                  f"{step.late_pct:.2f}, worst viewer {step.fps_min:.1f} fps); CPU % of a core: "
                  f"A {step.cpu['A']:5.1f}, B "
                  f"{step.cpu['B']:5.1f}, viewers {step.cpu['viewers']:5.1f}, agent "
                  f"{step.cpu['agent']:4.1f}, machine {step.cpu['machine']:3.0f} % of 2; load "
                  f"{load_now}", flush=True)
            if step.loss_pct > args.loss:
                break
    finally:
        for viewer in viewers:
            viewer.close()
    return steps


def fanout_capacity(steps: list[Step], arrangement: str, round_no: int, counts: list[int],
                    threshold: float, strict: bool = False) -> tuple[int, bool]:
    """The largest N of one ramp at or under the threshold (``strict``: late % too), below the
    first N over it; and whether the ramp went over at all (False: the capacity is at least the
    top of the ramp)."""
    capacity = 0
    for n in counts:
        step = next((s for s in steps if (s.arrangement, s.round_no, s.n) ==
                     (arrangement, round_no, n)), None)
        if step is None or step.loss_pct > threshold or (strict and step.late_pct > threshold):
            return capacity, True
        capacity = n
    return capacity, False


def part_fanout(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    import live

    state = before_part("part 4: WebRTC fan-out of one camera, viewers over 2 nodes vs all on 1")
    video = busy_video(work / "media-p4")
    info = live.video_info(video)
    counts = args.fanout_viewers
    steps: list[Step] = []
    checks: list[str] = []
    loads = []
    with cluster(args, processes, work, "p4", 2, LIVE_FLAGS) as group:
        holder, other = group.nodes
        pin(holder.child.pid, args.cpu_a)
        pin(other.child.pid, args.cpu_b)
        agent, camera_id, agent_log = start_camera_agent(group, work / "p4-agent", video)
        pin(agent.pid, args.cpu_clients)
        print(f"pinned: node A (PID {holder.child.pid}) CPU {args.cpu_a}, node B (PID "
              f"{other.child.pid}) CPU {args.cpu_b}, agent and viewers processes CPU "
              f"{args.cpu_clients}; video {info['kbps']:.0f} kbit/s, {info['fps']:g} fps",
              flush=True)
        for round_no in range(1, args.fanout_rounds + 1):
            loads.append(load())
            order = [ONE, TWO] if round_no % 2 else [TWO, ONE]
            for arrangement in order:
                steps += fanout_ramp(args, group, camera_id, agent, agent_log, arrangement,
                                     round_no, info["fps"], checks)
        with contextlib.suppress(TimeoutError):
            wait_idle([node.base for node in group.nodes], 30)
        problems = group.problems()
        processes.stop(agent)
    rounds = range(1, args.fanout_rounds + 1)
    capacity = {arrangement: [fanout_capacity(steps, arrangement, r, counts, args.loss)
                              for r in rounds] for arrangement in (ONE, TWO)}
    median_cap = {a: statistics.median(c for c, _ in capacity[a]) for a in capacity}
    ratio = median_cap[TWO] / median_cap[ONE] if median_cap[ONE] else math.nan
    met = ratio >= FANOUT_GOAL
    topped = [a for a in capacity if any(not over for _, over in capacity[a])]
    verdict = ("met" if met else "missed") + (
        f" (the ramp's top reached without loss in {', '.join(topped)}: a bound, not a capacity; "
        f"raise --fanout-viewers)" if topped else "")
    lines = [
        f"Two nodes on one PostgreSQL and one Redis of the bench's own (`{' '.join(LIVE_FLAGS)}`); "
        f"a real `relay agent` linked to node A pushing bench/live.py's busy MP4 "
        f"({info['width']}x{info['height']}, {info['fps']:g} fps, {info['kbps']:.0f} kbit/s); "
        f"viewers: two bench/live.py `--role viewers` processes (`--client light`: aiortc peers "
        f"that decrypt SRTP and count RTP headers), N/2 peers each, both on node A (1 node) or "
        f"one on A and one on B (2 nodes: B pulls the camera from A over one node-to-node link). "
        f"Pinned with taskset: node A CPU {args.cpu_a}, node B CPU {args.cpu_b}, the agent and "
        f"the viewers processes CPU {args.cpu_clients} (redis and the rest unpinned). Ramp "
        f"{', '.join(map(str, counts))} viewers, up to the first N whose loss > {args.loss:g} %; "
        f"loss % = RTP packets never received (sequence numbers) + frames never sent (marker "
        f"bits short of the frames the RTP timestamps went through: a relay that falls behind "
        f"drops whole GOPs before numbering them); late % = frames received short of "
        f"{info['fps']:g} fps on the wall clock (stalls, not in the loss); CPU % of one core, "
        f"machine % of both; {args.fanout_settle:g} s to settle, then "
        f"{args.fanout_window:g} s measured. {args.fanout_rounds} rounds, the arrangements "
        f"alternating; nproc {os.cpu_count()}; {state}, at the end {load()}; loads per round "
        f"{loads}; relay code {tree_state()}",
        "",
        f"| N | {ONE}: loss % | late % | A CPU % | viewers CPU % | machine % | {TWO}: loss % "
        f"| late % | A CPU % | B CPU % | viewers CPU % | machine % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cells(arrangement: str, n: int, names: list[str]) -> list[str]:
        picked = [s for s in steps if (s.arrangement, s.n) == (arrangement, n)]
        measured = [s for s in picked if not s.failed]
        if not picked:
            return ["-"] * (len(names) + 2)
        losses = [s.loss_pct for s in picked] + [math.inf] * sum(
            1 for r in rounds if not any(s.round_no == r for s in picked))
        loss = statistics.median(losses)
        text = "over" if math.isinf(loss) else f"{loss:.2f}"
        if len(picked) < len(rounds) or len(measured) < len(picked):
            text += f" ({len(measured)} of {len(rounds)} rounds)"
        late = f"{statistics.median(s.late_pct for s in measured):.2f}" if measured else "-"
        return [text, late] + [f"{statistics.median(s.cpu[name] for s in measured):.0f}"
                               if measured else "-" for name in names]

    for n in counts:
        row = cells(ONE, n, ["A", "viewers", "machine"]) + cells(TWO, n, ["A", "B", "viewers",
                                                                          "machine"])
        if any(cell != "-" for cell in row):
            lines.append(f"| {n} | " + " | ".join(row) + " |")
    per_round = []
    for r in rounds:
        one, two = capacity[ONE][r - 1], capacity[TWO][r - 1]
        per_round.append(f"round {r}: {one[0]}{'' if one[1] else '+'} vs {two[0]}"
                         f"{'' if two[1] else '+'}")
    strict = {arrangement: [fanout_capacity(steps, arrangement, r, counts, args.loss, True)[0]
                            for r in rounds] for arrangement in (ONE, TWO)}
    strict_cap = {a: statistics.median(strict[a]) for a in strict}
    strict_ratio = strict_cap[TWO] / strict_cap[ONE] if strict_cap[ONE] else math.nan
    lines += ["", f"| capacity (median of the rounds') | {ONE} | {TWO} | ratio 2/1 | goal >= "
              f"{FANOUT_GOAL:g}x |", "|---|---:|---:|---:|---|",
              f"| at loss <= {args.loss:g} % | {median_cap[ONE]:g} | {median_cap[TWO]:g} | "
              f"{ratio:.2f} | {verdict} |",
              f"| at loss and late <= {args.loss:g} % (no stall either) | {strict_cap[ONE]:g} | "
              f"{strict_cap[TWO]:g} | {strict_ratio:.2f} | "
              f"{'met' if strict_ratio >= FANOUT_GOAL else 'missed'} |", "",
              "Per round, at loss <= the threshold (1 node vs 2 nodes; + = never over it up to the "
              "top of the ramp): " + "; ".join(per_round) + "; with late too: " + "; ".join(
                  f"round {r}: {strict[ONE][r - 1]} vs {strict[TWO][r - 1]}" for r in rounds)]
    failures = [f"round {s.round_no} {s.arrangement} N={s.n}: {s.failed}" for s in steps if s.failed]
    lines += ["", "Checked at every step (the agent pushes once, to A; B pulls over one link): "
              + ("all as expected: pushes per node [1, 0], node links into A 0 (1 node) / 1 "
                 f"(2 nodes), at most one push started per ramp ({len(checks)} steps)"
                 if checks else "no step got that far")]
    if checks:
        lines.append(f"e.g. {checks[-1]}")
    lines += [f"failed step: {failure}" for failure in failures]
    lines += ["", *problems]
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return {"table": table, "ok": True, "goal_met": met, "ratio": ratio,
            "capacity": capacity, "strict_capacity": strict, "steps": [s.__dict__ for s in steps]}


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="1,2,3", metavar="N[,N]",
                        type=lambda text: sorted({int(v) for v in text.split(",") if v}),
                        help="parts to run, of 1-4 (default 1,2,3: part 4 takes 10-15 minutes)")
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
    parser.add_argument("--fanout-rounds", type=int, default=3,
                        help="part 4 rounds, each ramping both arrangements (default 3)")
    parser.add_argument("--fanout-viewers", default=FANOUT_RAMP,
                        metavar="N[,N]", type=lambda text: sorted({int(v) for v in
                                                                   text.split(",") if v}),
                        help=f"part 4: the ramp of viewers (default {FANOUT_RAMP})")
    parser.add_argument("--fanout-window", type=float, default=10,
                        help="part 4: seconds measured at each N (default 10)")
    parser.add_argument("--fanout-settle", type=float, default=3,
                        help="part 4: seconds after the viewers joined before measuring (default 3)")
    parser.add_argument("--fanout-connect", type=float, default=180,
                        help="part 4: give up on N viewers joining after this many seconds "
                        "(default 180; counted as over the threshold)")
    parser.add_argument("--loss", type=float, default=1.0,
                        help="part 4: the loss %% a capacity allows (default 1)")
    parser.add_argument("--cpu-a", default="0", help="part 4: taskset CPUs of node A (default 0)")
    parser.add_argument("--cpu-b", default="1", help="part 4: taskset CPUs of node B (default 1)")
    parser.add_argument("--cpu-clients", default="0,1",
                        help="part 4: taskset CPUs of the agent and the viewers processes "
                        "(default 0,1: wherever the scheduler finds room)")
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
    if not args.only or set(args.only) - {1, 2, 3, 4}:
        raise SystemExit("bench: --only takes parts 1, 2, 3 and 4")
    if min(args.rounds, args.duration, args.callers, args.agents, args.agent_procs, args.ff_runs,
           args.limit, args.node_lease, args.fanout_rounds, args.fanout_window, args.loss,
           args.fanout_connect, *(args.fanout_viewers or [0])) <= 0 or min(
               args.settle, args.fanout_settle) < 0:
        raise SystemExit("bench: counts, rates and durations must be positive")
    if 1 in args.only and shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (part 1 needs it)")
    if 4 in args.only and shutil.which("taskset") is None:
        raise SystemExit("bench: taskset is not installed (part 4 pins the nodes with it)")
    if shutil.which("redis-server") is None:
        raise SystemExit("bench: redis-server is not installed")
    signal.signal(signal.SIGTERM, interrupt)
    processes = Processes(kill_wait=10.0, close_pipes=True)
    work = Path(tempfile.mkdtemp(prefix="relay-bench-cluster-"))
    results: dict[str, Any] = {"argv": sys.argv, "nproc": os.cpu_count()}
    started = time.monotonic()
    parts = {1: ("commands", part_commands), 2: ("failover", part_failover),
             3: ("first_frame", part_first_frame), 4: ("fanout", part_fanout)}
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
