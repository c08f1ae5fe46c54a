"""Recordings: find them by camera and day, play, download, delete (after a confirmation).

Days are the relay's zone's (``timezone``, as API times are); a day runs from its midnight to the
next. Everyone signed in may watch and download; deleting is for administrators.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..catalogue import NotFound
from ..ids import parse_id
from ..services import SERVICES
from .forms import back_to, confirm, play_url, run_endpoint, target_id
from .overview import every_row
from .sessions import Visit, action, done, message, page, render

PER_PAGE = 30


@page()
async def listing(request: web.Request, visit: Visit) -> web.StreamResponse:
    services = request.app[SERVICES]
    camera = request.query.get("camera", "")
    day = request.query.get("day", "")
    cur = parse_id(request.query.get("page", "1")) or 1
    camera_id = parse_id(camera) if camera else None
    started = services.presenter.day(day) if day else None
    problems = []
    if camera and camera_id is None:
        problems.append("没有这个通道 · No such camera.")
    if day and started is None:
        problems.append("日期格式应为 YYYY-MM-DD · The day must read YYYY-MM-DD.")
    rows: list[dict[str, Any]] = []
    total = 0
    if not problems:
        try:
            found = await services.catalogue.records.page_of(cur, PER_PAGE, camera_id, started)
            rows, total = [services.presenter.record(row) for row in found.rows], found.total
        except NotFound:
            problems.append("没有这个通道 · No such camera.")
    pages = max(1, -(-total // PER_PAGE))
    query = {key: value for key, value in (("camera", camera), ("day", day)) if value}
    return render(request, "recordings.html", {
        "visit": visit, "records": rows, "total": total, "cur": cur, "pages": pages,
        "cameras": await every_row(services.catalogue.cameras.page), "camera": camera_id,
        "day": day, "problems": problems, "storage_url": services.settings.storage_url,
        "page_link": lambda n: "/admin/recordings?" + urlencode({**query, "page": n}),
    }, 400 if problems else 200)


@page()
async def recording(request: web.Request, visit: Visit) -> web.StreamResponse:
    services = request.app[SERVICES]
    record_id = target_id(request)
    try:
        row = await services.catalogue.records.get(record_id)
    except NotFound:
        return message(request, "没有这段录像 · No such recording",
                       "它可能已被删除 · It may have been deleted.", 404, visit)
    return render(request, "recording.html", {
        "visit": visit, "record": services.presenter.record(row),
        "play_url": await play_url(request, visit, "play_record", "record_id", record_id),
        "storage_url": services.settings.storage_url,
    })


@action()
async def delete(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    services = request.app[SERVICES]
    record_id = target_id(request)
    try:
        row = services.presenter.record(await services.catalogue.records.get(record_id))
    except NotFound:
        raise done(request, "/admin/recordings", "没有这段录像 · No such recording.", False) from None
    label = f"{row['camera_name']} {row['start_time']} ({row['disptime']})"
    asked = confirm(request, visit, form, "删除录像 · Delete recording",
                    f"删除录像 {label}？文件将一并删除 · Delete the recording {label}? Its file "
                    "goes too.", f"/admin/recordings/{record_id}")
    if asked is not None:
        return asked
    raise await run_endpoint(request, visit, "del_record", {"record_id": str(record_id)},
                             f"已删除录像 · Deleted the recording {label}.",
                             back_to(form.get("back", ""), "/admin/recordings"))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/recordings", listing)
    app.router.add_get("/admin/recordings/{id}", recording)
    app.router.add_post("/admin/recordings/{id}/delete", delete)
