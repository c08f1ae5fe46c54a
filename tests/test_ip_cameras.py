"""IP cameras (mode 0) and rtsp:// sources (mode 2) end to end, against a real RTSP server.

tests/rtsp_server.py serves two H.264 streams the way an IP camera does (``/main`` 1280×720 and
``/sub`` 640×360, Basic authentication, RTP interleaved over TCP). First, that FFmpeg's client
(PyAV, as the agent opens it) decodes them. Then real ``relay serve`` and ``relay agent``
processes: the agent's config lists the camera with a ``testcam`` vendor template; the relay makes
the mode-0 camera from the hello; live (and snapshots) read the sub stream; a course records the
main stream, which the agent opens only for the course and closes after it; the password, which
has URL-special characters, reaches the camera intact and never the agent's log. A mode-2 camera
(an rtsp:// URL) goes online and records its one stream over the one connection live uses.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
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
from rtsp_server import RtspServer

from relay.agent.demo_video import make_demo_video
from relay.agent.recording import MAIN_LEAD

MINUTE = 2.0  # seconds in one slice_val / snap_val minute, for the agent under test
USER = "admin"
PASSWORD = "p@ss:w/rd#1?&%=;+ é"  # every character a URL treats specially, and one not ASCII
#: The password as it is, URL-quoted (in the camera's URL), base64 (in the API and config), a part.
SECRETS = (PASSWORD, quote(PASSWORD, safe=""), base64.b64encode(PASSWORD.encode()).decode(),
           "p@ss:w", "p%40ss")


@dataclass(frozen=True)
class Videos:
    main: Path
    sub: Path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Videos:
    folder = tmp_path_factory.mktemp("camera")
    return Videos(make_demo_video(folder / "main.mp4", 1280, 720, seconds=4),
                  make_demo_video(folder / "sub.mp4", 640, 360, seconds=4))


@pytest.fixture
def camera_server(videos: Videos) -> Iterator[RtspServer]:
    """The IP camera: both streams, behind the device's user and password."""
    with RtspServer({"main": videos.main, "sub": videos.sub}, user=USER, password=PASSWORD) as server:
        yield server


@pytest.fixture
def open_server(videos: Videos) -> Iterator[RtspServer]:
    """An RTSP server that asks for no credentials (a mode-2 ``stream_url``)."""
    with RtspServer({"sub": videos.sub}) as server:
        yield server


def credentials_url(server: RtspServer, path: str) -> str:
    return f"rtsp://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/{path}"


# The server itself, as FFmpeg's client sees it


def decode(url: str, frames: int) -> list[tuple[int, int]]:
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(5, 10)) as container:
        stream = container.streams.video[0]
        sizes = []
        for frame in container.decode(stream):
            sizes.append((frame.width, frame.height))
            if len(sizes) >= frames:
                return sizes
    return sizes


def test_the_rtsp_server_streams_each_path_to_several_clients(camera_server: RtspServer):
    started = time.monotonic()
    assert set(decode(credentials_url(camera_server, "sub"), 30)) == {(640, 360)}
    assert set(decode(credentials_url(camera_server, "main"), 30)) == {(1280, 720)}
    assert time.monotonic() - started >= 30 / 25 * 0.8, "not paced in real time"
    # Two clients at once, past the end of the 4-second file (it loops).
    with av.open(credentials_url(camera_server, "sub"), options={"rtsp_transport": "tcp"},
                 timeout=(5, 10)) as first:
        assert eventually(lambda: camera_server.playing("sub") == 1, timeout=5)
        assert set(decode(credentials_url(camera_server, "sub"), 5)) == {(640, 360)}
        pts = [packet.pts for packet, _ in zip(first.demux(video=0), range(130), strict=False)
               if packet.pts is not None]
        assert len(pts) > 120 and pts[-1] > pts[0] + 4.5 * 90_000, "the loop goes on, forward"
    eventually(lambda: camera_server.connections("sub") == 0, timeout=5)
    assert camera_server.connections_ever("sub") == 3 and camera_server.connections_ever("main") == 1


def test_the_rtsp_server_refuses_wrong_credentials_and_transports(camera_server: RtspServer):
    with pytest.raises(av.HTTPUnauthorizedError):
        av.open(f"rtsp://{USER}:wrong@127.0.0.1:{camera_server.port}/sub",
                options={"rtsp_transport": "tcp"}, timeout=(5, 10))
    with pytest.raises(av.FFmpegError):  # UDP is not offered: 461
        av.open(credentials_url(camera_server, "sub"), options={"rtsp_transport": "udp"},
                timeout=(5, 10))
    with pytest.raises(av.FFmpegError):  # 404
        av.open(credentials_url(camera_server, "nowhere"), options={"rtsp_transport": "tcp"},
                timeout=(5, 10))
    assert camera_server.auth_failures >= 1
    eventually(lambda: camera_server.connections("sub") == 0, timeout=5)


