"""Benchmark the API's listings (wrk) and its writes under contention against a bare aiohttp baseline.

    .venv/bin/python bench/api.py [--rounds 3] [--duration 10] [--rows 100000] [--writers 20]
    .venv/bin/python bench/api.py --skip-mutations --backends sqlite,postgresql   # both catalogues

What it does, in order:

1. creates a temporary data dir and seeds its catalogue with ``--rows`` cameras (spread over a few
   gatherers made the way an agent's registration makes them) and ``--rows`` records, by bulk inserts
   through the catalogue's own engine, with the columns the app itself writes;
2. starts a real ``relay serve`` on a free 127.0.0.1 port, reads the API credential from the
   first-start banner and exchanges it for a token;
3. starts the baseline: a bare aiohttp app in its own process (same Python) whose one GET handler
   answers a constant JSON body, the bytes of one real ``list_camera`` page (per=10);
4. warms every target up, then runs wrk on baseline, list_camera (cur=1), list_camera deep page,
   list_record (cur=1) and, for reference, ``version`` (the same app with no token check and no
   database) in turn, for ``--rounds`` rounds, and prints medians and the ratio of each target's
   median req/s to the baseline's;
5. then the writes under contention (``--writers``, default 20): that many concurrent clients
   (aiohttp, in this process, one keep-alive connection each), each issuing its next call the moment
   the last one answers, for ``--duration`` seconds a round. Per round, in turn: the baseline
   (the bare aiohttp app), a point read (``get_camera_status``) and the mutation mix: every writer
   cycles through ``mod_camera``, ``add_course`` then ``del_course`` of the course it added,
   ``stop_camera``/``start_camera`` of its own camera (so every one writes), ``del_record`` of a
   seeded record, and two refusals that open a write transaction (``del_record`` and ``mod_camera``
   of an id that names no row, 1010). It prints p50/p99/max latency per kind and over all
   mutations, from every call of every round, against the baseline's, and the server's CPU time
   per call (steadier than latency on a shared machine). No agent is connected, so ``transmit``
   answers at once (10002): what is measured is the relay and its catalogue.

``--skip-listings`` / ``--skip-mutations`` leave out one part; ``--relay-dir COPY`` seeds with and
runs ``relay serve`` from another checkout (an A/B against older code, same client and options).

Every process it starts is stopped by its PID, and the temporary dir removed, on the way out,
Ctrl-C and failures included. Each answer is checked (``err_code`` 0, a full page) before and after
the measurements, since the API answers errors with HTTP 200; every mutation's ``err_code`` is
checked as it comes, and afterwards the catalogue file (read with ``sqlite3``) must hold exactly
the records and courses the answers imply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sqlite3
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

from common import (
    POSTGRES_ADMIN,
    Processes,
    Run,
    cpu_seconds,
    free_port,
    fresh_postgres,
    http_get,
    interrupt,
    start_relay_serve,
    wait_for_http,
    wrk,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHUNK = 5000
PER = 10
JSON_RUN_KEYS = ("rps", "p50_ms", "p99_ms", "errors")  # what --json records of each wrk run


# --------------------------------------------------------------------------- seeding


async def seed(data: Path, rows: int, gatherer_count: int, database_url: str = ""
               ) -> dict[str, float]:
    """Fill a fresh catalogue in ``data`` (or at ``database_url``) with ``rows`` cameras and
    ``rows`` records."""
    from relay.catalogue import Catalogue
    from relay.catalogue.schema import cameras, records
    from relay.config import load_settings

    settings = load_settings({"data": data, **({"database_url": database_url} if database_url
                                               else {})}, environ={})
    rng = random.Random(20240601)
    now = int(time.time())
    timings: dict[str, float] = {}
    catalogue = await Catalogue.open(settings.db_url)
    try:
        gather_ids = [
            await catalogue.gatherers.register(
                f"02:00:00:00:00:{index:02x}", ip_addr=f"10.0.0.{index + 10}",
                name_pc=f"采集端-{index + 1}", os_name="Windows 10",
            )
            for index in range(gatherer_count)
        ]

        started = time.perf_counter()
        for low in range(0, rows, CHUNK):
            chunk = []
            for number in range(low, min(low + CHUNK, rows)):
                created = now - 365 * 86400 + number * (365 * 86400 // max(rows, 1))
                mp4 = number % 2 == 0  # half files (stream_prop 1), half RTSP streams (2)
                # The columns add_camera writes (the rest take their column defaults).
                chunk.append({
                    "gather_id": gather_ids[number % gatherer_count],
                    "camera_name": f"教学楼{number // 40 + 1}-{number % 40 + 1:02d}教室",
                    "stream_prop": 1 if mp4 else 2,
                    "stream_url": "" if mp4 else f"rtsp://10.1.{number // 250 % 250}."
                                                 f"{number % 250 + 1}:554/Streaming/Channels/101",
                    "stream_mp4": f"/srv/video/course-{number:06d}.mp4" if mp4 else "",
                    "created": created,
                    "updated": created,
                })
            async with catalogue.db.write() as conn:
                await conn.execute(cameras.insert(), chunk)
        timings["cameras"] = time.perf_counter() - started

        async with catalogue.db.read() as conn:
            owners = (
                await conn.execute(cameras.select().with_only_columns(
                    cameras.c.camera_id, cameras.c.gather_id))
            ).all()
        started = time.perf_counter()
        for low in range(0, rows, CHUNK):
            chunk = []
            for number in range(low, min(low + CHUNK, rows)):
                camera_id, gather_id = owners[rng.randrange(len(owners))]
                created = now - 30 * 86400 + number * (30 * 86400 // max(rows, 1))
                day = time.strftime("%Y/%m/%d", time.gmtime(created))
                # The columns Records.add writes.
                chunk.append({
                    "gather_id": gather_id,
                    "camera_id": camera_id,
                    "file_fdfs": f"/files/records/{day}/{camera_id}-{number}.mp4",
                    "image_fdfs": f"/files/records/{day}/{camera_id}-{number}.jpg",
                    "file_size": rng.randrange(50_000_000, 900_000_000),
                    "duration": rng.randrange(600, 3600),
                    "created": created,
                    "updated": created,
                })
            async with catalogue.db.write() as conn:
                await conn.execute(records.insert(), chunk)
        timings["records"] = time.perf_counter() - started
    finally:
        await catalogue.close()
    return timings


# --------------------------------------------------------------------------- baseline server


def serve_baseline(port: int, body_file: Path) -> None:
    """The baseline: a bare aiohttp app answering one constant JSON body (run as a child process)."""
    from aiohttp import web

    body = body_file.read_bytes()

    async def constant(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    app = web.Application()
    app.router.add_get("/constant", constant)
    app.router.add_get("/healthz", constant)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --------------------------------------------------------------------------- wrk


@dataclass
class Target:
    name: str
    url: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)


# --------------------------------------------------------------------------- checks and report


def check_page(url: str, expected_rows: int) -> dict[str, Any]:
    answer = json.loads(http_get(url))
    if answer.get("err_code") != 0 or len(answer.get("data", [])) != expected_rows:
        raise RuntimeError(f"{url.split('?')[0]} answered {str(answer)[:300]}")
    return answer


def table(targets: list[Target], baseline: Target) -> str:
    base = baseline.median("rps")
    lines = [
        "| target | req/s (median) | p50 ms | p99 ms | ratio to baseline | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        rps = target.median("rps")
        lines.append(
            f"| {target.name} | {rps:,.0f} | {target.median('p50_ms'):.2f} | "
            f"{target.median('p99_ms'):.2f} | {rps / base:.3f} | "
            f"{sum(run.errors for run in target.runs)} |"
        )
    return "\n".join(lines)


def rounds_table(targets: list[Target]) -> str:
    rounds = len(targets[0].runs)
    lines = [
        "| target | " + " | ".join(f"round {n + 1} req/s" for n in range(rounds)) + " |",
        "|---|" + "---:|" * rounds,
    ]
    for target in targets:
        lines.append(
            f"| {target.name} | " + " | ".join(f"{run.rps:,.0f}" for run in target.runs) + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- writes under contention

REFUSED_ID = 10**12  # an id that names no row: the refused calls' target
#: What each writer does, in turn ("course" adds a course or deletes the one it added, "toggle"
#: stops or starts its camera); each writer starts at its own place in the cycle.
CYCLE = ("mod_camera", "course", "toggle", "del_record", "del_record (refused)", "course", "toggle",
         "mod_camera (refused)")
KINDS = ("mod_camera", "add_course", "del_course", "del_record", "start_camera", "stop_camera",
         "del_record (refused)", "mod_camera (refused)")
ALL_MUTATIONS = "all mutations"
GOAL_P99_MS = 100.0


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (sorted or not): p99 of 1,000 calls is the 990th."""
    ordered = sorted(values)
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[max(0, min(len(ordered), rank) - 1)]


