"""The player pages behind ``play_url``: checks the play ticket, then serves ``player/`` files.

``/play/live/<camera_id>`` and ``/play/record/<record_id>`` serve the page; the recording page asks
``…/info`` (with the same ticket) where the file is, the live page opens a viewer session
(relay.live.routes). Every refusal is a short page, or JSON of the shape of every other error
(``{"err_code": <status>, "err_msg": "<why>"}``), never a stack trace. An id in the path must be
1-16 ASCII digits naming 1..2**31-1 (``relay.ids``); any other is refused like a ticket that is not
for it. Player pages may be embedded in any site's ``<iframe>``.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from .catalogue import NotFound
from .ids import parse_id
from .services import SERVICES, Services
from .tickets import Kind, TicketError, check_ticket

log = logging.getLogger(__name__)

_ASSETS = {"player.css": "text/css", "live.js": "text/javascript", "record.js": "text/javascript"}
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


async def _target(request: web.Request, kind: Kind) -> dict[str, Any]:
    """The camera or record row the path names, once the request's ticket is checked for it
    (``NotFound`` when there is none)."""
    services = request.app[SERVICES]
    target = parse_id(request.match_info["target"])
    if target is None:
        raise TicketError("no such " + ("camera" if kind == "live" else "recording"))
    ticket = check_ticket(services.signer, services.clock, kind, request.query.get("ticket"), target)
    catalogue = services.catalogue
    row = await (catalogue.cameras.get(target) if kind == "live" else catalogue.records.get(target))
    ticket.require(row)
    return row


def _refusal_page(reason: str, status: int) -> web.Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>Cannot play</title>"
        "<link rel=stylesheet href=/player/player.css>"
        f"<p class=status data-state=error>无法播放 · cannot play: {html.escape(reason)}</p>"
    )
    return web.Response(text=body, status=status, content_type="text/html", headers=_HEADERS)


def _page(kind: Kind):  # type: ignore[no-untyped-def]
    async def serve(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        try:
            target = await _target(request, kind)
            await _count_click(services, kind, target)
        except TicketError as refusal:
            log.info("player page refused: %s", refusal)
            return _refusal_page(str(refusal), 403)
        except NotFound:
            return _refusal_page("it no longer exists", 404)
        page = services.settings.player_dir / f"{kind}.html"
        if kind == "record":
            return web.Response(text=_record_page(page, _record_info(services, target)),
                                content_type="text/html", headers=_HEADERS)
        return web.FileResponse(page, headers={**_HEADERS, "Content-Type": "text/html"})

    return serve


_TEMPLATES: dict[Path, tuple[int, str]] = {}


def _record_page(page: Path, info: dict[str, Any]) -> str:
    """record.html with the recording named in its ``<video>``: the browser fetches the MP4
    while it parses the page, not after record.js has asked ``/info`` (one round trip less to
    the first frame)."""
    mtime = page.stat().st_mtime_ns
    cached = _TEMPLATES.get(page)
    if cached is None or cached[0] != mtime:
        cached = _TEMPLATES[page] = (mtime, page.read_text(encoding="utf-8"))
    named = {"src": info["url"], "poster": info["poster"], "data-camera": info["camera_name"],
             "data-start": info["start_time"]}
    attributes = "".join(f' {key}="{html.escape(str(value), quote=True)}"'
                         for key, value in named.items() if value)
    return cached[1].replace('<video id="video"', '<video id="video"' + attributes, 1)


async def _count_click(services: Services, kind: Kind, target: dict[str, Any]) -> None:
    if kind == "live":
        await services.catalogue.cameras.count_click(target["camera_id"])
    else:
        await services.catalogue.records.count_click(target["record_id"])


def _info(kind: Kind):  # type: ignore[no-untyped-def]
    async def serve(request: web.Request) -> web.Response:
        services = request.app[SERVICES]
        try:
            body = _record_info(services, await _target(request, kind))
        except TicketError as refusal:
            return _json_error(403, str(refusal))
        except NotFound:
            return _json_error(404, "it no longer exists")
        return web.json_response(body, headers=_HEADERS)

    return serve


def _json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"err_code": status, "err_msg": reason}, status=status,
                             headers=_HEADERS)


def _record_info(services: Services, record: dict[str, Any]) -> dict[str, Any]:
    """What the recording page shows: where the file and poster are, whose and when it is."""
    start = record.get("start_time") or record["created"]
    return {
        "record_id": record["record_id"],
        "camera_name": record["camera_name"],
        "start_time": services.presenter.time(start),
        "duration": record["duration"],
        "url": services.settings.storage_url + record["file_fdfs"],
        "poster": services.settings.storage_url + record["image_fdfs"]
        if record["image_fdfs"] else "",
    }


async def _asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    path = request.app[SERVICES].settings.player_dir / name
    return web.FileResponse(path, headers={"Content-Type": _ASSETS[name],
                                           "Cache-Control": "public, max-age=300"})


def add_routes(app: web.Application) -> None:
    for kind in ("live", "record"):
        app.router.add_get(f"/play/{kind}/{{target}}", _page(kind))
    app.router.add_get("/play/record/{target}/info", _info("record"))
    app.router.add_get("/player/{name}", _asset)
