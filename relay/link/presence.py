"""What the agents' links say about presence, written to the catalogue in batches (``batches.py``):
each camera's status as its agent reports it, and gatherers going offline when their links end.

A gatherer whose link ended is marked offline only if no newer link (a larger epoch, on this node
or another) has registered it by the time the batch is written, so a quick reconnect never ends up
shown offline.

While the database cannot be reached, links stay up: what could not be written is kept (the latest
status per camera, every ended link) and written again every ``RETRY`` seconds until it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import tasks
from ..catalogue import Catalogue
from ..catalogue.errors import DATABASE_DOWN
from .batches import Batcher

log = logging.getLogger(__name__)

Report = tuple[int, int, int, str]  # gather_id, camera_id, status, err_msg

#: Seconds between attempts to write what a database outage kept back.
RETRY = 2.0


class Presence:
    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._statuses: Batcher[Report, None] = Batcher("camera statuses", self._write_statuses)
        self._offline: Batcher[tuple[int, int], None] = Batcher("gatherers offline",
                                                                self._write_offline)
        self._kept_statuses: dict[tuple[int, int], Report] = {}  # the latest, per camera
        self._kept_offline: list[tuple[int, int]] = []
        self._reported: dict[tuple[int, int], Report] = {}  # the last report per camera
        self._retry: asyncio.Task[None] | None = None

    async def camera_status(self, gather_id: int, camera_id: int, status: int, err_msg: str
                            ) -> None:
        report = (gather_id, camera_id, status, err_msg)
        if self._kept_statuses:  # (only while an outage keeps some back: bounded by cameras)
            self._reported[(gather_id, camera_id)] = report
        await self._statuses.submit(report)

    async def gatherer_offline(self, gather_id: int, epoch: int) -> None:
        """The link of ``epoch`` to the gatherer has ended."""
        await self._offline.submit((gather_id, epoch))

    def _keep(self, what: str, exc: BaseException) -> None:
        log.warning("%s not written, the catalogue is unavailable (%s); trying again every "
                    "%.0f s", what, exc.__class__.__name__, RETRY)
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._write_kept(), name="presence retry")

    async def _write_kept(self) -> None:
        while self._kept_statuses or self._kept_offline:
            await asyncio.sleep(RETRY)
            # A report made since one was kept is the newer: the kept one is not written over it.
            statuses = [report for key, report in self._kept_statuses.items()
                        if self._reported.get(key, report) is report]
            self._kept_statuses = {}
            offline, self._kept_offline = self._kept_offline, []
            if statuses:  # (each kept again by the write itself when it fails)
                with contextlib.suppress(*DATABASE_DOWN):
                    await self._write_statuses(statuses, quiet=True)
            if offline:
                with contextlib.suppress(*DATABASE_DOWN):
                    await self._write_offline(offline, quiet=True)
        self._reported.clear()

    async def _write_statuses(self, reports: list[Report], quiet: bool = False) -> list[None]:
        try:
            valid = await self._catalogue.cameras.set_statuses(
                [(gather_id, camera_id, status) for gather_id, camera_id, status, _ in reports])
        except DATABASE_DOWN as exc:
            for report in reports:
                key = (report[0], report[1])
                if quiet:  # a retry: a report kept meanwhile is newer
                    self._kept_statuses.setdefault(key, report)
                else:
                    self._kept_statuses[key] = report
            if quiet:
                raise
            self._keep(f"{len(reports)} camera status report(s)", exc)
            return [None] * len(reports)
        for report in reports:
            self._kept_statuses.pop((report[0], report[1]), None)
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

    async def _write_offline(self, links: list[tuple[int, int]], quiet: bool = False
                             ) -> list[None]:
        try:
            gone = await self._catalogue.gatherers.set_offline(links)
        except DATABASE_DOWN as exc:
            self._kept_offline += links  # (epoch-conditional: safe to write whenever)
            if quiet:
                raise
            self._keep(f"{len(links)} ended link(s)", exc)
            return [None] * len(links)
        for gather_id in gone:
            log.info("gatherer %d is offline", gather_id)
        return [None] * len(links)

    async def close(self) -> None:
        await tasks.stop(self._retry)
        await self._statuses.close()
        await self._offline.close()
