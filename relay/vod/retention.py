"""Retention, the one rule for room on the relay's storage: recordings older than
``record_keep_days`` go, and while stored files have less room than ``storage_min_free`` the
oldest recordings go first.

Room is the smaller of the disk's free space and, with ``storage_quota``, the quota less what the
files and upload directories hold (so a small quota stands in for a full disk). Walking those
directories costs, so it happens in a thread, at every ``retention_interval`` pass, and otherwise
at most every ``MEASURE_EVERY`` seconds (``free()``, ``sweep(within=...)``); bytes uploads write
in between are added as they come (``wrote``).

Uploads ask for room before they are refused (``sweep(needed)``) and schedule a pass after each
commit (``soon()``), so new recordings push out the oldest rather than the other way round. The
oldest go by start time, whatever the upload's own start: the agent sends its queue oldest first
and a 507 holds back its whole queue, so refusing an old recording because only newer ones could
make way would stop every later recording of that agent for good. The upload itself has no row
until its commit, so no pass can delete it.

Rows go first, then their files: a crash between the two leaves a file no row names, never a row
whose file is gone. A file that has already vanished is fine. A pass never raises: a full disk or
a failed pass must not stop live video or the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from .. import tasks
from ..services import SERVICES, Services

log = logging.getLogger(__name__)

DAY = 86400
GIB = 1 << 30
#: Seconds a walk of the directories stays good for uploads (a pass of the loop always walks).
MEASURE_EVERY = 5.0
#: Rows fetched at a time; each is deleted in its own transaction, so an API write never waits
#: behind a long retention one.
BATCH = 50
REASONS = ("age", "space")


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (a file that goes meanwhile counts 0)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class Retention:
    """Owns the retention passes of one app; reads the settings afresh at every pass."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = asyncio.Lock()  # one pass at a time
        self._walking = asyncio.Lock()  # one walk at a time
        self._used: int | None = None  # bytes under the files and upload dirs (quota only)
        self._walked = -math.inf  # monotonic time of the last walk
        self._written = 0  # bytes uploads wrote, ever (to count those written during a walk)
        self._task: asyncio.Task[None] | None = None
        self._soon: asyncio.Task[None] | None = None
        self._again = False  # a pass was asked for while one from soon() was under way
        self._starved = False  # told the operator that nothing is left to delete
        for reason in REASONS:
            services.metrics.recordings_deleted.labels(reason)

    # -- room ----------------------------------------------------------------------------------

    def _dirs(self) -> tuple[Path, Path]:
        return self._services.storage.root, self._services.settings.data / "uploads"

    def _measure(self) -> int:
        return sum(tree_bytes(directory) for directory in self._dirs())

    def wrote(self, count: int) -> None:
        """Bytes an upload just put on disk: counted against the quota until the next walk."""
        self._written += count
        if self._used is not None:
            self._used += count

    async def _walk(self, within: float) -> None:
        """Measure the directories in a thread, unless the last walk is younger than ``within``
        seconds. Bytes written during a walk are added (perhaps twice: never missed)."""
        if not self._services.settings.storage_quota:
            return
        async with self._walking:
            if self._used is not None and time.monotonic() - self._walked < within:
                return
            written = self._written
            used = await asyncio.to_thread(self._measure)
            self._used = used + self._written - written
            self._walked = time.monotonic()

    def _disk(self) -> tuple[int, int]:
        """The files directory's disk: (total, free) bytes."""
        usage = shutil.disk_usage(self._services.storage.root)
        return usage.total, usage.free

    def min_free(self) -> int:
        """``storage_min_free``, or by default the smaller of 5 % of the room and 2 GiB."""
        settings = self._services.settings
        if settings.storage_min_free is not None:
            return settings.storage_min_free
        size = settings.storage_quota or self._disk()[0]
        return min(size * 5 // 100, 2 * GIB)

    def _room(self) -> int:
        quota = self._services.settings.storage_quota
        free = self._disk()[1]
        if quota:
            free = min(free, quota - (self._used or 0))
        room = max(free, 0)
        self._services.metrics.storage_free.set(room)
        return room

    def free_bytes(self) -> int:
        """Bytes stored files may still take, now; never walks (the quota part counts the
        directories as the last walk found them, nothing before the first, plus ``wrote``)."""
        try:
            return self._room()
        except OSError as exc:
            log.warning("retention: cannot read the free space: %s", exc.strerror or exc)
            return 0

    async def free(self, within: float = MEASURE_EVERY) -> int:
        """``free_bytes()``, the directories walked first (in a thread) when the last walk is
        older than ``within`` seconds: what an upload may use."""
        try:
            await self._walk(within)
        except OSError as exc:
            log.warning("retention: cannot measure the stored files: %s", exc.strerror or exc)
        return self.free_bytes()

    # -- passes --------------------------------------------------------------------------------

    async def sweep(self, needed: int = 0, *, within: float = 0.0) -> dict[str, int]:
        """One pass: delete what is too old, then the earliest-started while room is short of
        the minimum plus ``needed`` bytes (an upload that asks; nothing for it when even deleting
        every recording would not make that room). The directories are walked unless the last
        walk is younger than ``within`` s. Returns how many recordings went for each reason.
        Never raises (but for cancellation)."""
        deleted = dict.fromkeys(REASONS, 0)
        async with self._lock:
            try:
                await self._by_age(deleted)
                await self._walk(within)
                await self._by_space(deleted, max(needed, 0))
            except (OSError, SQLAlchemyError) as exc:
                log.warning("retention: pass stopped: %s: %s", exc.__class__.__name__, exc)
            except Exception:  # a bug: show it, but keep serving
                log.exception("retention: pass failed")
        return deleted

    async def _by_age(self, deleted: dict[str, int]) -> None:
        days = self._services.settings.record_keep_days
        if not days:
            return
        cutoff = int(self._services.clock()) - days * DAY
        records = self._services.catalogue.records
        while rows := await records.oldest(BATCH, before=cutoff):
            for row in rows:
                if await self._delete(row, "age", f"older than {days} day(s)") is not None:
                    deleted["age"] += 1

    async def _by_space(self, deleted: dict[str, int], needed: int) -> None:
        minimum = self.min_free() + needed
        records = self._services.catalogue.records
        room = self._room()
        if needed and room < minimum and room + await records.total_bytes() < minimum:
            log.warning("retention: an upload of %d bytes would not fit even with every "
                        "recording deleted (%d bytes free); deleting none for it", needed, room)
            minimum -= needed
        wanted = "the minimum" if minimum == self.min_free() else f"the {minimum} wanted"
        while room < minimum:
            rows = await records.oldest(BATCH)
            if not rows:
                if not self._starved:
                    log.warning("retention: %d bytes free, below %s (%d), and no recording is "
                                "left to delete", room, wanted, minimum)
                self._starved = True
                return
            for row in rows:
                why = f"{room} bytes free, below {wanted} ({minimum})"
                freed = await self._delete(row, "space", why)
                if freed is None:
                    continue
                deleted["space"] += 1
                if self._used is not None:
                    self._used = max(self._used - freed, 0)
                room = self._room()
                if room >= minimum:
                    break
        self._starved = False

    async def _delete(self, row: dict[str, Any], reason: str, why: str) -> int | None:
        """Delete one recording, row then files; the bytes freed, or None when it was gone."""
        gone = await self._services.catalogue.records.discard(row["record_id"])
        if gone is None:  # deleted meanwhile (del_record, del_camera)
            return None
        files = [path for path in (gone["file_fdfs"], gone["image_fdfs"]) if path]
        freed = await asyncio.to_thread(self._unlink, files)
        self._services.metrics.recordings_deleted.labels(reason).inc()
        log.warning("retention: deleted record %d of camera %d (%s): %s", gone["record_id"],
                    gone["camera_id"], reason, why)
        return freed

    def _unlink(self, files: list[str]) -> int:
        storage = self._services.storage
        freed = 0
        for fdfs in files:
            path = storage.path_of(fdfs)
            with contextlib.suppress(OSError):  # already gone: storage.remove says so
                freed += path.stat().st_size if path is not None else 0
        storage.remove(files)
        return freed

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.sweep()
            interval = self._services.settings.retention_interval
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.0))

    def soon(self) -> None:
        """Schedule a pass (walking only when the last walk is ``MEASURE_EVERY`` s old) and
        return at once: what a commit calls, so its answer never waits behind a pass. Asked
        for again while one is under way, one more pass follows it."""
        self._again = True
        if self._soon is None or self._soon.done():
            self._soon = asyncio.create_task(self._soon_passes(), name="retention-soon")

    async def _soon_passes(self) -> None:
        while self._again:
            self._again = False
            await self.sweep(within=MEASURE_EVERY)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def close(self) -> None:
        await tasks.stop(self._task, self._soon)
        self._task = self._soon = None


RETENTION = web.AppKey("retention", Retention)


def setup_retention(app: web.Application) -> Retention:
    """The app's retention, as ``app[RETENTION]``: passes run from startup until shutdown."""
    retention = Retention(app[SERVICES])
    app[RETENTION] = retention

    async def start(_app: web.Application) -> None:
        retention.start()

    async def stop(_app: web.Application) -> None:
        await retention.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return retention
