"""What the agents' links say about presence, written to the catalogue in batches (``batches.py``):
each camera's status as its agent reports it, and gatherers going offline when their links end.

A gatherer whose link ended is marked offline only if no newer link has taken its place by the
time the batch is written (``linked``), so a quick reconnect never ends up shown offline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..catalogue import Catalogue
from .batches import Batcher

log = logging.getLogger(__name__)

Report = tuple[int, int, int, str]  # gather_id, camera_id, status, err_msg


class Presence:
    def __init__(self, catalogue: Catalogue, linked: Callable[[int], bool]) -> None:
        self._catalogue = catalogue
        self._linked = linked
        self._statuses: Batcher[Report, None] = Batcher("camera statuses", self._write_statuses)
        self._offline: Batcher[int, None] = Batcher("gatherers offline", self._write_offline)

    async def camera_status(self, gather_id: int, camera_id: int, status: int, err_msg: str
                            ) -> None:
        await self._statuses.submit((gather_id, camera_id, status, err_msg))

    async def gatherer_offline(self, gather_id: int) -> None:
        await self._offline.submit(gather_id)

    async def _write_statuses(self, reports: list[Report]) -> list[None]:
        valid = await self._catalogue.cameras.set_statuses(
            [(gather_id, camera_id, status) for gather_id, camera_id, status, _ in reports])
        for (gather_id, camera_id, status, err_msg), ok in zip(reports, valid, strict=True):
            if not ok:
                log.warning("gatherer %d reported camera %d, which is not one of its cameras",
                            gather_id, camera_id)
            elif status:
                log.info("camera %d (gatherer %d) is online", camera_id, gather_id)
            else:
                log.info("camera %d (gatherer %d) is offline: %s", camera_id, gather_id,
                         err_msg or "-")
        return [None] * len(reports)

    async def _write_offline(self, gather_ids: list[int]) -> list[None]:
        gone = [gather_id for gather_id in dict.fromkeys(gather_ids) if not self._linked(gather_id)]
        if gone:
            await self._catalogue.gatherers.set_offline(gone)
            for gather_id in gone:
                log.info("gatherer %d is offline", gather_id)
        return [None] * len(gather_ids)

    async def close(self) -> None:
        await self._statuses.close()
        await self._offline.close()
