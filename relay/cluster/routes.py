"""Node-to-node HTTP: what one node asks of another, refused without the cluster secret.

The secret is derived from the catalogue's signing key (``cluster_secret``), which every node of a
cluster shares already: nothing more to configure or leak. A request without it, or with another,
is answered 401 and logged with the caller's address only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from ..link import protocol
from ..services import SERVICES
from .hub import COMMAND_PATH, ClusterHub

log = logging.getLogger(__name__)

#: Largest node-to-node request body (a command's data is bounded far below by the API).
MAX_BODY = 256 * 1024


def cluster_secret(signing_key: bytes) -> str:
    return hmac.new(signing_key, b"relay cluster nodes v1", hashlib.sha256).hexdigest()


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"err_code": status, "err_msg": reason}, status=status)


async def command(request: web.Request) -> web.Response:
    hub = request.app[SERVICES].hub
    assert isinstance(hub, ClusterHub)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             hub.secret.encode()):
        log.warning("refused a node-to-node request from %s: %s", request.remote,
                    "wrong cluster secret" if given else "no cluster secret")
        return _refuse(401, "node-to-node requests need the cluster secret")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _refuse(413, "request too large")
    try:
        body: Any = json.loads(await request.content.read(MAX_BODY + 1))
        gather_id, action, data = body["gather_id"], body["action"], body["data"]
        timeout = float(body["timeout"])
        valid = (type(gather_id) is int and gather_id > 0 and isinstance(action, str)
                 and action in protocol.ACTIONS and isinstance(data, dict) and timeout > 0)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        valid = False
    if not valid:
        return _refuse(400, "expected {gather_id, action, data, timeout}")
    return web.json_response(await hub.forwarded(gather_id, action, data, timeout))


def add_routes(app: web.Application) -> None:
    app.router.add_post(COMMAND_PATH, command)
