"""Cameras (通道), their latest snapshot, and what deleting one takes with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, select, update

from .cache import HotRows
from .database import Database
from .errors import NotFound
from .paging import Page, fetch_page
from .registrations import chunks
from .schema import cameras, courses, gatherers, records, snapshots

#: Columns the API may set on a camera (add_camera / mod_camera).
FIELDS = (
    "camera_name",
    "stream_prop",
    "stream_url",
    "stream_mp4",
    "device_ip",
    "device_user",
    "device_pass",
    "device_cmd_port",
    "device_mirror",
    "device_osd",
    "device_twice",
    "device_show",
)


@dataclass(frozen=True)
class HotCamera:
    """What every camera command reads (``set_started``): cached per node (``cache.py``)."""

    camera_id: int
    gather_id: int
    started: int


@dataclass(frozen=True)
class DeletedCameras:
    """What a deletion removed: the cameras (for their agents) and the stored files to unlink."""

    cameras: list[dict[str, Any]]
    files: list[str]


def _listing() -> Select:
    return (
        select(
            cameras,
            gatherers.c.name_set,
            snapshots.c.image_fdfs,
        )
        .join(gatherers, gatherers.c.gather_id == cameras.c.gather_id)
        .outerjoin(snapshots, snapshots.c.image_id == cameras.c.image_id)
    )


_ONE = _listing().where(cameras.c.camera_id == bindparam("camera_id"))
_HOT = select(cameras.c.camera_id, cameras.c.gather_id, cameras.c.started).where(
    cameras.c.camera_id == bindparam("camera_id")
)

_OWNER_KEY = (
    select(gatherers.c.key_id)
    .select_from(cameras.join(gatherers, gatherers.c.gather_id == cameras.c.gather_id))
    .where(cameras.c.camera_id == bindparam("camera_id"))
)

_SET_STATUS = update(cameras).where(cameras.c.camera_id == bindparam("which")).values(
    status=bindparam("to"))

_SET_STARTED = (  # (an UPDATE's bindparams must not be named after columns)
    update(cameras)
    .where(cameras.c.camera_id == bindparam("which"))
    .where(cameras.c.started != bindparam("to_start"))
    .values(started=bindparam("to_start"), updated=bindparam("now"))
    .returning(cameras.c.gather_id)
)
# On PostgreSQL the same UPDATE tells the other nodes, in its own transaction, only when it changed
# the row (RETURNING is evaluated for the rows changed alone): still one statement, one round trip.
_SET_STARTED_NOTIFYING = _SET_STARTED.returning(
    func.pg_notify(bindparam("channel"), bindparam("payload")))


class Cameras:
    def __init__(self, db: Database, clock, hot: HotRows) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock
        self._hot = hot

    async def hot(self, camera_id: int) -> HotCamera | None:
        """The camera's gatherer and started flag, from this node's cache (None: no camera)."""
        async def load() -> HotCamera | None:
            rows = await self._db.lookup(_HOT, camera_id=camera_id)
            return HotCamera(**rows[0]) if rows else None

        return await self._hot.cameras.get(camera_id, load)

    async def page(self, cur: int, per: int) -> Page:
        # Each camera has one gatherer and at most one latest snapshot: count cameras alone.
        count = select(func.count()).select_from(cameras)
        async with self._db.read() as conn:
            return await fetch_page(conn, _listing().order_by(cameras.c.camera_id.desc()), cur, per,
                                    count)

    async def get(self, camera_id: int) -> dict[str, Any]:
        rows = await self._db.lookup(_ONE, camera_id=camera_id)
        if not rows:
            raise NotFound(f"no camera {camera_id}", [camera_id])
        return rows[0]

    async def of_gatherer(self, gather_id: int) -> list[dict[str, Any]]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                _listing()
                .where(cameras.c.gather_id == gather_id)
                .order_by(cameras.c.camera_id)
            )
            return [dict(row._mapping) for row in rows]

    async def add(self, gather_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        now = int(self._clock())
        async with self._db.write() as conn:
            exists = (
                await conn.execute(
                    select(gatherers.c.gather_id).where(gatherers.c.gather_id == gather_id)
                )
            ).first()
            if exists is None:
                raise NotFound(f"no gatherer {gather_id}", [gather_id])
            result = await conn.execute(
                cameras.insert().values(gather_id=gather_id, created=now, updated=now, **fields)
            )
            camera_id = result.inserted_primary_key[0]
            row = (await conn.execute(_listing().where(cameras.c.camera_id == camera_id))).one()
        return dict(row._mapping)

    async def update(
        self,
        camera_id: int,
        changes: dict[str, Any],
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Apply ``changes`` and return the row as stored.

        ``check`` sees the row as it would be after the change, inside the transaction; whatever it
        raises aborts the change.
        """
        async with self._db.write() as conn:
            row = (await conn.execute(select(cameras).where(cameras.c.camera_id == camera_id))).first()
            if row is None:
                raise NotFound(f"no camera {camera_id}", [camera_id])
            if check is not None:
                check({**row._mapping, **changes})
            await conn.execute(
                update(cameras)
                .where(cameras.c.camera_id == camera_id)
                .values(updated=int(self._clock()), **changes)
            )
            row = (await conn.execute(_listing().where(cameras.c.camera_id == camera_id))).one()
            await self._hot.notify(conn, "camera", [camera_id])
        self._hot.forget("camera", [camera_id])
        return dict(row._mapping)

    async def set_started(self, camera_id: int, started: int) -> int:
        """Record whether the camera should run; returns its ``gather_id`` (for the command).

        One conditional UPDATE, a transaction by itself (``Database.run_one``: committed with the
        other such writes of this loop turn on SQLite, one autocommit round trip on PostgreSQL):
        it changes the row only when the flag differs, so starting a started camera (or stopping a
        stopped one) changes nothing and the command still goes to the agent; the gatherer then
        comes from the cache.
        """
        values = {"which": camera_id, "to_start": started, "now": int(self._clock())}
        notice = self._hot.notice("camera", [camera_id])
        rows = await (self._db.run_one(_SET_STARTED, values) if notice is None else
                      self._db.run_one(_SET_STARTED_NOTIFYING, {**values, **notice}))
        gather_id = rows[0][0] if rows else None
        if gather_id is not None:  # changed: this node's next read is of the new row
            self._hot.forget("camera", [camera_id])
            return gather_id
        camera = await self.hot(camera_id)  # unchanged, or no such camera
        if camera is None:
            raise NotFound(f"no camera {camera_id}", [camera_id])
        return camera.gather_id

    async def owner_key(self, camera_id: int) -> int | None:
        """The agent key that owns the camera's gatherer (None: no such camera, or not bound)."""
        rows = await self._db.lookup(_OWNER_KEY, camera_id=camera_id)
        return rows[0]["key_id"] if rows else None

    async def set_statuses(self, reports: list[tuple[int, int, int]]) -> list[bool]:
        """Agents' reports ``(gather_id, camera_id, status)`` (-1 reset, 0 offline, 1 online), in
        one transaction. Each applies only to its own gatherer's camera; the answer says, for each,
        whether it was one (False: not one of that gatherer's cameras, nothing written)."""
        camera_ids = sorted({camera_id for _, camera_id, _ in reports})
        async with self._db.write() as conn:
            owners = {camera_id: gather_id for ids in chunks(camera_ids) for camera_id, gather_id in
                      await conn.execute(select(cameras.c.camera_id, cameras.c.gather_id)
                                         .where(cameras.c.camera_id.in_(ids)))}
            valid = [owners.get(camera_id) == gather_id for gather_id, camera_id, _ in reports]
            changes = [{"which": camera_id, "to": status}
                       for (_, camera_id, status), ok in zip(reports, valid, strict=True) if ok]
            if changes:
                await conn.execute(_SET_STATUS, changes)
        return valid

    async def count_click(self, camera_id: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(cameras)
                .where(cameras.c.camera_id == camera_id)
                .values(clicks=cameras.c.clicks + 1)
            )

    async def add_snapshot(self, camera_id: int, image_fdfs: str) -> int:
        """Record a snapshot file and make it the camera's latest; returns its ``image_id``."""
        async with self._db.write() as conn:
            found = (
                await conn.execute(select(cameras.c.camera_id).where(cameras.c.camera_id == camera_id))
            ).first()
            if found is None:
                raise NotFound(f"no camera {camera_id}", [camera_id])
            result = await conn.execute(
                snapshots.insert().values(
                    camera_id=camera_id, image_fdfs=image_fdfs, created=int(self._clock())
                )
            )
            image_id = result.inserted_primary_key[0]
            await conn.execute(
                update(cameras).where(cameras.c.camera_id == camera_id).values(image_id=image_id)
            )
        return image_id

    async def delete(self, camera_ids: list[int]) -> DeletedCameras:
        """Delete the cameras with their courses, records and snapshots, all or none.

        Raises ``NotFound`` (deleting nothing) when any id names no camera. Returns the stored
        files the rows pointed at; the caller unlinks them once this transaction has committed.
        (Offloaded, on SQLite to the writer's thread: a camera may take thousands of records.)
        """
        async with self._db.write(offload=True) as conn:
            found = [
                dict(row._mapping)
                for row in await conn.execute(
                    select(cameras.c.camera_id, cameras.c.gather_id).where(
                        cameras.c.camera_id.in_(camera_ids)
                    )
                )
            ]
            missing = sorted(set(camera_ids) - {row["camera_id"] for row in found})
            if missing:
                raise NotFound(f"no camera {missing}", missing)
            files: list[str] = []
            for row in await conn.execute(
                select(records.c.file_fdfs, records.c.image_fdfs).where(
                    records.c.camera_id.in_(camera_ids)
                )
            ):
                files.extend(path for path in row if path)
            files.extend(
                await conn.scalars(
                    select(snapshots.c.image_fdfs).where(snapshots.c.camera_id.in_(camera_ids))
                )
            )
            for table in (courses, records, snapshots):
                await conn.execute(delete(table).where(table.c.camera_id.in_(camera_ids)))
            await conn.execute(delete(cameras).where(cameras.c.camera_id.in_(camera_ids)))
            await self._hot.notify(conn, "camera", camera_ids)
        self._hot.forget("camera", camera_ids)
        return DeletedCameras(found, files)
