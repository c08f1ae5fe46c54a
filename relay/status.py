"""``relay status``: the nodes of a cluster, their agents and their viewers, as Redis knows them
(each node writes its counts into its lease every third of ``node_lease``). A single node (no
``redis_url``) is asked directly: its ``/metrics`` on the configured listen or public URL."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from .config import Settings


def _since(started: float) -> str:
    seconds = max(0, int(time.time() - started))
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


async def cluster_lines(settings: Settings) -> list[str]:
    from redis.exceptions import RedisError

    from .cluster.ownership import Ownership
    from .cluster.redis_link import RedisLink

    link = RedisLink(settings.redis_url, name="relay-status")
    try:
        ownership = Ownership(link.client, settings.redis_prefix)
        try:
            nodes = await ownership.nodes()
            held = {node: sorted(await ownership.held(node)) for node in nodes}
        except (RedisError, OSError) as exc:
            raise ValueError(f"Redis unreachable ({exc.__class__.__name__})") from None
    finally:
        await link.client.aclose()
    if not nodes:
        return [f"no relay node in this cluster (Redis prefix {settings.redis_prefix!r})"]
    lines = ["node\tstate\turl\tup\tagents\tviewers\tpushes\tgatherers"]
    for node, (alive, about) in sorted(nodes.items(), key=lambda item: str(item[1][1].get("url"))):
        lines.append("\t".join([
            node, "alive" if alive else "DEAD (lease expired)", str(about.get("url", "?")),
            _since(float(about.get("started", time.time()))), str(about.get("agents", "?")),
            str(about.get("viewers", "?")), str(about.get("pushes", "?")),
            ",".join(map(str, held[node])) or "-"]))
    return lines


def single_node_lines(settings: Settings) -> list[str]:
    url = settings.base_url + "/metrics"
    if settings.metrics_address is not None:
        host, port = settings.metrics_address
        url = f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        raise ValueError(f"no relay answers at {url} ({exc.__class__.__name__}); is it running? "
                         "(a cluster: set redis_url)") from None
    values: dict[str, Any] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("relay_agents_connected", "relay_live_viewers", "relay_live_pushes"):
            values[name] = int(float(value))
    return ["a single node (redis_url unset)",
            f"{settings.base_url}\tagents {values.get('relay_agents_connected', 0)}\t"
            f"viewers {values.get('relay_live_viewers', 0)}\t"
            f"pushes {values.get('relay_live_pushes', 0)}"]
