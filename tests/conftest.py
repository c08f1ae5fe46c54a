"""Shared fixtures.

``api`` runs the real application in this process on a real socket, with a clock the test can move
(token expiry is tested without sleeping), once over a real SQLite file in a temporary data dir and
once over this machine's real PostgreSQL (127.0.0.1:5432, trust auth): a fresh database per test,
named after this session, dropped after it.
``relay_server`` starts a real ``relay serve`` process for tests that need the command itself.
``browser`` is the headless Chromium of the live-video tests (see live_system.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, async_playwright

from relay.config import load_settings
from relay.logs import AccessLogger
from relay.server import build_app, open_services
from relay.services import Services

RELAY = [sys.executable, "-m", "relay"]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--allow-loopback-in-peer-connection",
                 "--autoplay-policy=no-user-gesture-required"]


class Clock:
    """A clock the test sets; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Api:
    """A running app plus the helpers tests use to drive it the way a client would."""

    client: TestClient
    services: Services
    clock: Clock
    credential: str
    token: str

    async def call(self, name: str, **params: Any) -> dict[str, Any]:
        """Query-string form; the admin token is added unless ``token`` is given (None drops it)."""
        params.setdefault("token", self.token)
        query = {key: str(value) for key, value in params.items() if value is not None}
        response = await self.client.get(f"/api/v1/{name}", params=query)
        assert response.status == 200, await response.text()
        return await response.json()

    async def call_path(self, name: str, **params: Any) -> dict[str, Any]:
        """Path form: /api/v1/<name>/k1/v1/k2/v2."""
        from urllib.parse import quote

        params.setdefault("token", self.token)
        tail = "".join(
            f"/{quote(key, safe='')}/{quote(str(value), safe='')}"
            for key, value in params.items()
            if value is not None
        )
        response = await self.client.get(f"/api/v1/{name}{tail}")
        assert response.status == 200, await response.text()
        return await response.json()

    async def gatherer(self, mac: str = "00:11:22:33:44:55", **facts: str) -> int:
        """A gatherer as an agent's registration creates it (agents arrive with issue 3)."""
        return await self.services.catalogue.gatherers.register(mac, **facts)

    async def camera(self, gather_id: int, name: str = "一班", **extra: Any) -> int:
        answer = await self.call(
            "add_camera", camera_name=name, gather_id=gather_id, stream_prop=1,
            stream_mp4="/videos/a.mp4", **extra,
        )
        assert answer["err_code"] == 0, answer
        return answer["camera_id"]

    def store(self, relative: str, content: bytes) -> str:
        """Write a stored file and return its fdfs path."""
        path = self.services.settings.files_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return self.services.storage.fdfs_of(path)


POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
_SESSION = secrets.token_hex(4)
_databases = itertools.count(1)


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test (its SQLAlchemy URL), dropped afterwards."""
    import asyncpg

    name = f"relay_test_{_SESSION}_{next(_databases)}"
    admin = await asyncpg.connect(POSTGRES)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """``fresh_postgres`` for synchronous code (a relay process's RELAY_DATABASE_URL): on a loop
    of its own, kept open while the database is in use (a loop that ends would finalize the
    context manager, dropping the database at once)."""
    loop = asyncio.new_event_loop()
    database = fresh_postgres()
    try:
        yield loop.run_until_complete(database.__aenter__())
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def relay_backend(request, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:  # type: ignore[no-untyped-def]
    """A relay process's environment and its catalogue's URL, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield {}, f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'relay.sqlite3').resolve()}"
        return
    with postgres_database() as url:
        yield {"RELAY_DATABASE_URL": url}, url


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(request, tmp_path: Path, aiohttp_client) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with contextlib.AsyncExitStack() as stack:
        backend: dict[str, Any] = {}
        if request.param == "postgresql":
            backend["database_url"] = await stack.enter_async_context(fresh_postgres())
        yield await stack.enter_async_context(_api(tmp_path, aiohttp_client, backend))


@contextlib.asynccontextmanager
async def _api(tmp_path: Path, aiohttp_client, backend: dict[str, Any]  # type: ignore[no-untyped-def]
               ) -> AsyncIterator[Api]:
    clock = Clock()
    settings = load_settings({"data": tmp_path / "data", **backend}, environ={})
    services = await open_services(settings, clock)
    account = await services.catalogue.accounts.add("admin", "correct horse", is_admin=True)
    server = TestServer(build_app(services))
    await server.start_server(access_log_class=AccessLogger)  # our redacting access log
    client = await aiohttp_client(server)
    # play_url and storage_addr must name the port the test server really listens on.
    port = client.server.port
    services.settings = load_settings(
        {"data": tmp_path / "data", "listen": f"127.0.0.1:{port}", **backend}, environ={}
    )
    answer = await (await client.get(f"/api/v1/access_token?unionid={account.credential}")).json()
    try:
        yield Api(client, services, clock, account.credential, answer["token"])
    finally:
        await client.close()  # the app's cleanup closes the catalogue before its database goes