@dataclass
class Writer:
    """One client's state: its camera (renamed, stopped and started), its course, its counter."""

    index: int
    camera_id: int
    started: bool = True
    course_id: int | None = None
    calls: int = 0

    def next_call(self, records: list[int]) -> tuple[str, str, dict[str, Any], int]:
        """(kind, endpoint, query, the err_code a right answer carries) of the next call."""
        step = CYCLE[(self.index + self.calls) % len(CYCLE)]
        self.calls += 1
        if step == "mod_camera":
            return step, "mod_camera", {"camera_id": self.camera_id,
                                        "camera_name": f"写入-{self.index}-{self.calls}"}, 0
        if step == "mod_camera (refused)":
            return step, "mod_camera", {"camera_id": REFUSED_ID, "camera_name": "x"}, 1010
        if step == "del_record (refused)":
            return step, "del_record", {"record_id": REFUSED_ID + self.index}, 1010
        if step == "del_record":
            if not records:
                raise RuntimeError("no seeded record left to delete: seed more --rows")
            return step, "del_record", {"record_id": records.pop()}, 0
        if step == "toggle":
            kind = "stop_camera" if self.started else "start_camera"
            self.started = not self.started
            return kind, kind, {"camera_id": self.camera_id}, 0
        if self.course_id is not None:
            course_id, self.course_id = self.course_id, None
            return "del_course", "del_course", {"course_id": course_id}, 0
        slot = self.calls % 1400  # a minute's course in a free slot of the day
        return "add_course", "add_course", {
            "camera_id": self.camera_id, "week_id": self.calls % 7,
            "start_time": f"{slot // 60:02d}:{slot % 60:02d}:00", "elapse_sec": 30}, 0

    def answered(self, kind: str, answer: dict[str, Any]) -> None:
        if kind == "add_course":
            self.course_id = answer["course_id"]