class RawClient:
    """RTSP by hand over one TCP connection: requests, responses and interleaved RTP."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self.cseq = 0

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def request(self, method: str, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}",
                 *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while True:
            if self.read(1) == b"$":  # RTP sent before the answer
                self.read(struct.unpack("!xH", self.read(3))[0])
                continue
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += self.sock.recv(65536)
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = ("R" + head.decode()).split("\r\n")
            found = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            assert found["cseq"] == str(self.cseq)
            return int(lines[0].split()[1]), found, self.read(int(found.get("content-length", 0)))

    def rtp(self) -> tuple[int, int, bool, bytes]:
        """The next interleaved packet: channel, payload type, marker, payload."""
        assert self.read(1) == b"$"
        channel, size = struct.unpack("!BH", self.read(3))
        packet = self.read(size)
        assert packet[0] >> 6 == 2, "RTP version 2"
        return channel, packet[1] & 0x7F, bool(packet[1] & 0x80), packet[12:]


def test_the_rtsp_server_speaks_rtsp_and_rfc_6184(camera_server: RtspServer):
    url = camera_server.url("main")
    client = RawClient(camera_server.port)
    status, headers, _ = client.request("OPTIONS", url)
    assert status == 200 and "GET_PARAMETER" in headers["public"]
    assert client.request("DESCRIBE", url)[0] == 401
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    status, headers, sdp = client.request("DESCRIBE", url, Authorization=auth, Accept="application/sdp")
    assert status == 200 and headers["content-type"] == "application/sdp"
    assert b"packetization-mode=1" in sdp and b"sprop-parameter-sets=" in sdp
    track = headers["content-base"] + "trackID=0"
    assert client.request("SETUP", track, Authorization=auth,
                          Transport="RTP/AVP;unicast;client_port=5000-5001")[0] == 461
    status, headers, _ = client.request("SETUP", track, Authorization=auth,
                                        Transport="RTP/AVP/TCP;unicast;interleaved=0-1")
    assert status == 200 and "interleaved=0-1" in headers["transport"]
    session = headers["session"].split(";")[0]
    assert client.request("GET_PARAMETER", url, Authorization=auth, Session=session)[0] == 200
    assert client.request("PLAY", url, Authorization=auth, Session=session)[0] == 200
    # SPS, PPS, then the IDR: a 1280x720 keyframe is too big for one packet, so FU-A from S to E.
    packets = [client.rtp()]
    while not packets[-1][2] and len(packets) < 5000:  # to the end of the first access unit
        packets.append(client.rtp())
    assert {(channel, kind) for channel, kind, _, _ in packets} == {(0, 96)}
    kinds = [payload[0] & 0x1F for _, _, _, payload in packets]
    first = kinds.index(28)
    assert kinds[:2] == [7, 8] and set(kinds[2:first]) <= {6}, kinds  # (x264 writes an SEI)
    assert packets[first][3][1] == 0x80 | 5, "an FU-A start of an IDR slice"
    assert all(len(payload) <= 1400 for _, _, _, payload in packets)
    inside = False  # every FU-A run goes start, middles, end; the access unit's last packet marked
    for _, _, _, payload in packets[first:]:
        if payload[0] & 0x1F == 28:
            assert bool(payload[1] & 0x80) != inside and payload[1] & 0x1F == 5
            inside = not payload[1] & 0x40
    assert packets[-1][2] and not inside, "the keyframe's last packet ends a NAL unit, marked"
    assert camera_server.playing("main") == 1
    assert client.request("TEARDOWN", url, Session=session)[0] == 200
    eventually(lambda: camera_server.connections("main") == 0, timeout=5)
    client.sock.close()


def test_the_rtsp_server_stops_and_frees_its_port(videos: Videos):
    threads = threading.active_count()
    server = RtspServer({"sub": videos.sub}).start()
    client = RawClient(server.port)
    assert client.request("DESCRIBE", server.url("sub"))[0] == 200
    assert threading.active_count() == threads + 1
    server.stop()
    assert threading.active_count() == threads
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0, "still listening"
    client.sock.close()


# End to end: relay, agent, camera


def video_size(data: bytes, image: bool = False) -> tuple[int, int]:
    """The size of the first decoded frame of an MP4 (or a JPEG)."""
    with av.open(io.BytesIO(data), format="image2pipe" if image else None) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


@dataclass
class System:
    relay: RelayProcess
    agent: AgentProcess
    client: Client
    zone: ZoneInfo
    gather_id: int

    def status(self, camera_id: int) -> dict[str, Any]:
        return self.client.call("get_camera_status", camera_id=camera_id)

    def camera_row(self, camera_id: int) -> dict[str, Any]:
        [row] = [c for c in self.client.call("list_camera")["data"] if c["camera_id"] == camera_id]
        return row

    def course(self, camera_id: int, starts_in: float, seconds: int) -> tuple[float, float]:
        """A course on today's timetable; its start and end as unix seconds."""
        start = (dt.datetime.now(self.zone) + dt.timedelta(seconds=starts_in)).replace(microsecond=0)
        answer = self.client.call("add_course", camera_id=camera_id, week_id=start.isoweekday() % 7,
                                  start_time=start.strftime("%H:%M:%S"), elapse_sec=seconds)
        assert answer["transmit"]["err_code"] == 0, answer
        return start.timestamp(), start.timestamp() + seconds

    def recorded(self, camera_id: int) -> dict[str, Any]:
        """The one recording of a course that has ended, once uploaded."""
        def done() -> list[dict[str, Any]] | None:
            rows = self.client.records(camera_id)
            status = self.status(camera_id)
            return rows if rows and not status["recording"] and not status["spool_bytes"] else None

        [row] = eventually(done, timeout=40)
        return row

    def storage(self) -> str:
        return self.client.call("list_record")["storage_addr"]


