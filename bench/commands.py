"""Benchmark agent commands through the relay, many agents on one relay node, and a restart storm.

    .venv/bin/python bench/commands.py [--rounds 3] [--duration 8] [--agents 10000] [--skip-agents]
    .venv/bin/python bench/commands.py --only storm --storm 1000,5000,10000   # part 3 alone
    .venv/bin/python bench/commands.py --only commands --backends sqlite,postgresql  # part 1, both

With the defaults it takes about 5 minutes (2 cores) for parts 1 and 2, and part 3 (one storm of
10,000 agents) up to 10 more. ``--profile DIR`` adds py-spy profiles of the relay; ``--relay-dir
COPY`` runs ``relay serve`` from another copy of the project (an A/B of relay code with the same
bench); ``--keep`` keeps the data dirs and logs; ``--only PART`` or ``--skip-PART`` chooses parts.
Parts 1 and 2 need wrk. ``--backends sqlite,postgresql`` runs part 1 once per catalogue backend,
each against its own echo baseline: PostgreSQL in a fresh database made on ``--postgres``'s server
for the run and dropped after it.

Part 1, command round trip. A real ``relay serve`` (fresh data dir), one simulated agent (a minimal
aiohttp WebSocket client in its own process, this script with ``--role agent``) and one camera on
its gatherer; wrk calls ``GET /api/v1/start_camera`` (whose answer carries the agent's reply as
``transmit``) with 1 and with ``--callers`` (200) concurrent connections. The baseline is a bare
aiohttp server (``--role echo``) whose GET handler sends the same command as a JSON message over a
WebSocket to the same simulated agent code, waits for its reply and answers it as JSON: the same
shape of work (HTTP in, WS message out, WS reply in, HTTP answer out) without the relay's API,
catalogue and hub. The relay is timed twice: ``start_camera`` on a started camera (the desired
state already says so, so nothing is written), and ``stop_camera``/``start_camera`` alternating
(every call changes the desired state: a catalogue write each). Echo and the two relay targets
take turns for ``--rounds`` rounds; the tables are medians.
The servers answer HTTP 200 even when the agent did not answer, so each run also counts the agent
replies the server got (the relay's ``relay_command_seconds_count``, the echo's ``/stats``): a run
whose requests outnumber them shows "unanswered". Then, in this process, the pieces of a
start_camera call are timed on the relay's own code (token check, catalogue, hub.send).

Part 2, many agents. A second fresh ``relay serve`` (open-files limit raised first, so it inherits
it); ``--agent-procs`` client processes connect ``--agents`` simulated agents in all (a unique
``mac_addr`` each), at most ``--connect-rate`` a second and ``--inflight`` handshakes at once per
process, in stages (1,000, 5,000, all). At each stage the count is read from the relay's
``/metrics`` (``relay_agents_connected``) and its memory from ``/proc/PID/status`` (VmRSS). With
all connected, a camera is added to one agent's gatherer and ``start_camera`` timed with wrk; the
links are then held for ``--hold`` seconds (longer than the relay's 20 s heartbeat, so every agent
must have answered a ping) and counted again.

Part 3, restart storm (``--storm N[,N...]``, one run per size). A fresh ``relay serve`` and N
simulated agents (the part 2 client processes with ``--reconnect``) that behave like the reference
agent (``relay/agent/agent.py``, ``Agent.run``): a hello with their own MAC, answers to commands
and pings, WebSocket pings every 20 s; after every connection, delay = min(30, 0.5 * 2**failures)
* uniform(0.5, 1.0), failures reset to 0 by a welcome; no welcome within 20 s of the hello closes
the link and counts a failure (a "welcome timeout"); an upgrade refused with 503 waits its
``Retry-After`` (read as the agent reads it) * uniform(0.9, 1.1) and is not a failure. First
connect: all N released at once on the fresh relay. Restart: once all are connected (and
``--storm-hold`` s more), the relay is SIGKILLed and started again on the same port and data dir.
Each is timed until every agent has had a welcome since it began and ``/metrics`` counts all N
(first connect from the release, restart from the new relay's first /healthz answer), or
``--storm-limit`` s ("not all back"): when 50/90/99/100 % had their welcome (the clients' clock),
the relay's CPU meanwhile (and per welcome: the cost of a registration), the clients' counts
(welcome timeouts, links closed before the welcome, connect errors, connections refused while
nothing listened, 503s, retries, dropped links) and the tracebacks, ERROR and WARNING lines in the
relay's log. Each run records the relay code's commit, ``git status --short relay/`` and the load
average. The goal (issue 8, finding 14): 10,000 back within 30 s of a restart, 0 tracebacks.

Every process this starts is stopped by its PID, and the temporary dir removed, on the way out,
failures and Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from common import (
    POSTGRES_ADMIN,
    Processes,
    cpu_seconds,
    free_port,
    fresh_postgres,
    http_get,
    http_json,
    interrupt,
    restart_relay_serve,
    start_relay_serve,
    wait_for_http,
    wait_until,
    wrk,
)
from common import Run as WrkRun

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SCRIPT = str(Path(__file__).resolve())
MAX_MESSAGE = 256 * 1024
PROTOCOL = 1
#: The reference agent's timings (relay/agent/agent.py, relay/link/protocol.py), which the part 3
#: agents copy: backoff cap, WebSocket ping interval, and how long it waits for the welcome
#: (HELLO_TIMEOUT * 2) before it closes and counts a failure.
MAX_BACKOFF = 30.0
HEARTBEAT = 20.0
WELCOME_TIMEOUT = 20.0
#: Gatherers the bench's one agent key may register (keys are limited to 1 unless told; a second
#: agent on a key is refused with close code 4004). The catalogue's maximum.
GATHERERS = 100_000


# --------------------------------------------------------------------------- processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE (soft, and hard when we may) to at least ``wanted``; children inherit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft, hard
    if hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, ceiling), min(wanted, ceiling)))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------- simulated agents


def mac_of(proc: int, index: int) -> str:
    """A unique locally administered MAC per (process, agent): 02:pp:ii:ii:ii:ii."""
    return "02:" + ":".join(f"{byte:02x}" for byte in (proc, *index.to_bytes(4, "big")))


def reply_to(command: dict[str, Any]) -> dict[str, Any]:
    """What the simulated agent answers: success at once, with the reference agent's data shape."""
    data = command.get("data") or {}
    action = command.get("action")
    if action in ("camera.start", "camera.stop"):
        body = {"camera_id": data.get("camera_id"), "started": int(action == "camera.start")}
    elif action in ("camera.add", "camera.mod"):
        body = {"camera_id": data.get("camera_id"), "started": data.get("started", 0)}
    else:
        body = {}
    return {"type": "reply", "id": command.get("id"), "err_code": 0, "err_msg": "OK", "data": body}


def retry_after(headers: Any) -> float:
    """A 503's ``Retry-After`` in seconds, read as the reference agent reads it: 1 to
    ``MAX_BACKOFF``, 5 when it is missing or not a number (an HTTP-date)."""
    try:
        return min(MAX_BACKOFF, max(1.0, float((headers or {}).get("Retry-After", "5"))))
    except ValueError:
        return 5.0


def backoff(failures: int) -> float:
    """The reference agent's delay before its next connect (``Agent.run``)."""
    return min(MAX_BACKOFF, 0.5 * 2 ** failures) * random.uniform(0.5, 1.0)


