"""3.18 play_camera and 3.19 play_record: player page URLs for an ``<iframe>``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from ..catalogue import NotFound
from ..tickets import Kind, issue_ticket
from .errors import ApiError, Code
from .registry import Call, endpoint


def _play_url(call: Call, kind: Kind, target_id: int, target: dict[str, Any]) -> str:
    services = call.services
    width = call.params.integer("width", 1, 10_000) or 850
    height = call.params.integer("height", 1, 10_000) or 550
    ticket = issue_ticket(
        services.signer, services.clock(), kind, target, services.settings.play_ticket_ttl
    )
    query = urlencode({"ticket": ticket, "width": width, "height": height})
    return f"{services.settings.base_url}/play/{kind}/{target_id}?{query}"


@endpoint("play_camera", "camera_id", "width", "height")
async def play_camera(call: Call) -> dict[str, Any]:
    camera_id = call.params.ident("camera_id")
    try:
        camera = await call.services.catalogue.cameras.get(camera_id)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    return {"play_url": _play_url(call, "live", camera_id, camera)}


@endpoint("play_record", "record_id", "width", "height")
async def play_record(call: Call) -> dict[str, Any]:
    record_id = call.params.ident("record_id")
    try:
        record = await call.services.catalogue.records.get(record_id)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "record_id") from exc
    return {"play_url": _play_url(call, "record", record_id, record)}