@pytest.fixture
def system(tmp_path: Path, camera_server: RtspServer) -> Iterator[System]:
    zone = zone_far_from_midnight()
    relay = start_relay(tmp_path / "data", "--command-timeout", "5", "--agent-heartbeat", "2",
                        "--timezone", zone)
    agent = None
    try:
        key = run_relay("agent-key", "add", "school", "--data", str(tmp_path / "data")).stdout.strip()
        template = "rtsp://{user}:{password}@{ip}:{rtsp_port}"
        (tmp_path / "agent.toml").write_text(
            'mac_addr = "02:00:00:00:0b:01"\n'
            f"minute_length = {MINUTE}\n"
            "spool_max_mb = 64\n"
            "[vendors]\n"
            f'testcam = {{ main = "{template}/main", sub = "{template}/sub" }}\n'
            "[[devices]]\n"
            'camera_name = "gate"\n'
            'device_ip = "127.0.0.1"\n'
            f'device_user = "{USER}"\n'
            f'device_pass = "{base64.b64encode(PASSWORD.encode()).decode()}"\n'
            'vendor = "testcam"\n'
            f"rtsp_port = {camera_server.port}\n")
        client = Client(relay.base_url, relay.credential)
        agent = start_agent(relay.base_url, key, tmp_path / "agent",
                            "--config", str(tmp_path / "agent.toml"))
        eventually(lambda: (rows := client.call("list_gather")["data"]) and rows[0]["status"] == 1)
        gather_id = client.call("list_gather")["data"][0]["gather_id"]
        yield System(relay, agent, client, ZoneInfo(zone), gather_id)
    finally:
        if agent is not None:
            stop_agent(agent)
        logs = {"relay": stop_relay(relay)}
        if agent is not None:
            logs["agent"] = agent.log()
        no_tracebacks(logs)
        for name, text in logs.items():
            for secret in SECRETS:
                assert secret not in text, f"the device password ({secret!r}) is in the {name}'s log"


