"""Courses (录像任务): weekly recording windows of a camera, kept free of overlaps.

A course covers the half-open interval [start, start + elapse) in seconds of its weekday, so one
course may begin the second another ends. The caller checks the cross-day rule before coming here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .errors import CourseOverlap, NotFound
from .paging import Page, fetch_page
from .schema import cameras, courses


async def _check_free(
    conn: AsyncConnection,
    camera_id: int,
    week_id: int,
    start_sec: int,
    elapse_sec: int,
    except_course: int | None = None,
) -> None:
    query = (
        select(courses.c.course_id, courses.c.start_sec, courses.c.elapse_sec)
        .where(courses.c.camera_id == camera_id)
        .where(courses.c.week_id == week_id)
        .where(courses.c.start_sec < start_sec + elapse_sec)
        .where(courses.c.start_sec + courses.c.elapse_sec > start_sec)
        .order_by(courses.c.start_sec)
        .limit(1)
    )
    if except_course is not None:
        query = query.where(courses.c.course_id != except_course)
    clash = (await conn.execute(query)).first()
    if clash is not None:
        raise CourseOverlap(clash.course_id, clash.start_sec, clash.elapse_sec)


async def _require_camera(conn: AsyncConnection, camera_id: int) -> int:
    """The camera's gatherer id; NotFound when there is no such camera."""
    gather_id = (
        await conn.execute(select(cameras.c.gather_id).where(cameras.c.camera_id == camera_id))
    ).scalar()
    if gather_id is None:
        raise NotFound(f"no camera {camera_id}", [camera_id], kind="camera")
    return gather_id


_OF_CAMERA = (
    select(courses)
    .where(courses.c.camera_id == bindparam("camera_id"))
    .order_by(courses.c.week_id, courses.c.start_sec)
)


class Courses:
    def __init__(self, db: Database, clock) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock

    async def page(self, camera_id: int, cur: int, per: int) -> Page:
        query = (
            select(courses)
            .where(courses.c.camera_id == camera_id)
            .order_by(courses.c.course_id.desc())
        )
        async with self._db.read() as conn:
            await _require_camera(conn, camera_id)
            return await fetch_page(conn, query, cur, per)

    async def of_camera(self, camera_id: int) -> list[dict[str, Any]]:
        """The camera's week (every course change sends it whole to the agent): a few rows by
        index, so a lookup rather than a trip to the engine's thread."""
        return await self._db.lookup(_OF_CAMERA, camera_id=camera_id)

    async def add(
        self, camera_id: int, week_id: int, start_sec: int, elapse_sec: int
    ) -> dict[str, Any]:
        now = int(self._clock())
        async with self._db.write() as conn:
            gather_id = await _require_camera(conn, camera_id)
            await _check_free(conn, camera_id, week_id, start_sec, elapse_sec)
            result = await conn.execute(
                courses.insert().values(
                    camera_id=camera_id,
                    repeat_id=2,
                    week_id=week_id,
                    start_sec=start_sec,
                    elapse_sec=elapse_sec,
                    created=now,
                    updated=now,
                )
            )
            course_id = result.inserted_primary_key[0]
            row = (await conn.execute(select(courses).where(courses.c.course_id == course_id))).one()
        return {**row._mapping, "gather_id": gather_id}

    async def update(
        self, course_id: int, camera_id: int, week_id: int, start_sec: int, elapse_sec: int
    ) -> dict[str, Any]:
        """Rewrite a course (it may move to another camera); returns it with ``old_camera_id``."""
        async with self._db.write() as conn:
            old_camera_id = (
                await conn.execute(
                    select(courses.c.camera_id).where(courses.c.course_id == course_id)
                )
            ).scalar()
            if old_camera_id is None:
                raise NotFound(f"no course {course_id}", [course_id], kind="course")
            gather_id = await _require_camera(conn, camera_id)
            await _check_free(conn, camera_id, week_id, start_sec, elapse_sec, course_id)
            await conn.execute(
                update(courses)
                .where(courses.c.course_id == course_id)
                .values(
                    camera_id=camera_id,
                    week_id=week_id,
                    start_sec=start_sec,
                    elapse_sec=elapse_sec,
                    updated=int(self._clock()),
                )
            )
            row = (await conn.execute(select(courses).where(courses.c.course_id == course_id))).one()
        return {**row._mapping, "gather_id": gather_id, "old_camera_id": old_camera_id}

    async def delete(self, course_ids: list[int]) -> list[dict[str, Any]]:
        """Delete the courses, all or none; returns each one's camera and gatherer."""
        async with self._db.write() as conn:
            found = [
                dict(row._mapping)
                for row in await conn.execute(
                    select(courses.c.course_id, courses.c.camera_id, cameras.c.gather_id)
                    .join(cameras, cameras.c.camera_id == courses.c.camera_id)
                    .where(courses.c.course_id.in_(course_ids))
                )
            ]
            missing = sorted(set(course_ids) - {row["course_id"] for row in found})
            if missing:
                raise NotFound(f"no course {missing}", missing)
            await conn.execute(delete(courses).where(courses.c.course_id.in_(course_ids)))
        return found