async def agents_role(args: argparse.Namespace) -> None:
    """``--role agent``: up to ``--count`` agents; stdin ``target N`` lets N of them connect.

    Without ``--reconnect`` (part 2) an agent tries ``--attempts`` times, paced by ``--rate`` and
    ``--inflight``, and stays down once its link ends. With it (part 3) an agent behaves like the
    reference agent: all start at once, and every ended link or failed connect is followed by the
    reference backoff and a new connect, for as long as the process runs (see :func:`reconnecting`).

    Prints one JSON line of progress every half second (and each gather_id the first agent learns);
    stdin ``mark`` starts a new record of each agent's first welcome from then on (the progress
    lines carry the times, in this host's monotonic clock, under ``back``)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    control = {"target": args.target, "stop": False}
    changed = asyncio.Event()
    stats = {"connected": 0, "attempted": 0, "failed": 0, "dropped": 0, "commands": 0,
             "retries": 0, "welcomed": 0, "timeouts": 0, "refused": 0, "connect_errors": 0,
             "busy": 0, "busy_seconds": 0.0, "unwelcomed": 0}
    last_error = [""]
    sockets: set[aiohttp.ClientWebSocketResponse] = set()
    gate = asyncio.Semaphore(args.inflight)
    been_back: set[int] = set()
    back: list[float] = []

    def emit(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    async def read_control() -> None:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            words = line.decode().split()
            if words[:1] == ["target"]:
                control["target"] = int(words[1])
                changed.set()
            elif words[:1] == ["mark"]:
                been_back.clear()
                back.clear()
            elif words[:1] == ["quit"]:
                break
        control["stop"] = True
        changed.set()

    headers = {"Authorization": f"Bearer {args.key}"}
    #: ``--url A,B,C``: several relay nodes (bench/cluster.py), as ``relay agent --server A,B,C``.
    urls = args.url.split(",")

    def hello_of(index: int) -> dict[str, Any]:
        return {
            "type": "hello", "protocol": PROTOCOL, "version": "bench",
            "mac_addr": mac_of(args.proc, index), "ip_addr": "127.0.0.1",
            "name_pc": f"bench-{args.proc}-{index}", "os_name": "bench", "devices": [],
        }

    def welcomed(index: int, ws: aiohttp.ClientWebSocketResponse, gather_id: int) -> None:
        stats["connected"] += 1
        stats["welcomed"] += 1
        sockets.add(ws)
        if index not in been_back:
            been_back.add(index)
            back.append(loop.time())
        if index == 0:
            emit({"event": "gather", "proc": args.proc, "gather_id": gather_id})

    async def serve(ws: aiohttp.ClientWebSocketResponse) -> None:
        """Answer commands until the link ends (aiohttp answers the relay's pings)."""
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                command = json.loads(message.data)
                if command.get("type") == "command":
                    stats["commands"] += 1
                    await ws.send_str(json.dumps(reply_to(command)))
        finally:
            stats["connected"] -= 1
            sockets.discard(ws)
            if not control["stop"]:
                stats["dropped"] += 1
                last_error[0] = f"link closed: code {ws.close_code} {ws.exception() or ''}".strip()

    async def one(http: aiohttp.ClientSession, index: int) -> None:
        hello = hello_of(index)
        ws = None
        released = False
        try:
            for attempt in range(args.attempts):
                try:
                    ws = await http.ws_connect(
                        urls[index % len(urls)], headers=headers, max_msg_size=MAX_MESSAGE,
                        autoping=True,
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
                    )
                    await ws.send_str(json.dumps(hello))
                    welcome = await asyncio.wait_for(ws.receive(), 60)
                    if welcome.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionError(f"no welcome: {welcome.type.name} {ws.close_code}")
                    gather_id = json.loads(welcome.data)["gather_id"]
                    break
                except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError,
                        ValueError, KeyError) as exc:
                    last_error[0] = f"{exc.__class__.__name__}: {exc}"[:200]
                    if ws is not None:
                        await ws.close()
                        ws = None
                    if attempt + 1 < args.attempts:
                        stats["retries"] += 1
                        await asyncio.sleep(0.5 * 2 ** attempt)
            if ws is None:
                stats["failed"] += 1
                return
            gate.release()
            released = True
            welcomed(index, ws, gather_id)
            await serve(ws)
        finally:
            if not released:
                gate.release()

    async def session(http: aiohttp.ClientSession, index: int, url: str) -> bool | float:
        """One connection until it ends, as ``Agent._session``: True once welcomed, a 503's
        Retry-After (seconds) when the relay is admitting all it can, else False (a failure)."""
        try:
            ws = await http.ws_connect(
                url, headers=headers, heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 503:
                stats["busy"] += 1
                seconds = retry_after(exc.headers)
                stats["busy_seconds"] += seconds
                return seconds
            stats["connect_errors"] += 1
            last_error[0] = f"upgrade refused: HTTP {exc.status}"
            return False
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                stats["refused"] += 1  # nothing listens: the relay is down
            else:
                stats["connect_errors"] += 1
                last_error[0] = f"{exc.__class__.__name__}: {exc}"[:200]
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            stats["connect_errors"] += 1
            last_error[0] = f"{exc.__class__.__name__}: {exc}"[:200]
            return False
        try:
            try:
                await ws.send_str(json.dumps(hello_of(index)))
                welcome = await asyncio.wait_for(ws.receive(), WELCOME_TIMEOUT)
            except TimeoutError:
                stats["timeouts"] += 1
                return False
            if welcome.type != aiohttp.WSMsgType.TEXT:
                stats["unwelcomed"] += 1
                last_error[0] = f"closed before the welcome: {welcome.type.name} {ws.close_code}"
                return False
            welcomed(index, ws, json.loads(welcome.data)["gather_id"])
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await serve(ws)
            return True
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            stats["unwelcomed"] += 1
            last_error[0] = f"before the welcome: {exc.__class__.__name__}: {exc}"[:200]
            return False
        finally:
            await ws.close()

    async def reconnecting(http: aiohttp.ClientSession, index: int) -> None:
        """``Agent.run``'s loop: after each connection, ``backoff(failures)`` with failures reset
        by a welcome; a 503 waits its Retry-After × uniform(0.9, 1.1) and is not a failure. With
        several URLs, as the reference agent: a random first one, the next after each connection
        that leaves failures above 0."""
        failures = 0
        retry = False
        turn = random.randrange(len(urls)) if len(urls) > 1 else 0
        while not control["stop"]:
            stats["attempted"] += 1
            stats["retries"] += retry
            outcome = await session(http, index, urls[turn])
            if isinstance(outcome, bool):
                failures = 0 if outcome else failures + 1
                delay = backoff(failures)
                retry = not outcome
            else:
                delay = outcome * random.uniform(0.9, 1.1)
                retry = True
            if failures and len(urls) > 1:
                turn = (turn + 1) % len(urls)
            await asyncio.sleep(delay)

    async def launch(http: aiohttp.ClientSession, tasks: set[asyncio.Task[None]]) -> None:
        interval = 1.0 / args.rate
        next_at = loop.time()
        for index in range(args.count):
            while control["target"] <= index and not control["stop"]:
                changed.clear()
                await changed.wait()
            if control["stop"]:
                return
            if args.reconnect:
                task = asyncio.create_task(reconnecting(http, index))
            else:
                now = loop.time()
                next_at = max(next_at, now)
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at += interval
                await gate.acquire()
                stats["attempted"] += 1
                task = asyncio.create_task(one(http, index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def progress() -> dict[str, Any]:
        event = {"event": "progress", "proc": args.proc, **stats, "error": last_error[0],
                 "back": list(back)}
        back.clear()
        return event

    async def report() -> None:
        while True:
            emit(progress())
            await asyncio.sleep(0.5)

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks: set[asyncio.Task[None]] = set()
        controller = asyncio.create_task(read_control())
        reporter = asyncio.create_task(report())
        launcher = asyncio.create_task(launch(http, tasks))
        await controller
        launcher.cancel()
        if args.reconnect:  # no agent may reconnect while the others close
            for task in list(tasks):
                task.cancel()
        await asyncio.gather(*(ws.close() for ws in list(sockets)), return_exceptions=True)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        emit(progress())


class AgentFleet:
    """The client processes of simulated agents, and what they last reported.

    ``reconnect`` makes them agents that reconnect like the reference agent (part 3); ``tag`` names
    their stderr files in the work dir."""

    def __init__(self, processes: Processes, url: str, key: str, total: int, procs: int,
                 rate: float, inflight: int, attempts: int, work: Path, *,
                 reconnect: bool = False, tag: str = "agents") -> None:
        self.processes = processes
        self.per_proc = [total // procs + (1 if n < total % procs else 0) for n in range(procs)]
        self.children: list[subprocess.Popen[Any]] = []
        self.progress: dict[int, dict[str, Any]] = {}
        self.gather_ids: dict[int, int] = {}
        self.back: list[float] = []  # first welcomes since the last mark(), monotonic clock
        self._lock = threading.Lock()
        for proc, count in enumerate(self.per_proc):
            child = processes.start(
                [sys.executable, SCRIPT, "--role", "agent", "--url", url, "--key", key,
                 "--proc", str(proc), "--count", str(count), "--target", "0",
                 "--rate", str(max(rate / procs, 0.1)), "--inflight", str(inflight),
                 "--attempts", str(attempts), *(["--reconnect"] if reconnect else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=(work / f"{tag}-{proc}.stderr").open("wb"), cwd=ROOT,
            )
            self.children.append(child)
            threading.Thread(target=self._read, args=(child,), daemon=True).start()

    def _read(self, child: subprocess.Popen[Any]) -> None:
        assert child.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in child.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                with self._lock:
                    if event.get("event") == "progress":
                        self.back.extend(event.pop("back", ()))
                        self.progress[event["proc"]] = event
                    elif event.get("event") == "gather":
                        self.gather_ids[event["proc"]] = event["gather_id"]

    def _tell(self, child: subprocess.Popen[Any], line: str) -> None:
        assert child.stdin is not None
        child.stdin.write(f"{line}\n".encode())
        child.stdin.flush()

    def target(self, total: int) -> None:
        """Let ``total`` agents be connected in all, spread like the processes' shares."""
        whole = sum(self.per_proc)
        remaining = total
        for proc, (child, count) in enumerate(zip(self.children, self.per_proc, strict=True)):
            share = count if proc == len(self.children) - 1 else round(total * count / whole)
            share = min(count, max(0, min(share, remaining)))
            remaining -= share
            self._tell(child, f"target {share}")

    def mark(self) -> float:
        """Start a new record of each agent's first welcome; the monotonic time it starts at."""
        with self._lock:
            self.back.clear()
            for child in self.children:
                self._tell(child, "mark")
            return time.monotonic()

    def back_since(self, since: float) -> list[float]:
        """When each agent first got a welcome after ``since`` (a mark()), sorted."""
        with self._lock:
            return sorted(moment for moment in self.back if moment >= since)

    def totals(self) -> dict[str, Any]:
        with self._lock:
            reports = list(self.progress.values())
        keys = [key for key, value in (reports[0] if reports else {}).items()
                if key != "proc" and isinstance(value, int | float)]
        totals: dict[str, Any] = {key: sum(r.get(key, 0) for r in reports) for key in keys}
        for key in ("connected", "attempted", "failed", "dropped", "commands", "retries"):
            totals.setdefault(key, 0)
        totals["errors"] = [r["error"] for r in reports if r.get("error")]
        return totals

    def reporting(self) -> bool:
        """Every process has reported at least once (it has started)."""
        with self._lock:
            return len(self.progress) == len(self.children)

    def alive(self) -> bool:
        return all(child.poll() is None for child in self.children)

    def rss_kb(self) -> int:
        return sum(proc_status(child.pid).get("VmRSS", 0) for child in self.children
                   if child.poll() is None)

    def cpu(self) -> float:
        """CPU seconds the client processes have used so far."""
        total = 0.0
        for child in self.children:
            with contextlib.suppress(OSError):
                total += cpu_seconds(child.pid)
        return total

    def quit(self) -> None:
        for child in self.children:
            if child.poll() is None and child.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._tell(child, "quit")


# --------------------------------------------------------------------------- echo baseline


def echo_role(port: int) -> None:
    """``--role echo``: a bare aiohttp server; GET /echo forwards a command over the WebSocket
    to the one connected (simulated) agent and answers with its reply."""
    from aiohttp import WSMsgType, web

    link: dict[str, Any] = {"ws": None}
    pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
    ids = itertools.count(1)
    counts = {"answered": 0, "timeouts": 0, "offline": 0}

    def dumps(body: Any) -> str:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        hello = await ws.receive()
        if hello.type != WSMsgType.TEXT or json.loads(hello.data).get("type") != "hello":
            await ws.close()
            return ws
        await ws.send_str(dumps({"type": "welcome", "gather_id": 1, "state": {}}))
        link["ws"] = ws
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                reply = json.loads(message.data)
                future = pending.get(reply.get("id"))
                if reply.get("type") == "reply" and future is not None and not future.done():
                    future.set_result(reply)
        finally:
            if link["ws"] is ws:
                link["ws"] = None
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("link closed"))
        return ws

    async def echo(request: web.Request) -> web.Response:
        ws = link["ws"]
        if ws is None:
            counts["offline"] += 1
            return web.json_response({"err_code": 0, "err_msg": "OK",
                                      "transmit": {"err_code": 10002}}, dumps=dumps)
        command_id = next(ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pending[command_id] = future
        try:
            await ws.send_str(dumps({"type": "command", "id": command_id, "action": "camera.start",
                                     "data": {"camera_id": int(request.query.get("camera_id", 1))}}))
            reply = await asyncio.wait_for(future, 10)
        except (TimeoutError, ConnectionError):
            counts["timeouts"] += 1
            return web.json_response({"err_code": 0, "err_msg": "OK",
                                      "transmit": {"err_code": 10003}}, dumps=dumps)
        finally:
            pending.pop(command_id, None)
        counts["answered"] += 1
        transmit = {"err_code": reply.get("err_code"), "err_msg": reply.get("err_msg"),
                    "data": reply.get("data")}
        return web.json_response({"err_code": 0, "err_msg": "OK", "transmit": transmit},
                                 dumps=dumps)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({**counts, "linked": link["ws"] is not None})

    app = web.Application()
    app.router.add_get("/agent", agent)
    app.router.add_get("/echo", echo)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --------------------------------------------------------------------------- wrk


@dataclass
class Run(WrkRun):
    """A wrk run of a command target, with what the numbers alone do not tell."""

    unanswered: int = 0  # requests whose answer did not carry the agent's reply (see Target)
    server_cpu_us: float = 0.0  # CPU time the server process spent per request (when known)


@dataclass
class Target:
    """What wrk calls; ``answered()`` counts the agent replies the server has had so far, so that a
    run whose answers said "offline" or "timeout" (HTTP 200 all the same) shows as unanswered."""

    name: str
    url: str
    callers: int
    answered: Any = None
    script: Path | None = None  # a wrk Lua script choosing each request (see toggle_script)
    server_pid: int | None = None  # whose CPU time per request to report
    runs: list[Run] = field(default_factory=list)

    def run(self, processes: Processes, duration: float) -> Run:
        before = self.answered() if self.answered else 0
        cpu_before = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        options = ["--timeout", "30s", *(["--script", str(self.script)] if self.script else [])]
        result = Run(**vars(wrk(processes, self.url, duration, self.callers, options=options,
                                slack=60.0)))
        if self.server_pid and result.requests:
            result.server_cpu_us = (cpu_seconds(self.server_pid) - cpu_before) / result.requests * 1e6
        if self.answered:
            result.unanswered = max(0, result.requests - (self.answered() - before))
        return result

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)


# --------------------------------------------------------------------------- profiling


class Spy:
    """py-spy recording a process (without pausing it) until stopped; raw collapsed stacks."""

    def __init__(self, processes: Processes, pid: int, out: Path, rate: int = 500) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.processes, self.out = processes, out
        self.child = processes.start(
            [exe, "record", "-p", str(pid), "--nonblocking", "-r", str(rate), "-f", "raw",
             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        self.processes.stop(self.child, grace=60)  # SIGINT: py-spy writes its file and exits
        if self.out.exists():
            print(summarize(self.out), flush=True)


def summarize(path: Path, top: int = 14) -> str:
    """The frames most samples were in (inclusive) and on top of (self), from collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r"^(.*?) \((.*?)(:\d+)?\)$", r"\1 (\2)", frame.strip())
                  for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return f"{path.name}: no samples"

    def short(frame: str) -> str:
        return re.sub(r"/\S*/(site-packages|lib/python3\.\d+|main)/", "", frame)

    lines = [f"{path.name}: {total:,} samples; top inclusive | top self"]
    best_in = sorted(inclusive.items(), key=lambda item: -item[1])
    generic = ("threading.py", "runpy>", "asyncio/base_events.py", "asyncio/events.py",
               "aiohttp/web.py", "relay/cli.py", "relay/server.py", "relay/__main__.py")
    best_in = [item for item in best_in if not any(name in item[0] for name in generic)][:top]
    best_self = sorted(own.items(), key=lambda item: -item[1])[:top]
    for (frame_in, n_in), (frame_self, n_self) in itertools.zip_longest(
            best_in, best_self, fillvalue=("", 0)):
        lines.append(f"  {100 * n_in / total:5.1f}% {short(frame_in)[:70]:<70} "
                     f"{100 * n_self / total:5.1f}% {short(frame_self)[:70]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- relay


@dataclass
class Relay:
    child: subprocess.Popen[Any]
    base: str
    token: str
    key: str
    stderr: Path

    def api(self, name: str, **params: Any) -> dict[str, Any]:
        answer = http_json(f"{self.base}/api/v1/{name}?{urlencode({'token': self.token, **params})}")
        if answer.get("err_code") != 0:
            raise RuntimeError(f"{name} answered {answer}")
        return answer

    def url(self, name: str, **params: Any) -> str:
        return f"{self.base}/api/v1/{name}?{urlencode({'token': self.token, **params})}"

    def commands_answered(self, action: str = "camera.start") -> int:
        """Agent replies the hub has had for ``action`` (timeouts and lost links are not counted)."""
        text = http_get(self.base + "/metrics", timeout=30.0).decode()
        match = re.search(rf'^relay_command_seconds_count{{command="{re.escape(action)}"}}\s+(\S+)',
                          text, re.M)
        return int(float(match.group(1))) if match else 0

    def agents_connected(self) -> int:
        text = http_get(self.base + "/metrics", timeout=30.0).decode()
        match = re.search(r"^relay_agents_connected\s+([0-9.e+]+)", text, re.M)
        return int(float(match.group(1))) if match else -1

    def rss_kb(self) -> int:
        return proc_status(self.child.pid)["VmRSS"]

    def problems(self) -> tuple[int, int, str]:
        """(error lines, warning lines, first error or else first warning) the relay logged."""
        text = self.stderr.read_text(errors="replace")
        errors = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        warnings = [line for line in text.splitlines() if " WARNING " in line]
        return len(errors), len(warnings), (errors or warnings or [""])[0]


def start_relay(processes: Processes, work: Path, name: str, extra: list[str],
                relay_dir: Path = ROOT, database_url: str = "") -> Relay:
    """``relay serve`` on a fresh data dir, run from ``relay_dir`` (``python -m relay`` imports the
    ``relay`` package there first, so a copy of the tree with other code can be compared), and an
    agent key for all the bench's agents: made once the relay has created the catalogue (commands
    refuse a dir without one), allowed ``GATHERERS`` gatherers (a key registers one by default).
    ``database_url``: the catalogue there (PostgreSQL) instead of SQLite in the data dir."""
    data = work / f"{name}-data"
    stderr = work / f"{name}.stderr"
    where = ["--database-url", database_url] if database_url else []
    served = start_relay_serve(processes, data, stderr,
                               ["--log-level", "warning", *where, *extra], cwd=relay_dir)
    key = subprocess.run(
        [sys.executable, "-m", "relay", "agent-key", "add", "bench", "--gatherers", str(GATHERERS),
         "--data", str(data)],
        capture_output=True, text=True, timeout=120, cwd=relay_dir, check=True,
        env={**os.environ, **({"RELAY_DATABASE_URL": database_url} if database_url else {})},
    ).stdout.strip()
    return Relay(served.child, served.base, served.token, key, stderr)


def check_transmit(answer: dict[str, Any], what: str) -> None:
    transmit = answer.get("transmit") or {}
    if answer.get("err_code") != 0 or transmit.get("err_code") != 0:
        raise RuntimeError(f"{what} answered {answer}")


def still_answers(url: str, what: str) -> str:
    """After the runs: "" when ``url`` still gets the agent's reply, else what it got instead."""
    try:
        check_transmit(http_json(url), what)
    except (RuntimeError, OSError, ValueError) as exc:
        return str(exc)[:300]
    return ""


# --------------------------------------------------------------------------- part 1


async def _breakdown(data: Path, calls: int, database_url: str = "") -> list[tuple[str, float]]:
    """In this process: median µs of the pieces of a start_camera call, on the relay's own code."""
    from relay.api.auth import authenticate, issue_token
    from relay.config import load_settings
    from relay.server import open_services

    class InstantLink:  # an agent link that answers at once (one loop turn), as AgentLink does
        async def request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"err_code": 0, "err_msg": "OK", "data": {}}

    settings = {"data": data, **({"database_url": database_url} if database_url else {})}
    services = await open_services(load_settings(settings, environ={}))
    try:
        account = await services.catalogue.accounts.add("bench", "correct horse", is_admin=True)
        token, _ttl = issue_token(services, account)
        gather_id = await services.catalogue.gatherers.register("02:ff:00:00:00:01")
        row = await services.catalogue.cameras.add(
            gather_id, {"camera_name": "bench", "stream_prop": 1, "stream_mp4": "/x.mp4"})
        camera_id = row["camera_id"]
        link = InstantLink()
        link.gather_id = gather_id  # type: ignore[attr-defined]
        await services.hub.attach(link)  # type: ignore[arg-type]

        turn = itertools.count()

        async def start() -> None:
            await services.catalogue.cameras.set_started(camera_id, 1)

        async def toggle() -> None:
            await services.catalogue.cameras.set_started(camera_id, next(turn) % 2)

        async def auth() -> None:
            await authenticate(services, token)

        async def send() -> None:
            await services.hub.send(gather_id, "camera.start", {"camera_id": camera_id})

        pieces = [("authenticate (signature, then the token's account, cached)", [auth]),
                  ("catalogue set_started, camera already started (a conditional UPDATE "
                   "changing nothing, the gatherer from the cache)", [start]),
                  ("catalogue set_started, alternating 1/0 (a conditional UPDATE that "
                   "changes the row)", [toggle]),
                  ("hub.send to an in-process link that answers at once", [send])]
        results = []
        for name, steps in pieces:
            samples = []
            for number in range(calls + 50):
                for step in steps[:-1]:
                    await step()
                started = time.perf_counter()
                await steps[-1]()
                if number >= 50:
                    samples.append((time.perf_counter() - started) * 1e6)
            results.append((name, statistics.median(samples)))
        return results
    finally:
        await services.catalogue.close()


def breakdown(work: Path, calls: int = 1000, database_url: str = "", name: str = "breakdown"
              ) -> str:
    try:
        pieces = asyncio.run(_breakdown(work / f"{name}-data", calls, database_url))
    except Exception as exc:  # the relay's internals moved: the rest of the bench still counts
        return f"(in-process breakdown unavailable: {exc.__class__.__name__}: {exc})"
    lines = [f"Where a start_camera call's time goes, in-process on the relay's own code "
             f"(median of {calls:,} calls each, µs):", "",
             "| piece | µs |", "|---|---:|"]
    lines += [f"| {name} | {micros:,.0f} |" for name, micros in pieces]
    return "\n".join(lines)



def toggle_script(path: Path, first: str, second: str) -> Path:
    """A wrk script whose requests alternate between two URLs (each thread keeps its own turn)."""
    paths = [urlsplit(url) for url in (first, second)]
    lua = ", ".join(json.dumps(f"{part.path}?{part.query}") for part in paths)
    path.write_text(f"local paths = {{{lua}}}\nlocal n = 0\n"
                    "request = function()\n  n = n + 1\n"
                    "  return wrk.format(\"GET\", paths[n % 2 + 1])\nend\n")
    return path


def part_commands(args: argparse.Namespace, processes: Processes, work: Path,
                  backend: str = "sqlite", database_url: str = "") -> dict[str, Any]:
    print(f"== part 1 ({backend}): start_camera round trip, relay vs bare aiohttp WebSocket echo",
          flush=True)
    relay = start_relay(processes, work, f"relay1-{backend}", ["--command-timeout", "10"],
                        args.relay_dir, database_url)
    print(f"relay serve PID {relay.child.pid} on {relay.base}", flush=True)
    fleet = AgentFleet(processes, relay.base.replace("http", "ws") + "/agent", relay.key, 1, 1,
                       10, 1, 3, work)
    fleet.target(1)
    gather_id = wait_until(lambda: fleet.gather_ids.get(0), 30, "the agent's gather_id",
                           interval=0.1)
    camera = relay.api("add_camera", camera_name="bench", gather_id=gather_id, stream_prop=1,
                       stream_mp4="/srv/bench.mp4")
    check_transmit(camera, "add_camera")
    camera_id = camera["camera_id"]
    relay_url = relay.url("start_camera", camera_id=camera_id)
    check_transmit(http_json(relay_url), "start_camera")
    toggle = toggle_script(work / "toggle.lua", relay.url("stop_camera", camera_id=camera_id),
                           relay_url)
    print(f"agent PID {fleet.children[0].pid} is gatherer {gather_id}; camera {camera_id}",
          flush=True)

    load_at_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    echo_port = free_port()
    echo = processes.start([sys.executable, SCRIPT, "--role", "echo", "--port", str(echo_port)],
                           stdout=subprocess.DEVNULL,
                           stderr=(work / "echo.stderr").open("wb"), cwd=ROOT)
    echo_base = f"http://127.0.0.1:{echo_port}"
    wait_for_http(echo_base + "/stats", echo)
    echo_agent = AgentFleet(processes, f"ws://127.0.0.1:{echo_port}/agent", "-", 1, 1, 10, 1, 3,
                            work)
    echo_agent.target(1)
    wait_until(lambda: http_json(echo_base + "/stats")["linked"], 30, "the echo's agent link",
               interval=0.1)
    echo_url = f"{echo_base}/echo?camera_id={camera_id}"
    check_transmit(http_json(echo_url), "echo")
    print(f"echo server PID {echo.pid}, its agent PID {echo_agent.children[0].pid}", flush=True)

    def echo_answered() -> int:
        return int(http_json(echo_base + "/stats")["answered"])

    def relay_answered() -> int:
        return relay.commands_answered("camera.start") + relay.commands_answered("camera.stop")

    # Per callers: the echo, then the relay with start_camera on a started camera (the desired
    # state already says so: nothing to write), then start/stop alternating (each call writes).
    targets: list[tuple[Target, ...]] = [
        (Target(f"echo c={callers}", echo_url, callers, echo_answered, server_pid=echo.pid),
         Target(f"relay c={callers}", relay_url, callers, relay_answered,
                server_pid=relay.child.pid),
         Target(f"start/stop c={callers}", relay_url, callers, relay_answered, toggle,
                server_pid=relay.child.pid))
        for callers in (1, args.callers)
    ]
    if args.warmup > 0:
        for pair in targets:
            for target in pair:
                target.run(processes, args.warmup)
    for number in range(args.rounds):
        for pair in targets:
            # Alternate the order each round, so drift in the machine's load hits all of them.
            order = pair if number % 2 == 0 else pair[::-1]
            for target in order:
                run = target.run(processes, args.duration)
                target.runs.append(run)
                print(f"  round {number + 1}/{args.rounds} {target.name:<12} {run.rps:9,.1f} req/s"
                      f"  p50 {run.p50_ms:8.2f} ms  p99 {run.p99_ms:8.2f} ms  "
                      f"server CPU {run.server_cpu_us:4.0f} µs/request  ({run.requests:,} "
                      f"requests, {run.errors} errors, {run.unanswered} unanswered)", flush=True)
    if args.profile:
        for target in itertools.chain.from_iterable(targets):
            name = target.name.replace("/", "-").replace(" ", "-").replace("=", "")
            spy = Spy(processes, target.server_pid, args.profile / f"{name}.txt")
            target.run(processes, args.duration)
            spy.stop()
    afterwards = [problem for problem in (still_answers(relay_url, "relay start_camera"),
                                          still_answers(echo_url, "echo")) if problem]
    echo_stats = http_json(echo_base + "/stats")
    relay_errors, relay_warnings, first_error = relay.problems()
    relay_rss = relay.rss_kb()
    processes.stop(echo)
    echo_agent.quit()
    fleet.quit()
    processes.stop(relay.child, grace=20)
    for child in (*echo_agent.children, *fleet.children):
        processes.stop(child)

    lines = [
        f"Catalogue on **{backend}**. wrk -t1 --latency, {args.duration:g} s per run, "
        f"{args.rounds} rounds alternating echo and relay, medians of the rounds; nproc "
        f"{os.cpu_count()}, Python {platform.python_version()}; load average at the start "
        f"{load_at_start}, at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        "",
        "| target | callers | req/s | p50 ms | p99 ms | server CPU µs/request | requests | errors "
        "| unanswered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in targets:
        for target in pair:
            lines.append(
                f"| {target.name.rsplit(' ', 1)[0]} | {target.callers} | {target.median('rps'):,.0f} | "
                f"{target.median('p50_ms'):.2f} | {target.median('p99_ms'):.2f} | "
                f"{target.median('server_cpu_us'):.0f} | "
                f"{sum(r.requests for r in target.runs):,} | {sum(r.errors for r in target.runs)} | "
                f"{sum(r.unanswered for r in target.runs)} |"
            )
    lines += [
        "",
        "| relay target | callers | p50 relay/echo | p99 relay/echo | req/s relay/echo | "
        "goal p50 <= 2x |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for echo_target, *relay_targets in targets:
        for relay_target in relay_targets:
            p50 = relay_target.median("p50_ms") / echo_target.median("p50_ms")
            lines.append(
                f"| {relay_target.name.rsplit(' ', 1)[0]} | {relay_target.callers} | {p50:.2f} | "
                f"{relay_target.median('p99_ms') / echo_target.median('p99_ms'):.2f} | "
                f"{relay_target.median('rps') / echo_target.median('rps'):.2f} | "
                f"{'met' if p50 <= 2 else 'missed'} |"
            )
    lines += ["", "| target | " + " | ".join(f"round {n + 1} p50 ms / req/s"
                                          for n in range(args.rounds)) + " |",
              "|---|" + "---:|" * args.rounds]
    for pair in targets:
        for target in pair:
            lines.append(f"| {target.name} | " + " | ".join(
                f"{run.p50_ms:.2f} / {run.rps:,.0f}" for run in target.runs) + " |")
    lines += ["", f"echo server: {echo_stats['answered']:,} answered, {echo_stats['timeouts']} "
              f"timeouts; relay: {relay_errors} error and {relay_warnings} warning log lines, "
              f"RSS {relay_rss / 1024:.0f} MB at the end"]
    if first_error:
        lines.append(f"relay's first error (or warning): {first_error}")
    lines += [f"after the runs: {problem}" for problem in afterwards]
    if not args.skip_breakdown:
        lines += ["", breakdown(work, database_url=database_url, name=f"breakdown-{backend}")]
    print("\n" + "\n".join(lines) + "\n", flush=True)
    return {
        "table": "\n".join(lines),
        "targets": {t.name: [r.__dict__ for r in t.runs] for pair in targets for t in pair},
        "echo": echo_stats, "relay_errors": relay_errors,
        "ok": relay_errors == 0 and not afterwards and not any(r.unanswered or r.errors for pair in targets
                                            for t in pair for r in t.runs),
    }


# --------------------------------------------------------------------------- part 2


@dataclass
class Stage:
    goal: int
    connected: int
    seconds: float
    rss_kb: int
    hwm_kb: int
    cpu: float
    agents_rss_kb: int
    note: str = ""


def ramp(relay: Relay, fleet: AgentFleet, goal: int, stall: float, deadline: float
         ) -> tuple[int, float, str]:
    """Let ``goal`` agents connect; wait until /metrics counts them. (count, seconds, why stopped)."""
    started = time.monotonic()
    fleet.target(goal)
    best, best_at = -1, started
    while True:
        time.sleep(0.25)
        now = time.monotonic()
        count = relay.agents_connected()
        if count >= goal:
            return count, now - started, ""
        if relay.child.poll() is not None:
            return count, now - started, f"relay exited with {relay.child.returncode}"
        if not fleet.alive():
            return count, now - started, "an agent process exited"
        totals = fleet.totals()
        if count > best:
            best, best_at = count, now
        settled = totals["attempted"] >= goal and totals["connected"] + totals["failed"] >= goal
        if settled and totals["failed"] and now - best_at > 3:
            return count, now - started, f"{totals['failed']} agents failed: {totals['errors'][:1]}"
        if now - best_at > stall:
            return count, now - started, f"no progress for {stall:.0f}s: {totals['errors'][:1]}"
        if now > deadline:
            return count, now - started, "time limit reached"


def part_agents(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    print(f"== part 2: {args.agents:,} simulated agents on one relay node", flush=True)
    limits = raise_nofile(args.agents + 4096)
    print(f"RLIMIT_NOFILE now {limits[0]} (hard {limits[1]})", flush=True)
    relay = start_relay(processes, work, "relay2", [], args.relay_dir)
    time.sleep(1)
    relay.agents_connected()
    stages = [Stage(0, relay.agents_connected(), 0.0, relay.rss_kb(),
                    proc_status(relay.child.pid)["VmHWM"], cpu_seconds(relay.child.pid), 0)]
    print(f"relay serve PID {relay.child.pid} on {relay.base}, RSS {stages[0].rss_kb / 1024:.1f} MB",
          flush=True)
    fleet = AgentFleet(processes, relay.base.replace("http", "ws") + "/agent", relay.key,
                       args.agents, args.agent_procs, args.connect_rate, args.inflight, 3, work)
    goals = sorted({g for g in args.milestones if 0 < g < args.agents} | {args.agents})
    deadline = time.monotonic() + args.connect_limit
    connect_seconds = 0.0
    stopped = ""
    for goal in goals:
        spy = Spy(processes, relay.child.pid, args.profile / f"connect-to-{goal}.txt") if (
            args.profile and goal == goals[-1]) else None
        _count, seconds, stopped = ramp(relay, fleet, goal, args.stall, deadline)
        if spy:
            spy.stop()
        connect_seconds += seconds
        time.sleep(args.settle)
        status = proc_status(relay.child.pid)
        stage = Stage(goal, relay.agents_connected(), connect_seconds, status["VmRSS"],
                      status["VmHWM"], cpu_seconds(relay.child.pid), fleet.rss_kb(), stopped)
        stages.append(stage)
        print(f"  {stage.connected:>6,} / {goal:,} agents after {connect_seconds:6.1f}s connecting: "
              f"relay RSS {stage.rss_kb / 1024:7.1f} MB, CPU {stage.cpu:6.1f}s; agent processes "
              f"RSS {stage.agents_rss_kb / 1024:6.1f} MB {stopped}", flush=True)
        if stopped:
            break
    reached = stages[-1].connected
    reached_at = time.monotonic()

    rtt: list[tuple[str, Run]] = []
    afterwards = ""
    add_ms = float("nan")
    gather_id = fleet.gather_ids.get(0)
    if reached > 0 and gather_id is not None and relay.child.poll() is None:
        started = time.perf_counter()
        camera = relay.api("add_camera", camera_name="bench", gather_id=gather_id, stream_prop=1,
                           stream_mp4="/srv/bench.mp4")
        add_ms = (time.perf_counter() - started) * 1000
        check_transmit(camera, "add_camera")
        url = relay.url("start_camera", camera_id=camera["camera_id"])
        check_transmit(http_json(url), "start_camera")
        for callers in (1, args.callers):
            run = Target("", url, callers, relay.commands_answered).run(processes,
                                                                          args.rtt_duration)
            rtt.append((f"start_camera c={callers}", run))
            print(f"  with {reached:,} connected: start_camera c={callers}: p50 {run.p50_ms:.2f} ms"
                  f"  p99 {run.p99_ms:.2f} ms  {run.rps:,.0f} req/s ({run.errors} errors, "
                  f"{run.unanswered} unanswered)", flush=True)
        afterwards = still_answers(url, "start_camera")
    held = 0.0
    idle_cpu = float("nan")
    if args.hold > 0 and reached > 0:
        # The rest of the hold is idle (no API calls): the relay's CPU then is the cost of
        # keeping the links (heartbeats, key rechecks).
        spy = Spy(processes, relay.child.pid, args.profile / "idle.txt") if args.profile else None
        cpu_before, idle_from = cpu_seconds(relay.child.pid), time.monotonic()
        time.sleep(max(1.0, args.hold - (time.monotonic() - reached_at)))
        idle_cpu = (cpu_seconds(relay.child.pid) - cpu_before) / (time.monotonic() - idle_from)
        held = time.monotonic() - reached_at
        if spy:
            spy.stop()
    after = relay.agents_connected() if relay.child.poll() is None else -1
    after_rss = relay.rss_kb() if relay.child.poll() is None else 0
    totals = fleet.totals()
    relay_errors, relay_warnings, first_error = relay.problems()
    fleet.quit()
    processes.stop(relay.child, grace=60)
    for child in fleet.children:
        processes.stop(child, grace=30)

    full = stages[-1]
    lines = [
        f"{args.agents:,} agents over {args.agent_procs} client processes, at most "
        f"{args.connect_rate:g} connects/s and {args.inflight} handshakes in flight per process; "
        f"relay RSS from /proc/PID/status, count from /metrics",
        "",
        "| agents connected | relay VmRSS MB | per agent KB | relay CPU s | time connecting s |"
        " agent procs RSS MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    base = stages[0].rss_kb
    for stage in stages:
        per = (stage.rss_kb - base) / stage.connected if stage.connected else float("nan")
        lines.append(
            f"| {stage.connected:,} | {stage.rss_kb / 1024:.1f} | "
            f"{'-' if math.isnan(per) else f'{per:.1f}'} | {stage.cpu:.1f} | {stage.seconds:.1f} | "
            f"{stage.agents_rss_kb / 1024:.0f} |"
        )
    rate = full.connected / full.seconds if full.seconds else 0
    goal_met = full.connected >= args.agents and full.rss_kb <= args.rss_goal * 1024
    lines += [
        "",
        f"reached {full.connected:,} of {args.agents:,} in {full.seconds:.1f} s of connecting "
        f"({rate:,.0f}/s); peak RSS (VmHWM) {full.hwm_kb / 1024:.1f} MB; goal {args.agents:,} "
        f"with RSS <= {args.rss_goal} MB: {'met' if goal_met else 'missed'}"
        + (f"; stopped: {stopped}" if stopped else ""),
        f"after holding {held:.0f} s: {after:,} connected, RSS {after_rss / 1024:.1f} MB, relay CPU "
        f"{100 * idle_cpu:.0f}% of a core while idle; "
        f"agents report {totals['failed']} failed, {totals['dropped']} dropped, "
        f"{totals['retries']} retries; relay logged {relay_errors} errors, {relay_warnings} "
        f"warnings",
    ]
    if first_error:
        lines.append(f"relay's first error (or warning): {first_error}")
    if afterwards:
        lines.append(f"after the start_camera runs: {afterwards}")
    if rtt:
        lines += [
            "",
            f"start_camera with {full.connected:,} agents connected (wrk {args.rtt_duration:g} s;"
            f" add_camera took {add_ms:.1f} ms):",
            "",
            "| target | callers | req/s | p50 ms | p99 ms | requests | errors | unanswered |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, run in rtt:
            lines.append(f"| {name.split()[0]} | {name.split('=')[1]} | {run.rps:,.0f} | "
                         f"{run.p50_ms:.2f} | {run.p99_ms:.2f} | {run.requests:,} | {run.errors} | "
                         f"{run.unanswered} |")
    print("\n" + "\n".join(lines) + "\n", flush=True)
    return {
        "table": "\n".join(lines),
        "stages": [stage.__dict__ for stage in stages],
        "rtt": {name: run.__dict__ for name, run in rtt},
        "after": after,
        "ok": relay_errors == 0 and not afterwards and not any(run.unanswered or run.errors
                                                               for _n, run in rtt),
    }


# --------------------------------------------------------------------------- part 3


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(:|$)")
FRACTIONS = (0.5, 0.9, 0.99, 1.0)
#: The restart goal of issue 8 (finding 14): every agent back within this many seconds of the
#: new relay answering /healthz, and no traceback in its log.
GOAL_SECONDS = 30.0


def tree_state(relay_dir: Path) -> str:
    """The commit ``relay_dir`` is at and its uncommitted changes under relay/, for the record."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(relay_dir), *argv], capture_output=True,
                              text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else "?"

    changes = "; ".join(line.strip() for line in git("status", "--short", "relay/").splitlines())
    return f"commit {git('log', '-1', '--format=%h')}, relay/ " + (
        f"uncommitted: {changes}" if changes else "clean")


@dataclass
class LogCount:
    """What a relay's log holds: tracebacks, ERROR and WARNING lines, the commonest kinds."""

    tracebacks: int = 0
    errors: int = 0
    warnings: int = 0
    kinds: list[tuple[int, str]] = field(default_factory=list)


def count_log(path: Path, top: int = 4) -> LogCount:
    """Tracebacks, ERROR and WARNING lines in ``path``; the ``top`` commonest exceptions and
    ERROR/WARNING messages, with numbers and MACs blanked so that lines of one kind group."""
    text = path.read_text(errors="replace") if path.exists() else ""
    count = LogCount()
    kinds: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            count.tracebacks += 1
        elif EXCEPTION_LINE.match(line):
            kinds[line[:110]] += 1
        elif " ERROR " in line or " WARNING " in line:
            count.errors += " ERROR " in line
            count.warnings += " WARNING " in line
            message = line.split(" ", 2)[-1]
            message = re.sub(r"\b[0-9a-f]{2}(:[0-9a-f]{2}){5}\b", "MAC", message)
            kinds[re.sub(r"\d+(\.\d+)*", "N", message)[:110]] += 1
    count.kinds = [(number, kind) for kind, number in kinds.most_common(top)]
    return count


class MetricsPoller:
    """Reads ``relay_agents_connected`` from the relay's /metrics in a thread, as fast as it
    answers (a relay busy with a storm answers slowly: the main loop never waits for it)."""

    def __init__(self, relay: Relay, interval: float = 0.25) -> None:
        self.relay, self.interval = relay, interval
        self.samples: list[tuple[float, int]] = []  # (monotonic time answered, count)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                count = self.relay.agents_connected()
            except (OSError, ValueError, http.client.HTTPException):
                count = -1
            if count >= 0:
                self.samples.append((time.monotonic(), count))
            self._stopping.wait(self.interval)

    def latest(self) -> tuple[float, int]:
        return self.samples[-1] if self.samples else (0.0, -1)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(35)


@dataclass
class Phase:
    """One storm: from ``start`` (the fleet's release, or the new relay's first /healthz) until
    every agent has had a welcome since the mark and /metrics counts them all, or the limit."""

    name: str
    agents: int
    up_s: float = float("nan")  # restart: SIGKILL until the new relay's /healthz answered
    at: dict[float, float | None] = field(default_factory=dict)  # fraction back → seconds
    metrics_all_s: float | None = None
    back: int = 0
    connected: int = -1
    seconds: float = 0.0
    cpu_s: float = 0.0
    startup_cpu_s: float = float("nan")
    fleet_cpu_s: float = 0.0
    rss_kb: int = 0
    counts: dict[str, float] = field(default_factory=dict)
    log: LogCount = field(default_factory=LogCount)
    stopped: str = ""
    client_errors: list[str] = field(default_factory=list)  # the agents' last errors, distinct

    @property
    def cpu_ms_per_welcome(self) -> float:
        welcomes = self.counts.get("welcomed", 0)
        return 1000 * self.cpu_s / welcomes if welcomes else float("nan")

    @property
    def all_s(self) -> float | None:
        """Every agent back: welcomed since the mark by the clients' count and on /metrics."""
        if self.at.get(1.0) is None or self.metrics_all_s is None:
            return None
        return max(self.at[1.0], self.metrics_all_s)  # type: ignore[type-var]


def watch(phase: Phase, relay: Relay, fleet: AgentFleet, since: float, start: float,
          limit: float, before: tuple[dict[str, Any], float]) -> Phase:
    """Follow a storm until all of ``phase.agents`` are back or ``limit`` s after ``start``,
    printing a line every 5 s; fills in ``phase``. The clients' counts and CPU are told from
    ``before`` (their totals and CPU at the mark ``since``), the relay's CPU from now."""
    agents = phase.agents
    poller = MetricsPoller(relay)
    cpu_start = cpu_seconds(relay.child.pid)
    counts_start, fleet_start = before
    last_line, last_cpu = time.monotonic(), cpu_start
    try:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            back = len(fleet.back_since(since))
            answered, count = poller.latest()
            if count >= agents and phase.metrics_all_s is None:
                phase.metrics_all_s = answered - start
            if back >= agents and phase.metrics_all_s is not None:
                break
            if relay.child.poll() is not None:
                phase.stopped = f"relay exited with {relay.child.returncode}"
                break
            if not fleet.alive():
                phase.stopped = "an agent process exited"
                break
            if now - start > limit:
                phase.stopped = f"not all back: {back:,} of {agents:,} after {limit:g} s"
                break
            if now - last_line >= 5:
                cpu = cpu_seconds(relay.child.pid)
                totals = fleet.totals()
                age = f" ({now - answered:.0f} s ago)" if now - answered > 2 else ""
                print(f"  {now - start:6.1f}s  /metrics {count:>6,}{age}  back {back:>6,}  relay CPU "
                      f"{100 * (cpu - last_cpu) / (now - last_line):3.0f}%  welcome timeouts "
                      f"{totals['timeouts'] - counts_start['timeouts']:,}  503s "
                      f"{totals['busy'] - counts_start['busy']:,}  connect errors "
                      f"{totals['connect_errors'] - counts_start['connect_errors']:,}  refused "
                      f"{totals['refused'] - counts_start['refused']:,}", flush=True)
                last_line, last_cpu = now, cpu
    finally:
        poller.stop()
    end = time.monotonic()
    phase.seconds = end - start
    if relay.child.poll() is None:
        phase.cpu_s = cpu_seconds(relay.child.pid) - cpu_start
        phase.rss_kb = relay.rss_kb()
    phase.fleet_cpu_s = fleet.cpu() - fleet_start
    times = fleet.back_since(since)
    phase.back = len(times)
    for fraction in FRACTIONS:
        needed = math.ceil(fraction * agents)
        phase.at[fraction] = times[needed - 1] - start if len(times) >= needed else None
    phase.connected = poller.latest()[1]
    time.sleep(0.6)  # the clients' next progress reports: their counts up to the end
    totals = fleet.totals()
    phase.counts = {key: totals[key] - counts_start.get(key, 0) for key in totals
                    if isinstance(totals[key], int | float)}
    phase.client_errors = sorted(set(totals["errors"]))[:4]
    phase.log = count_log(relay.stderr)
    return phase


def storm(args: argparse.Namespace, processes: Processes, work: Path, agents: int
          ) -> dict[str, Any]:
    """N agents connect to a fresh relay all at once (the first connect), then the relay is
    SIGKILLed and restarted on the same port and data dir (the restart)."""
    name = f"storm{agents}"
    state = tree_state(args.relay_dir) + ", load average {:.1f} {:.1f} {:.1f}".format(
        *os.getloadavg())
    limits = raise_nofile(agents + 4096)
    print(f"== part 3: restart storm of {agents:,} agents; relay code {args.relay_dir} ({state}); "
          f"RLIMIT_NOFILE {limits[0]}", flush=True)
    relay = start_relay(processes, work, name, args.serve_arg, args.relay_dir)
    data = work / f"{name}-data"
    fleet = AgentFleet(processes, relay.base.replace("http", "ws") + "/agent", relay.key, agents,
                       args.agent_procs, 1, 1, 1, work, reconnect=True, tag=f"{name}-agents")
    wait_until(fleet.reporting, 60, "the agent processes' first reports", interval=0.1)
    print(f"relay serve PID {relay.child.pid} on {relay.base}; {args.agent_procs} agent processes "
          f"{[child.pid for child in fleet.children]}", flush=True)

    def spy(phase: str, pid: int) -> Spy | None:
        return Spy(processes, pid, args.profile / f"{name}-{phase}.txt", rate=200) if (
            args.profile) else None

    print(f"first connect: {agents:,} agents at once", flush=True)
    profile = spy("first-connect", relay.child.pid)
    before = fleet.totals(), fleet.cpu()
    since = fleet.mark()
    fleet.target(agents)
    cold = watch(Phase("first connect", agents), relay, fleet, since, since, args.storm_limit,
                 before)
    if profile:
        profile.stop()

    cpu_before, idle_from = cpu_seconds(relay.child.pid), time.monotonic()
    time.sleep(args.storm_hold)
    idle = (cpu_seconds(relay.child.pid) - cpu_before) / (time.monotonic() - idle_from)
    try:
        before_kill = relay.agents_connected()
    except (OSError, ValueError, http.client.HTTPException):
        before_kill = -1  # /metrics did not answer: the relay is still swamped
    print(f"{before_kill:,} connected after {args.storm_hold:g} s more (relay CPU {100 * idle:.0f}% "
          f"of a core); SIGKILL PID {relay.child.pid}", flush=True)
    cold.log = count_log(relay.stderr)

    before = fleet.totals(), fleet.cpu()
    since = fleet.mark()
    os.kill(relay.child.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    relay.child.wait(30)
    processes.stop(relay.child)  # reaped: only forgets it
    log = work / f"{name}-restart.stderr"
    restart = Phase("restart", agents)
    try:
        child, healthy_at = restart_relay_serve(processes, data, log, relay.base,
                                                ["--log-level", "warning", *args.serve_arg],
                                                cwd=args.relay_dir, timeout=args.storm_limit)
    except TimeoutError as exc:
        child, restart.stopped = None, f"the new relay did not answer /healthz: {exc}"
        restart.log = count_log(log)
    if child is not None:
        restart.up_s = healthy_at - killed_at
        restart.startup_cpu_s = cpu_seconds(child.pid)
        again = Relay(child, relay.base, "", relay.key, log)
        print(f"restart: PID {child.pid} answered /healthz {restart.up_s:.1f} s after the "
              f"SIGKILL", flush=True)
        profile = spy("restart", child.pid)
        watch(restart, again, fleet, since, healthy_at, args.storm_limit, before)
        if profile:
            profile.stop()

    fleet.quit()
    if child is not None:
        processes.stop(child, grace=60)
    for agent_child in fleet.children:
        processes.stop(agent_child, grace=30)
    after_stop = count_log(log)
    counted = f"{before_kill:,}" if before_kill >= 0 else "? (/metrics did not answer)"
    notes = [f"{agents:,} agents: {counted} connected before the SIGKILL; relay CPU in the "
             f"{args.storm_hold:g} s before it {100 * idle:.0f}% of a core; the restarted relay "
             f"used {restart.startup_cpu_s:.1f} s of CPU to start"]
    if after_stop.tracebacks + after_stop.errors > restart.log.tracebacks + restart.log.errors:
        notes.append(f"its shutdown logged {after_stop.errors - restart.log.errors} more ERROR "
                     f"lines and {after_stop.tracebacks - restart.log.tracebacks} tracebacks")
    for phase in (cold, restart):
        if phase.stopped:
            notes.append(f"{phase.name}: {phase.stopped}")
        if phase.counts.get("busy"):
            notes.append(f"{phase.name}: the 503s said Retry-After "
                         f"{phase.counts['busy_seconds'] / phase.counts['busy']:.1f} s on average")
        for number, kind in phase.log.kinds:
            notes.append(f"{phase.name}, relay log, {number:,}x: {kind}")
        for error in phase.client_errors:
            notes.append(f"{phase.name}, an agent process's last error: {error}")
    for line in notes:
        print("  " + line, flush=True)
    return {"agents": agents, "state": state, "phases": [cold, restart], "notes": notes,
            "idle_cpu": idle, "before_kill": before_kill}


def _seconds(value: float | None) -> str:
    return "not all back" if value is None else f"{value:.1f}"


def part_storm(args: argparse.Namespace, processes: Processes, work: Path) -> dict[str, Any]:
    runs = [storm(args, processes, work, agents) for agents in args.storm]
    lines = [
        f"Restart storm: simulated agents with the reference agent's backoff and 20 s welcome "
        f"timeout over {args.agent_procs} client processes; first connect timed from the fleet's "
        f"release, restart from the new relay's first /healthz; limit {args.storm_limit:g} s; "
        f"nproc {os.cpu_count()}",
        "",
        "| agents | phase | relay code | SIGKILL to /healthz s | 50 % back s | 90 % s | 99 % s "
        "| all back s | /metrics all s | relay CPU s | relay CPU % of a core | relay CPU ms per "
        "welcome | relay RSS MB | clients CPU s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for phase in run["phases"]:
            lines.append(
                f"| {phase.agents:,} | {phase.name} | {run['state'].split(',')[0]} | "
                f"{'-' if math.isnan(phase.up_s) else f'{phase.up_s:.1f}'} | "
                + " | ".join(_seconds(phase.at.get(f)) for f in FRACTIONS[:3])
                + f" | {_seconds(phase.all_s)} | {_seconds(phase.metrics_all_s)} | "
                f"{phase.cpu_s:.1f} | {100 * phase.cpu_s / (phase.seconds or math.nan):.0f} | "
                f"{phase.cpu_ms_per_welcome:.1f} | {phase.rss_kb / 1024:.0f} | "
                f"{phase.fleet_cpu_s:.1f} |")
    lines += [
        "",
        "| agents | phase | welcomes | welcome timeouts | closed before welcome | connect errors "
        "| refused (no listener) | 503s | retries | links dropped | relay tracebacks "
        "| ERROR lines | WARNING lines |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for phase in run["phases"]:
            counts = phase.counts
            lines.append(
                f"| {phase.agents:,} | {phase.name} | {counts.get('welcomed', 0):,} | "
                f"{counts.get('timeouts', 0):,} | {counts.get('unwelcomed', 0):,} | "
                f"{counts.get('connect_errors', 0):,} | {counts.get('refused', 0):,} | "
                f"{counts.get('busy', 0):,} | {counts.get('retries', 0):,} | "
                f"{counts.get('dropped', 0):,} | {phase.log.tracebacks:,} | {phase.log.errors:,} | "
                f"{phase.log.warnings:,} |")
    lines.append("")
    ok = True
    for run in runs:
        restart = run["phases"][1]
        met = (restart.all_s is not None and restart.all_s <= GOAL_SECONDS
               and restart.log.tracebacks == 0)
        ok = ok and met
        back = ("not all back" if restart.all_s is None
                else f"all back {restart.all_s:.1f} s after /healthz")
        lines.append(f"restart of {run['agents']:,}: {back}, {restart.log.tracebacks:,} "
                     f"tracebacks; goal (all back within "
                     f"{GOAL_SECONDS:g} s, 0 tracebacks): {'met' if met else 'missed'}"
                     + (f" ({restart.stopped})" if restart.stopped else ""))
    for run in runs:
        lines.append(f"relay code of the {run['agents']:,} run: {run['state']}")
        lines += run["notes"]
    print("\n" + "\n".join(lines) + "\n", flush=True)
    return {
        "table": "\n".join(lines),
        "runs": [{**run, "phases": [{**phase.__dict__, "log": phase.log.__dict__,
                                     "all_s": phase.all_s} for phase in run["phases"]]}
                 for run in runs],
        "ok": ok,
    }


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="part 1 rounds (default 3)")
    parser.add_argument("--duration", type=float, default=8,
                        help="seconds of wrk per target and round (default 8)")
    parser.add_argument("--warmup", type=float, default=2,
                        help="seconds of wrk on each target before measuring (default 2)")
    parser.add_argument("--callers", type=int, default=200,
                        help="concurrent callers of the loaded runs (default 200)")
    parser.add_argument("--agents", type=int, default=10_000, help="part 2 agents (default 10000)")
    parser.add_argument("--agent-procs", type=int, default=4,
                        help="client processes the agents are spread over (default 4)")
    parser.add_argument("--connect-rate", type=float, default=500,
                        help="new agent connections a second, in all (default 500)")
    parser.add_argument("--inflight", type=int, default=32,
                        help="handshakes in flight per client process (default 32)")
    parser.add_argument("--milestones", type=lambda text: [int(v) for v in text.split(",") if v],
                        default=[1000, 5000], help="agent counts to stop at and measure "
                                                   "(default 1000,5000; plus --agents)")
    parser.add_argument("--settle", type=float, default=2,
                        help="seconds to wait at each milestone before reading RSS (default 2)")
    parser.add_argument("--stall", type=float, default=30,
                        help="give up connecting after this many seconds without progress")
    parser.add_argument("--connect-limit", type=float, default=300,
                        help="give up connecting after this many seconds in all (default 300)")
    parser.add_argument("--rtt-duration", type=float, default=8,
                        help="seconds of wrk for start_camera with all agents connected")
    parser.add_argument("--hold", type=float, default=30,
                        help="seconds to keep all agents connected (> the relay's 20 s "
                             "heartbeat) before counting again (default 30)")
    parser.add_argument("--rss-goal", type=float, default=400, help="MB (default 400)")
    parser.add_argument("--relay-dir", type=Path, default=ROOT,
                        help="run relay serve from this copy of the project (default: this one)")
    parser.add_argument("--skip-commands", action="store_true", help="skip part 1")
    parser.add_argument("--backends", default=["sqlite"], metavar="B[,B]",
                        type=lambda text: [v for v in text.split(",") if v],
                        help="part 1's catalogues, in turn: sqlite (a file in the data dir), "
                             "postgresql (a fresh database made and dropped for the run), or "
                             "both, sqlite,postgresql (default sqlite)")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, metavar="URL",
                        help=f"the PostgreSQL server's admin database (default {POSTGRES_ADMIN})")
    parser.add_argument("--skip-agents", action="store_true", help="skip part 2")
    parser.add_argument("--skip-storm", action="store_true", help="skip part 3")
    parser.add_argument("--only", choices=("commands", "agents", "storm"),
                        help="run only this part (part 1, 2 or 3)")
    parser.add_argument("--storm", type=lambda text: [int(v) for v in text.split(",") if v],
                        default=[10_000], metavar="N[,N...]",
                        help="part 3 fleet sizes, one restart storm each (default 10000)")
    parser.add_argument("--storm-limit", type=float, default=240,
                        help="part 3: seconds each storm may take before it is reported as "
                             "not all back (default 240)")
    parser.add_argument("--storm-hold", type=float, default=5,
                        help="part 3: seconds all agents stay connected before the SIGKILL "
                             "(default 5)")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="part 3: one more argument for its relay serve (repeat it), e.g. "
                             "--serve-arg=--agent-heartbeat --serve-arg=20")
    parser.add_argument("--skip-breakdown", action="store_true",
                        help="skip part 1's in-process timing of the pieces of a start_camera")
    parser.add_argument("--profile", type=Path,
                        help="also run py-spy (--nonblocking) on the relay during one extra run "
                             "per caller count in part 1, and in part 2 while the last stage "
                             "connects and while all agents idle, in part 3 during each storm; raw "
                             "collapsed stacks go to "
                             "this dir (and a summary to stdout)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary dir (data dirs, logs) for a post-mortem")
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    # Child roles (this script runs itself as the simulated agents and the echo server).
    parser.add_argument("--role", choices=("agent", "echo"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)  # one URL, or several: A,B,C
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--proc", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--attempts", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--reconnect", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def _child_role(args: argparse.Namespace) -> int:
    if args.role == "echo":
        echo_role(args.port)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(agents_role(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role:
        return _child_role(args)
    if args.only:
        args.skip_commands, args.skip_agents, args.skip_storm = (
            args.only != part for part in ("commands", "agents", "storm"))
    if min(args.rounds, args.duration, args.callers, args.agents, args.agent_procs,
           args.connect_rate, args.inflight, args.storm_limit, *args.storm) <= 0 or (
            args.storm_hold < 0 or not args.storm):
        raise SystemExit("bench: counts, rates and durations must be positive")
    if not args.backends or set(args.backends) - {"sqlite", "postgresql"}:
        raise SystemExit("bench: --backends takes sqlite, postgresql or both (comma-separated)")
    if shutil.which("wrk") is None and not (args.skip_commands and args.skip_agents):
        raise SystemExit("bench: wrk is not installed (parts 1 and 2 need it)")
    signal.signal(signal.SIGTERM, interrupt)
    processes = Processes(kill_wait=10.0, close_pipes=True)
    work = Path(tempfile.mkdtemp(prefix="relay-bench-commands-"))
    results: dict[str, Any] = {"argv": sys.argv, "nproc": os.cpu_count(),
                               "python": platform.python_version()}
    started = time.monotonic()
    try:
        if not args.skip_commands:
            for backend in args.backends:
                key = "commands" if backend == "sqlite" else f"commands-{backend}"
                if backend == "sqlite":
                    results[key] = part_commands(args, processes, work)
                    continue
                with fresh_postgres("commands", args.postgres) as url:
                    try:
                        results[key] = part_commands(args, processes, work, backend, url)
                    finally:
                        processes.stop_all()  # (its connections go before the database does)
        if not args.skip_agents:
            results["agents"] = part_agents(args, processes, work)
        if not args.skip_storm:
            results["storm"] = part_storm(args, processes, work)
        print(f"bench finished in {time.monotonic() - started:.0f} s")
        return 0 if all(part.get("ok", True) for part in results.values()
                        if isinstance(part, dict)) else 1
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        for log in sorted(work.glob("*.stderr")):
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
            args.markdown.write_text("\n\n".join(
                part["table"] for part in results.values() if isinstance(part, dict)
                and "table" in part) + "\n")


if __name__ == "__main__":
    sys.exit(main())
