"""A whole cluster of real processes for tests (and bench/cluster.py): a fresh PostgreSQL database,
a Redis server of its own (so a test may stop and start it), N ``relay serve`` nodes and real agents.

Each cluster has its own Redis on a free port (``--save ""``, no persistence), never the machine's
shared one: stopping it is then a test's right, and nothing it writes is anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import (
    _SESSION,
    POSTGRES,
    AgentProcess,
    ApiClient,
    RelayProcess,
    free_port,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
)
from live_system import Drain, no_tracebacks

from relay.cluster import cluster_secret

_clusters = iter(range(1, 1_000_000))


async def _pg(sql: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


class RedisServer:
    """A redis-server of our own on 127.0.0.1 (stopped and started again by tests)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
             "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


Api = ApiClient  # (the tests' one API client)


@dataclass
class Cluster:
    tmp: Path
    database_url: str
    redis: RedisServer
    args: tuple[str, ...]
    nodes: list[RelayProcess | None] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    agents: list[AgentProcess] = field(default_factory=list)
    credential: str = ""
    prefix: str = ""
    #: Each node's stderr as it comes (a full pipe would stall it), and the logs of ended runs.
    drains: dict[int, Drain] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    #: Nodes that did not end on SIGINT within 10 s (SIGKILLed).
    unstoppable: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"RELAY_DATABASE_URL": self.database_url, "RELAY_REDIS_URL": self.redis.url,
                "RELAY_REDIS_PREFIX": self.prefix}

    def start_node(self, index: int | None = None) -> RelayProcess:
        """Start node ``index`` (again, on its port and data dir), or a new one."""
        if index is None:
            index = len(self.nodes)
            self.nodes.append(None)
            self.ports.append(free_port())
        node = start_relay(self.tmp / f"node{index}", *self.args, env=self.env,
                           port=self.ports[index])
        self.drains[index] = Drain(node.process.stderr)  # type: ignore[arg-type]
        self.nodes[index] = node
        if node.credential:
            self.credential = node.credential
        return node

    def node(self, index: int) -> RelayProcess:
        node = self.nodes[index]
        assert node is not None, f"node {index} is not running"
        return node

    def api(self, index: int) -> Api:
        return Api(self.node(index).base_url, self.credential)

    def kill_node(self, index: int) -> str:
        """SIGKILL the node; what it logged."""
        self.node(index).process.send_signal(signal.SIGKILL)
        return self._ended(index)

    def stop_node(self, index: int) -> str:
        """SIGINT, then SIGKILL after 10 s (noted in ``unstoppable``: a test failure at the end);
        what it logged."""
        process = self.node(index).process
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            self.unstoppable.append(index)
        return self._ended(index)

    def _ended(self, index: int) -> str:
        self.node(index).process.wait(10)
        log = self.drains.pop(index).join()
        run = sum(name.startswith(f"node{index} ") for name in self.logs)
        self.logs[f"node{index} run {run}"] = log
        self.nodes[index] = None
        return log

    def agent_key(self, name: str = "school") -> str:
        return run_relay("agent-key", "add", name, "--data", str(self.tmp / "node0"),
                         env=self.env).stdout.strip()

    def start_agent(self, server: str, key: str, name: str = "agent", *extra: str) -> AgentProcess:
        agent = start_agent(server, key, self.tmp / name, *extra)
        self.agents.append(agent)
        return agent

    def secret(self) -> str:
        """The cluster secret as a node derives it (from the catalogue's signing key)."""
        async def key() -> bytes:
            import asyncpg

            connection = await asyncpg.connect(self.database_url.replace("+asyncpg", ""))
            try:
                return bytes.fromhex(await connection.fetchval(
                    "SELECT value FROM meta WHERE key = 'signing_key'"))
            finally:
                await connection.close()

        return cluster_secret(asyncio.run(key()))

    def close(self) -> dict[str, str]:
        """Stop everything started; the nodes' logs by name."""
        logs: dict[str, str] = {}
        for agent in self.agents:
            stop_agent(agent)
            logs[agent.data.name] = agent.log()
        for index, node in enumerate(self.nodes):
            if node is not None:
                self.stop_node(index)
        self.redis.stop()
        return {**logs, **self.logs}


