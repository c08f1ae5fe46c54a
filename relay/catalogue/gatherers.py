"""Gatherers (采集端): created only by an agent's registration, tuned through the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from .database import Database
from .errors import NotFound
from .paging import Page, fetch_page
from .schema import cameras, courses, gatherers

#: Settings the API may change (mod_gather), with the agent's copy kept in step by the hub.
SETTINGS = (
    "name_set",
    "main_rate",
    "sub_rate",
    "auto_dvr",
    "auto_fds",
    "slice_val",
    "inter_val",
    "snap_val",
)


class Gatherers:
    def __init__(self, db: Database, clock) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock

    async def register(
        self,
        mac_addr: str,
        ip_addr: str = "",
        name_pc: str = "",
        os_name: str = "",
        devices: list[dict[str, Any]] | None = None,
    ) -> int:
        """Create or refresh the gatherer an agent reports (keyed by MAC) and mark it online.

        Returns its ``gather_id``. Its cameras go to status -1 until the agent reports each one.
        ``devices`` are the IP cameras (mode 0) the agent's config lists, keyed by ``device_ip``:
        unknown ones become cameras; known ones keep what the API has set on them since.
        """
        now = int(self._clock())
        facts = {"ip_addr": ip_addr, "name_pc": name_pc, "os_name": os_name}
        async with self._db.write() as conn:
            gather_id = (
                await conn.execute(
                    select(gatherers.c.gather_id).where(gatherers.c.mac_addr == mac_addr)
                )
            ).scalar()
            if gather_id is None:
                result = await conn.execute(
                    gatherers.insert().values(
                        mac_addr=mac_addr,
                        name_set=name_pc or mac_addr,
                        status=1,
                        created=now,
                        updated=now,
                        **facts,
                    )
                )
                gather_id = result.inserted_primary_key[0]
            else:
                await conn.execute(
                    update(gatherers)
                    .where(gatherers.c.gather_id == gather_id)
                    .values(status=1, updated=now, **facts)
                )
                await conn.execute(
                    update(cameras).where(cameras.c.gather_id == gather_id).values(status=-1)
                )
            known = set(
                await conn.scalars(
                    select(cameras.c.device_ip)
                    .where(cameras.c.gather_id == gather_id)
                    .where(cameras.c.stream_prop == 0)
                )
            )
            for device in devices or []:
                if device["device_ip"] in known:
                    continue
                known.add(device["device_ip"])
                await conn.execute(
                    cameras.insert().values(
                        gather_id=gather_id, stream_prop=0, status=-1, created=now, updated=now,
                        **device,
                    )
                )
            return gather_id

    async def desired_state(self, gather_id: int) -> dict[str, Any]:
        """Everything the agent of ``gather_id`` should hold: its settings, cameras and courses."""
        async with self._db.read() as conn:
            gatherer = (
                await conn.execute(select(gatherers).where(gatherers.c.gather_id == gather_id))
            ).first()
            if gatherer is None:
                raise NotFound(f"no gatherer {gatherer}", [gather_id])
            camera_rows = [
                dict(row._mapping)
                for row in await conn.execute(
                    select(cameras).where(cameras.c.gather_id == gather_id).order_by(cameras.c.camera_id)
                )
            ]
            course_rows = [
                dict(row._mapping)
                for row in await conn.execute(
                    select(courses)
                    .join(cameras, cameras.c.camera_id == courses.c.camera_id)
                    .where(cameras.c.gather_id == gather_id)
                    .order_by(courses.c.week_id, courses.c.start_sec)
                )
            ]
        return {"gatherer": dict(gatherer._mapping), "cameras": camera_rows, "courses": course_rows}

    async def set_offline(self, gather_id: int) -> None:
        """The agent is gone: the gatherer and all its cameras are offline."""
        async with self._db.write() as conn:
            await conn.execute(
                update(gatherers)
                .where(gatherers.c.gather_id == gather_id)
                .values(status=0, updated=int(self._clock()))
            )
            await conn.execute(
                update(cameras).where(cameras.c.gather_id == gather_id).values(status=0)
            )

    async def all_offline(self) -> None:
        """At start-up no agent is connected yet: nothing is online (this node owns every link)."""
        async with self._db.write() as conn:
            await conn.execute(update(gatherers).where(gatherers.c.status != 0).values(status=0))
            await conn.execute(update(cameras).where(cameras.c.status != 0).values(status=0))

    async def page(self, cur: int, per: int) -> Page:
        query = select(gatherers).order_by(gatherers.c.gather_id.desc())
        async with self._db.read() as conn:
            return await fetch_page(conn, query, cur, per)

    async def get(self, gather_id: int) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(gatherers).where(gatherers.c.gather_id == gather_id))
            ).first()
        if row is None:
            raise NotFound(f"no gatherer {gather_id}", [gather_id])
        return dict(row._mapping)

    async def update(self, gather_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (keys from ``SETTINGS``) and return the whole row as stored."""
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise ValueError(f"not gatherer settings: {sorted(unknown)}")
        async with self._db.write() as conn:
            result = await conn.execute(
                update(gatherers)
                .where(gatherers.c.gather_id == gather_id)
                .values(updated=int(self._clock()), **changes)
            )
            if result.rowcount == 0:
                raise NotFound(f"no gatherer {gather_id}", [gather_id])
            row = (
                await conn.execute(select(gatherers).where(gatherers.c.gather_id == gather_id))
            ).one()
        return dict(row._mapping)