class ApiClient:
    """An API client over real HTTP, as a customer's program would be (one node, or a balancer)."""

    def __init__(self, base: str, credential: str) -> None:
        self.base = base
        self.token = self.get("access_token", unionid=credential)["token"]

    def get(self, name: str, **params: Any) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/api/v1/{name}?{urlencode(params)}",
                                    timeout=30) as response:
            return json.load(response)

    def call(self, name: str, **params: Any) -> dict[str, Any]:
        answer = self.get(name, token=self.token, **params)
        assert answer["err_code"] == 0, answer
        return answer

    def gatherers(self) -> list[dict[str, Any]]:
        return self.call("list_gather")["data"]

    def gatherer(self) -> dict[str, Any]:
        [row] = self.gatherers()
        return row

    def status(self, camera_id: int) -> int:
        return self.call("get_camera_status", camera_id=camera_id)["status"]

    def records(self, camera_id: int) -> list[dict[str, Any]]:
        """The camera's recordings, oldest id first."""
        answer = self.call("list_record", camera_id=camera_id, per=100)
        return sorted(answer["data"], key=lambda row: row["record_id"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RelayProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    data: Path
    password: str
    credential: str
    banner: str


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def start_relay(data: Path, *extra: str, env: dict[str, str] | None = None,
                port: int | None = None, host: str = "127.0.0.1") -> RelayProcess:
    port = port or free_port()
    process = subprocess.Popen(
        [*RELAY, "serve", "--data", str(data), "--listen", f"{host}:{port}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    base = f"http://{host}:{port}"
    wait_for_http(base + "/healthz", process)
    # A first start prints the admin password and credential before it listens.
    os.set_blocking(process.stdout.fileno(), False)  # type: ignore[union-attr]
    try:
        banner = os.read(process.stdout.fileno(), 1 << 16).decode()  # type: ignore[union-attr]
    except BlockingIOError:
        banner = ""
    password = re.search(r"password: (\S+)", banner)
    credential = re.search(r"API credential:\s+(\S+)", banner)
    return RelayProcess(
        process, base, data,
        password.group(1) if password else "",
        credential.group(1) if credential else "",
        banner,
    )


def stop_relay(relay: RelayProcess) -> str:
    """Stop the process we started (by PID) and return what it logged."""
    if relay.process.poll() is None:
        relay.process.send_signal(signal.SIGINT)
        try:
            relay.process.wait(10)
        except subprocess.TimeoutExpired:
            relay.process.kill()
            relay.process.wait()
    return relay.process.stderr.read().decode() if relay.process.stderr else ""


@pytest.fixture
def relay_server(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = start_relay(tmp_path / "data")
    yield relay
    stop_relay(relay)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def launch_chromium(executable: str = "/usr/bin/chromium") -> AsyncIterator[Browser]:
    """Debian's Chromium (or a wrapper that starts it) driven by Playwright, closed after."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """One Chromium per test (test_admin_browser.py has its own, with its own flags)."""
    async with launch_chromium() as chromium:
        yield chromium


def run_relay(*args: str, env: dict[str, str] | None = None, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    """Run one ``relay`` subcommand to completion."""
    result = subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    data: Path
    log_path: Path

    def state(self) -> dict[str, Any]:
        """The desired state the agent holds (its state file)."""
        import json

        return json.loads((self.data / "state.json").read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_agent(server: str, key: str, data: Path, *extra: str) -> AgentProcess:
    data.mkdir(parents=True, exist_ok=True)
    log_path = data.parent / f"{data.name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*RELAY, "agent", "--server", server, "--data", str(data), *extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            env={**os.environ, "RELAY_AGENT_KEY": key},
        )
    return AgentProcess(process, data, log_path)


def stop_agent(agent: AgentProcess, kill: bool = False) -> None:
    if agent.process.poll() is None:
        if kill:
            agent.process.kill()
        else:
            agent.process.terminate()
        try:
            agent.process.wait(10)
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()


def eventually(check, timeout: float = 15.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout} s"
            return value
        time.sleep(interval)


@pytest.fixture(params=["sqlite", "postgresql"])
async def catalogue_url(request, tmp_path: Path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A catalogue's URL on each backend: a SQLite file in ``tmp_path/data`` (where ``relay
    --data tmp_path/data`` finds it), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.sqlite3'}"
        return
    async with fresh_postgres() as url:
        yield url


@pytest.fixture
async def catalogue(catalogue_url: str):  # type: ignore[no-untyped-def]
    """A ``Catalogue`` on each backend; on PostgreSQL its listener is up (its cache is on)."""
    from relay.catalogue import Catalogue

    opened = await Catalogue.open(catalogue_url)
    try:
        if opened.hot.listener is not None:
            await opened.hot.listener.wait_connected(10)
        yield opened
    finally:
        await opened.close()