def start_cluster(tmp: Path, nodes: int, *args: str, database_port: int = 5432) -> Cluster:
    """A fresh database and Redis, then ``nodes`` nodes one after the other (the first creates
    the catalogue and the administrator). The nodes reach PostgreSQL on ``database_port`` (a
    ``tcp_proxy.py`` in front of it, for a test that takes the database away)."""
    name = f"relay_test_{_SESSION}_cluster_{next(_clusters)}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    redis = RedisServer(tmp / "redis")
    cluster = Cluster(tmp, f"postgresql+asyncpg://postgres@127.0.0.1:{database_port}/{name}",
                      redis, args, prefix=f"t{os.getpid()}")
    try:
        redis.start()
        for _ in range(nodes):
            cluster.start_node()
    except BaseException:
        cluster.close()
        drop_cluster_database(cluster)
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(tmp: Path, nodes: int, *args: str) -> Iterator[Cluster]:
    """``start_cluster`` for one test: on the way out everything stops, the database goes, and
    no node or agent log may hold a traceback or the cluster secret."""
    cluster = start_cluster(tmp, nodes, *args)
    try:
        yield cluster
    finally:
        secret = cluster.secret()
        logs = cluster.close()
        drop_cluster_database(cluster)
    for name, log in logs.items():
        assert secret not in log, f"{name} logged the cluster secret"
    no_tracebacks(logs)
    waiting = [line for log in logs.values() for line in log.splitlines()
               if "shutdown still waiting" in line]  # (relay.tasks.report_if_slow)
    assert not cluster.unstoppable, \
        f"nodes {cluster.unstoppable} did not stop on SIGINT in 10 s: {waiting}"


def drop_cluster_database(cluster: Cluster) -> None:
    name = cluster.database_url.rsplit("/", 1)[1]
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- the balancer (deploy/haproxy.cfg) in front of a cluster's nodes --------------------------

BALANCER_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"

#: Global statements of the shipped config that need root or the machine's own paths.
_ROOT_ONLY = ("chroot ", "user ", "group ", "daemon", "stats socket ", "stats timeout ", "log ")


def render_balancer_config(source: str, port: int, stats_port: int, nodes: list[int]) -> str:
    """The shipped HAProxy config for a test: its frontend on 127.0.0.1:``port``, its stats page
    on ``stats_port``, one ``server`` line per node port in each backend (with the shipped lines'
    options), without the global lines that need root; logs to stderr. Fails loudly when the
    shipped file no longer has the lines it replaces."""
    import re

    out: list[str] = []
    section = ""
    replaced: dict[str, int] = {}
    for line in source.splitlines():
        word = line.strip()
        if line and not line[0].isspace() and not line.startswith("#"):
            section = word
            out.append(line)
            if word == "global":
                out += ["    log stderr format raw local0 info", "    maxconn 4096"]
            continue
        if section == "global" and (word.startswith(_ROOT_ONLY) or word.startswith("maxconn ")):
            continue
        if word.startswith("maxconn "):
            out.append("    maxconn 4096")  # a test's file limit, not a production one's
            continue
        if word.startswith("bind "):
            bound = {"frontend relay": port, "listen stats": stats_port}[section]
            if replaced.get(f"{section} bind"):
                continue  # one address per section in a test
            out.append(f"    bind 127.0.0.1:{bound}")
            replaced[f"{section} bind"] = 1
            continue
        if word.startswith("server "):
            if replaced.get(f"{section} server"):
                continue
            options = " ".join(word.split()[3:])  # "check", or "track relay_ready/node1"
            out += [f"    server node{index} 127.0.0.1:{node} "
                    + re.sub(r"\b(\w+)/node\w+", rf"\1/node{index}", options)
                    for index, node in enumerate(nodes)]
            replaced[f"{section} server"] = 1
            continue
        out.append(line)
    wanted = {"frontend relay bind", "listen stats bind", "backend relay_ready server",
              "backend relay_uploads server", "backend relay_live server",
              "backend relay_up server"}
    assert wanted <= set(replaced), f"{BALANCER_CONFIG} changed shape: {sorted(replaced)}"
    return "\n".join(out) + "\n"


class Balancer:
    """``haproxy -db`` with deploy/haproxy.cfg in front of a cluster's nodes, on 127.0.0.1."""

    def __init__(self, directory: Path, nodes: list[int]) -> None:
        self.directory = directory
        self.nodes = list(nodes)
        self.port = free_port()
        self.stats_port = free_port()
        self.config = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        """Start it and wait until every node is up in it (its checks passed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render_balancer_config(
            BALANCER_CONFIG.read_text(), self.port, self.stats_port, self.nodes))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([haproxy, "-f", str(self.config), "-db"],
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy ended ({self.process.returncode}):\n{self.log()}")
            try:
                states = self.states()
                if len(states) == len(self.nodes) and set(states.values()) == {"UP"}:
                    with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                        if response.status == 200:
                            return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"haproxy did not answer within {timeout} s:\n{self.log()}")

    def states(self, backend: str = "relay_ready") -> dict[str, str]:
        """Each node's check state in ``backend`` (UP, DOWN, ...), from the stats page's CSV."""
        import csv

        url = f"http://127.0.0.1:{self.stats_port}/;csv"
        with urllib.request.urlopen(url, timeout=2) as response:
            rows = csv.DictReader(response.read().decode().lstrip("# ").splitlines())
            return {row["svname"]: row["status"].split()[0] for row in rows
                    if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> str:
        """End it by its PID; what it logged."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        return self.log()
