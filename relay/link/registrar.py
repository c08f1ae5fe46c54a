"""Agents' registrations and their welcome states, read and written in batches (``batches.py``).

One batch is one catalogue transaction registering every agent in it (``registrations.py``) and
reading all their desired states (three reads), so a reconnect storm costs a few statements per
batch rather than a handful per agent, and no trip to the database's thread.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from ..catalogue import Catalogue, GathererRefused
from ..catalogue.registrations import Registration
from . import protocol
from .batches import Batcher

Welcome = tuple[int, dict[str, Any]]  # gather_id, the desired state the welcome carries


def utc_offset(zone: str) -> int:
    """Seconds east of UTC, now, in ``zone`` ("" = this machine's zone)."""
    now = dt.datetime.now(ZoneInfo(zone)) if zone else dt.datetime.now().astimezone()
    offset = now.utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


class Registrar:
    def __init__(self, catalogue: Catalogue, zone: str = "") -> None:
        self._catalogue = catalogue
        self._zone = zone
        self._batcher: Batcher[Registration, Welcome | GathererRefused] = Batcher(
            "registrations", self._register)

    async def register(self, key_id: int, hello: dict[str, Any], epoch: int) -> Welcome:
        """The agent's gatherer id and desired state; ``GathererRefused`` when it may not be it.
        ``epoch`` is the new link's (``relay.hub``)."""
        result = await self._batcher.submit(Registration(
            hello["mac_addr"], key_id, hello["ip_addr"], hello["name_pc"], hello["os_name"],
            tuple(hello["devices"]), epoch))
        if isinstance(result, GathererRefused):
            raise result
        return result

    async def _register(self, arrivals: list[Registration]) -> list[Welcome | GathererRefused]:
        offset = utc_offset(self._zone)
        return [result if isinstance(result, GathererRefused)
                else (result[0], protocol.desired_state(result[1], self._zone, offset))
                for result in await self._catalogue.gatherers.register_many(arrivals)]

    async def close(self) -> None:
        await self._batcher.close()
