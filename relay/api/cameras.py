"""3.5–3.11: list, add, modify, delete, query, start and stop cameras."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..catalogue import NotFound
from ..link import protocol
from ..present import page_fields
from .errors import ApiError, Code
from .params import Params
from .registry import Call, endpoint

_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
_STREAM_SCHEMES = ("rtsp://", "rtmp://")
_SOURCE_OF_MODE = {0: "device_ip", 1: "stream_mp4", 2: "stream_url"}

@endpoint("list_camera", "cur", "per")
async def list_camera(call: Call) -> dict[str, Any]:
    cur, per = call.params.paging()
    page = await call.services.catalogue.cameras.page(cur, per)
    present = call.services.presenter
    return {
        **page_fields(page, cur, per),
        "storage_addr": call.services.settings.storage_url,
        "data": [present.camera(row) for row in page.rows],
    }


def _stream_url(params: Params) -> str | None:
    url = params.text("stream_url", 1024)
    if url is not None and (not url.lower().startswith(_STREAM_SCHEMES) or any(
        ch.isspace() for ch in url
    )):
        raise ApiError(Code.BAD_PARAM, "stream_url")
    return url


def _device_pass(params: Params) -> str | None:
    """The device password as given: base64 on the wire, checked so the agent can decode it."""
    value = params.text("device_pass", 255)
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(Code.BAD_PARAM, "device_pass") from exc
    return value


def _stream_mp4(params: Params) -> str | None:
    """Mode 1's file: an absolute path on the gatherer, never a URL the agent would fetch."""
    path = params.text("stream_mp4", 1024)
    if path is not None and not protocol.is_file_path(path):
        raise ApiError(Code.BAD_PARAM, "stream_mp4")
    return path


def _source_fields(params: Params) -> dict[str, Any]:
    fields = {
        "stream_url": _stream_url(params),
        "stream_mp4": _stream_mp4(params),
    }
    return {key: value for key, value in fields.items() if value is not None}


def _require_source(row: dict[str, Any]) -> None:
    """A camera must name the source its mode reads from (1008 otherwise)."""
    field = _SOURCE_OF_MODE[row["stream_prop"]]
    if not row.get(field):
        raise ApiError(Code.NO_NAME, field)


@endpoint("add_camera", "camera_name", "gather_id", "stream_prop", "stream_url", "stream_mp4")
async def add_camera(call: Call) -> dict[str, Any]:
    params = call.params
    fields: dict[str, Any] = {"camera_name": params.text("camera_name", 128, Code.NO_NAME)}
    gather_id = params.ident("gather_id")
    stream_prop = params.integer("stream_prop", 1, 2)
    if stream_prop is None:
        raise ApiError(Code.BAD_PARAM, "stream_prop")
    fields.update(stream_prop=stream_prop, **_source_fields(params))
    _require_source(fields)
    try:
        row = await call.services.catalogue.cameras.add(gather_id, fields)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "gather_id") from exc
    transmit = await call.services.hub.camera_added(row)
    return {"camera_id": row["camera_id"], "transmit": transmit}


@endpoint(
    "mod_camera", "camera_id", "camera_name", "stream_prop", "stream_url", "stream_mp4",
    "device_ip", "device_user", "device_pass", "device_cmd_port", "device_mirror", "device_osd",
    "device_twice", "device_show",
)  # fmt: skip
async def mod_camera(call: Call) -> dict[str, Any]:
    params = call.params
    camera_id = params.ident("camera_id")
    changes: dict[str, Any] = {"camera_name": params.text("camera_name", 128, Code.NO_NAME)}
    changes.update(_source_fields(params))
    optional = {
        "stream_prop": params.integer("stream_prop", 0, 2),
        "device_ip": params.text("device_ip", 255),
        "device_user": params.text("device_user", 128),
        "device_pass": _device_pass(params),
        "device_cmd_port": params.integer("device_cmd_port", 1, 65535),
        **{flag: params.flag(flag) for flag in
           ("device_mirror", "device_osd", "device_twice", "device_show")},
    }
    if optional["device_ip"] is not None and not _HOST.fullmatch(optional["device_ip"]):
        raise ApiError(Code.BAD_PARAM, "device_ip")
    changes.update({key: value for key, value in optional.items() if value is not None})
    try:
        row = await call.services.catalogue.cameras.update(camera_id, changes, _require_source)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    transmit = await call.services.hub.camera_changed(row)
    return {"transmit": transmit}


@endpoint("del_camera", "camera_id")
async def del_camera(call: Call) -> dict[str, Any]:
    camera_ids = call.params.ident_list("camera_id")
    try:
        deleted = await call.services.catalogue.cameras.delete(camera_ids)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    call.services.storage.remove(deleted.files)
    transmit = await call.services.hub.cameras_deleted(deleted.cameras)
    return {"transmit": transmit}


async def _camera(call: Call) -> dict[str, Any]:
    camera_id = call.params.ident("camera_id")
    try:
        return await call.services.catalogue.cameras.get(camera_id)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc


@endpoint("get_camera_status", "camera_id")
async def get_camera_status(call: Call) -> dict[str, Any]:
    row = await _camera(call)
    report = await call.services.hub.recording(row["gather_id"], row["camera_id"]) or {}
    return {"camera_id": row["camera_id"], "status": row["status"],
            "recording": report.get("recording", 0), "spool_bytes": report.get("spool_bytes", 0),
            "upload_error": report.get("upload_error", ""),
            "record_error": report.get("record_error", "")}


async def _set_started(call: Call, started: int) -> dict[str, Any]:
    camera_id = call.params.ident("camera_id")
    try:
        gather_id = await call.services.catalogue.cameras.set_started(camera_id, started)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    transmit = await call.services.hub.camera_started(gather_id, camera_id, bool(started))
    return {"transmit": transmit}


@endpoint("start_camera", "camera_id")
async def start_camera(call: Call) -> dict[str, Any]:
    return await _set_started(call, 1)


@endpoint("stop_camera", "camera_id")
async def stop_camera(call: Call) -> dict[str, Any]:
    return await _set_started(call, 0)