@dataclass
class Latencies:
    """Every call's latency (ms) by kind, and the answers that were not what the call expects."""

    by_kind: dict[str, list[float]] = field(default_factory=dict)
    in_order: list[float] = field(default_factory=list)  # every call's, as they answered
    calls_per_second: list[float] = field(default_factory=list)  # per round
    server_cpu_us: list[float] = field(default_factory=list)  # the server's CPU per call, per round
    wrong: int = 0
    first_wrong: str = ""

    def add(self, kind: str, ms: float) -> None:
        self.by_kind.setdefault(kind, []).append(ms)
        self.in_order.append(ms)

    def all(self) -> list[float]:
        return [ms for values in self.by_kind.values() for ms in values]


async def drive(urls: Any, writers: int, duration: float, into: Latencies) -> int:
    """``writers`` clients calling as fast as answers come for ``duration`` s; ``urls(n)`` gives
    client n's next (kind, url, expected err_code, on_answer). Returns how many calls were made."""
    import aiohttp
    from yarl import URL

    deadline = time.perf_counter() + duration
    made = 0

    async def client(number: int, session: aiohttp.ClientSession) -> None:
        nonlocal made
        while time.perf_counter() < deadline:
            kind, url, expected, on_answer = urls(number)
            started = time.perf_counter()
            async with session.get(URL(url, encoded=True)) as response:
                body = await response.read()
            into.add(kind, (time.perf_counter() - started) * 1000)
            made += 1
            answer = json.loads(body) if response.status == 200 else {}
            if answer.get("err_code") != expected:
                into.wrong += 1
                into.first_wrong = into.first_wrong or (
                    f"{kind}: HTTP {response.status} {body[:200]!r}")
            elif on_answer is not None:
                on_answer(kind, answer)

    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in
                range(writers)]
    try:
        await asyncio.gather(*(client(n, sessions[n]) for n in range(writers)))
    finally:
        for session in sessions:
            await session.close()
    into.calls_per_second.append(made / duration)
    return made


