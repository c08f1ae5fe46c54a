"""deploy/haproxy.cfg in front of a cluster of real processes (PostgreSQL, a Redis of its own,
three ``relay serve`` nodes, a real agent whose one ``--server`` is the balancer): API calls and the
console through it reach the agent wherever it is linked; node-to-node paths are refused at the
balancer however spelled; the node holding the agent's link SIGKILLed, the agent is linked again
through the balancer within 5 s and API calls work again; an upload's requests reach one node, and
so do a live viewer's;
Redis gone, the balancer falls back to
the nodes whose process is up, so the API still answers."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_system import Api, Balancer, Cluster, drop_cluster_database, start_cluster
from conftest import eventually
from live_system import metric, no_tracebacks

from relay.agent.demo_video import make_demo_video

LEASE = 3.0
ARGS = ("--command-timeout", "3", "--agent-heartbeat", "1", "--node-lease", str(LEASE),
        "--log-level", "info")
#: How fast the agent must be linked again after its node died (the brief's bound).
RELINK_WITHIN = 5.0


@dataclass
class Setup:
    cluster: Cluster
    balancer: Balancer
    password: str

    def api(self) -> Api:
        """An API client on the balancer (each request may reach another node)."""
        return Api(self.balancer.url, self.cluster.credential)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return make_demo_video(tmp_path_factory.mktemp("media") / "cam.mp4", seconds=2)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    cluster = start_cluster(tmp_path, 3, *ARGS)
    balancer = Balancer(tmp_path / "balancer", cluster.ports)
    try:
        balancer.start()
        yield Setup(cluster, balancer, cluster.node(0).password)
    finally:
        balancer_log = balancer.stop()
        logs = cluster.close()
        drop_cluster_database(cluster)
    assert "token=" not in balancer_log and "unionid=" not in balancer_log, balancer_log
    no_tracebacks(logs)


def ok(transmit: dict[str, Any]) -> dict[str, Any]:
    assert transmit["err_code"] == 0 and transmit["err_msg"] == "OK", transmit
    return transmit.get("data", {})


def status_of(base: str, method: str, path: str) -> int:
    """The status of one request sent as written (no client-side path clean-up)."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "2")
        connection.endheaders(b"{}")
        return connection.getresponse().status
    finally:
        connection.close()


def post_json(url: str) -> dict[str, Any]:
    """POST with no body; the JSON answer, an error's too (a 409 while the camera comes up)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, b"", method="POST"),
                                    timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        answer: dict[str, Any] = json.load(error)
        assert error.code == 409, (error.code, answer)
        return answer


def holders(cluster: Cluster) -> list[int]:
    """The indexes of the nodes the agent's link is on (by their ``relay_agents_connected``)."""
    return [index for index, node in enumerate(cluster.nodes)
            if node is not None and metric(node.base_url, "relay_agents_connected") == 1]


def gatherer_online(setup: Setup) -> bool:
    return [row["status"] for row in setup.api().gatherers()] == [1]


