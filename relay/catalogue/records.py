"""Recordings: rows pointing at stored video files and their thumbnails."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, case, delete, func, select, update

from .database import Database
from .errors import NotFound
from .paging import Page, fetch_page
from .schema import cameras, records


def _listing() -> Select:
    return select(records, cameras.c.camera_name).join(
        cameras, cameras.c.camera_id == records.c.camera_id
    )


class Records:
    def __init__(self, db: Database, clock) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock

    async def add(
        self,
        camera_id: int,
        file_fdfs: str,
        image_fdfs: str = "",
        file_size: int = 0,
        duration: int = 0,
        start_time: int | None = None,
        end_time: int | None = None,
    ) -> int:
        """Record a finished recording of ``camera_id``; returns its ``record_id``.
        ``created`` is the recording's start (``start_time``, default now)."""
        now = int(self._clock())
        start = now if start_time is None else int(start_time)
        end = start + int(duration) if end_time is None else int(end_time)
        async with self._db.write() as conn:
            gather_id = (
                await conn.execute(
                    select(cameras.c.gather_id).where(cameras.c.camera_id == camera_id)
                )
            ).scalar()
            if gather_id is None:
                raise NotFound(f"no camera {camera_id}", [camera_id])
            result = await conn.execute(
                records.insert().values(
                    gather_id=gather_id,
                    camera_id=camera_id,
                    file_fdfs=file_fdfs,
                    image_fdfs=image_fdfs,
                    file_size=file_size,
                    duration=duration,
                    start_time=start,
                    end_time=end,
                    created=start,
                    updated=now,
                )
            )
            return result.inserted_primary_key[0]

    async def page(self, cur: int, per: int) -> Page:
        # Each record has exactly one camera (a foreign key): count records alone.
        count = select(func.count()).select_from(records)
        async with self._db.read() as conn:
            return await fetch_page(conn, _listing().order_by(records.c.record_id.desc()), cur, per,
                                    count)

    async def get(self, record_id: int) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = (await conn.execute(_listing().where(records.c.record_id == record_id))).first()
        if row is None:
            raise NotFound(f"no record {record_id}", [record_id])
        return dict(row._mapping)

    async def count_click(self, record_id: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(records)
                .where(records.c.record_id == record_id)
                .values(clicks=records.c.clicks + 1)
            )

    async def delete(self, record_ids: list[int]) -> list[str]:
        """Delete the records, all or none; returns their stored files for the caller to unlink."""
        async with self._db.write() as conn:
            found = (
                await conn.execute(
                    select(records.c.record_id, records.c.file_fdfs, records.c.image_fdfs).where(
                        records.c.record_id.in_(record_ids)
                    )
                )
            ).all()
            missing = sorted(set(record_ids) - {row.record_id for row in found})
            if missing:
                raise NotFound(f"no record {missing}", missing)
            await conn.execute(delete(records).where(records.c.record_id.in_(record_ids)))
        return [path for row in found for path in (row.file_fdfs, row.image_fdfs) if path]

    # list_record's camera filter and retention (relay.vod.retention).

    async def page_of(self, cur: int, per: int, camera_id: int | None = None,
                      started: tuple[int, int] | None = None) -> Page:
        """One page, newest first, of every recording or of one camera's (``NotFound`` when
        ``camera_id`` names no camera); with ``started`` (unix seconds, from, until), only those
        that started in [from, until) (the console's day filter)."""
        if camera_id is None and started is None:
            return await self.page(cur, per)
        conditions = []
        if camera_id is not None:
            conditions.append(records.c.camera_id == camera_id)
        if started is not None:
            start = _started()
            conditions += [start >= started[0], start < started[1]]
        chosen = and_(*conditions)
        async with self._db.read() as conn:
            if camera_id is not None:
                known = (await conn.execute(
                    select(cameras.c.camera_id).where(cameras.c.camera_id == camera_id))).first()
                if known is None:
                    raise NotFound(f"no camera {camera_id}", [camera_id], kind="camera")
            return await fetch_page(
                conn, _listing().where(chosen).order_by(records.c.record_id.desc()), cur, per,
                select(func.count()).select_from(records).where(chosen))

    async def oldest(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` recordings, earliest start first (only those that started before
        ``before``, unix seconds, when given): what retention deletes next."""
        start = _started()
        query = select(records.c.record_id, records.c.camera_id, start.label("start"))
        if before is not None:
            query = query.where(start < before)
        async with self._db.read() as conn:
            rows = await conn.execute(query.order_by(start, records.c.record_id).limit(limit))
            return [dict(row._mapping) for row in rows]

    async def discard(self, record_id: int) -> dict[str, Any] | None:
        """Delete one recording's row; returns it (its ids and files, for the caller to unlink),
        or None when it was already gone."""
        async with self._db.write() as conn:
            row = (await conn.execute(
                select(records.c.record_id, records.c.camera_id, records.c.file_fdfs,
                       records.c.image_fdfs).where(records.c.record_id == record_id))).first()
            if row is None:
                return None
            await conn.execute(delete(records).where(records.c.record_id == record_id))
        return dict(row._mapping)

    async def total_bytes(self) -> int:
        """What every recording's video takes, by the rows' ``file_size``."""
        async with self._db.read() as conn:
            return int((await conn.execute(
                select(func.coalesce(func.sum(records.c.file_size), 0)))).scalar_one())


def _started():  # type: ignore[no-untyped-def]
    """A recording's start: ``start_time``, or ``created`` for a row that has none."""
    return case((records.c.start_time > 0, records.c.start_time), else_=records.c.created)