def mutation_urls(api: str, token: str, writers: list[Writer], records: list[int]) -> Any:
    def urls(number: int) -> tuple[str, str, int, Any]:
        writer = writers[number]
        kind, name, query, expected = writer.next_call(records)
        return kind, f"{api}/{name}?{urlencode({'token': token, **query})}", expected, \
            writer.answered

    return urls


def constant_urls(kind: str, url: str) -> Any:
    def urls(_number: int) -> tuple[str, str, int, Any]:
        return kind, url, 0, None

    return urls


def seeded_ids(data: Path, writers: int) -> tuple[list[int], list[int]]:
    """The cameras the writers own (one each, the oldest ones) and every seeded record, shuffled."""
    with contextlib.closing(sqlite3.connect(data / "relay.sqlite3")) as conn:
        camera_ids = [row[0] for row in conn.execute(
            "SELECT camera_id FROM cameras ORDER BY camera_id LIMIT ?", (writers,))]
        record_ids = [row[0] for row in conn.execute("SELECT record_id FROM records")]
    if len(camera_ids) < writers:
        raise RuntimeError(f"{writers} writers need {writers} cameras: seed more --rows")
    random.Random(7).shuffle(record_ids)
    return camera_ids, record_ids


def check_catalogue(data: Path, records_left: int, writers: list[Writer]) -> None:
    """The catalogue holds what the answers said: the records not deleted, the courses not deleted."""
    with contextlib.closing(sqlite3.connect(data / "relay.sqlite3")) as conn:
        records_now = conn.execute("SELECT count(*) FROM records").fetchone()[0]
        courses_now = sorted(row[0] for row in conn.execute("SELECT course_id FROM courses"))
    courses_open = sorted(w.course_id for w in writers if w.course_id is not None)
    if records_now != records_left or courses_now != courses_open:
        raise RuntimeError(f"catalogue disagrees with the answers: {records_now} records "
                           f"(expected {records_left}), courses {courses_now[:10]} "
                           f"(expected {courses_open[:10]})")


