"""Recordings on the relay: uploads from agents (``uploads``), how much room stored files have
(``space``), retention, and the VOD page's API.

``setup_vod(app)`` adds the routes of this room; docs/RECORDING.md is the contract with the agent.
"""

from __future__ import annotations

from aiohttp import web

from . import uploads


def setup_vod(app: web.Application) -> None:
    uploads.add_routes(app)
