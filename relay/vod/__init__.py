"""Recordings on the relay: uploads from agents (``uploads``), retention (``retention``: what is
kept, and the one rule for room on the storage), and the VOD page's API.

``setup_vod(app)`` adds this room's routes and its retention passes (``app[RETENTION]``), retention
first because uploads ask it for room; docs/RECORDING.md is the contract with the agent.
"""

from __future__ import annotations

from aiohttp import web

from . import uploads
from .retention import setup_retention


def setup_vod(app: web.Application) -> None:
    uploads.add_routes(app, setup_retention(app))
