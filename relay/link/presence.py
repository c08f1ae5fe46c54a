"""What the agents' links say about presence, written to the catalogue in batches (``batches.py``):
each camera's status as its agent reports it, and gatherers going offline when their links end.

A gatherer whose link ended is marked offline only if no newer link (a larger epoch, on this node
or another) has registered it by the time the batch is written, so a quick reconnect never ends up
shown offline.
"""

from __future__ import annotations

import logging

from ..catalogue import Catalogue
from .batches import Batcher

log = logging.getLogger(__name__)

Report = tuple[int, int, int, str]  # gather_id, camera_id, status, err_msg


class Presence:
    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._statuses: Batcher[Report, None] = Batcher("camera statuses", self._write_statuses)
        self._offline: Batcher[tuple[int, int], None] = Batcher("gatherers offline",
                                                                self._write_offline)

    async def camera_status(self, gather_id: int, camera_id: int, status: int, err_msg: str
                            ) -> None:
        await self._statuses.submit((gather_id, camera_id, status, err_msg))

    async def gatherer_offline(self, gather_id: int, epoch: int) -> None:
        """The link of ``epoch`` to the gatherer has ended."""
        await self._offline.submit((gather_id, epoch))

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

    async def _write_offline(self, links: list[tuple[int, int]]) -> list[None]:
        for gather_id in await self._catalogue.gatherers.set_offline(links):
            log.info("gatherer %d is offline", gather_id)
        return [None] * len(links)

    async def close(self) -> None:
        await self._statuses.close()
        await self._offline.close()
