"""Gatherers (采集端): created only by an agent's registration, tuned through the API.

A gatherer belongs to the agent key that first registered it: a hello naming its MAC with any
other key is refused (a key cannot take over another site's gatherer, nor receive its cameras'
passwords), and a key registers at most ``max_gatherers`` machines (``registrations.py``). An
operator moves a gatherer to other hardware or another key with ``relay agent-key rebind``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, select, update

from .database import Database
from .errors import GathererRefused, NotFound
from .paging import Page, fetch_page
from .registrations import Registration, chunks, register_many
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


async def _states(conn: Any, gather_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each gatherer's settings, cameras and courses (``desired_state``), three reads in all."""
    states: dict[int, dict[str, Any]] = {}
    for ids in chunks(sorted(set(gather_ids))):
        for row in await conn.execute(select(gatherers).where(gatherers.c.gather_id.in_(ids))):
            states[row.gather_id] = {"gatherer": dict(row._mapping), "cameras": [], "courses": []}
        for row in await conn.execute(select(cameras).where(cameras.c.gather_id.in_(ids))
                                      .order_by(cameras.c.camera_id)):
            states[row.gather_id]["cameras"].append(dict(row._mapping))
        for row in await conn.execute(
            select(courses, cameras.c.gather_id)
            .join(cameras, cameras.c.camera_id == courses.c.camera_id)
            .where(cameras.c.gather_id.in_(ids))
            .order_by(courses.c.week_id, courses.c.start_sec)
        ):
            course = dict(row._mapping)
            states[course.pop("gather_id")]["courses"].append(course)
    return states


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
        *,
        key_id: int | None = None,
    ) -> int:
        """Create or refresh the gatherer an agent reports (keyed by MAC) and mark it online.

        Returns its ``gather_id``. Its cameras go to status -1 until the agent reports each one.
        ``devices`` are the IP cameras (mode 0) the agent's config lists, keyed by ``device_ip``:
        unknown ones become cameras; known ones keep what the API has set on them since.

        ``key_id`` is the agent key the hello came with; ``GathererRefused`` when the rules of
        ``registrations.py`` refuse it. (``None``: no key at all, for tests that seed the catalogue.)
        """
        [result] = await self.register_many([Registration(
            mac_addr, key_id, ip_addr, name_pc, os_name, tuple(devices or ()))])
        if isinstance(result, GathererRefused):
            raise result
        return result[0]

    async def register_many(self, arrivals: list[Registration]
                            ) -> list[tuple[int, dict[str, Any]] | GathererRefused]:
        """``register`` for many agents in one transaction: each one's gather_id with the desired
        state it is to be welcomed with (read in that transaction), or why it was refused."""
        async with self._db.write() as conn:
            results = await register_many(conn, int(self._clock()), arrivals)
            states = await _states(conn, [r for r in results if isinstance(r, int)])
        return [result if isinstance(result, GathererRefused) else (result, states[result])
                for result in results]

    async def desired_states(self, gather_ids: list[int]) -> dict[int, dict[str, Any]]:
        """``desired_state`` of many gatherers, in three reads whatever their number."""
        async with self._db.read() as conn:
            return await _states(conn, gather_ids)

    async def desired_state(self, gather_id: int) -> dict[str, Any]:
        """Everything the agent of ``gather_id`` should hold: its settings, cameras and courses."""
        state = (await self.desired_states([gather_id])).get(gather_id)
        if state is None:
            raise NotFound(f"no gatherer {gather_id}", [gather_id])
        return state

    async def set_offline(self, links: list[tuple[int, int]]) -> list[int]:
        """Links ``(gather_id, epoch)`` are gone: each gatherer and all its cameras go offline,
        unless a newer link (a larger epoch) has registered it since. Returns those that did."""
        now = int(self._clock())
        newest: dict[int, int] = {}
        for gather_id, epoch in links:
            newest[gather_id] = max(epoch, newest.get(gather_id, epoch))
        gone: list[int] = []
        async with self._db.write() as conn:
            for ids in chunks(sorted(newest)):
                # The epoch is checked in the UPDATE itself, against the row as it is when written:
                # a registration that commits meanwhile is never overwritten.
                newer_or_same = case(*((gatherers.c.gather_id == gather_id, newest[gather_id])
                                       for gather_id in ids), else_=-1)
                result = await conn.execute(
                    update(gatherers).where(gatherers.c.gather_id.in_(ids))
                    .where(gatherers.c.link_epoch <= newer_or_same)
                    .values(status=0, updated=now).returning(gatherers.c.gather_id))
                offline = list(result.scalars())
                if offline:
                    await conn.execute(update(cameras).where(cameras.c.gather_id.in_(offline))
                                       .values(status=0))
                gone += offline
        return gone

    async def online_links(self) -> list[tuple[int, int]]:
        """``(gather_id, link_epoch)`` of every gatherer the catalogue shows online."""
        async with self._db.read() as conn:
            return [(row.gather_id, row.link_epoch) for row in await conn.execute(
                select(gatherers.c.gather_id, gatherers.c.link_epoch)
                .where(gatherers.c.status != 0))]

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
