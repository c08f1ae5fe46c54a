"""A gatherer's page: where it is, its settings (``mod_gather``) and its cameras (``add_camera``).

For administrators only: gatherers are the site's machines, not something to watch.
"""

from __future__ import annotations

from aiohttp import web

from ..api.gathers import RANGES
from ..catalogue import NotFound
from ..services import SERVICES
from .forms import run_endpoint, target_id
from .sessions import Visit, action, message, page, render

#: The settings form, in ``mod_gather``'s words and ranges, with what each means.
SETTINGS = (
    ("main_rate", "主码流 Main stream kbit/s"),
    ("sub_rate", "子码流 Sub stream kbit/s"),
    ("auto_dvr", "自动录像 Record on its own (0/1)"),
    ("auto_fds", "上传失败重试 Retry failed uploads forever (0/1)"),
    ("slice_val", "切片 Slice length, minutes (0 = one file per course)"),
    ("inter_val", "交错 GOPs of overlap between slices (0–3)"),
    ("snap_val", "截图 Snapshot every N minutes"),
)


@page(admin=True)
async def gatherer_page(request: web.Request, visit: Visit) -> web.StreamResponse:
    services = request.app[SERVICES]
    gather_id = target_id(request)
    try:
        gatherer = await services.catalogue.gatherers.get(gather_id)
    except NotFound:
        return message(request, "没有这个采集端 · No such gatherer",
                       "它可能已被删除 · It may have been deleted.", 404, visit)
    link = (await services.hub.facts([gather_id])).get(gather_id)
    return render(request, "gatherer.html", {
        "visit": visit, "gatherer": gatherer, "link": link,
        "cameras": await services.catalogue.cameras.of_gatherer(gather_id),
        "settings": [(key, label, RANGES[key]) for key, label in SETTINGS],
    })


@action()
async def save_settings(request: web.Request, visit: Visit, form: dict[str, str]
                        ) -> web.StreamResponse:
    gather_id = target_id(request)
    values = {key: form[key].strip() for key in ("name_set", *RANGES) if key in form}
    raise await run_endpoint(request, visit, "mod_gather", {"gather_id": str(gather_id), **values},
                     "设置已保存 · Settings saved.", f"/admin/gatherers/{gather_id}")


@action()
async def add_camera(request: web.Request, visit: Visit, form: dict[str, str]
                     ) -> web.StreamResponse:
    gather_id = target_id(request)
    values = {key: form[key] for key in ("camera_name", "stream_prop", "stream_url", "stream_mp4")
              if form.get(key, "").strip()}
    raise await run_endpoint(request, visit, "add_camera", {"gather_id": str(gather_id), **values},
                     "已添加通道 · Camera added.", f"/admin/gatherers/{gather_id}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/gatherers/{id}", gatherer_page)
    app.router.add_post("/admin/gatherers/{id}/settings", save_settings)
    app.router.add_post("/admin/gatherers/{id}/cameras", add_camera)
