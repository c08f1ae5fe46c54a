"""``relay serve``: the API, /admin, the player pages, stored files and ops in one aiohttp app.

Every connection goes through :mod:`relay.connections` (a request-head deadline, JSON answers to
requests aiohttp cannot parse). ``/metrics`` is on the main listener, or, with ``metrics_listen``,
on that address only (a second small app in the same process) for operators who keep it private.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import admin, api, cluster, forwarded, ops, player, tasks
from .catalogue import Catalogue
from .catalogue.errors import DATABASE_DOWN
from .cluster import ClusterHub, cluster_secret
from .config import ConfigError, Settings
from .connections import GuardedRunner
from .forwarded import parse_networks
from .hub import Hub, LocalHub
from .link import endpoint as link_endpoint
from .live import fanout, setup_live
from .logs import AccessLogger, redact
from .metrics import Metrics
from .present import Presenter
from .services import SERVICES, Services
from .signing import Signer
from .storage import Storage
from .throttle import FailedSignIns
from .vod import setup_vod

log = logging.getLogger(__name__)

#: The access log's status for a client that went before it was answered (a page or agent that
#: closed during its WebSocket upgrade, say), as nginx logs it; nothing reaches the client.
CLIENT_GONE = 499


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown paths and methods answer JSON; a bug answers a JSON 500 and is logged, never shown;
    a client that has gone is no error (aiohttp would log a traceback for it); a catalogue that
    cannot be reached answers 503 with ``Retry-After`` (PostgreSQL restarting, say)."""
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
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        log.debug("%s %s: the client went before it was answered", request.method,
                  redact(request.raw_path))
        return web.Response(status=CLIENT_GONE)
    except DATABASE_DOWN as exc:  # the database is down or unreachable: say so
        log.warning("%s %s: catalogue unavailable (%s)", request.method,
                    redact(request.path), exc.__class__.__name__)
        return web.json_response({"err_code": 503, "err_msg": "the catalogue (database) is "
                                  "unavailable; try again shortly"}, status=503,
                                 headers={"Retry-After": "5"})
    except Exception:
        log.exception("internal error on %s %s", request.method, redact(request.raw_path))
        return web.json_response({"err_code": 500, "err_msg": "internal error"}, status=500)


async def open_services(settings: Settings, clock: Callable[[], float] = time.time) -> Services:
    catalogue = await Catalogue.open(settings.db_url, clock)
    metrics = Metrics()
    signing_key = await catalogue.signing_key()
    hub = _hub(settings, catalogue, metrics, signing_key)
    return Services(
        settings=settings,
        catalogue=catalogue,
        hub=hub,
        storage=Storage(settings.files_dir),
        signer=Signer(signing_key),
        presenter=Presenter(settings.timezone),
        metrics=metrics,
        clock=clock,
        sign_ins=hub.sign_ins() if isinstance(hub, ClusterHub) else FailedSignIns(),
    )


def _hub(settings: Settings, catalogue: Catalogue, metrics: Metrics, signing_key: bytes) -> Hub:
    """One node alone, or a node of the cluster that ``redis_url`` names."""
    if not settings.redis_url:
        return LocalHub(settings.command_timeout, catalogue, metrics)
    return ClusterHub(settings.command_timeout, catalogue, metrics, redis_url=settings.redis_url,
                      prefix=settings.redis_prefix, own_url=settings.own_url,
                      secret=cluster_secret(signing_key), lease=settings.node_lease)


def build_app(services: Services) -> web.Application:
    forwarded.trust(parse_networks(services.settings.trusted_proxies))
    app = web.Application(middlewares=[forwarded.real_client, json_errors],
                          client_max_size=64 * 1024)
    app[SERVICES] = services
    api.add_routes(app)
    admin.add_routes(app)
    player.add_routes(app)
    services.storage.add_routes(app)
    ops.add_routes(app)
    link_endpoint.add_routes(app)
    if isinstance(services.hub, ClusterHub):
        cluster.add_routes(app)
    setup_live(app)
    setup_vod(app)
    if services.settings.metrics_address is None:
        app.router.add_get("/metrics", services.metrics.handle)

    async def close_catalogue(_app: web.Application) -> None:
        await services.catalogue.close()

    app.on_cleanup.append(close_catalogue)
    return app


async def create_first_admin(services: Services) -> bool:
    """On an empty catalogue, create ``admin`` and print its password and credential once.

    Printed to stdout (the operator's terminal), never logged; returns whether it made one."""
    if await services.catalogue.accounts.count():
        return False
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
    return True