def sign_in_through(base: str, password: str) -> str:
    """Sign in to the console the way a browser does (form, CSRF cookie, POST); the page /admin
    then shows. Each request may reach another node."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(base + "/admin", timeout=10) as page:
        form = page.read().decode()
    match = re.search(r"name=csrf value='([^']+)'", form)
    assert match, form
    body = urllib.parse.urlencode({"csrf": match.group(1), "name": "admin",
                                   "password": password}).encode()
    with opener.open(base + "/admin/login", body, timeout=10) as signed_in:  # follows the 303
        assert signed_in.url.endswith("/admin"), signed_in.url
        return signed_in.read().decode()


def test_through_the_balancer_and_a_killed_node_s_agent_relinks(setup: Setup, video: Path) -> None:
    cluster, balancer = setup.cluster, setup.balancer
    agent = cluster.start_agent(balancer.url, cluster.agent_key())
    eventually(lambda: gatherer_online(setup), timeout=20)
    api = setup.api()
    [gatherer] = api.gatherers()
    gather_id = gatherer["gather_id"]

    # API calls through the balancer answer the agent's own transmit, wherever they land.
    answer = api.call("add_camera", camera_name="cam", gather_id=gather_id, stream_prop=1,
                      stream_mp4=str(video))
    camera_id = answer["camera_id"]
    assert ok(answer["transmit"]) == {"camera_id": camera_id, "started": 1}
    assert [c["camera_id"] for c in agent.state()["state"]["cameras"]] == [camera_id]
    for round_ in range(3):  # leastconn: these land on more than one node
        ok(api.call("mod_gather", gather_id=gather_id, name_set=f"through {round_}")["transmit"])
    assert ok(api.call("stop_camera", camera_id=camera_id)["transmit"])["started"] == 0
    assert ok(api.call("start_camera", camera_id=camera_id)["transmit"])["started"] == 1

    # A live viewer's calls through the balancer find their session (one node per camera).
    play = urllib.parse.urlsplit(api.call("play_camera", camera_id=camera_id)["play_url"])
    with urllib.request.urlopen(f"{balancer.url}{play.path}?{play.query}", timeout=10) as page:
        assert page.status == 200
    ticket = urllib.parse.parse_qs(play.query)["ticket"][0]
    session = eventually(lambda: post_json(
        f"{balancer.url}{play.path}/session?ticket={ticket}").get("session"), timeout=10)
    for _ in range(6):
        assert "ticket" in post_json(f"{balancer.url}{play.path}/heartbeat?session={session}")
    urllib.request.urlopen(urllib.request.Request(
        f"{balancer.url}{play.path}/bye?session={session}", b"", method="POST"), timeout=10)

    # The agent's snapshot upload (declare, PUT, commit) through the balancer: all of it on one
    # node (the nodes' data dirs are not shared here, so one elsewhere would answer 422).
    eventually(lambda: "committed as snapshot" in agent.log(), timeout=15)
    uploads = [line for line in balancer.log().splitlines() if " /agent/uploads" in line]
    assert uploads and not [line for line in uploads if " 200 " not in line], uploads

    # The console: its sign-in page, and a whole sign-in (cookies work whichever node answers).
    with urllib.request.urlopen(balancer.url + "/admin", timeout=10) as page:
        assert page.status == 200 and "name=csrf" in page.read().decode()
    assert "Signed in as <b>admin</b>" in sign_in_through(balancer.url, setup.password)

    # Node-to-node paths: refused at the balancer however spelled. Sent to a node itself, the
    # plain and the percent-encoded spellings reach its cluster route (401 without the secret).
    command, encoded = "/cluster/v1/commands", "/%63luster/v1/commands"
    assert status_of(cluster.node(0).base_url, "GET", command) == 401
    assert status_of(cluster.node(0).base_url, "GET", encoded) == 401
    for path in (command, encoded, "/cluster/v1/%63ommands", "//cluster/v1/commands",
                 "/./cluster/v1/commands", "/x/../cluster/v1/commands", "/CLUSTER/v1/commands",
                 "/cluster%2Fv1%2Fcommands", "/cluster/v1/commands?x=1",
                 f"http://127.0.0.1:{cluster.ports[0]}/cluster/v1/commands"):
        assert status_of(balancer.url, "GET", path) in (400, 403), path
    assert status_of(balancer.url, "GET", f"/cluster/v1/live/{camera_id}") == 403
    assert status_of(balancer.url, "GET", "/metrics") == 403
    assert status_of(balancer.url, "GET", "/readyz") == 200

    # The node holding the link dies: the agent links again through the balancer, elsewhere.
    [dead] = eventually(lambda: holders(cluster), timeout=5)
    killed = time.monotonic()
    cluster.kill_node(dead)
    [relinked] = eventually(lambda: holders(cluster), timeout=RELINK_WITHIN + 5, interval=0.05)
    took = time.monotonic() - killed
    print(f"agent linked again on node {relinked} {took:.2f} s after node {dead} was killed")
    assert relinked != dead and took <= RELINK_WITHIN, took
    eventually(lambda: balancer.states()[f"node{dead}"] == "DOWN", timeout=3)
    print(f"node {dead} out of the balancer {time.monotonic() - killed:.2f} s after the kill")
    ok(eventually(lambda: (t := setup.api().call(
        "mod_gather", gather_id=gather_id, name_set="after")["transmit"])["err_code"] == 0 and t,
        timeout=5))
    answer = setup.api().call("stop_camera", camera_id=camera_id)
    assert ok(answer["transmit"])["started"] == 0
    assert gatherer_online(setup)
    time.sleep(LEASE)  # the dead node's lease ran out and sweeps ran: still online
    assert gatherer_online(setup)
    with urllib.request.urlopen(balancer.url + "/admin", timeout=10) as page:
        assert page.status == 200


def test_redis_gone_the_balancer_falls_back_to_the_nodes_that_are_up(setup: Setup) -> None:
    cluster, balancer = setup.cluster, setup.balancer
    cluster.start_agent(balancer.url, cluster.agent_key())
    eventually(lambda: gatherer_online(setup), timeout=20)
    cluster.redis.stop()
    # Every /readyz answers 503, so no node is ready: the balancer uses the nodes that are up.
    eventually(lambda: set(balancer.states().values()) == {"DOWN"}, timeout=10)
    try:
        urllib.request.urlopen(balancer.url + "/readyz", timeout=5)
        raise AssertionError("/readyz answered 200 without Redis")
    except urllib.error.HTTPError as error:
        assert error.code == 503 and json.load(error)["cluster"] == "Redis unreachable"
    assert [row["gather_id"] for row in setup.api().gatherers()]  # the catalogue answers
    cluster.redis.start()
    eventually(lambda: set(balancer.states().values()) == {"UP"}, timeout=10)
    eventually(lambda: gatherer_online(setup), timeout=10)