def mutation_table(results: dict[str, Latencies]) -> str:
    """Every call of every round, by target and kind; calls/s and CPU are medians of the rounds."""
    base_p50 = percentile(results["baseline"].all(), 0.5)
    base_p99 = percentile(results["baseline"].all(), 0.99)
    lines = [
        "| target | calls | calls/s | server CPU µs/call | p50 ms | p99 ms | max ms "
        "| p50 ÷ baseline | p99 ÷ baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, values: list[float], rate: str, cpu: str) -> None:
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        lines.append(f"| {name} | {len(values):,} | {rate} | {cpu} | {p50:.2f} | {p99:.2f} | "
                     f"{max(values):.2f} | {p50 / base_p50:.2f} | {p99 / base_p99:.2f} |")

    for name, label in (("baseline", "baseline (bare aiohttp)"),
                        ("read", "get_camera_status (a read)"), ("mutations", f"**{ALL_MUTATIONS}**")):
        latencies = results[name]
        row(label, latencies.all(), f"{statistics.median(latencies.calls_per_second):,.0f}",
            f"{statistics.median(latencies.server_cpu_us):,.0f}")
    for kind in KINDS:
        if kind in results["mutations"].by_kind:
            row(kind, results["mutations"].by_kind[kind], "", "")
    return "\n".join(lines)


def bench_mutations(args: argparse.Namespace, api: str, token: str, baseline_url: str,
                    data: Path, relay_pid: int, baseline_pid: int) -> tuple[str, bool, dict[str, Any]]:
    """Part 2: the table, whether every mutation kind's p99 met the goal, the raw numbers."""
    camera_ids, records = seeded_ids(data, args.writers)
    writers = [Writer(n, camera_ids[n]) for n in range(args.writers)]
    read_url = f"{api}/get_camera_status?{urlencode({'token': token, 'camera_id': camera_ids[0]})}"
    targets = [  # name, next call, the server's PID
        ("baseline", constant_urls("baseline", baseline_url), baseline_pid),  # a list_camera page
        ("read", constant_urls("read", read_url), relay_pid),
        ("mutations", mutation_urls(api, token, writers, records), relay_pid),
    ]
    results = {name: Latencies() for name, _, _ in targets}
    warmups = {name: Latencies() for name, _, _ in targets}
    if args.warmup > 0:
        for name, urls, _ in targets:
            asyncio.run(drive(urls, args.writers, args.warmup, warmups[name]))
    for number in range(args.rounds):
        for name, urls, pid in targets:
            before, cpu_before = len(results[name].in_order), cpu_seconds(pid)
            made = asyncio.run(drive(urls, args.writers, args.duration, results[name]))
            results[name].server_cpu_us.append((cpu_seconds(pid) - cpu_before) / made * 1e6)
            fresh = results[name].in_order[before:]  # this round's calls
            print(f"  round {number + 1}/{args.rounds} {name:<10} {made / args.duration:8,.0f} "
                  f"calls/s  CPU {results[name].server_cpu_us[-1]:6,.0f} µs/call  p50 "
                  f"{percentile(fresh, 0.5):8.2f} ms  p99 {percentile(fresh, 0.99):8.2f} ms  max "
                  f"{max(fresh):8.2f} ms", flush=True)
    for name, latencies in [*results.items(), *warmups.items()]:
        if latencies.wrong:
            raise RuntimeError(f"{latencies.wrong} {name} answers were wrong; first: "
                               f"{latencies.first_wrong}")
    check_catalogue(data, len(records), writers)  # every del_record took one id off the list
    mutations = results["mutations"].by_kind
    met = all(percentile(values, 0.99) <= GOAL_P99_MS for values in mutations.values())
    raw = {name: {"calls_per_second": latencies.calls_per_second,
                  "server_cpu_us": latencies.server_cpu_us,
                  "latency_ms": {kind: {"calls": len(values), "p50": percentile(values, 0.5),
                                        "p99": percentile(values, 0.99), "max": max(values)}
                                 for kind, values in latencies.by_kind.items()}}
           for name, latencies in results.items()}
    return mutation_table(results), met, raw


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds per target and round (default 10)")
    parser.add_argument("--rows", type=int, default=100_000,
                        help="cameras, and records, to seed (default 100000)")
    parser.add_argument("--gatherers", type=int, default=4, help="gatherers owning the cameras")
    parser.add_argument("--deep-page", type=int, default=5000,
                        help="cur of the deep list_camera page (default 5000; clamped to the "
                             "last page)")
    parser.add_argument("--warmup", type=float, default=2,
                        help="seconds on each target before measuring (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference target (version: the app without token or DB)")
    parser.add_argument("--writers", type=int, default=20,
                        help="concurrent clients of the writes under contention (default 20)")
    parser.add_argument("--skip-listings", action="store_true", help="leave out part 1 (wrk)")
    parser.add_argument("--skip-mutations", action="store_true",
                        help="leave out part 2 (writes under contention)")
    parser.add_argument("--backends", default=["sqlite"], metavar="B[,B]",
                        type=lambda text: [v for v in text.split(",") if v],
                        help="catalogues to run on, in turn: sqlite, postgresql (a fresh database "
                             "made and dropped for the run) or sqlite,postgresql (default sqlite)")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, metavar="URL",
                        help=f"the PostgreSQL server's admin database (default {POSTGRES_ADMIN})")
    parser.add_argument("--relay-dir", type=Path, default=ROOT,
                        help="seed with and run relay serve from this checkout (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "BODY_FILE"),
                        help=argparse.SUPPRESS)
    return parser


