"""The agent's own bookkeeping: commands applied twice change nothing, state survives a restart."""

from __future__ import annotations

from pathlib import Path

from relay.agent.agent import Agent, agent_url
from relay.agent.config import (
    VENDORS,
    AgentConfig,
    AgentConfigError,
    Device,
    Vendor,
    load_agent_config,
)
from relay.agent.sources import SourceError, describe, source_url
from relay.link import protocol

CAMERA = {
    "camera_id": 5, "camera_name": "一班", "stream_prop": 1, "stream_url": "",
    "stream_mp4": "/nowhere.mp4", "device_ip": "", "device_user": "", "device_pass": "",
    "device_cmd_port": 8000, "device_mirror": 0, "device_osd": 0, "device_twice": 0,
    "device_show": 1, "started": 0,
}


def make_agent(tmp_path: Path) -> Agent:
    config = AgentConfig(mac_addr="02:00:00:00:00:01")
    return Agent("http://127.0.0.1:9", "rk_test", tmp_path / "agent", config)


def test_repeated_commands_are_harmless(tmp_path: Path):
    agent = make_agent(tmp_path)
    for _ in range(2):
        assert agent.apply(protocol.CAMERA_ADD, CAMERA)["err_code"] == 0
    assert list(agent.state.cameras) == [5]
    for _ in range(2):
        answer = agent.apply(protocol.COURSES_SET, {"camera_id": 5, "courses": [
            {"course_id": 1, "week_id": 1, "start_sec": 60, "elapse_sec": 60, "repeat_id": 2}]})
        assert answer["data"] == {"camera_id": 5, "courses": 1}
    for _ in range(2):
        assert agent.apply(protocol.CAMERA_DEL, {"camera_ids": [5]})["err_code"] == 0
    assert agent.state.cameras == {} and agent.state.courses == {}
    unknown = agent.apply(protocol.CAMERA_START, {"camera_id": 5})
    assert unknown["err_code"] == protocol.UNKNOWN_CAMERA
    assert agent.apply("camera.explode", {"camera_id": 5})["err_code"] in (
        protocol.UNKNOWN_CAMERA, protocol.BAD_COMMAND)


def test_state_survives_a_restart(tmp_path: Path):
    agent = make_agent(tmp_path)
    agent.state.adopt(3, {"gather": {"auto_dvr": 1}, "cameras": [CAMERA],
                          "courses": [{"camera_id": 5, "courses": []}]})
    again = make_agent(tmp_path)
    assert again.state.gather_id == 3 and again.state.cameras[5]["camera_name"] == "一班"
    assert again.state.gather == {"auto_dvr": 1}


def test_unreadable_state_is_ignored_not_fatal(tmp_path: Path):
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "state.json").write_text("{broken")
    assert make_agent(tmp_path).state.cameras == {}


def test_source_urls(tmp_path: Path):
    dahua = "rtsp://{user}:{password}@{ip}:{rtsp_port}/cam"
    config = AgentConfig(devices=(Device("门", "10.0.0.9", vendor="dahua", rtsp_port=8554),),
                         vendors={**VENDORS, "dahua": Vendor(main=dahua + "/0", sub=dahua + "/1")})
    ip_camera = {**CAMERA, "stream_prop": 0, "device_ip": "10.0.0.9", "device_user": "admin",
                 "device_pass": "cEA6c3MvIQ=="}  # "p@:ss/!"
    assert source_url(ip_camera, config) == "rtsp://admin:p%40%3Ass%2F%21@10.0.0.9:8554/cam/1"
    assert source_url(ip_camera, config, "main") == "rtsp://admin:p%40%3Ass%2F%21@10.0.0.9:8554/cam/0"
    hik = {**ip_camera, "device_ip": "10.0.0.8"}
    # Hikvision: the main stream (recorded) is channel 101, the sub stream (live) 102.
    assert source_url(hik, config, "main").endswith("@10.0.0.8:554/Streaming/Channels/101")
    assert source_url(hik, config).endswith("@10.0.0.8:554/Streaming/Channels/102")
    # Modes 1 and 2 have one stream for both.
    assert source_url(CAMERA, config, "main") == source_url(CAMERA, config)
    assert describe("rtsp://admin:secret@10.0.0.8:554/x") == "rtsp://10.0.0.8:554/x"
    for bad in ({**ip_camera, "device_pass": "%%%"}, {**CAMERA, "stream_mp4": ""},
                {**CAMERA, "stream_prop": 2, "stream_url": "http://x"}):
        try:
            source_url(bad, config)
        except SourceError:
            continue
        raise AssertionError(bad)


def test_agent_config_file(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text('mac_addr = "02:00:00:00:00:09"\nname_pc = "lab"\n'
                    '[[devices]]\ncamera_name = "Gate"\ndevice_ip = "10.1.1.1"\n')
    config = load_agent_config(path)
    assert config.mac_addr == "02:00:00:00:00:09" and config.devices[0].vendor == "hikvision"
    path.write_text('spool_max_mb = 5\nminute_length = 0.5\n[vendors]\nacme = "rtsp://{ip}/a"\n'
                    'dahua = { main = "rtsp://{ip}/m", sub = "rtsp://{ip}/s" }\n')
    config = load_agent_config(path)
    assert (config.spool_max_mb, config.minute_length) == (5, 0.5)
    assert config.vendors["acme"] == Vendor("rtsp://{ip}/a", "rtsp://{ip}/a")
    assert config.vendors["dahua"] == Vendor("rtsp://{ip}/m", "rtsp://{ip}/s")
    for bad in ('spool_max_mb = 0\n', 'minute_length = "x"\n', '[vendors]\nx = { main = "a" }\n'):
        path.write_text(bad)
        try:
            load_agent_config(path)
        except AgentConfigError:
            continue
        raise AssertionError(bad)
    path.write_text('colour = "red"\n')
    try:
        load_agent_config(path)
    except Exception as exc:
        assert "colour" in str(exc)
    else:
        raise AssertionError("unknown setting accepted")


def test_agent_url():
    assert agent_url("http://relay:8080") == "ws://relay:8080/agent"
    assert agent_url("https://relay/") == "wss://relay/agent"
    assert agent_url("ws://relay:1/agent") == "ws://relay:1/agent"
