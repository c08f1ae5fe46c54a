"""/admin: the operator console, server-rendered from Jinja2 templates (autoescaped), one
stylesheet and a little plain JS, no build step.

Pages: the overview (``overview``), a camera with its live video, week of courses and recordings
(``cameras``), a gatherer's settings and cameras (``gatherers``), recordings (``recordings``),
agent keys and accounts (``people``). Who may see and do what, the session and CSRF checks, and the
flash that tells what an action did live in ``sessions``; signing in and out in ``sign_ins``.
Every change to cameras, courses, gatherers and recordings is an API v1 call made in this process
(``forms.run_endpoint``): one implementation of each rule.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..services import SERVICES
from . import cameras, gatherers, overview, people, recordings, sign_ins
from .templating import filters

HERE = Path(__file__).parent


async def to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin")


def add_routes(app: web.Application) -> None:
    environment = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        context_processors=[])
    environment.filters.update(filters(lambda: app[SERVICES]))
    app.router.add_get("/", to_console)
    app.router.add_static("/admin/static", HERE / "static", append_version=False)
    sign_ins.add_routes(app)
    for pages in (overview, cameras, gatherers, recordings, people):
        pages.add_routes(app)
