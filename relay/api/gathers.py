"""3.3 list_gather and 3.4 mod_gather."""

from __future__ import annotations

from typing import Any

from ..catalogue import NotFound
from ..catalogue.gatherers import SETTINGS
from ..present import page_fields
from .errors import ApiError, Code
from .params import Params
from .registry import Call, endpoint

#: Accepted range of each numeric gatherer setting.
RANGES = {
    "main_rate": (1, 100_000),
    "sub_rate": (1, 100_000),
    "auto_dvr": (0, 1),
    "auto_fds": (0, 1),
    "slice_val": (0, 30),
    "inter_val": (0, 3),
    "snap_val": (1, 1440),
}


@endpoint("list_gather", "cur", "per")
async def list_gather(call: Call) -> dict[str, Any]:
    cur, per = call.params.paging()
    page = await call.services.catalogue.gatherers.page(cur, per)
    present = call.services.presenter
    return {**page_fields(page, cur, per), "data": [present.gather(row) for row in page.rows]}


def _settings(params: Params) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    name_set = params.text("name_set", 128)
    if name_set is not None:
        changes["name_set"] = name_set
    for key, (low, high) in RANGES.items():
        value = params.integer(key, low, high)
        if value is not None:
            changes[key] = value
    return changes


@endpoint("mod_gather", "gather_id", *SETTINGS)
async def mod_gather(call: Call) -> dict[str, Any]:
    gather_id = call.params.ident("gather_id")
    changes = _settings(call.params)
    try:
        row = await call.services.catalogue.gatherers.update(gather_id, changes)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "gather_id") from exc
    transmit = await call.services.hub.gatherer_changed(row)
    return {"transmit": transmit}
