"""Soak: an hour of viewer churn against a real relay and agent. Does the relay's memory level off?

    .venv/bin/python bench/soak.py [--minutes 60] [--tabs 4] [--hold 10,40] [--kill 0.15]
                                   [--mse 0.33] [--sample 60] [--relay-dir DIR] [--results FILE]

Not run in CI (it takes as long as ``--minutes``). Setup: a temporary dir; the demo MP4
(``make_demo_video``: 640x360, 25 fps, constrained baseline, 10 s, looped by the agent); a real
``relay serve`` on a free 127.0.0.1 port with ``--ice-addresses 127.0.0.1`` and every live timing
at its default (heartbeat 12 s, viewer timeout 30 s, close-after 10 s, reconcile 10 s); an agent key
from ``relay agent-key add``; a real ``relay agent``; one camera (mode 1, the MP4).
``--relay-dir DIR`` runs relay and agent from another tree (a ``git archive`` of an older commit,
say), so the same churn can be measured on old and new code.

Churn: headless Debian Chromium (Playwright, the flags of bench/live.py). Up to ``--tabs`` tabs at
once, each in its own browser context, opened at random moments: each tab loads the camera's
play_url (a share ``--mse`` of them with ``&mode=mse``, the rest WebRTC), waits for the player's
"playing" state (20 s at most), stays for a random ``--hold`` time, then leaves: killed (the
renderer crashed through CDP: no pagehide, no goodbye, the session ends by heartbeat timeout) with
probability ``--kill``, else closed as a user does (pagehide, goodbye).

Every ``--sample`` seconds, from outside the relay: its RSS (``VmRSS``), open fds and threads from
``/proc``; the agent's RSS; and from ``/metrics`` the viewer and push gauges and
``relay_live_objects`` (the viewers, peer connections and feed subscriptions that still exist in
the relay, when it has that gauge). At the end every tab closes and, after viewer
timeout + close-after + a margin, one more "idle" sample is taken. Printed: the table, and the
least-squares slope of RSS (MB/h) over the first and the second half of the churn. Memory that
levels off has a second-half slope near zero; a leak keeps its slope.

Every process this starts is stopped by its PID and the temporary dir removed on the way out,
failures and Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Processes, http_get, interrupt, start_relay_serve, wait_until
from live import CHROMIUM, CHROMIUM_ARGS, api, append_results, loadavg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RELAY_FLAGS = ["--ice-addresses", "127.0.0.1"]
VIEWER_TIMEOUT, CLOSE_AFTER = 30.0, 10.0  # the relay's defaults, which this soak keeps
OBJECT_KINDS = ("viewer", "peer_connection", "subscription")


@dataclass
class Sample:
    seconds: float  # since the churn started
    opened: int
    killed: int
    open_now: int
    viewers: float
    pushes: float
    rss_mb: float
    fds: int
    threads: int
    agent_rss_mb: float
    objects: dict[str, float] = field(default_factory=dict)


@dataclass
class Churn:
    opened: int = 0
    played: int = 0
    closed: int = 0
    killed: int = 0
    failed: int = 0  # tabs that did not reach "playing" within 20 s
    open_now: int = 0


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.split(":", 1) for line in status if ":" in line)


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def metrics(base: str) -> dict[str, float]:
    """Every unlabelled sample and every ``relay_live_objects`` sample from ``/metrics``."""
    text = http_get(base + "/metrics").decode()
    values = {name: float(value) for name, value in re.findall(r"^(\w+) (\S+)$", text, re.M)}
    for kind, value in re.findall(r'^relay_live_objects\{kind="(\w+)"\} (\S+)$', text, re.M):
        values[f"objects.{kind}"] = float(value)
    return values


def sample(relay_pid: int, agent_pid: int, base: str, churn: Churn, started: float) -> Sample:
    status = proc_status(relay_pid)
    values = metrics(base)
    return Sample(
        time.monotonic() - started, churn.opened, churn.killed, churn.open_now,
        values.get("relay_live_viewers", 0.0), values.get("relay_live_pushes", 0.0),
        int(status["VmRSS"].split()[0]) / 1024, len(os.listdir(f"/proc/{relay_pid}/fd")),
        int(status["Threads"]), rss_mb(agent_pid),
        {kind: values[f"objects.{kind}"] for kind in OBJECT_KINDS if f"objects.{kind}" in values},
    )


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour (0 with fewer than 2 points)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if not spread:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread * 3600


def halves(samples: list[Sample], value: str) -> tuple[float, float]:
    """The slope (per hour) of ``value`` over the first and over the second half of the churn."""
    end = samples[-1].seconds
    first = [(s.seconds, getattr(s, value)) for s in samples if s.seconds <= end / 2]
    second = [(s.seconds, getattr(s, value)) for s in samples if s.seconds >= end / 2]
    return slope(first), slope(second)


def table(samples: list[Sample], idle: Sample | None) -> list[str]:
    rows = ["| minute | tabs opened | killed | open | viewers | pushes | relay RSS MB | fds | "
            "threads | agent RSS MB | live objects (viewers/pcs/subs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in [*samples, *([idle] if idle else [])]:
        objects = "/".join(f"{s.objects[k]:g}" for k in OBJECT_KINDS) if s.objects else "-"
        label = "idle" if s is idle else f"{s.seconds / 60:.1f}"
        rows.append(f"| {label} | {s.opened} | {s.killed} | {s.open_now} | {s.viewers:g} | "
                    f"{s.pushes:g} | {s.rss_mb:.1f} | {s.fds} | {s.threads} | {s.agent_rss_mb:.1f} | "
                    f"{objects} |")
    return rows


# --------------------------------------------------------------------------- the churn


async def kill_tab(context: Any, page: Any) -> None:
    """Crash the renderer (no pagehide, no goodbye), then drop the context."""
    with contextlib.suppress(Exception):
        cdp = await context.new_cdp_session(page)
        with contextlib.suppress(Exception):  # the crash also ends the session that sent it
            await asyncio.wait_for(cdp.send("Page.crash"), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(context.close(), 10)


async def close_tab(context: Any, page: Any) -> None:
    """As a user closes a tab: the document unloads (pagehide says goodbye), then it goes."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(page.goto("about:blank"), 15)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(context.close(), 10)


