"""The agent's own settings: how it names itself, and the IP cameras (mode 0) it knows.

Read from a TOML file (``--config``)::

    mac_addr = "02:00:00:00:00:01"        # default: this machine's MAC
    name_pc = "classroom-7"               # default: the host name
    media_dirs = ["/srv/videos"]          # mode-1 files must be inside these (default: anywhere)
    spool_max_mb = 2048                   # recordings waiting for upload, at most (oldest dropped)
    minute_length = 60                    # seconds in a slice_val/snap_val "minute" (tests, demo)

    [vendors]                             # RTSP URL templates by vendor; Hikvision is built in
    # main stream (recorded), sub stream (live); one string serves both
    dahua = { main = "rtsp://{user}:{password}@{ip}:{rtsp_port}/cam/realmonitor?channel=1&subtype=0",
              sub = "rtsp://{user}:{password}@{ip}:{rtsp_port}/cam/realmonitor?channel=1&subtype=1" }

    [[devices]]
    camera_name = "Front gate"
    device_ip = "192.168.1.65"
    device_user = "admin"
    device_pass = "YWRtaW4xMjM="          # base64, as the API carries it
    vendor = "hikvision"                  # default
    rtsp_port = 554                       # default
"""

from __future__ import annotations

import platform
import socket
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HIKVISION = "rtsp://{user}:{password}@{ip}:{rtsp_port}/Streaming/Channels/"


@dataclass(frozen=True)
class Vendor:
    """An IP camera maker's RTSP URL templates: the main stream (recorded, full size) and the sub
    stream (live, smaller)."""

    main: str
    sub: str


VENDORS = {"hikvision": Vendor(main=_HIKVISION + "101", sub=_HIKVISION + "102")}


class AgentConfigError(Exception):
    """The agent's config file is unusable; the message says where."""


@dataclass(frozen=True)
class Device:
    camera_name: str
    device_ip: str
    device_user: str = ""
    device_pass: str = ""
    device_cmd_port: int = 8000
    vendor: str = "hikvision"
    rtsp_port: int = 554

    def hello(self) -> dict[str, Any]:
        """How the hello describes it (the relay keeps vendor and port to the agent)."""
        return {key: getattr(self, key) for key in
                ("camera_name", "device_ip", "device_user", "device_pass", "device_cmd_port")}


def _machine_mac() -> str:
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


@dataclass(frozen=True)
class AgentConfig:
    mac_addr: str = field(default_factory=_machine_mac)
    name_pc: str = field(default_factory=socket.gethostname)
    os_name: str = field(default_factory=lambda: f"{platform.system()} {platform.release()}")
    devices: tuple[Device, ...] = ()
    vendors: dict[str, Vendor] = field(default_factory=lambda: dict(VENDORS))
    #: Folders mode-1 files (``stream_mp4``) must be in; empty: any local file. The relay's API
    #: decides which file a camera plays, so a site that does not trust it with every file the
    #: agent can read names its video folders here.
    media_dirs: tuple[Path, ...] = ()
    #: Finished recordings waiting for upload may take this much disk; past it the oldest goes.
    spool_max_mb: int = 2048
    #: Seconds in one "minute" of the gatherer's slice_val and snap_val (60; shorter in tests).
    minute_length: float = 60.0

    def device(self, device_ip: str) -> Device | None:
        return next((d for d in self.devices if d.device_ip == device_ip), None)


def load_agent_config(path: Path | None) -> AgentConfig:
    if path is None:
        return AgentConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"agent config {path}: {exc}") from exc
    unknown = set(raw) - {"mac_addr", "name_pc", "os_name", "vendors", "devices", "media_dirs",
                          "spool_max_mb", "minute_length"}
    if unknown:
        raise AgentConfigError(f"agent config {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        devices = tuple(Device(**device) for device in raw.get("devices", []))
    except TypeError as exc:
        raise AgentConfigError(f"agent config {path}: bad [[devices]] entry: {exc}") from exc
    vendors = {**VENDORS, **{name: _vendor(path, name, value)
                             for name, value in raw.get("vendors", {}).items()}}
    spool_max_mb, minute_length = raw.get("spool_max_mb", 2048), raw.get("minute_length", 60)
    if type(spool_max_mb) is not int or spool_max_mb < 1:
        raise AgentConfigError(f"agent config {path}: spool_max_mb must be a whole number >= 1")
    if type(minute_length) not in (int, float) or not 0.1 <= minute_length <= 3600:
        raise AgentConfigError(f"agent config {path}: minute_length must be 0.1 to 3600 seconds")
    media_dirs = raw.get("media_dirs", [])
    if not isinstance(media_dirs, list) or not all(isinstance(d, str) and d for d in media_dirs):
        raise AgentConfigError(f"agent config {path}: media_dirs must be a list of folders")
    for device in devices:
        if device.vendor not in vendors:
            raise AgentConfigError(f"agent config {path}: no URL template for vendor {device.vendor!r}")
    defaults = AgentConfig()
    return AgentConfig(
        mac_addr=raw.get("mac_addr", defaults.mac_addr),
        name_pc=raw.get("name_pc", defaults.name_pc),
        os_name=raw.get("os_name", defaults.os_name),
        devices=devices,
        vendors=vendors,
        media_dirs=tuple(Path(d).expanduser().resolve() for d in media_dirs),
        spool_max_mb=spool_max_mb,
        minute_length=float(minute_length),
    )


def _vendor(path: Path, name: str, value: Any) -> Vendor:
    if isinstance(value, str):
        return Vendor(main=value, sub=value)
    if isinstance(value, dict) and set(value) == {"main", "sub"} and all(
            isinstance(v, str) for v in value.values()):
        return Vendor(main=value["main"], sub=value["sub"])
    raise AgentConfigError(f"agent config {path}: vendor {name!r} must be a URL template or "
                           "{ main = ..., sub = ... }")
