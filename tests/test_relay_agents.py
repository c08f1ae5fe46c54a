"""The relay end to end: real ``relay serve`` and ``relay agent`` processes over real sockets,
once on a SQLite file in the data dir and once on a fresh PostgreSQL database (named by
``RELAY_DATABASE_URL`` for the relay and for the ``relay agent-key`` commands run beside it; the
test reads the catalogue directly through the same URL). Each run starts its own processes (the
tests restart, stop, revoke), so to keep CI under 25 minutes only two run on PostgreSQL too: the
commands answered with what the agent did, and restarts with offline changes converging (the
catalogue's part of every other test here: the same agent-key, gatherer, camera and status
statements). The rest run on SQLite: an agent dying mid-command (the hub's timeouts), status
following the source, a revoked key, the metrics, a camera the agent lacks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    AgentProcess,
    ApiClient,
    RelayProcess,
    eventually,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
    stop_relay,
)

from relay.agent.demo_video import make_demo_video

FAST = ("--command-timeout", "3", "--agent-heartbeat", "1", "--agent-key-recheck", "1")
#: For a test whose subject no catalogue call takes part in (see the module's docstring).
SQLITE_ONLY = pytest.mark.parametrize("relay_backend", ["sqlite"], indirect=True)


Client = ApiClient  # (the tests' one API client)


@dataclass
class System:
    tmp: Path
    relay: RelayProcess
    key: str
    agent: AgentProcess
    client: Client
    video: Path
    env: dict[str, str]  # RELAY_DATABASE_URL on PostgreSQL (empty on SQLite)
    database_url: str  # the catalogue, as this test opens it directly

    @property
    def gather_id(self) -> int:
        return self.client.gatherer()["gather_id"]

    def add_camera(self, name: str = "一班", path: Path | None = None) -> tuple[int, dict]:
        answer = self.client.call("add_camera", camera_name=name, gather_id=self.gather_id,
                                  stream_prop=1, stream_mp4=str(path or self.video))
        return answer["camera_id"], answer["transmit"]


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Path:
    return make_demo_video(tmp_path_factory.mktemp("media") / "cam.mp4", seconds=2)


@pytest.fixture
def system(request, tmp_path: Path, video: Path, relay_backend: tuple[dict[str, str], str]):  # type: ignore[no-untyped-def]
    env, database_url = relay_backend
    marker = request.node.get_closest_marker("relay_args")
    relay = start_relay(tmp_path / "data", *(marker.args if marker else FAST), env=env)
    agent = None
    system = None
    try:
        key = run_relay("agent-key", "add", "school", "--data", str(tmp_path / "data"),
                        env=env).stdout.strip()
        agent = start_agent(relay.base_url, key, tmp_path / "agent")
        client = Client(relay.base_url, relay.credential)
        eventually(lambda: client.call("list_gather")["data"] and client.gatherer()["status"] == 1)
        # On PostgreSQL the relay really is there: no SQLite catalogue appears beside it.
        assert (tmp_path / "data" / "relay.sqlite3").exists() == (not env)
        system = System(tmp_path, relay, key, agent, client, video, env, database_url)
        yield system
    finally:
        # Tests may replace the processes (restarts): stop whichever are current (before the
        # PostgreSQL database is dropped).
        if system is not None:
            relay, agent = system.relay, system.agent
        if agent is not None:
            stop_agent(agent)
        stop_relay(relay)


def ok(transmit: dict[str, Any]) -> dict[str, Any]:
    assert transmit["err_code"] == 0 and transmit["err_msg"] == "OK", transmit
    return transmit.get("data", {})


def test_commands_answer_with_what_the_agent_did(system: System):
    client, agent = system.client, system.agent
    camera_id, transmit = system.add_camera()
    assert ok(transmit) == {"camera_id": camera_id, "started": 1}
    assert agent.state()["state"]["cameras"][0]["stream_mp4"] == str(system.video)
    eventually(lambda: client.status(camera_id) == 1)

    renamed = client.call("mod_camera", camera_id=camera_id, camera_name="二班")["transmit"]
    assert ok(renamed)["camera_id"] == camera_id
    assert agent.state()["state"]["cameras"][0]["camera_name"] == "二班"

    assert ok(client.call("stop_camera", camera_id=camera_id)["transmit"])["started"] == 0
    assert agent.state()["state"]["cameras"][0]["started"] == 0
    eventually(lambda: client.status(camera_id) == 0)
    assert ok(client.call("start_camera", camera_id=camera_id)["transmit"])["started"] == 1
    eventually(lambda: client.status(camera_id) == 1)

    course = client.call("add_course", camera_id=camera_id, week_id=2, elapse_sec=600,
                         start_time="08:00:00")
    assert ok(course["transmit"]) == {"camera_id": camera_id, "courses": 1}
    [held] = agent.state()["state"]["courses"][0]["courses"]
    assert (held["course_id"], held["start_sec"], held["elapse_sec"]) == (
        course["course_id"], 8 * 3600, 600)
    client.call("mod_course", course_id=course["course_id"], camera_id=camera_id, week_id=2,
                elapse_sec=900, start_time="09:00:00")
    [held] = agent.state()["state"]["courses"][0]["courses"]
    assert (held["start_sec"], held["elapse_sec"]) == (9 * 3600, 900)
    assert ok(client.call("del_course", course_id=course["course_id"])["transmit"])["courses"] == 0
    assert agent.state()["state"]["courses"][0]["courses"] == []

    settings = ok(client.call("mod_gather", gather_id=system.gather_id, snap_val=7, auto_dvr=1,
                              name_set="教学楼")["transmit"])
    assert settings["snap_val"] == 7 and settings["name_set"] == "教学楼"
    assert agent.state()["state"]["gather"]["snap_val"] == 7

    assert ok(client.call("del_camera", camera_id=camera_id)["transmit"]) == {
        "deleted": [camera_id]}
    assert agent.state()["state"]["cameras"] == []


@SQLITE_ONLY
def test_status_follows_the_source(system: System):
    client = system.client
    camera_id, _ = system.add_camera()
    eventually(lambda: client.status(camera_id) == 1)
    client.call("mod_camera", camera_id=camera_id, camera_name="坏", stream_mp4="/nowhere/x.mp4")
    eventually(lambda: client.status(camera_id) == 0)
    client.call("mod_camera", camera_id=camera_id, camera_name="好", stream_mp4=str(system.video))
    eventually(lambda: client.status(camera_id) == 1)
    closed_port = f"rtsp://127.0.0.1:{_closed_port()}/live"
    client.call("mod_camera", camera_id=camera_id, camera_name="流", stream_prop=2,
                stream_url=closed_port)
    eventually(lambda: client.status(camera_id) == 0)
    gather_id = system.gather_id
    log = stop_relay(system.relay)
    assert f"camera {camera_id} (gatherer {gather_id}) is offline: " in log
    assert "No such file" in log or "nowhere" in log


def _closed_port() -> int:
    from conftest import free_port

    return free_port()


# A heartbeat longer than the command timeout, so the silent agent is still "connected".
@SQLITE_ONLY
@pytest.mark.relay_args("--command-timeout", "3", "--agent-heartbeat", "30")
def test_an_agent_dying_mid_command_never_hangs_the_api(system: System):
    client = system.client
    camera_id, _ = system.add_camera()
    os.kill(system.agent.process.pid, signal.SIGSTOP)  # alive but silent
    try:
        started = time.monotonic()
        transmit = client.call("stop_camera", camera_id=camera_id)["transmit"]
        elapsed = time.monotonic() - started
        assert transmit == {"err_code": 10003, "err_msg": "采集端响应超时。"}
        assert 2.5 < elapsed < 5  # the 3 s command timeout
        answers: list[dict[str, Any]] = []
        caller = threading.Thread(
            target=lambda: answers.append(client.call("start_camera", camera_id=camera_id)))
        caller.start()
        time.sleep(0.5)
        started = time.monotonic()
        os.kill(system.agent.process.pid, signal.SIGKILL)  # dies with the command unanswered
        caller.join(10)
        assert answers and answers[0]["transmit"]["err_code"] in (10003, 10004)
        assert time.monotonic() - started < 3
    finally:
        os.kill(system.agent.process.pid, signal.SIGCONT)
    eventually(lambda: client.gatherer()["status"] == 0)
    assert client.status(camera_id) == 0
    offline = client.call("start_camera", camera_id=camera_id)["transmit"]
    assert offline == {"err_code": 10002, "err_msg": "没有在线的采集端。"}


def _desired(client: Client) -> dict[str, Any]:
    """What the catalogue says the agent should hold, read through the API."""
    cameras = sorted(client.call("list_camera", per=100)["data"], key=lambda c: c["camera_id"])
    courses = {c["camera_id"]: sorted(row["course_id"] for row in
                                      client.call("list_course", camera_id=c["camera_id"])["data"])
               for c in cameras}
    gather = client.gatherer()
    return {
        "cameras": [(c["camera_id"], c["camera_name"], c["stream_mp4"]) for c in cameras],
        "courses": courses,
        "snap_val": gather["snap_val"],
    }


def _held(agent: AgentProcess) -> dict[str, Any]:
    state = agent.state()["state"]
    return {
        "cameras": [(c["camera_id"], c["camera_name"], c["stream_mp4"]) for c in state["cameras"]],
        "courses": {entry["camera_id"]: sorted(c["course_id"] for c in entry["courses"])
                    for entry in state["courses"]},
        "snap_val": state["gather"]["snap_val"],
    }


def test_restarts_and_offline_changes_converge(system: System):
    client = system.client
    first, _ = system.add_camera("一班")
    client.call("add_course", camera_id=first, week_id=1, elapse_sec=60, start_time="07:00:00")
    port = int(system.relay.base_url.rsplit(":", 1)[1])

    # The relay restarts: the agent comes back by itself and holds the full desired state.
    stop_relay(system.relay)
    system.relay = start_relay(system.tmp / "data", *FAST, env=system.env, port=port)
    eventually(lambda: client.gatherer()["status"] == 1, timeout=20)
    assert _held(system.agent) == _desired(client)
    eventually(lambda: client.status(first) == 1)

    # Changes made while the agent is away reach it when it logs in again.
    stop_agent(system.agent)
    eventually(lambda: client.gatherer()["status"] == 0)
    offline = client.call("mod_gather", gather_id=system.gather_id, snap_val=9)["transmit"]
    assert offline["err_code"] == 10002
    second, transmit = system.add_camera("二班")
    assert transmit["err_code"] == 10002
    client.call("mod_camera", camera_id=first, camera_name="一班改")
    client.call("add_course", camera_id=second, week_id=3, elapse_sec=60, start_time="10:00:00")
    [old_course] = client.call("list_course", camera_id=first)["data"]
    client.call("del_course", course_id=old_course["course_id"])
    assert _held(system.agent) != _desired(client)

    system.agent = start_agent(system.relay.base_url, system.key, system.tmp / "agent")
    eventually(lambda: client.gatherer()["status"] == 1)
    eventually(lambda: _held(system.agent) == _desired(client))
    assert _held(system.agent)["snap_val"] == 9
    eventually(lambda: client.status(second) == 1)


@SQLITE_ONLY
def test_a_revoked_key_is_refused(system: System):
    client = system.client
    run_relay("agent-key", "revoke", "school", "--data", str(system.tmp / "data"), env=system.env)
    listing = run_relay("agent-key", "list", "--data", str(system.tmp / "data"),
                        env=system.env).stdout
    assert "school\trevoked" in listing
    # The live link ends within the recheck interval (1 s here) and reconnecting is refused.
    eventually(lambda: client.gatherer()["status"] == 0, timeout=10)
    eventually(lambda: "refused our key" in system.agent.log())
    stop_agent(system.agent)
    log = stop_relay(system.relay)
    assert "agent key revoked" in log
    assert "refused agent from 127.0.0.1: unknown or revoked key" in log
    assert system.key not in log and system.key not in system.agent.log()


@SQLITE_ONLY
def test_metrics(system: System):
    system.add_camera()
    with urllib.request.urlopen(system.relay.base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "relay_agents_connected 1.0" in text
    assert 'relay_command_seconds_count{command="camera.add"} 1.0' in text
    with urllib.request.urlopen(system.relay.base_url + "/readyz", timeout=10) as response:
        assert json.load(response)["catalogue"] == "ok"


@SQLITE_ONLY
def test_a_command_for_a_camera_the_agent_lacks_gets_its_error(system: System):
    """A camera the agent never heard of (written behind the relay's back) gets the agent's error."""
    from relay.catalogue import Catalogue

    async def sneak_in() -> int:
        catalogue = await Catalogue.open(system.database_url)
        try:
            row = await catalogue.cameras.add(system.gather_id, {
                "camera_name": "暗", "stream_prop": 1, "stream_mp4": str(system.video)})
        finally:
            await catalogue.close()
        return row["camera_id"]

    camera_id = asyncio.run(sneak_in())
    transmit = system.client.call("start_camera", camera_id=camera_id)["transmit"]
    assert transmit == {"err_code": 20001, "err_msg": f"no camera {camera_id} on this gatherer"}
