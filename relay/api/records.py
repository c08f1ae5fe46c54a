"""3.12 list_record and 3.13 del_record."""

from __future__ import annotations

from typing import Any

from ..catalogue import NotFound
from ..ids import MAX_ID
from ..present import page_fields
from .errors import ApiError, Code
from .registry import Call, endpoint


@endpoint("list_record", "camera_id", "cur", "per")
async def list_record(call: Call) -> dict[str, Any]:
    """Every camera's recordings, or with ``camera_id`` (our extension) one camera's."""
    camera_id = call.params.integer("camera_id", 1, MAX_ID, code=Code.NO_ID)
    cur, per = call.params.paging()
    try:
        page = await call.services.catalogue.records.page_of(cur, per, camera_id)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    present = call.services.presenter
    return {
        **page_fields(page, cur, per),
        "storage_addr": call.services.settings.storage_url,
        "data": [present.record(row) for row in page.rows],
    }


@endpoint("del_record", "record_id")
async def del_record(call: Call) -> dict[str, Any]:
    record_ids = call.params.ident_list("record_id")
    try:
        files = await call.services.catalogue.records.delete(record_ids)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "record_id") from exc
    call.services.storage.remove(files)
    return {}
