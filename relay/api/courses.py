"""3.14–3.17: a camera's weekly recording courses.

Times are seconds of the day. ``start_time`` is ``HH:MM:SS`` (a leading ``YYYY-MM-DD`` is accepted
and ignored, since only the time of day matters); the duration may be spelled ``elapse_sec`` or
``elapsed_sec``. A course ending after 23:59:59 is cross-day (1013); one that overlaps another
course of the same camera and weekday is refused with 1012 naming that course's interval.
"""

from __future__ import annotations

import re
from typing import Any

from ..catalogue import CourseOverlap, NotFound
from ..present import clock_time, page_fields
from .errors import ApiError, Code
from .params import Params
from .registry import Call, endpoint

DAY = 24 * 3600
_START = re.compile(r"(?:\d{4}-\d{2}-\d{2}[ T])?(\d{2}):(\d{2}):(\d{2})")
_SCHEDULE_KEYS = ("camera_id", "week_id", "elapse_sec", "elapsed_sec", "start_time")


def _start_sec(params: Params) -> int:
    match = _START.fullmatch(params.raw("start_time") or "")
    if match is None:
        raise ApiError(Code.BAD_TIME, "start_time")
    hours, minutes, seconds = (int(part) for part in match.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ApiError(Code.BAD_TIME, "start_time")
    return hours * 3600 + minutes * 60 + seconds


def _elapse_sec(params: Params) -> int:
    spellings = [name for name in ("elapse_sec", "elapsed_sec") if params.raw(name) is not None]
    if not spellings:
        raise ApiError(Code.BAD_TIME, "elapse_sec")
    values = {params.integer(name, 1, 10**9, code=Code.BAD_TIME) for name in spellings}
    if len(values) > 1:
        raise ApiError(Code.BAD_PARAM, "elapsed_sec")
    return values.pop()  # type: ignore[return-value]


def _schedule(params: Params) -> dict[str, int]:
    """camera_id, week_id, start_sec and elapse_sec of an add/mod call, fully checked."""
    camera_id = params.ident("camera_id")
    week_id = params.integer("week_id", 0, 6, code=Code.BAD_TIME)
    if week_id is None:
        raise ApiError(Code.BAD_TIME, "week_id")
    start_sec = _start_sec(params)
    elapse_sec = _elapse_sec(params)
    if start_sec + elapse_sec > DAY - 1:
        raise ApiError(Code.CROSS_DAY, "elapse_sec")
    return {
        "camera_id": camera_id,
        "week_id": week_id,
        "start_sec": start_sec,
        "elapse_sec": elapse_sec,
    }


def _overlap(clash: CourseOverlap) -> ApiError:
    interval = f"{clock_time(clash.start_sec)}-{clock_time(clash.start_sec + clash.elapse_sec)}"
    return ApiError(Code.OVERLAP, "start_time", f": {interval} (course_id={clash.course_id})")


async def _notify(call: Call, camera_ids: list[tuple[int, int]]) -> dict[str, Any]:
    """Send each camera's whole schedule to its agent; ``camera_ids`` holds (gather_id, camera_id)."""
    catalogue = call.services.catalogue
    schedules = [(gather_id, camera_id, await catalogue.courses.of_camera(camera_id))
                 for gather_id, camera_id in camera_ids]
    return await call.services.hub.schedules_changed(schedules)


@endpoint("list_course", "camera_id", "cur", "per")
async def list_course(call: Call) -> dict[str, Any]:
    camera_id = call.params.ident("camera_id")
    cur, per = call.params.paging()
    try:
        page = await call.services.catalogue.courses.page(camera_id, cur, per)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    present = call.services.presenter
    return {**page_fields(page, cur, per), "data": [present.course(row) for row in page.rows]}


@endpoint("add_course", *_SCHEDULE_KEYS)
async def add_course(call: Call) -> dict[str, Any]:
    schedule = _schedule(call.params)
    try:
        row = await call.services.catalogue.courses.add(**schedule)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "camera_id") from exc
    except CourseOverlap as clash:
        raise _overlap(clash) from clash
    transmit = await _notify(call, [(row["gather_id"], row["camera_id"])])
    return {"course_id": row["course_id"], "camera_id": row["camera_id"], "transmit": transmit}


@endpoint("mod_course", "course_id", *_SCHEDULE_KEYS)
async def mod_course(call: Call) -> dict[str, Any]:
    course_id = call.params.ident("course_id")
    schedule = _schedule(call.params)
    try:
        row = await call.services.catalogue.courses.update(course_id, **schedule)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, f"{exc.kind}_id") from exc
    except CourseOverlap as clash:
        raise _overlap(clash) from clash
    touched = [(row["gather_id"], row["camera_id"])]
    if row["old_camera_id"] != row["camera_id"]:
        old = await call.services.catalogue.cameras.get(row["old_camera_id"])
        touched.append((old["gather_id"], old["camera_id"]))
    transmit = await _notify(call, touched)
    return {"course_id": row["course_id"], "camera_id": row["camera_id"], "transmit": transmit}


@endpoint("del_course", "course_id")
async def del_course(call: Call) -> dict[str, Any]:
    course_ids = call.params.ident_list("course_id")
    try:
        deleted = await call.services.catalogue.courses.delete(course_ids)
    except NotFound as exc:
        raise ApiError(Code.NO_ID, "course_id") from exc
    cameras = {row["camera_id"]: row["gather_id"] for row in deleted}
    transmit = await _notify(call, [(gid, cid) for cid, gid in sorted(cameras.items())])
    return {"transmit": transmit}
