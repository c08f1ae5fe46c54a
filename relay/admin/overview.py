"""The overview: every gatherer and camera at a glance, and the relay's own vital signs.

The live part (``/admin/overview/live``) is the same fragment the page starts with; console.js
fetches it every few seconds, so the page refreshes by itself without a reload.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..catalogue import Page
from ..live.ingest import LIVE
from ..services import SERVICES
from ..vod.retention import RETENTION
from .sessions import Visit, page, render

REFRESH_SECONDS = 5
_BATCH = 500


async def every_row(page_of: Callable[[int, int], Awaitable[Page]]) -> list[dict[str, Any]]:
    """All rows of a paged catalogue listing (a school has tens to hundreds of cameras)."""
    rows: list[dict[str, Any]] = []
    cur = 1
    while True:
        found = await page_of(cur, _BATCH)
        rows += found.rows
        if len(rows) >= found.total or not found.rows:
            return rows
        cur += 1


async def state(request: web.Request) -> dict[str, Any]:
    """What the overview shows, read from its owners: the catalogue (desired state), the hub
    (who is linked), the live controller (pushes, viewers) and retention (free storage)."""
    services = request.app[SERVICES]
    live, hub = request.app[LIVE], services.hub
    gatherers = await every_row(services.catalogue.gatherers.page)
    cameras = await every_row(services.catalogue.cameras.page)
    per_gatherer = Counter(camera["gather_id"] for camera in cameras)
    facts = await hub.facts([row["gather_id"] for row in gatherers])
    for row in gatherers:
        link = facts.get(row["gather_id"])
        row["online"] = link is not None
        row["peer"] = link.peer if link is not None else ""
        row["version"] = link.version if link is not None else ""
        row["since"] = link.since if link is not None else row["updated"]
        row["cameras"] = per_gatherer[row["gather_id"]]
    pushes = viewers = 0
    for camera in cameras:
        now = live.state_of(camera["camera_id"])
        link = facts.get(camera["gather_id"])
        report = link.recordings.get(camera["camera_id"], {}) if link is not None else {}
        camera.update(pushing=now["pushing"], viewers=now["viewers"],
                      recording=bool(report.get("recording")),
                      upload_error=report.get("upload_error", ""),
                      record_error=report.get("record_error", ""))
        pushes += bool(now["pushing"])
        viewers += now["viewers"]
    return {
        "gatherers": gatherers,
        "cameras": cameras,
        "agents": len(facts),
        "pushes": pushes,
        "viewers": viewers,
        "storage_free": request.app[RETENTION].free_bytes(),
        "storage_url": services.settings.storage_url,
        "refresh": REFRESH_SECONDS,
        "now": services.clock(),
    }


@page()
async def overview(request: web.Request, visit: Visit) -> web.StreamResponse:
    return render(request, "overview.html", {"visit": visit, **await state(request)})


@page()
async def overview_live(request: web.Request, visit: Visit) -> web.StreamResponse:
    response = render(request, "_overview_live.html", {"visit": visit, **await state(request)})
    response.headers["X-Console-Fragment"] = "overview"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin", overview)
    app.router.add_get("/admin/", overview)
    app.router.add_get("/admin/overview/live", overview_live)
