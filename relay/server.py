"""``relay serve``: the API, /admin, the player pages, stored files and ops in one aiohttp app."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import admin, api, ops, player
from .catalogue import Catalogue
from .config import Settings
from .hub import Hub
from .link import endpoint as link_endpoint
from .live import setup_live
from .logs import AccessLogger, redact
from .metrics import Metrics
from .present import Presenter
from .services import SERVICES, Services
from .signing import Signer
from .storage import Storage

log = logging.getLogger(__name__)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown paths and methods answer JSON; a bug answers a JSON 500 and is logged, never shown."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (404, 405) and not request.path.startswith("/admin"):
            reason = "not found" if exc.status == 404 else "method not allowed"
            answer = web.json_response({"err_code": exc.status, "err_msg": reason},
                                       status=exc.status)
            if "Allow" in exc.headers:
                answer.headers["Allow"] = exc.headers["Allow"]
            return answer
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, redact(request.raw_path))
        return web.json_response({"err_code": 500, "err_msg": "internal error"}, status=500)


async def open_services(settings: Settings, clock: Callable[[], float] = time.time) -> Services:
    catalogue = await Catalogue.open(settings.db_url, clock)
    metrics = Metrics()
    return Services(
        settings=settings,
        catalogue=catalogue,
        hub=Hub(settings.command_timeout, metrics),
        storage=Storage(settings.files_dir),
        signer=Signer(await catalogue.signing_key()),
        presenter=Presenter(settings.timezone),
        metrics=metrics,
        clock=clock,
    )


def build_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=64 * 1024)
    app[SERVICES] = services
    api.add_routes(app)
    admin.add_routes(app)
    player.add_routes(app)
    services.storage.add_routes(app)
    ops.add_routes(app)
    link_endpoint.add_routes(app)
    setup_live(app)
    app.router.add_get("/metrics", services.metrics.handle)

    async def close_catalogue(_app: web.Application) -> None:
        await services.catalogue.close()

    app.on_cleanup.append(close_catalogue)
    return app


async def create_first_admin(services: Services) -> None:
    """On an empty catalogue, create ``admin`` and print its password and credential once."""
    if await services.catalogue.accounts.count():
        return
    password = secrets.token_urlsafe(12)
    account = await services.catalogue.accounts.add("admin", password, is_admin=True)
    base = services.settings.base_url
    print(
        "\nFirst start: created the administrator account (shown only this once).\n"
        f"  /admin sign-in:   {base}/admin   account: admin   password: {password}\n"
        f"  API credential:   {account.credential}\n"
        "  Exchange it for an access token:\n"
        f"    curl '{base}/api/v1/access_token?unionid={account.credential}'\n"
        "  then, for example:\n"
        f"    curl '{base}/api/v1/list_camera?token=TOKEN'\n",
        flush=True,
    )


def serve(settings: Settings, demo: bool = False) -> None:
    """Run until SIGINT/SIGTERM; with ``demo``, also a demo agent and camera (see relay.demo)."""

    async def app_factory() -> web.Application:
        services = await open_services(settings)
        await services.catalogue.gatherers.all_offline()
        await create_first_admin(services)
        log.info("relay listening on %s (public URL %s, data in %s)", settings.listen,
                 settings.base_url, settings.data.resolve())
        app = build_app(services)
        if demo:
            from .demo import attach_demo_agent

            attach_demo_agent(app)
        # Everything loaded so far (modules, the app) lives as long as the process: keep it out of
        # the garbage collector's full passes, which otherwise walk it all and stall requests.
        gc.freeze()
        return app

    web.run_app(
        app_factory(),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLogger,
        print=lambda *_: None,
        shutdown_timeout=5,
    )
    sys.stdout.flush()
