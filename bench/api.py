"""Benchmark the API's listing endpoints against a bare aiohttp baseline, with wrk.

    .venv/bin/python bench/api.py [--rounds 3] [--duration 10] [--rows 100000]

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
   median req/s to the baseline's.

Every process it starts is stopped by its PID, and the temporary dir removed, on the way out,
Ctrl-C and failures included. Each answer is checked (``err_code`` 0, a full page) before and after
the measurements, since the API answers errors with HTTP 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
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

from common import (
    Processes,
    Run,
    free_port,
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


async def seed(data: Path, rows: int, gatherer_count: int) -> dict[str, float]:
    """Fill a fresh catalogue in ``data`` with ``rows`` cameras and ``rows`` records."""
    from relay.catalogue import Catalogue
    from relay.catalogue.schema import cameras, records
    from relay.config import load_settings

    settings = load_settings({"data": data}, environ={})
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


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds of wrk per target and round (default 10)")
    parser.add_argument("--rows", type=int, default=100_000,
                        help="cameras, and records, to seed (default 100000)")
    parser.add_argument("--gatherers", type=int, default=4, help="gatherers owning the cameras")
    parser.add_argument("--deep-page", type=int, default=5000,
                        help="cur of the deep list_camera page (default 5000; clamped to the "
                             "last page)")
    parser.add_argument("--warmup", type=float, default=2,
                        help="seconds of wrk on each target before measuring (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference target (version: the app without token or DB)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "BODY_FILE"),
                        help=argparse.SUPPRESS)
    return parser


def bench(args: argparse.Namespace, processes: Processes, work: Path) -> int:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed")
    data = work / "data"

    print(f"seeding {args.rows:,} cameras and {args.rows:,} records in {data} …", flush=True)
    timings = asyncio.run(seed(data, args.rows, args.gatherers))
    print(f"  cameras {timings['cameras']:.1f}s, records {timings['records']:.1f}s", flush=True)

    served = start_relay_serve(  # the access log goes to relay.stderr
        processes, data, work / "relay.stderr", ["--log-level", "warning"], stdin=None,
        token_timeout=10.0,
    )
    relay, relay_base, token = served.child, served.base, served.token
    print(f"relay serve PID {relay.pid} on {relay_base}", flush=True)

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
    print(f"{args.rows:,} cameras / {args.rows:,} records; wrk -t{args.threads} "
          f"-c{args.connections} -d{max(1, round(args.duration))}s, {args.rounds} rounds, medians; "
          f"nproc {os.cpu_count()}, Python {platform.python_version()}")
    print(table(targets, baseline))
    print()
    print(rounds_table(targets))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "argv": sys.argv, "rows": args.rows, "nproc": os.cpu_count(),
            "python": platform.python_version(), "body_bytes": len(body),
            "targets": {target.name: [{key: getattr(run, key) for key in JSON_RUN_KEYS}
                                      for run in target.runs] for target in targets},
        }, indent=2))
    relay_errors = (work / "relay.stderr").read_text(errors="replace")
    problems = [line for line in relay_errors.splitlines()
                if " ERROR " in line or "Traceback" in line]
    if problems:
        print(f"\nrelay logged {len(problems)} error line(s); first: {problems[0]}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), Path(args.serve_baseline[1]))
        return 0
    if args.rounds < 1 or args.duration < 1 or args.rows < 1 or args.gatherers < 1:
        raise SystemExit("bench: --rounds, --duration, --rows and --gatherers must be at least 1")
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