def account_hints(name: str, settings: Settings) -> str:
    """How to get an account's credential (or a new password) again: the commands, no secret."""
    data = settings.data.resolve()
    return (f"its API credential: `relay user credential {name} --data {data}`; "
            f"a new password: `relay user password {name} --data {data}`")


async def _first_administrator(services: Services) -> str | None:
    accounts = [account for account in await services.catalogue.accounts.list() if account.is_admin]
    names = [account.name for account in accounts]
    return "admin" if "admin" in names else (names[0] if names else None)


async def announce(services: Services, created: bool, demo: bool) -> None:
    """Once listening: where to sign in. A restart logs how to get the credential again (it is
    shown only on the first start); ``relay demo`` also prints the block to the terminal."""
    settings = services.settings
    name = await _first_administrator(services)
    if name is None:
        hint = (f"no administrator account: create one with `relay user add NAME --admin "
                f"--data {settings.data.resolve()}`")
    else:
        hint = f"administrator account {name!r}: {account_hints(name, settings)}"
    if not demo:
        if not created:
            log.info("%s", hint)
        return
    from .demo import DEMO_CAMERA

    password = ("printed above (first start only); " if created else "") + \
        (f"set one: relay user password {name} --data {settings.data.resolve()}" if name else "-")
    lines = [
        "",
        "The demo is up. Open the console:",
        f"  {settings.base_url}/admin   account: {name or '(none)'}",
        f"  password:     {password}",
    ]
    if name:
        lines.append(f"  API unionid:  relay user credential {name} --data {settings.data.resolve()}")
    lines += [f"  The camera {DEMO_CAMERA!r} appears within seconds and records one-minute "
              "slices; Ctrl-C stops the demo.", ""]
    print("\n".join(lines), flush=True)
    log.info("demo up: console %s/admin; %s", settings.base_url, hint)


def build_metrics_app(metrics: Metrics) -> web.Application:
    """The app of ``metrics_listen``: /metrics and JSON 404s, nothing else."""
    app = web.Application(middlewares=[json_errors], client_max_size=4096)
    app.router.add_get("/metrics", metrics.handle)
    return app


#: A shutdown still going after this long logs what it waits for (aiohttp gives open requests 5 s).
SLOW_SHUTDOWN = 7.0
#: Idle kept-alive connections close after this (aiohttp's run_app default).
KEEPALIVE_TIMEOUT = 75.0
#: Connections the kernel queues before we accept them (the kernel caps it at somaxconn, 4096
#: here). aiohttp's 128 made a reconnect storm of thousands of agents lose SYNs: each one lost
#: waits out TCP's retransmission (1, 3, 7 s …) while the relay sits idle.
BACKLOG = 4096


async def _listen(app: web.Application, setting: str, host: str, port: int,
                  settings: Settings) -> GuardedRunner:
    runner = GuardedRunner(app, header_timeout=settings.header_timeout,
                           access_log_class=AccessLogger, keepalive_timeout=KEEPALIVE_TIMEOUT,
                           shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"setting {setting!r}: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from exc
    return runner


async def _serve(settings: Settings, demo: bool) -> None:
    services = await open_services(settings)
    await services.hub.start()
    created = await create_first_admin(services)
    app = build_app(services)
    if demo:
        from .demo import attach_demo_agent

        attach_demo_agent(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runners: list[GuardedRunner] = []
    try:
        runners.append(await _listen(app, "listen", settings.host, settings.port, settings))
        metrics_at = settings.metrics_address
        if metrics_at is not None:
            runners.append(await _listen(build_metrics_app(services.metrics), "metrics_listen",
                                         *metrics_at, settings))
        log.info("relay listening on %s (public URL %s, data in %s; /metrics on %s)",
                 settings.listen, settings.base_url, settings.data.resolve(),
                 settings.metrics_listen or "the same listener")
        if fanout.unavailable:
            log.warning("WebRTC viewers are sent to from Python (slower): %s", fanout.unavailable)
        await announce(services, created, demo)
        # Everything loaded so far (modules, the app) lives as long as the process: keep it out of
        # the garbage collector's full passes, which otherwise walk it all and stall requests.
        gc.freeze()
        await stop.wait()
    finally:
        log.info("relay stopping")
        watch = asyncio.create_task(tasks.report_if_slow(SLOW_SHUTDOWN, "shutdown"))
        for runner in reversed(runners):  # the main app's cleanup closes the catalogue
            await runner.cleanup()
        await services.hub.stop()
        await tasks.stop(watch)
        log.info("relay stopped")


def serve(settings: Settings, demo: bool = False) -> None:
    """Run until SIGINT/SIGTERM; with ``demo``, also a demo agent and camera (see relay.demo)."""
    asyncio.run(_serve(settings, demo))
    sys.stdout.flush()
