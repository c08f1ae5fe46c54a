"""Helpers the benchmark scripts share: child processes, HTTP polling, a fresh ``relay serve``, wrk.

Imported as ``common`` by ``bench/api.py``, ``bench/commands.py`` and ``bench/live.py`` (run as
scripts, so ``bench/`` is on ``sys.path``; their child roles import it the same way). Nothing here
imports the ``relay`` package: ``relay serve`` runs in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# --------------------------------------------------------------------------- PostgreSQL

#: This machine's PostgreSQL (trust auth on 127.0.0.1), where a bench makes its own database.
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin(statement: str, admin_url: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def fresh_postgres(tag: str, admin_url: str = POSTGRES_ADMIN) -> Iterator[str]:
    """A new, empty PostgreSQL database for one bench run (its SQLAlchemy URL for ``relay
    --database-url``), dropped afterwards whatever happens (``WITH (FORCE)``: a relay killed
    mid-run may still hold connections)."""
    name = f"relay_bench_{re.sub(r'[^a-z0-9_]', '_', tag.lower())}_{os.getpid()}_{int(time.time())}"
    _admin(f'CREATE DATABASE "{name}"', admin_url)
    try:
        host = admin_url.split("://", 1)[1].rsplit("/", 1)[0]
        yield f"postgresql+asyncpg://{host}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', admin_url)


# --------------------------------------------------------------------------- processes


class Processes:
    """Every child we start, so that cleanup stops exactly those, by PID (never by name).

    ``grace`` is how long :meth:`stop` waits after SIGINT before SIGKILL, ``kill_wait`` how long it
    then waits for the killed child; ``close_pipes`` also closes the parent's ends of the child's
    pipes, so long runs that start many children do not pile up open descriptors."""

    def __init__(self, grace: float = 10.0, kill_wait: float = 5.0, close_pipes: bool = False) -> None:
        self._children: list[subprocess.Popen[Any]] = []
        self.grace = grace
        self.kill_wait = kill_wait
        self.close_pipes = close_pipes

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv, **kwargs)``, remembered so that :meth:`stop_all` stops it."""
        child = subprocess.Popen(argv, **kwargs)
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[Any], grace: float | None = None,
             sig: int = signal.SIGINT) -> None:
        """Ask ``child`` to stop with ``sig`` (SIGINT: a clean shutdown), SIGKILL it after ``grace``."""
        if child.poll() is None:
            try:
                os.kill(child.pid, sig)
                child.wait(self.grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(self.kill_wait)
            except ProcessLookupError:
                pass
        if self.close_pipes:
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        """Stop every child still remembered, newest first; one failure does not stop the rest."""
        for child in reversed(list(self._children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep going: the others must stop too
                print(f"bench: could not stop PID {child.pid}: {exc}", file=sys.stderr)


def interrupt(signum: int, _frame: Any) -> None:
    """A signal handler (for SIGTERM) that ends a run the way Ctrl-C does, through its cleanup."""
    raise KeyboardInterrupt(f"signal {signum}")


def drain(stream: Any) -> None:
    """Keep reading a child's pipe in the background so it can never block on a full pipe."""

    def run() -> None:
        with contextlib.suppress(OSError, ValueError):
            while stream.read(65536):
                pass

    threading.Thread(target=run, daemon=True).start()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads) in clock ticks: what it has cost so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, in seconds (:func:`cpu_ticks` / ``SC_CLK_TCK``)."""
    return cpu_ticks(pid) / CLOCK_TICKS


# --------------------------------------------------------------------------- HTTP and waiting


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a server we are about to start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> bytes:
    """The body of a GET (stdlib only, so checks do not depend on the client under test)."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read()


def http_json(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """A GET's body as JSON (the relay's API answers errors as HTTP 200 with ``err_code``)."""
    return json.loads(http_get(url, timeout))


def wait_until(check: Callable[[], T], timeout: float, what: str = "condition",
               interval: float = 0.05) -> T:
    """Call ``check`` every ``interval`` s until it returns something true, and return that; at
    least once, and once more at the deadline, so a slow machine is not failed too early."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(interval)


def wait_for_http(url: str, child: subprocess.Popen[Any], timeout: float = START_TIMEOUT) -> None:
    """Wait until a server we started answers ``url``; fail at once if the process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"PID {child.pid} exited with {child.returncode} while starting")
        try:
            http_get(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


# --------------------------------------------------------------------------- relay serve


def read_banner(child: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> str:
    """Read ``relay serve``'s stdout until its first-start banner has named the API credential
    (the only way a fresh data dir's credential is told); the text read so far."""
    assert child.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    text = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if re.search(rb"API credential:\s+\S+\s", text):
                return text.decode()
            if not selector.select(timeout=0.5):
                if child.poll() is not None:
                    break
                continue
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk
    finally:
        selector.close()
    raise RuntimeError(f"no API credential in relay's first-start banner: {text.decode()[:500]!r}")


@dataclass
class RelayServe:
    """A running ``relay serve`` that :func:`start_relay_serve` started, and an API token for it."""

    child: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    token: str


def start_relay_serve(processes: Processes, data: Path, log: Path, flags: Sequence[str] = (), *,
                      cwd: Path = ROOT, stdin: int | None = subprocess.DEVNULL,
                      token_timeout: float = 30.0) -> RelayServe:
    """``relay serve --data DATA`` on a free 127.0.0.1 port (stderr to ``log``), run from ``cwd``
    (``python -m relay`` imports the ``relay`` package there first); reads the API credential from
    its first-start banner, waits for /healthz and exchanges the credential for a token, so every
    bench measures a relay in the same state. ``stdin=None`` lets it inherit ours."""
    port = free_port()
    with log.open("wb") as stderr:
        child = processes.start(
            [sys.executable, "-m", "relay", "serve", "--data", str(data),
             "--listen", f"127.0.0.1:{port}", *flags],
            stdout=subprocess.PIPE, stderr=stderr, stdin=stdin, cwd=cwd,
        )
    banner = read_banner(child)
    drain(child.stdout)
    credential = re.search(r"API credential:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    wait_for_http(base + "/healthz", child)
    answer = http_json(f"{base}/api/v1/access_token?{urlencode({'unionid': credential})}",
                       timeout=token_timeout)
    if answer.get("err_code") != 0:
        raise RuntimeError(f"access_token answered {answer}")
    return RelayServe(child, base, answer["token"])


def restart_relay_serve(processes: Processes, data: Path, log: Path, base: str,
                        flags: Sequence[str] = (), *, cwd: Path = ROOT,
                        timeout: float = START_TIMEOUT, interval: float = 0.02
                        ) -> tuple[subprocess.Popen[bytes], float]:
    """``relay serve`` again on a data dir a relay has served before, on the same ``base``
    (http://127.0.0.1:PORT), stderr to ``log``. There is no first-start banner then, so it only
    waits for /healthz (polled every ``interval`` s): the child and the monotonic time /healthz
    first answered."""
    port = base.rsplit(":", 1)[1]
    with log.open("wb") as stderr:
        child = processes.start(
            [sys.executable, "-m", "relay", "serve", "--data", str(data),
             "--listen", f"127.0.0.1:{port}", *flags],
            stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL, cwd=cwd,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"PID {child.pid} exited with {child.returncode} while starting")
        try:
            http_get(base + "/healthz", timeout=1)
            return child, time.monotonic()
        except OSError:
            time.sleep(interval)
    raise TimeoutError(f"{base}/healthz did not answer within {timeout:.0f}s")


# --------------------------------------------------------------------------- wrk


@dataclass
class Run:
    """One wrk run's numbers (latencies from ``--latency``; errors: socket errors + non-2xx/3xx)."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    """A wrk duration (``512.00us``, ``1.20ms``, ``2.01s``) in ms."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unreadable wrk time {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Run:
    """The numbers of ``wrk --latency`` output; raises rather than report a run it cannot read."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"unreadable wrk output:\n{output}")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(value) for value in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return Run(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)),
               errors)


def wrk(processes: Processes, url: str, duration: float, connections: int, threads: int = 1,
        options: Sequence[str] = (), slack: float = 30.0) -> Run:
    """One ``wrk --latency`` run of ``duration`` s (whole seconds, at least 1) against ``url``, as a
    child we can stop; ``options`` go to wrk as they are, ``slack`` is how long past the duration
    it may take before we give up on it."""
    seconds = max(1, round(duration))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", *options, "--latency", url]
    child = processes.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = child.communicate(timeout=seconds + slack)
    finally:
        processes.stop(child)
    if child.returncode != 0:
        raise RuntimeError(f"wrk failed ({child.returncode}):\n{output}")
    return parse_wrk(output)


# --------------------------------------------------------------------------- cluster (bench/cluster.py)


def start_redis(processes: Processes, directory: Path, timeout: float = 10.0
                ) -> tuple[subprocess.Popen[Any], str]:
    """A redis-server of this bench's own on a free 127.0.0.1 port (no persistence, files in
    ``directory``), started through ``processes`` so it is stopped by PID; the child and its URL. Never the
    machine's shared Redis: nothing a bench writes there is anyone else's."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child = processes.start(
        [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
         str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"redis-server exited with {child.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return child, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"redis-server on port {port} did not answer within {timeout:g} s")


def metric(base: str, name: str, timeout: float = 30.0) -> float:
    """One unlabelled value of a relay's ``/metrics`` (NaN when it is not there)."""
    text = http_get(base + "/metrics", timeout=timeout).decode()
    match = re.search(rf"^{re.escape(name)}\s+(\S+)", text, re.M)
    return float(match.group(1)) if match else float("nan")


#: Other benches that would share this machine's 2 cores with a measurement (another helper's).
OTHER_BENCHES = r"bench/(commands|api|live|record|cluster|fanout)\.py"


def _started(pid: int) -> int:
    """When a process started (clock ticks since boot), from ``/proc/PID/stat``."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def wait_for_other_benches(limit: float = 1800.0, interval: float = 10.0) -> float:
    """Wait while ``pgrep -f OTHER_BENCHES`` finds another bench running that started before this
    one (at most ``limit`` s, then measure anyway); the seconds waited. Only earlier ones count,
    so two benches never wait for each other; our own children (``bench/commands.py --role``)
    do not count."""
    own = {os.getpid()}
    mine = _started(os.getpid())
    waited = 0.0
    while waited < limit:
        found = subprocess.run(["pgrep", "-f", OTHER_BENCHES], capture_output=True, text=True)
        others = []
        for pid in (int(word) for word in found.stdout.split()):
            try:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                earlier = (_started(pid), pid) < (mine, os.getpid())
            except (OSError, ValueError, IndexError):
                continue
            if pid not in own and parent not in own and earlier:
                others.append(pid)
        if not others:
            return waited
        if waited == 0:
            print(f"bench: another bench is running (PIDs {others}); waiting", flush=True)
        time.sleep(interval)
        waited += interval
    print(f"bench: still another bench after {limit:g} s; measuring anyway", flush=True)
    return waited
