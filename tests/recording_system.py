"""What the recording test modules share, in one copy: a zone where a course never crosses
midnight, an API client as a customer's program would be, and a download."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

ZONES = ("Asia/Shanghai", "Europe/Berlin", "America/New_York", "Pacific/Auckland", "UTC")


def zone_far_from_midnight() -> str:
    """A zone where now is between 01:00 and 22:00, so a course never crosses midnight, and not the
    agent's (UTC) when one will do: the agent must read course times in the relay's zone."""
    for name in ZONES:
        if 1 <= dt.datetime.now(ZoneInfo(name)).hour < 22:
            return name
    raise AssertionError("no zone far from midnight")


class Client:
    def __init__(self, base: str, credential: str) -> None:
        self.base = base
        self.token = self.get("access_token", unionid=credential)["token"]

    def get(self, name: str, **params: Any) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/api/v1/{name}?{urlencode(params)}",
                                    timeout=30) as response:
            return json.load(response)

    def call(self, name: str, **params: Any) -> dict[str, Any]:
        answer = self.get(name, token=self.token, **params)
        assert answer["err_code"] == 0, answer
        return answer

    def records(self, camera_id: int) -> list[dict[str, Any]]:
        """The camera's recordings, oldest id first."""
        answer = self.call("list_record", camera_id=camera_id, per=100)
        return sorted(answer["data"], key=lambda row: row["record_id"])


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()
