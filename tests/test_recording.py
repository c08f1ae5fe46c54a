"""Recording end to end: real ``relay serve`` and ``relay agent`` processes, real H.264.

A course a few seconds from now records on the weekly timetable (in the relay's zone, not the
agent's); slices are cut at keyframes with ``inter_val`` GOPs of overlap; each file the relay
stores is the agent's, byte for byte (the agent logs the sha256 it declared, the relay refuses a
mismatch, and the test hashes what ``storage_addr + file_fdfs`` serves); snapshots and posters
decode to the camera's size; stopping a camera or ending its course finishes its slice; a killed
agent's partial slice arrives playable after its restart. ``minute_length`` in the agent's config
makes a slice_val/snap_val "minute" two seconds, so all of it takes seconds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import av
import pytest
from conftest import (
    AgentProcess,
    RelayProcess,
    eventually,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
    stop_relay,
)
from live_system import no_tracebacks
from recording_system import Client, download, zone_far_from_midnight

from relay.agent.demo_video import make_demo_video

MINUTE = 2.0  # seconds in one slice_val / snap_val minute, for the agent under test
GOP = 2.0  # the demo video's keyframe interval


@dataclass
class System:
    tmp: Path
    relay: RelayProcess
    key: str
    agent: AgentProcess
    client: Client
    zone: ZoneInfo
    video: Path
    gather_id: int = 0

    def start_agent(self) -> None:
        self.agent = start_agent(self.relay.base_url, self.key, self.tmp / "agent",
                                 "--config", str(self.tmp / "agent.toml"))

    def camera(self, name: str = "一班") -> int:
        answer = self.client.call("add_camera", camera_name=name, gather_id=self.gather_id,
                                  stream_prop=1, stream_mp4=str(self.video))
        assert answer["transmit"]["err_code"] == 0, answer
        eventually(lambda: self.client.call("get_camera_status", camera_id=answer["camera_id"])
                   ["status"] == 1)
        return answer["camera_id"]

    def course(self, camera_id: int, starts_in: float, seconds: int) -> int:
        start = dt.datetime.now(self.zone) + dt.timedelta(seconds=starts_in)
        answer = self.client.call("add_course", camera_id=camera_id, week_id=start.isoweekday() % 7,
                                  start_time=start.strftime("%H:%M:%S"), elapse_sec=seconds)
        assert answer["transmit"]["err_code"] == 0, answer
        return answer["course_id"]

    def status(self, camera_id: int) -> dict[str, Any]:
        return self.client.call("get_camera_status", camera_id=camera_id)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_demo_video(tmp_path_factory.mktemp("media") / "cam.mp4", seconds=10)


@pytest.fixture
def system(tmp_path: Path, video: Path) -> Iterator[System]:
    zone = zone_far_from_midnight()
    relay = start_relay(tmp_path / "data", "--command-timeout", "5", "--agent-heartbeat", "2",
                        "--timezone", zone)
    agent = None
    system = None
    try:
        key = run_relay("agent-key", "add", "school", "--data", str(tmp_path / "data")).stdout.strip()
        (tmp_path / "agent.toml").write_text(
            f'mac_addr = "02:00:00:00:0a:01"\nminute_length = {MINUTE}\nspool_max_mb = 64\n')
        client = Client(relay.base_url, relay.credential)
        system = System(tmp_path, relay, key, None, client, ZoneInfo(zone), video)  # type: ignore[arg-type]
        system.start_agent()
        agent = system.agent
        eventually(lambda: client.call("list_gather")["data"]
                   and client.call("list_gather")["data"][0]["status"] == 1)
        system.gather_id = client.call("list_gather")["data"][0]["gather_id"]
        yield system
    finally:
        if system is not None:
            relay, agent = system.relay, system.agent
        if agent is not None:
            stop_agent(agent)
        relay_log = stop_relay(relay)
        logs = {"relay": relay_log}
        if agent is not None:
            logs["agent"] = agent.log()
        no_tracebacks(logs)


@dataclass
class Probe:
    packets: list[tuple[int, bool, bytes]]  # video (dts, keyframe, bytes), in file order
    duration: float
    width: int
    height: int
    faststart: bool


def probe(data: bytes) -> Probe:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [(packet.dts, packet.is_keyframe, bytes(packet))
                   for packet in container.demux(stream) if packet.size]
        duration = float((packets[-1][0] - packets[0][0]) * stream.time_base) if packets else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        frames = 0
        container.seek(0)
        for _frame in container.decode(stream):
            frames += 1
            if frames >= 3:
                break
        assert frames >= 3, "the recording does not decode"
    moov, mdat = data.find(b"moov"), data.find(b"mdat")
    return Probe(packets, duration, width, height, 0 <= moov < mdat)


def gops(packets: list[tuple[int, bool, bytes]]) -> list[list[bytes]]:
    groups: list[list[bytes]] = []
    for _dts, keyframe, payload in packets:
        if keyframe or not groups:
            groups.append([])
        groups[-1].append(payload)
    return groups


def jpeg_size(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data), format="image2pipe") as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def declared_hashes(agent_log: str) -> set[str]:
    return set(re.findall(r"sha256 ([0-9a-f]{64})", agent_log))


def test_a_course_records_in_slices_cut_at_keyframes_with_overlap(system: System):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=2, inter_val=1, snap_val=1)
    camera_id = system.camera()
    system.course(camera_id, starts_in=3, seconds=13)
    assert system.status(camera_id)["recording"] == 0
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)

    # 13 s of course in 4-second slices: 3 or 4 slices, the last one shorter.
    def finished() -> list[dict[str, Any]] | None:
        rows = client.records(camera_id)
        done = system.status(camera_id)["recording"] == 0 and len(rows) >= 3
        return rows if done and system.status(camera_id)["spool_bytes"] == 0 else None

    rows = eventually(finished, timeout=60)
    storage = client.call("list_record", camera_id=camera_id)["storage_addr"]
    hashes = declared_hashes(system.agent.log())
    probes = []
    for row in rows:
        data = download(storage + row["file_fdfs"])
        assert len(data) == row["file_size"]
        assert hashlib.sha256(data).hexdigest() in hashes, "not the bytes the agent declared"
        found = probe(data)
        assert found.faststart, "moov must come before mdat (a seekable file)"
        assert (found.width, found.height) == (640, 360)
        assert found.packets[0][1], "a slice starts at a keyframe"
        assert found.packets[0][0] <= 0, "timestamps start at 0 in every file"
        dts = [packet[0] for packet in found.packets]
        assert dts == sorted(set(dts)), "timestamps only go forward"
        assert abs(row["duration"] - round(found.duration)) <= 1
        assert row["start_time"] <= row["end_time"]
        poster = download(storage + row["image_fdfs"])
        assert jpeg_size(poster) == (640, 360)
        probes.append(found)
    # Every slice but the last is at least slice length; cut at the first keyframe after it.
    slice_seconds = 2 * MINUTE
    for found in probes[:-1]:
        assert slice_seconds - 0.1 <= found.duration <= slice_seconds + GOP + 0.5, found.duration
    # inter_val 1: each slice starts with the previous slice's last GOP, byte for byte.
    for before, after in itertools.pairwise(probes):
        assert gops(before.packets)[-1] == gops(after.packets)[0]
    total = sum(p.duration for p in probes) - GOP * (len(probes) - 1)
    assert 13 - GOP - 1 <= total <= 13 + GOP + 1, total

    # Snapshots every snap_val minute (2 s): the camera's image_fdfs is the latest, 640x360.
    def snapshot() -> dict[str, Any] | None:
        [camera] = [c for c in client.call("list_camera")["data"] if c["camera_id"] == camera_id]
        return camera if camera["image_fdfs"] else None

    first = eventually(snapshot, timeout=20)
    assert jpeg_size(download(storage + first["image_fdfs"])) == (640, 360)
    later = eventually(lambda: (c := snapshot()) and c["image_id"] > first["image_id"] and c,
                       timeout=20)
    assert later["image_fdfs"] != first["image_fdfs"]


def test_stopping_the_camera_or_ending_the_course_finishes_the_slice(system: System):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=30, inter_val=0, snap_val=30)
    camera_id = system.camera()
    course_id = system.course(camera_id, starts_in=1, seconds=600)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    time.sleep(4)
    client.call("stop_camera", camera_id=camera_id)
    [stopped] = eventually(lambda: client.records(camera_id), timeout=30)
    assert 2 <= stopped["duration"] <= 8, stopped
    eventually(lambda: system.status(camera_id)["recording"] == 0)

    client.call("start_camera", camera_id=camera_id)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    time.sleep(4)
    client.call("del_course", course_id=course_id)  # the course changed during its own window
    rows = eventually(lambda: len(rows := client.records(camera_id)) == 2 and rows, timeout=30)
    assert 2 <= rows[1]["duration"] <= 8, rows
    eventually(lambda: system.status(camera_id)["recording"] == 0)


def test_a_killed_agents_partial_slice_arrives_after_its_restart(system: System):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=30, inter_val=0, snap_val=30)
    camera_id = system.camera()
    course_id = system.course(camera_id, starts_in=1, seconds=600)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    spool = system.tmp / "agent" / "spool"
    eventually(lambda: any(path.stat().st_size > 50_000 for path in spool.glob("*.part.mp4")),
               timeout=20)
    stop_agent(system.agent, kill=True)
    assert not client.records(camera_id)
    system.start_agent()
    [recovered] = eventually(lambda: client.records(camera_id), timeout=40)
    data = download(client.call("list_record")["storage_addr"] + recovered["file_fdfs"])
    found = probe(data)
    assert found.faststart and found.packets[0][1] and found.duration >= 1.5
    # The agent records on after its restart: the course is still on.
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    client.call("del_course", course_id=course_id)
    eventually(lambda: len(client.records(camera_id)) == 2, timeout=30)


def test_an_agent_stopped_mid_slice_finishes_it_before_it_exits(system: System):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=30, inter_val=0, snap_val=30)
    camera_id = system.camera()
    system.course(camera_id, starts_in=1, seconds=600)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    time.sleep(3)
    stop_relay(system.relay)  # nowhere to upload to: the slice stays in the spool
    stop_agent(system.agent)  # SIGTERM
    assert system.agent.process.returncode == 0
    spool = system.tmp / "agent" / "spool"
    assert not list(spool.glob("*.part.mp4")), "the agent left its slice unfinished"
    [manifest] = [m for m in spool.glob("*.json") if json.loads(m.read_text())["kind"] == "record"]
    entry = json.loads(manifest.read_text())
    assert entry["duration"] >= 2 and (spool / entry["file"]).stat().st_size == entry["size"]
    assert "finished at the next start" not in system.agent.log()


def test_slices_recorded_while_the_relay_is_away_go_up_when_it_is_back(system: System):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=1, inter_val=0, snap_val=30)
    camera_id = system.camera()
    system.course(camera_id, starts_in=1, seconds=600)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    port = int(system.relay.base_url.rsplit(":", 1)[1])
    no_tracebacks({"relay": stop_relay(system.relay)})
    spool = system.tmp / "agent" / "spool"
    # Slices of two seconds pile up, and the uploader backs off, for ten seconds.
    eventually(lambda: len(list(spool.glob("*.json"))) >= 3, timeout=20)
    time.sleep(10 - 2 * MINUTE)
    system.relay = start_relay(system.tmp / "data", "--command-timeout", "5", "--agent-heartbeat",
                               "2", "--timezone", system.zone.key, port=port)
    assert system.relay.base_url == client.base  # the same address: the token still works
    eventually(lambda: "connected to" in system.agent.log().rsplit("disconnected from", 1)[-1],
               timeout=40)
    # Nothing recorded meanwhile is lost: every slice goes up, and the spool empties.
    eventually(lambda: len(client.records(camera_id)) >= 3, timeout=30)
    client.call("stop_camera", camera_id=camera_id)
    eventually(lambda: system.status(camera_id)["spool_bytes"] == 0 and not list(
        spool.glob("*.json")), timeout=30)



def test_back_to_back_courses_make_one_file_each(system: System):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=0, inter_val=0, snap_val=30)
    camera_id = system.camera()
    start = dt.datetime.now(system.zone).replace(microsecond=0) + dt.timedelta(seconds=2)
    for offset in (0, 5):  # 5 s each, the second starting where the first ends
        at = start + dt.timedelta(seconds=offset)
        client.call("add_course", camera_id=camera_id, week_id=at.isoweekday() % 7,
                    start_time=at.strftime("%H:%M:%S"), elapse_sec=5)
    rows = eventually(lambda: len(rows := client.records(camera_id)) == 2 and rows, timeout=40)
    assert all(3 <= row["duration"] <= 8 for row in rows), rows
    assert "the next course began" in system.agent.log()
