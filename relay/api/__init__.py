"""API v1: every endpoint of the customer's specification, in both URL forms, GET only."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from ..services import SERVICES
from . import cameras, courses, gathers, meta, play, records  # noqa: F401  (they register)
from .auth import authenticate
from .errors import ApiError
from .openapi import OPENAPI_PATH, document
from .params import Params
from .registry import ENDPOINTS, Call

log = logging.getLogger(__name__)

PREFIX = "/api/v1/"


def json_answer(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(
        body,
        status=status,
        dumps=_dumps,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(body: Any) -> str:
    return _ENCODER.encode(body)


def _method_refusal() -> web.Response:
    refusal = json_answer({"err_code": 405, "err_msg": "only GET is supported"}, 405)
    refusal.headers["Allow"] = "GET, HEAD"
    return refusal


async def serve_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of API v1, naming this relay's public URL as its server."""
    if request.method not in ("GET", "HEAD"):
        return _method_refusal()
    return json_answer(document(request.app[SERVICES].settings.base_url))


async def dispatch(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = ENDPOINTS.get(name)
    if found is None:
        return json_answer({"err_code": 404, "err_msg": f"unknown endpoint: {name[:64]}"}, 404)
    if request.method not in ("GET", "HEAD"):
        return _method_refusal()
    services = request.app[SERVICES]
    raw_path, _, raw_query = request.raw_path.partition("?")
    tail = raw_path[len(PREFIX) + len(name):] if raw_path.startswith(PREFIX + name) else ""
    try:
        params = Params.parse(raw_query, tail)
        params.allow_only(set(found.keys))
        account = (
            await authenticate(services, params.raw("token")) if found.needs_token else None
        )
        body = await found.handler(Call(params, services, account))
    except ApiError as refusal:
        return json_answer(refusal.body())
    return json_answer({"err_code": 0, "err_msg": "OK", **body})


def add_routes(app: web.Application) -> None:
    # Before the catch-all, which would take ``openapi.json`` for an unknown endpoint.
    app.router.add_route("*", OPENAPI_PATH, serve_openapi)
    app.router.add_route("*", PREFIX + "{name:[^/]+}", dispatch)
    # ``[\s\S]``, not ``.``: an encoded newline in a path-form value must reach dispatch (a 1009),
    # not fall through to the router's 404.
    app.router.add_route("*", PREFIX + "{name:[^/]+}/{tail:[\\s\\S]*}", dispatch)
