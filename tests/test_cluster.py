"""A cluster of real processes: PostgreSQL, a Redis of its own, three ``relay serve`` nodes, real
agents. API calls on any node reach the agent wherever it is linked and answer its own transmit;
presence is right on every node; a dead node's gatherers go offline; node-to-node requests need
the cluster secret; Redis stopped and started again, the nodes recover by themselves."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster_system import Cluster, running_cluster
from conftest import eventually, run_relay

from relay.agent.demo_video import make_demo_video

LEASE = 3.0
ARGS = ("--command-timeout", "3", "--agent-heartbeat", "1", "--node-lease", str(LEASE),
        "--log-level", "info")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return make_demo_video(tmp_path_factory.mktemp("media") / "cam.mp4", seconds=2)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3, *ARGS) as cluster:
        yield cluster


def post_json(url: str, body: dict[str, Any], secret: str) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {
        "Content-Type": "application/json", "Authorization": f"Bearer {secret}"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def ok(transmit: dict[str, Any]) -> dict[str, Any]:
    assert transmit["err_code"] == 0 and transmit["err_msg"] == "OK", transmit
    return transmit.get("data", {})


def online_on_every_node(cluster: Cluster, want: int) -> bool:
    return all([row["status"] for row in cluster.api(index).gatherers()] == [want]
               for index, node in enumerate(cluster.nodes) if node is not None)


def test_api_calls_on_every_node_answer_the_agents_transmit(cluster: Cluster, video: Path) -> None:
    key = cluster.agent_key()
    agent = cluster.start_agent(cluster.node(1).base_url, key)  # linked to node 1
    eventually(lambda: online_on_every_node(cluster, 1), timeout=20)
    [gatherer] = cluster.api(0).gatherers()
    gather_id = gatherer["gather_id"]
    camera_ids = []
    for index in (0, 1, 2):  # through another node, the holder, another node
        api = cluster.api(index)
        answer = api.call("add_camera", camera_name=f"cam{index}", gather_id=gather_id,
                          stream_prop=1, stream_mp4=str(video))
        assert ok(answer["transmit"]) == {"camera_id": answer["camera_id"], "started": 1}
        camera_ids.append(answer["camera_id"])
        assert [c["camera_id"] for c in agent.state()["state"]["cameras"]] == camera_ids
        assert ok(api.call("stop_camera", camera_id=answer["camera_id"])["transmit"]
                  )["started"] == 0
        held = {c["camera_id"]: c for c in agent.state()["state"]["cameras"]}
        assert held[answer["camera_id"]]["started"] == 0
    # What the agent's link tells (its recording reports, version, peer) is known on every node.
    secret = cluster.secret()
    facts = [post_json(cluster.node(index).base_url + "/cluster/v1/facts",
                       {"gather_ids": [gather_id]}, secret)["facts"] for index in range(3)]
    assert facts[0] == facts[2] == {} and facts[1][str(gather_id)]["version"]
    eventually(lambda: str(camera_ids[0]) in post_json(
        cluster.node(1).base_url + "/cluster/v1/facts", {"gather_ids": [gather_id]},
        secret)["facts"][str(gather_id)]["recordings"], timeout=15)
    statuses = [cluster.api(index).call("get_camera_status", camera_id=camera_ids[0])
                for index in (0, 1, 2)]
    assert statuses[0] == statuses[1] == statuses[2], statuses
    for index in (0, 1, 2):
        with urllib.request.urlopen(cluster.node(index).base_url + "/readyz", timeout=5) as r:
            assert json.load(r)["status"] == "ok"


async def _command_link(url: str, headers: dict[str, str], messages: list[str]
                        ) -> tuple[int, list[Any]]:
    """Open a node's command link, send these messages, and tell the handshake's status and what
    came back (answers, then the close code when the node ended the link)."""
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(
                ws_close=5))
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status, []
        got: list[Any] = []
        async with ws:
            for message in messages:
                await ws.send_str(message)
                reply = await ws.receive(timeout=5)
                got.append(json.loads(reply.data) if reply.type == aiohttp.WSMsgType.TEXT
                           else ws.close_code)
        return 101, got


def test_node_to_node_requests_need_the_cluster_secret(cluster: Cluster) -> None:
    url = cluster.node(0).base_url + "/cluster/v1/commands"
    command = json.dumps({"id": 7, "gather_id": 1, "action": "camera.stop",
                          "data": {"camera_id": 1}, "timeout": 1})

    def link(headers: dict[str, str], *messages: str) -> tuple[int, list[Any]]:
        return asyncio.run(_command_link(url, headers, list(messages)))

    assert link({}, command)[0] == 401
    assert link({"Authorization": "Bearer " + "0" * 64}, command)[0] == 401
    assert link({"Authorization": "Basic eDp5"}, command)[0] == 401
    assert link({"Authorization": "Bearer ünïcode"}, command)[0] == 401
    for path in ("/cluster/v1/facts", "/cluster/v1/live/1"):  # the other node-to-node doors
        request = urllib.request.Request(cluster.node(0).base_url + path, b"{}",
                                         {"Authorization": "Bearer nope"},
                                         method="POST" if path.endswith("facts") else "GET")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
    secret = cluster.secret()
    good = {"Authorization": f"Bearer {secret}"}
    wrong = [json.dumps({"id": n, **fields}) for n, fields in enumerate((
        {"gather_id": "1", "action": "camera.stop", "data": {}, "timeout": 1},
        {"gather_id": 1, "action": "rm -rf", "data": {}, "timeout": 1},
        {"gather_id": 1, "action": "camera.stop", "data": {}, "timeout": "NaN"},
        {"gather_id": 1, "action": "camera.stop", "data": [], "timeout": 1},
        {"gather_id": 1, "action": "camera.stop", "data": {}}))]
    status, answers = link(good, command, *wrong)
    assert status == 101 and answers[0] == {"id": 7, "moved": True}  # nobody holds 1 here
    assert [answer["id"] for answer in answers[1:]] == list(range(len(wrong)))
    assert all("expected" in answer["refused"] for answer in answers[1:]), answers
    for not_a_command in ("", "[]", "{", json.dumps({"id": "7"}), json.dumps({"gather_id": 1})):
        assert link(good, not_a_command) == (101, [1003]), not_a_command
    facts_url = cluster.node(0).base_url + "/cluster/v1/facts"
    assert post_json(facts_url, {"gather_ids": [1, 2]}, secret) == {"facts": {}}
    for bad in ({"gather_ids": "1"}, {"gather_ids": [1.5]}, {}, {"gather_ids": [True]}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            post_json(facts_url, bad, secret)
        assert refused.value.code == 400


def test_a_killed_node_s_gatherers_go_offline_and_come_back(cluster: Cluster) -> None:
    key = cluster.agent_key()
    cluster.start_agent(cluster.node(2).base_url, key)
    eventually(lambda: online_on_every_node(cluster, 1), timeout=20)
    killed = time.monotonic()
    cluster.kill_node(2)
    # Noticed within the lease and two sweeps (a third of the lease each), plus a poll.
    eventually(lambda: online_on_every_node(cluster, 0), timeout=LEASE * 3)
    noticed = time.monotonic() - killed
    assert noticed <= LEASE + 3 * LEASE / 3 + 1.5, noticed
    gather_id = cluster.api(0).gatherers()[0]["gather_id"]
    answer = cluster.api(0).call("mod_gather", gather_id=gather_id, name_set="x")
    assert answer["transmit"]["err_code"] == 10002
    cluster.start_node(2)  # same port: the agent links again, to a new node process
    eventually(lambda: online_on_every_node(cluster, 1), timeout=20)
    ok(cluster.api(0).call("mod_gather", gather_id=gather_id, name_set="y")["transmit"])


def test_redis_stopped_and_started_again(cluster: Cluster, video: Path) -> None:
    key = cluster.agent_key()
    agent = cluster.start_agent(cluster.node(1).base_url, key)
    eventually(lambda: online_on_every_node(cluster, 1), timeout=20)
    gather_id = cluster.api(0).gatherers()[0]["gather_id"]
    cluster.redis.stop()

    def not_ready(index: int) -> bool:
        try:
            urllib.request.urlopen(cluster.node(index).base_url + "/readyz", timeout=5)
        except urllib.error.HTTPError as error:
            return error.code == 503 and json.load(error)["cluster"] == "Redis unreachable"
        return False

    eventually(lambda: all(not_ready(index) for index in range(3)), timeout=10)
    started = time.monotonic()
    answer = cluster.api(0).call("add_camera", camera_name="during", gather_id=gather_id,
                                 stream_prop=1, stream_mp4=str(video))
    assert time.monotonic() - started < 5  # a clear answer, not a hang
    assert answer["transmit"]["err_code"] == 10002
    camera_id = answer["camera_id"]
    # The holder still reaches its own agent.
    ok(cluster.api(1).call("mod_gather", gather_id=gather_id, name_set="during")["transmit"])
    time.sleep(4)
    cluster.redis.start()  # empty: nothing was kept
    eventually(lambda: not any(not_ready(index) for index in range(3)), timeout=10)
    # The camera added meanwhile reaches the agent (its link is renewed with the whole state).
    eventually(lambda: camera_id in {c["camera_id"] for c in agent.state()["state"]["cameras"]},
               timeout=10)
    ok(eventually(lambda: (t := cluster.api(2).call(
        "stop_camera", camera_id=camera_id)["transmit"])["err_code"] == 0 and t, timeout=10))
    assert {c["camera_id"]: c["started"] for c in agent.state()["state"]["cameras"]}[
        camera_id] == 0
    time.sleep(LEASE)  # sweeps have run on the new Redis: the linked gatherer stays online
    assert online_on_every_node(cluster, 1)


def agents_on(cluster: Cluster, index: int) -> int:
    with urllib.request.urlopen(cluster.node(index).base_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("relay_agents_connected "))))


def status_of(cluster: Cluster) -> dict[str, list[str]]:
    """``relay status``, by node URL: state, url, up, agents, viewers, pushes, gatherers."""
    out = run_relay("status", "--data", str(cluster.tmp / "node0"), env=cluster.env).stdout
    header, *rows = out.strip().splitlines()
    assert header.split("\t")[:3] == ["node", "state", "url"], out
    return {row.split("\t")[2]: row.split("\t")[1:] for row in rows}


def test_an_agent_given_every_node_fails_over_within_5_s(cluster: Cluster) -> None:
    key = cluster.agent_key()
    servers = ",".join(cluster.node(index).base_url for index in range(3))
    agent = cluster.start_agent(servers, key)
    eventually(lambda: online_on_every_node(cluster, 1), timeout=20)
    [holder] = [index for index in range(3) if agents_on(cluster, index)]
    gather_id = cluster.api(0).gatherers()[0]["gather_id"]
    eventually(lambda: status_of(cluster)[cluster.node(holder).base_url][3] == "1", timeout=5)
    listed = status_of(cluster)
    assert sorted(listed) == sorted(cluster.node(index).base_url for index in range(3))
    assert all(row[0] == "alive" for row in listed.values())
    assert listed[cluster.node(holder).base_url][6] == str(gather_id)
    killed = time.monotonic()
    cluster.kill_node(holder)
    living = [index for index in range(3) if index != holder]
    eventually(lambda: sum(agents_on(cluster, index) for index in living) == 1, timeout=10,
               interval=0.05)
    relinked = time.monotonic() - killed
    print(f"relinked on another node {relinked:.2f} s after the kill")
    assert relinked <= 5.0, relinked
    for index in living:
        ok(cluster.api(index).call("mod_gather", gather_id=gather_id,
                                   name_set=f"via {index}")["transmit"])
    assert agent.state()["state"]["gather"]["name_set"] == f"via {living[-1]}"
    assert online_on_every_node(cluster, 1)
    assert "trying relay node" in agent.log()


def test_a_node_silent_past_its_lease_cannot_keep_a_stale_claim(cluster: Cluster) -> None:
    """SIGSTOP the agent's node past its lease: the others take its gatherer offline; SIGCONT:
    it finds its lease lapsed and relinks the agent, which is online again everywhere."""
    cluster.start_agent(cluster.node(1).base_url, cluster.agent_key())
    eventually(lambda: online_on_every_node(cluster, 1), timeout=20)
    gather_id = cluster.api(0).gatherers()[0]["gather_id"]
    frozen = cluster.node(1).process
    frozen.send_signal(signal.SIGSTOP)
    try:
        eventually(lambda: [row["status"] for row in cluster.api(0).gatherers()] == [0],
                   timeout=LEASE * 3)
        assert cluster.api(2).call("mod_gather", gather_id=gather_id, name_set="x")[
            "transmit"]["err_code"] == 10002
    finally:
        frozen.send_signal(signal.SIGCONT)
    eventually(lambda: online_on_every_node(cluster, 1), timeout=15)
    ok(cluster.api(0).call("mod_gather", gather_id=gather_id, name_set="back")["transmit"])
    assert "taken offline while this node was silent" in cluster.stop_node(1)