def bench(args: argparse.Namespace, processes: Processes, work: Path) -> int:
    """Each of ``--backends`` in turn, each with its own baseline; the worst exit status."""
    if not args.skip_listings and shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed")
    status = 0
    for backend in args.backends:
        if backend == "sqlite":
            status = max(status, bench_one(args, processes, work, backend))
            continue
        with fresh_postgres("api", args.postgres) as url:
            try:
                status = max(status, bench_one(args, processes, work, backend, url))
            finally:
                processes.stop_all()  # (the relay's connections go before the database does)
    return status


def bench_one(args: argparse.Namespace, processes: Processes, work: Path, backend: str,
              database_url: str = "") -> int:
    data = work / f"data-{backend}"
    stderr = work / f"relay-{backend}.stderr"
    print(f"\n== catalogue on {backend}", flush=True)
    print(f"seeding {args.rows:,} cameras and {args.rows:,} records in "
          f"{'a fresh PostgreSQL database' if database_url else data} …", flush=True)
    timings = asyncio.run(seed(data, args.rows, args.gatherers, database_url))
    print(f"  cameras {timings['cameras']:.1f}s, records {timings['records']:.1f}s", flush=True)

    where = ["--database-url", database_url] if database_url else []
    served = start_relay_serve(  # the access log goes to relay-BACKEND.stderr
        processes, data, stderr, ["--log-level", "warning", *where], cwd=args.relay_dir,
        stdin=None, token_timeout=10.0,
    )
    relay, relay_base, token = served.child, served.base, served.token
    print(f"relay serve PID {relay.pid} on {relay_base} (from {args.relay_dir})", flush=True)

    api = f"{relay_base}/api/v1"
    deep = max(1, min(args.deep_page, -(-args.rows // PER)))
    deep_rows = min(PER, args.rows - (deep - 1) * PER)
    first_rows = min(PER, args.rows)
    pages = [  # name, url, rows a full answer carries
        ("list_camera cur=1", f"{api}/list_camera?token={token}&cur=1&per={PER}", first_rows),
        (f"list_camera cur={deep}", f"{api}/list_camera?token={token}&cur={deep}&per={PER}",
         deep_rows),
        ("list_record cur=1", f"{api}/list_record?token={token}&cur=1&per={PER}", first_rows),
    ]
    urls = {name: url for name, url, _ in pages}
    expected = {name: rows for name, _, rows in pages}
    for name, url in urls.items():
        check_page(url, expected[name])
    # Reference, not a goal: the same app on a call that needs no token and no database.
    version_url = f"{api}/version"
    if json.loads(http_get(version_url)).get("err_code") != 0:
        raise RuntimeError("version did not answer err_code 0")

    body = http_get(urls["list_camera cur=1"])
    body_file = work / "baseline.json"
    body_file.write_bytes(body)
    base_port = free_port()
    with (work / "baseline.stderr").open("wb") as baseline_log:
        baseline_proc = processes.start(
            [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(base_port),
             str(body_file)],
            stdout=subprocess.DEVNULL, stderr=baseline_log,
        )
    baseline_url = f"http://127.0.0.1:{base_port}/constant"
    wait_for_http(baseline_url, baseline_proc)
    print(f"baseline PID {baseline_proc.pid} on {baseline_url} ({len(body):,} byte body)",
          flush=True)

    raw: dict[str, Any] = {"argv": sys.argv, "rows": args.rows, "nproc": os.cpu_count(),
                           "python": platform.python_version(), "body_bytes": len(body),
                           "backend": backend}
    if not args.skip_listings:
        raw["targets"] = bench_listings(args, processes, baseline_url, urls, expected, version_url,
                                        backend)
    if not args.skip_mutations and backend != "sqlite":
        print("\n(writes under contention: SQLite only, its check reads the file)", flush=True)
    elif not args.skip_mutations:
        print(f"\nwrites under contention: {args.writers} concurrent clients", flush=True)
        mutations, met, raw["mutations"] = bench_mutations(args, api, token, baseline_url, data,
                                                           relay.pid, baseline_proc.pid)
        print()
        print(f"{args.writers} concurrent clients (aiohttp, one connection each), "
              f"{args.rounds} rounds of {args.duration:g} s per target, every call's latency; "
              f"nproc {os.cpu_count()}, Python {platform.python_version()}")
        print(mutations)
        print(f"\ngoal (p99 of every mutation kind ≤ {GOAL_P99_MS:g} ms): "
              f"{'met' if met else 'missed'}")
    if args.json:
        path = args.json if backend == "sqlite" else args.json.with_suffix(f".{backend}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(raw, indent=2))
    processes.stop(relay)
    processes.stop(baseline_proc)
    relay_errors = stderr.read_text(errors="replace")
    problems = [line for line in relay_errors.splitlines()
                if " ERROR " in line or "Traceback" in line]
    if problems:
        print(f"\nrelay logged {len(problems)} error line(s); first: {problems[0]}",
              file=sys.stderr)
        return 1
    return 0


def bench_listings(args: argparse.Namespace, processes: Processes, baseline_url: str,
                   urls: dict[str, str], expected: dict[str, int],
                   version_url: str, backend: str = "sqlite") -> dict[str, Any]:
    """Part 1: wrk on the listings and the baseline in turn; prints the tables, returns raw runs."""
    baseline = Target("baseline (bare aiohttp)", baseline_url)
    targets = [baseline, *(Target(name, url) for name, url in urls.items())]
    if not args.no_reference:
        targets.append(Target("version (no token, no DB)", version_url))
    if args.warmup > 0:
        for target in targets:
            wrk(processes, target.url, args.warmup, args.connections, args.threads)
    for number in range(args.rounds):
        for target in targets:
            run = wrk(processes, target.url, args.duration, args.connections, args.threads)
            target.runs.append(run)
            print(f"  round {number + 1}/{args.rounds} {target.name:<26} {run.rps:9,.1f} req/s  "
                  f"p50 {run.p50_ms:8.2f} ms  p99 {run.p99_ms:8.2f} ms  errors {run.errors}",
                  flush=True)
    for name, url in urls.items():
        check_page(url, expected[name])  # still answering real pages (token not expired, …)

    print()
    print(f"Catalogue on {backend}: {args.rows:,} cameras / {args.rows:,} records; wrk "
          f"-t{args.threads} -c{args.connections} -d{max(1, round(args.duration))}s, "
          f"{args.rounds} rounds, medians; nproc {os.cpu_count()}, Python "
          f"{platform.python_version()}; load average at the end "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(table(targets, baseline))
    print()
    print(rounds_table(targets))
    return {target.name: [{key: getattr(run, key) for key in JSON_RUN_KEYS} for run in target.runs]
            for target in targets}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), Path(args.serve_baseline[1]))
        return 0
    if min(args.rounds, args.duration, args.rows, args.gatherers, args.writers) < 1:
        raise SystemExit("bench: --rounds, --duration, --rows, --gatherers and --writers must be "
                         "at least 1")
    if not args.backends or set(args.backends) - {"sqlite", "postgresql"}:
        raise SystemExit("bench: --backends takes sqlite, postgresql or both (comma-separated)")
    args.relay_dir = args.relay_dir.resolve()
    if not (args.relay_dir / "relay" / "__init__.py").is_file():
        raise SystemExit(f"bench: no relay package in --relay-dir {args.relay_dir}")
    sys.path.insert(0, str(args.relay_dir))  # seed() imports the catalogue of that checkout
    # Ctrl-C and SIGTERM both end in the cleanup below, even when started with SIGINT ignored
    # (as a background job of a non-interactive shell is).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        return bench(args, processes, work)
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish on a second Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
