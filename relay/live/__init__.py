"""On-demand live video: agent media in, the same packets out to every viewer.

``controller`` owns every camera's live state (viewers, pushes); ``ingest`` takes the agent's
frames; ``feed`` fans them out; ``webrtc`` and ``mse`` are the two ways to a browser; ``routes`` is
what the live page calls.
"""

from __future__ import annotations

from aiohttp import web

from ..link import protocol
from ..services import SERVICES
from . import census, ingest, routes
from .controller import LiveController, LiveTimings
from .webrtc import limit_ice_addresses, limit_ice_ports


def setup_live(app: web.Application) -> LiveController:
    services = app[SERVICES]
    settings = services.settings
    controller = LiveController(
        services.catalogue, services.hub, services.metrics,
        LiveTimings(
            close_after=settings.live_close_after,
            viewer_timeout=settings.live_viewer_timeout,
            reconcile=settings.live_reconcile,
            keyframe_interval=settings.live_keyframe_interval,
            heartbeat=settings.live_heartbeat,
            ice_deadline=settings.ice_deadline,
        ),
        # In a cluster the agent must push to the node holding its link (a balanced URL beside
        # the link would land on any node), so live.start always names this node there.
        protocol.media_url_of(settings.own_url) if settings.node_url or settings.redis_url else "",
    )
    limit_ice_addresses([a.strip() for a in settings.ice_addresses.split(",") if a.strip()])
    limit_ice_ports(settings.ice_port_range)
    census.register(services.metrics.registry)
    app[ingest.LIVE] = controller
    app.router.add_get("/agent/media", ingest.media_endpoint)
    routes.add_routes(app)

    async def start(_app: web.Application) -> None:
        controller.start()

    async def stop(_app: web.Application) -> None:
        await controller.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return controller
