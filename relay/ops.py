"""Operations endpoints: ``/healthz`` (the process answers) and ``/readyz`` (the catalogue does,
and in a cluster Redis too)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from .services import SERVICES

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[SERVICES].catalogue.ping(), 2.0)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("not ready: catalogue unreachable: %s", exc.__class__.__name__)
        return web.json_response({"status": "unavailable", "catalogue": "unreachable"}, status=503)
    reason = request.app[SERVICES].hub.unready()
    if reason is not None:
        log.warning("not ready: %s", reason)
        return web.json_response({"status": "unavailable", "catalogue": "ok", "cluster": reason},
                                 status=503)
    return web.json_response({"status": "ok", "catalogue": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
