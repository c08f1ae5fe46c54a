"""What the recording test modules share, in one copy: a zone where a course never crosses
midnight, an API client as a customer's program would be, and a download."""

from __future__ import annotations

import datetime as dt
import urllib.request
from zoneinfo import ZoneInfo

from conftest import ApiClient

ZONES = ("Asia/Shanghai", "Europe/Berlin", "America/New_York", "Pacific/Auckland", "UTC")


def zone_far_from_midnight() -> str:
    """A zone where now is between 01:00 and 22:00, so a course never crosses midnight, and not the
    agent's (UTC) when one will do: the agent must read course times in the relay's zone."""
    for name in ZONES:
        if 1 <= dt.datetime.now(ZoneInfo(name)).hour < 22:
            return name
    raise AssertionError("no zone far from midnight")


Client = ApiClient  # (the tests' one API client)


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()
