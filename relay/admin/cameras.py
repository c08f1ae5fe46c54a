"""A camera's page: live video, its week of courses, its recordings; and what can be done to it.

Every change goes through API v1's own endpoint (``call_endpoint``): the same checks, rules and
messages (1011, 1012 naming the overlapped course, 1013) and the same agent command, whose
``transmit`` answer the operator then reads in words. The form speaks people's units (a weekday,
a clock time, minutes) and turns them into the API's; what it cannot turn is passed as given, so
the API's own refusal says what is wrong.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from aiohttp import web

from ..catalogue import NotFound
from ..ids import parse_id
from ..present import clock_time
from ..services import SERVICES
from .forms import confirm, play_url, run_endpoint, target_id
from .sessions import Visit, action, done, message, page, render

#: week_id as the API counts it: 0 is Sunday.
WEEKDAYS = ("周日 Sun", "周一 Mon", "周二 Tue", "周三 Wed", "周四 Thu", "周五 Fri", "周六 Sat")
RECENT_RECORDS = 20
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_MINUTES = re.compile(r"\d{1,5}(?:\.\d{1,2})?")


def timetable(courses: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The week as seven columns of blocks, placed by the share of the day they cover."""
    days: list[list[dict[str, Any]]] = [[] for _ in WEEKDAYS]
    for row in sorted(courses, key=lambda r: (r["week_id"], r["start_sec"])):
        end = row["start_sec"] + row["elapse_sec"]
        days[row["week_id"]].append({
            **row,
            "start": clock_time(row["start_sec"]),
            "end": clock_time(end),
            "minutes": round(row["elapse_sec"] / 60, 2),
            "top": round(row["start_sec"] / 864, 3),  # percent of the day
            "height": max(round(row["elapse_sec"] / 864, 3), 1.2),
        })
    return days


def schedule_values(form: dict[str, str]) -> dict[str, str]:
    """The API's ``week_id``/``start_time``/``elapse_sec`` from the form's day, clock, minutes."""
    start = form.get("start", "").strip()
    clock = _CLOCK.fullmatch(start)
    if clock:
        hours, minutes, seconds = clock.groups()
        start = f"{int(hours):02d}:{minutes}:{seconds or '00'}"
    length = form.get("minutes", "").strip()
    elapse = str(round(float(length) * 60)) if _MINUTES.fullmatch(length) else length
    return {"week_id": form.get("week_id", ""), "start_time": start, "elapse_sec": elapse}


@page()
async def camera_page(request: web.Request, visit: Visit) -> web.StreamResponse:
    services = request.app[SERVICES]
    camera_id = target_id(request)
    try:
        camera = await services.catalogue.cameras.get(camera_id)
        gatherer = await services.catalogue.gatherers.get(camera["gather_id"])
        records = await services.catalogue.records.page_of(1, RECENT_RECORDS, camera_id)
    except NotFound:
        return message(request, "没有这个通道 · No such camera",
                       "它可能已被删除 · It may have been deleted.", 404, visit)
    courses = await services.catalogue.courses.of_camera(camera_id)
    report = await services.hub.recording(camera["gather_id"], camera_id) or {}
    return render(request, "camera.html", {
        "visit": visit, "camera": camera, "gatherer": gatherer,
        "online": await services.hub.online(camera["gather_id"]), "report": report,
        "play_url": await play_url(request, visit, "play_camera", "camera_id", camera_id),
        "days": timetable(courses), "weekdays": WEEKDAYS, "courses": courses,
        "records": [services.presenter.record(row) for row in records.rows], "records_total": records.total,
        "storage_url": services.settings.storage_url,
    })


def _back(camera_id: int) -> str:
    return f"/admin/cameras/{camera_id}"


@action()
async def start(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    camera_id = target_id(request)
    raise await run_endpoint(request, visit, "start_camera", {"camera_id": str(camera_id)},
                     "已启动 · Started.", _back(camera_id))


@action()
async def stop(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    camera_id = target_id(request)
    raise await run_endpoint(request, visit, "stop_camera", {"camera_id": str(camera_id)},
                     "已停止 · Stopped.", _back(camera_id))


CAMERA_FIELDS = ("camera_name", "stream_prop", "stream_url", "stream_mp4", "device_ip",
                 "device_user")


@action()
async def edit(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    camera_id = target_id(request)
    values = {key: form[key] for key in CAMERA_FIELDS if form.get(key, "").strip()}
    if form.get("device_password"):  # typed as is; the API takes it in base64
        values["device_pass"] = base64.b64encode(form["device_password"].encode()).decode()
    raise await run_endpoint(request, visit, "mod_camera", {"camera_id": str(camera_id), **values},
                     "已保存 · Saved.", _back(camera_id))


@action()
async def delete(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    camera_id = target_id(request)
    services = request.app[SERVICES]
    try:
        camera = await services.catalogue.cameras.get(camera_id)
    except NotFound:
        raise done(request, "/admin", "没有这个通道 · No such camera.", False) from None
    asked = confirm(request, visit, form, "删除通道 · Delete camera",
                    f"删除 “{camera['camera_name']}” 及其全部录像和课程？ · Delete "
                    f"“{camera['camera_name']}” with all its recordings and courses?",
                    _back(camera_id))
    if asked is not None:
        return asked
    raise await run_endpoint(request, visit, "del_camera", {"camera_id": str(camera_id)},
                     f"已删除 · Deleted “{camera['camera_name']}”.", "/admin")


@action()
async def add_course(request: web.Request, visit: Visit, form: dict[str, str]
                     ) -> web.StreamResponse:
    camera_id = target_id(request)
    raise await run_endpoint(request, visit, "add_course",
                     {"camera_id": str(camera_id), **schedule_values(form)},
                     "已添加课程 · Course added.", _back(camera_id))


@action()
async def move_course(request: web.Request, visit: Visit, form: dict[str, str]
                      ) -> web.StreamResponse:
    course_id = target_id(request)
    camera_id = form.get("camera_id", "")
    back = _back(int(camera_id)) if parse_id(camera_id) else "/admin"
    raise await run_endpoint(request, visit, "mod_course",
                     {"course_id": str(course_id), "camera_id": camera_id,
                      **schedule_values(form)}, "已修改课程 · Course moved.", back)


@action()
async def delete_course(request: web.Request, visit: Visit, form: dict[str, str]
                        ) -> web.StreamResponse:
    course_id = target_id(request)
    camera_id = form.get("camera_id", "")
    back = _back(int(camera_id)) if parse_id(camera_id) else "/admin"
    asked = confirm(request, visit, form, "删除课程 · Delete course",
                    f"删除课程 {form.get('label', course_id)}？ · Delete this course?", back)
    if asked is not None:
        return asked
    raise await run_endpoint(request, visit, "del_course", {"course_id": str(course_id)},
                     "已删除课程 · Course deleted.", back)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/cameras/{id}", camera_page)
    app.router.add_post("/admin/cameras/{id}/start", start)
    app.router.add_post("/admin/cameras/{id}/stop", stop)
    app.router.add_post("/admin/cameras/{id}/edit", edit)
    app.router.add_post("/admin/cameras/{id}/delete", delete)
    app.router.add_post("/admin/cameras/{id}/courses", add_course)
    app.router.add_post("/admin/courses/{id}/move", move_course)
    app.router.add_post("/admin/courses/{id}/delete", delete_course)
