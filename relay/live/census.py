"""How many of each per-viewer object exist right now: ``relay_live_objects{kind=…}`` at /metrics.

Viewers, their WebRTC peer connections and their feed subscriptions (one per WebRTC or MSE viewer,
plus one per camera's MSE muxer) are counted from the moment they are made until they are freed
(weak references), not until the code that made them is done with them: a count that stays above
what the open sessions need is a leak, whoever holds the objects. Counts only, nothing that names
or grants anything. The census never runs the garbage collector (a full pass on every scrape would
cost more than it tells): an object left in a reference cycle is counted until a collection finds
it, which is why closing a viewer breaks the cycles it would leave (controller, webrtc).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

KINDS = ("viewer", "peer_connection", "subscription")
_alive: dict[str, weakref.WeakSet[object]] = {kind: weakref.WeakSet() for kind in KINDS}


def track(kind: str, thing: object) -> None:
    """Count ``thing`` under ``kind`` for as long as it exists."""
    _alive[kind].add(thing)


def counts() -> dict[str, int]:
    return {kind: len(alive) for kind, alive in _alive.items()}


class _Census(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "relay_live_objects",
            "Per-viewer objects that exist in the relay now (viewers, WebRTC peer connections, "
            "feed subscriptions), counted until freed.",
            labels=["kind"],
        )
        for kind, count in counts().items():
            family.add_metric([kind], count)
        yield family


def register(registry: CollectorRegistry) -> None:
    """Publish the census in ``registry`` (each app has its own; the census is per process)."""
    registry.register(_Census())