async def one_tab(browser: Any, url: str, hold: float, kill: bool, churn: Churn) -> None:
    context = await browser.new_context()
    churn.opened += 1
    churn.open_now += 1
    try:
        page = await context.new_page()
        await page.goto(url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the page may still be loading
                if await page.evaluate("document.getElementById('status').dataset.state") == "playing":
                    churn.played += 1
                    break
            await asyncio.sleep(0.25)
        else:
            churn.failed += 1
        await asyncio.sleep(hold)
        if kill:
            churn.killed += 1
            await kill_tab(context, page)
        else:
            churn.closed += 1
            await close_tab(context, page)
    finally:
        churn.open_now -= 1
        with contextlib.suppress(Exception):
            await context.close()


async def churn_for(args: argparse.Namespace, base: str, token: str, camera_id: int,
                    relay_pid: int, agent_pid: int) -> tuple[list[Sample], Sample, Churn]:
    from playwright.async_api import async_playwright

    rng = random.Random(args.seed)
    low, high = (float(v) for v in args.hold.split(","))
    churn = Churn()
    samples: list[Sample] = []
    tabs: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    end = started + args.minutes * 60

    def take() -> Sample:
        taken = sample(relay_pid, agent_pid, base, churn, started)
        objects = "/".join(f"{taken.objects[k]:g}" for k in OBJECT_KINDS) if taken.objects else "-"
        print(f"  {taken.seconds / 60:5.1f} min: {churn.opened} opened ({churn.played} played, "
              f"{churn.failed} did not, {churn.killed} killed), {churn.open_now} open, viewers "
              f"{taken.viewers:g}, relay RSS {taken.rss_mb:.1f} MB, fds {taken.fds}, threads "
              f"{taken.threads}, agent RSS {taken.agent_rss_mb:.1f} MB, objects {objects}, "
              f"load {loadavg()}", flush=True)
        return taken

    def finished(task: asyncio.Task[None]) -> None:
        tabs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            print(f"  a tab failed: {task.exception()!r}", flush=True)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            samples.append(await asyncio.to_thread(take))
            next_sample = started + args.sample
            while time.monotonic() < end:
                if len(tabs) < args.tabs:
                    url = await asyncio.to_thread(
                        lambda: api(base, "play_camera", token=token, camera_id=camera_id,
                                    width=320, height=180)["play_url"])
                    if rng.random() < args.mse:
                        url += "&mode=mse"
                    task = asyncio.create_task(one_tab(browser, url, rng.uniform(low, high),
                                                       rng.random() < args.kill, churn))
                    tabs.add(task)
                    task.add_done_callback(finished)
                await asyncio.sleep(rng.uniform(0.5, 5))
                if time.monotonic() >= next_sample:
                    samples.append(await asyncio.to_thread(take))
                    next_sample += args.sample
            await asyncio.gather(*tabs, return_exceptions=True)
        finally:
            await browser.close()
        samples.append(await asyncio.to_thread(take))
    print(f"  every tab closed; waiting {VIEWER_TIMEOUT + CLOSE_AFTER + 15:g} s for the relay to be "
          "idle", flush=True)
    await asyncio.sleep(VIEWER_TIMEOUT + CLOSE_AFTER + 15)
    idle = sample(relay_pid, agent_pid, base, churn, started)
    return samples, idle, churn


# --------------------------------------------------------------------------- main


def start(procs: Processes, tmp: Path, tree: Path) -> tuple[str, str, int, subprocess.Popen[bytes],
                                                             subprocess.Popen[bytes]]:
    from relay.agent.demo_video import make_demo_video

    video = make_demo_video(tmp / "demo.mp4", seconds=10)
    data = tmp / "data"
    served = start_relay_serve(procs, data, tmp / "relay.log", RELAY_FLAGS, cwd=tree)
    key = subprocess.run([sys.executable, "-m", "relay", "agent-key", "add", "soak", "--data",
                          str(data)], capture_output=True, text=True, timeout=60, check=True,
                         stdin=subprocess.DEVNULL, cwd=tree).stdout.strip()
    (tmp / "agent").mkdir()
    with open(tmp / "agent.log", "wb") as log:
        agent = procs.start([sys.executable, "-m", "relay", "agent", "--server", served.base,
                             "--data", str(tmp / "agent")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, env={**os.environ, "RELAY_AGENT_KEY": key},
                            cwd=tree)
    base, token = served.base, served.token
    gatherers = wait_until(lambda: api(base, "list_gather", token=token)["data"], 30,
                           "agent registers", interval=0.2)
    camera_id = api(base, "add_camera", token=token, camera_name="soak", stream_prop=1,
                    gather_id=gatherers[0]["gather_id"], stream_mp4=str(video))["camera_id"]
    wait_until(lambda: api(base, "get_camera_status", token=token, camera_id=camera_id)["status"] == 1,
               30, "camera online", interval=0.2)
    return base, token, camera_id, served.child, agent


def report(args: argparse.Namespace, command: str, tree: Path, samples: list[Sample], idle: Sample,
           churn: Churn, started: str) -> str:
    rss_first, rss_second = halves(samples, "rss_mb")
    agent_first, agent_second = halves(samples, "agent_rss_mb")
    fds_first, fds_second = halves(samples, "fds")
    lines = [
        f"## Soak: viewer churn for {args.minutes:g} minutes ({started})", "",
        f"Command: `{command}`" + ("" if tree == ROOT else f" (relay and agent from `{tree}`)"), "",
        f"Machine: {os.cpu_count()} cores shared with other work, load {loadavg()} at the end. "
        f"Churn: {churn.opened} tabs opened ({churn.played} reached playing, {churn.failed} did not), "
        f"{churn.closed} closed, {churn.killed} killed; up to {args.tabs} at once, each held "
        f"{args.hold.replace(',', '-')} s, {args.mse:.0%} MSE.", "",
        *table(samples, idle), "",
        "| fitted slope | first half | second half |", "|---|---|---|",
        f"| relay RSS | {rss_first:+.1f} MB/h | {rss_second:+.1f} MB/h |",
        f"| agent RSS | {agent_first:+.1f} MB/h | {agent_second:+.1f} MB/h |",
        f"| relay fds | {fds_first:+.1f} /h | {fds_second:+.1f} /h |", "",
        f"Relay RSS {samples[0].rss_mb:.1f} MB at the start, {max(s.rss_mb for s in samples):.1f} MB "
        f"at most, {idle.rss_mb:.1f} MB idle after the churn.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="churn time (default 60)")
    parser.add_argument("--tabs", type=int, default=4, help="tabs open at most at once (default 4)")
    parser.add_argument("--hold", default="10,40", help="a tab's stay, min,max s (default 10,40)")
    parser.add_argument("--kill", type=float, default=0.15, help="share of tabs killed (default 0.15)")
    parser.add_argument("--mse", type=float, default=0.33, help="share of MSE tabs (default 0.33)")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1, help="the churn's random seed (default 1)")
    parser.add_argument("--relay-dir", default=str(ROOT), help="the tree relay and agent run from")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                        help="Markdown file to append the section to ('' to not write)")
    args = parser.parse_args()
    command = "python bench/soak.py " + " ".join(sys.argv[1:])
    tree = Path(args.relay_dir).resolve()
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"bench/soak.py: {args.minutes:g} min of churn, relay from {tree}; load {loadavg()}",
          flush=True)
    procs = Processes(grace=15.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    previous = signal.signal(signal.SIGTERM, interrupt)
    code = 1
    try:
        base, token, camera_id, relay, agent = start(procs, tmp, tree)
        print(f"relay PID {relay.pid}, agent PID {agent.pid}", flush=True)
        samples, idle, churn = asyncio.run(churn_for(args, base, token, camera_id, relay.pid,
                                                     agent.pid))
        section = report(args, command, tree, samples, idle, churn, started)
        print(section, flush=True)
        if args.results:
            append_results(Path(args.results), section)
            print(f"appended to {args.results}")
        code = 0
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
    except Exception:
        traceback.print_exc()
        for log in sorted(tmp.glob("*.log")):
            print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-3000:]}",
                  file=sys.stderr)
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