def test_an_ip_camera_is_live_on_its_sub_stream_and_records_its_main_stream(
        system: System, camera_server: RtspServer):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=0, inter_val=0, snap_val=1)
    # The relay made the camera from the agent's hello.
    [camera] = eventually(lambda: [c for c in client.call("list_camera")
                                   ["data"] if c["stream_prop"] == 0])
    camera_id = camera["camera_id"]
    assert camera["device_ip"] == "127.0.0.1" and camera["camera_name"] == "gate"
    client.call("start_camera", camera_id=camera_id)
    eventually(lambda: system.status(camera_id)["status"] == 1, timeout=20)
    sub_open = f"source rtsp://127.0.0.1:{camera_server.port}/sub is open (h264"
    eventually(lambda: sub_open in system.agent.log() and "640x360" in system.agent.log())
    assert camera_server.playing("sub") == 1, "live reads the sub stream"
    # Snapshots come from the live (sub) source too.
    snapshot = eventually(lambda: system.camera_row(camera_id)["image_fdfs"], timeout=20)
    assert video_size(download(system.storage() + snapshot), image=True) == (640, 360)

    assert camera_server.connections_ever("main") == 0, "the main stream is opened for courses only"
    # The main stream has MAIN_LEAD to open before the course: the recording has its first second.
    start, end = system.course(camera_id, starts_in=MAIN_LEAD - 2, seconds=7)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    opened = [at for at, path, what in camera_server.events if path == "/main" and what == "open"]
    # Opened ahead of the course (MAIN_LEAD), so the recording starts with the GOP the source holds.
    assert opened and opened[0] >= start - MAIN_LEAD - 1, "the main stream opened for the course"
    assert camera_server.connections("main") == 1 and camera_server.connections("sub") == 1

    row = system.recorded(camera_id)
    data = download(system.storage() + row["file_fdfs"])
    assert len(data) == row["file_size"]
    assert video_size(data) == (1280, 720), "the recording is the main stream"
    assert 6 <= row["duration"] <= 10, "the whole course is recorded, its first second too"
    assert video_size(download(system.storage() + row["image_fdfs"]), image=True) == (1280, 720)
    # After the course the agent lets go of the main stream; live goes on on the sub stream.
    eventually(lambda: camera_server.connections("main") == 0, timeout=10)
    closed = [at for at, path, what in camera_server.events if path == "/main" and what == "close"]
    assert closed[-1] >= end - 0.5
    assert camera_server.connections_ever("main") == 1
    assert camera_server.playing("sub") == 1 and system.status(camera_id)["status"] == 1
    # The camera was asked for its credentials and got them right, on both streams.
    assert {path for method, path in camera_server.authorized if method == "PLAY"} == {"/main", "/sub"}

    assert f"source rtsp://127.0.0.1:{camera_server.port}/main is open (h264" in system.agent.log()
    assert "main failed" not in system.agent.log(), "a stop on purpose is no failure"

    # A camera deleted during its course lets go of both streams.
    system.course(camera_id, starts_in=1, seconds=60)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    assert camera_server.connections("main") == 1
    client.call("del_camera", camera_id=camera_id)
    eventually(lambda: camera_server.connections("main") == camera_server.connections("sub") == 0,
               timeout=10)
    # The system fixture checks that neither log shows the password, in any form.


def test_an_rtsp_camera_records_its_one_stream(system: System, open_server: RtspServer):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=0, inter_val=0, snap_val=30)
    answer = client.call("add_camera", camera_name="hall", gather_id=system.gather_id, stream_prop=2,
                         stream_url=open_server.url("sub"))
    assert answer["transmit"]["err_code"] == 0, answer
    camera_id = answer["camera_id"]
    eventually(lambda: system.status(camera_id)["status"] == 1, timeout=20)
    assert open_server.playing("sub") == 1

    system.course(camera_id, starts_in=2, seconds=6)
    eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
    assert open_server.connections("sub") == 1, "recording uses the connection live has open"
    row = system.recorded(camera_id)
    assert video_size(download(system.storage() + row["file_fdfs"])) == (640, 360)
    assert 2 <= row["duration"] <= 7, row
    assert open_server.connections_ever("sub") == 1 and system.status(camera_id)["status"] == 1


def test_a_source_that_fails_mid_recording_finishes_its_slice_and_records_again_when_back(
        system: System, videos: Videos):
    client = system.client
    client.call("mod_gather", gather_id=system.gather_id, slice_val=0, inter_val=0, snap_val=30,
                auto_dvr=1)
    server = RtspServer({"sub": videos.sub}).start()
    port = server.port
    try:
        answer = client.call("add_camera", camera_name="yard", gather_id=system.gather_id,
                             stream_prop=2, stream_url=server.url("sub"))
        camera_id = answer["camera_id"]
        eventually(lambda: system.status(camera_id)["status"] == 1, timeout=20)
        course_id = client.call("add_course", **course_now(system, camera_id, 120))["course_id"]
        eventually(lambda: system.status(camera_id)["recording"] == 1, timeout=20)
        time.sleep(3)
        server.stop()  # the camera goes away mid-recording: the slice so far is finished
        [first] = eventually(lambda: client.records(camera_id), timeout=30)
        assert 2 <= first["duration"] <= 6, first
        eventually(lambda: system.status(camera_id)["status"] == 0, timeout=20)
        server = RtspServer({"sub": videos.sub}, port=port).start()  # back, on the same address
        eventually(lambda: system.status(camera_id)["status"] == 1, timeout=30)
        eventually(lambda: "recording again after a gap of" in system.agent.log(), timeout=20)
        time.sleep(3)
        client.call("del_course", course_id=course_id)
        rows = eventually(lambda: len(rows := client.records(camera_id)) == 2 and rows, timeout=30)
        assert rows[1]["start_time"] > first["end_time"] and rows[1]["duration"] >= 2
        assert video_size(download(system.storage() + rows[1]["file_fdfs"])) == (640, 360)
    finally:
        server.stop()


def course_now(system: System, camera_id: int, seconds: int) -> dict[str, Any]:
    start = dt.datetime.now(system.zone) + dt.timedelta(seconds=1)
    return {"camera_id": camera_id, "week_id": start.isoweekday() % 7,
            "start_time": start.strftime("%H:%M:%S"), "elapse_sec": seconds}
