"""Prometheus metrics at ``/metrics``. Each app has its own registry (tests run several)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents_connected = Gauge(
            "relay_agents_connected", "Gatherer agents with a live link to this node.",
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "relay_command_seconds", "Round trip of a command to an agent, by command.",
            ["command"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

        self.live_pushes = Gauge(
            "relay_live_pushes", "Live pushes running (cameras an agent is asked to push).",
            registry=self.registry,
        )
        self.live_viewers = Gauge(
            "relay_live_viewers", "Live viewer sessions open.", registry=self.registry,
        )
        self.live_keyframe_requests = Counter(
            "relay_live_keyframe_requests",
            "Keyframe requests sent to a camera's source (viewers joining, PLI/FIR from viewers;"
            " at most one per camera per live_keyframe_interval).",
            registry=self.registry,
        )
        self.live_first_packet = Histogram(
            "relay_live_first_packet_seconds",
            "From asking an agent to push to its first frame reaching the relay.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
        )

        # Retention (relay.vod.retention): what it deleted, and the free space it keeps.
        self.recordings_deleted = Counter(
            "relay_recordings_deleted", "Recordings deleted by retention, by reason (age, space).",
            ["reason"], registry=self.registry,
        )
        self.storage_free = Gauge(
            "relay_storage_free_bytes", "Bytes stored files may still take (the disk's free "
            "space, or storage_quota less what the files take, whichever is smaller).",
            registry=self.registry,
        )

        self.recordings_uploaded = Counter(
            "relay_recordings_uploaded", "Recordings uploaded by agents and committed.",
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "relay_upload_bytes", "Bytes of uploads from agents written to disk.",
            registry=self.registry,
        )
        self.upload_failures = Counter(
            "relay_upload_failures", "Upload requests from agents refused, by reason.",
            ["reason"], registry=self.registry,
        )

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )
