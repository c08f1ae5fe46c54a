"""What an agent may send, checked before anything acts on it: shapes, types, bounded numbers, depth.

A message that does not fit is a ``Refused`` (the link is closed with that reason, logged), never an
exception from deeper down: JSON nested 100,000 deep is refused here, not a ``RecursionError``;
``camera_id`` 2**70 is refused here, not an ``OverflowError`` in the database driver.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ..catalogue.macs import normal_mac
from ..ids import is_id
from . import protocol

#: How deep the ``data`` of a reply may nest (it becomes the API answer's ``transmit.data``).
MAX_DEPTH = 8
MAX_CODE = 2**31 - 1
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")


class Refused(Exception):
    """The peer broke the protocol; the message is the logged reason the link is closed with."""


def parse_json(text: str, what: str) -> dict[str, Any]:
    """One JSON object, or ``Refused`` naming ``what`` was wrong."""
    try:
        message = json.loads(text)
    except RecursionError as exc:  # json's C scanner refuses very deep nesting this way
        raise Refused(f"{what}: nested too deep") from exc
    except ValueError as exc:
        raise Refused(f"{what}: not JSON") from exc
    if not isinstance(message, dict):
        raise Refused(f"{what}: not a JSON object")
    return message


def _text(message: dict[str, Any], key: str, limit: int) -> str:
    value = message.get(key, "")
    if not isinstance(value, str) or len(value) > limit or any(ord(ch) < 32 for ch in value):
        raise Refused(f"hello: bad {key}")
    return value


def _device(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise Refused("hello: a device is not an object")
    device = {
        "camera_name": _text(raw, "camera_name", 128) or str(raw.get("device_ip", ""))[:128],
        "device_ip": _text(raw, "device_ip", 255),
        "device_user": _text(raw, "device_user", 128),
        "device_pass": _text(raw, "device_pass", 255),
    }
    if not _HOST.fullmatch(device["device_ip"]):
        raise Refused("hello: bad device_ip")
    try:
        base64.b64decode(device["device_pass"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused("hello: device_pass is not base64") from exc
    port = raw.get("device_cmd_port", 8000)
    if type(port) is not int or not 0 < port < 65536:
        raise Refused("hello: bad device_cmd_port")
    device["device_cmd_port"] = port
    return device


def parse_hello(text: str) -> dict[str, Any]:
    """The agent's hello, with its MAC in one form (``catalogue.macs``)."""
    try:
        message = parse_json(text, "hello")
    except Refused as refusal:
        raise Refused("garbage before hello") from refusal
    if message.get("type") != "hello":
        raise Refused("spoke before saying hello")
    if message.get("protocol") != protocol.PROTOCOL:
        raise Refused(f"unsupported protocol {str(message.get('protocol'))[:16]}")
    mac = normal_mac(_text(message, "mac_addr", 64))
    if mac is None:
        raise Refused("hello: bad mac_addr")
    devices = message.get("devices", [])
    if not isinstance(devices, list) or len(devices) > protocol.MAX_DEVICES:
        raise Refused("hello: bad devices")
    return {
        "mac_addr": mac,
        "ip_addr": _text(message, "ip_addr", 64),
        "name_pc": _text(message, "name_pc", 128),
        "os_name": _text(message, "os_name", 128),
        "version": _text(message, "version", 32),
        "devices": [_device(device) for device in devices],
    }


def reply_id(message: dict[str, Any]) -> int | None:
    """The command id a reply answers, when it is a well-formed reply."""
    command_id = message.get("id")
    return command_id if message.get("type") == "reply" and is_id(command_id) else None


def reply(message: dict[str, Any]) -> dict[str, Any]:
    """The agent's reply as ``transmit``: its code, message and any data, nothing of ours."""
    err_code = message.get("err_code")
    data = message.get("data")
    if data is not None and not (isinstance(data, dict) and _shallow(data, MAX_DEPTH)):
        raise Refused("malformed reply: data must be a small JSON object")
    return {
        "err_code": err_code if type(err_code) is int and 0 <= err_code <= MAX_CODE
        else protocol.BAD_COMMAND,
        "err_msg": str(message.get("err_msg", ""))[:500],
        **({"data": data} if data is not None else {}),
    }


def status(message: dict[str, Any]) -> tuple[int, int, str]:
    """``(camera_id, status, err_msg)`` of a status report."""
    camera_id, value = message.get("camera_id"), message.get("status")
    if not is_id(camera_id) or type(value) is not int or value not in (0, 1):
        raise Refused("malformed status report")
    err_msg = message.get("err_msg") or ""
    if not isinstance(err_msg, str):
        raise Refused("malformed status report")
    return camera_id, value, err_msg[:500]


MAX_SPOOL_BYTES = 2**53


def recording(message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(camera_id, report)`` of a recording report: recording or not, the spool's bytes for
    that camera, the last upload error and the last recording error ("" when all is well)."""
    camera_id, active = message.get("camera_id"), message.get("recording")
    spool_bytes = message.get("spool_bytes", 0)
    errors = {key: message.get(key) or "" for key in ("upload_error", "record_error")}
    if (not is_id(camera_id) or type(active) is not int or active not in (0, 1)
            or type(spool_bytes) is not int or not 0 <= spool_bytes <= MAX_SPOOL_BYTES
            or not all(isinstance(error, str) for error in errors.values())):
        raise Refused("malformed recording report")
    return camera_id, {"recording": active, "spool_bytes": spool_bytes,
                       **{key: error[:500] for key, error in errors.items()}}


def _shallow(value: Any, depth: int) -> bool:
    """``value`` nests no deeper than ``depth`` containers."""
    if isinstance(value, dict):
        return depth > 0 and all(_shallow(item, depth - 1) for item in value.values())
    if isinstance(value, list):
        return depth > 0 and all(_shallow(item, depth - 1) for item in value)
    return True
