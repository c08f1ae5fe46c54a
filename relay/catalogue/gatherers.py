"""Gatherers (采集端): created only by an agent's registration, tuned through the API.

A gatherer belongs to the agent key that first registered it: a hello naming its MAC with any
other key is refused (a key cannot take over another site's gatherer, nor receive its cameras'
passwords), and a key registers at most ``max_gatherers`` machines. An operator moves a gatherer
to other hardware or another key with ``relay agent-key rebind`` (see ``AgentKeys.rebind``).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select, update

from .database import Database
from .errors import GathererRefused, NotFound
from .macs import normal_mac
from .paging import Page, fetch_page
from .schema import agent_keys, cameras, courses, gatherers

log = logging.getLogger(__name__)

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
        *,
        key_id: int | None = None,
    ) -> int:
        """Create or refresh the gatherer an agent reports (keyed by MAC) and mark it online.

        Returns its ``gather_id``. Its cameras go to status -1 until the agent reports each one.
        ``devices`` are the IP cameras (mode 0) the agent's config lists, keyed by ``device_ip``:
        unknown ones become cameras; known ones keep what the API has set on them since.

        ``key_id`` is the agent key the hello came with: ``GathererRefused`` when the gatherer
        belongs to another key, or when a new gatherer would exceed the key's ``max_gatherers``.
        A gatherer no key owns yet (one registered before keys were bound) is bound to it. A
        pending re-bind of the key gives the hello of an unknown MAC that gatherer. (``None``:
        no key at all, for tests that seed the catalogue.)
        """
        mac = normal_mac(mac_addr)
        if mac is None:
            raise ValueError(f"not a MAC address: {mac_addr!r}")
        now = int(self._clock())
        facts = {"ip_addr": ip_addr, "name_pc": name_pc, "os_name": os_name}
        async with self._db.write() as conn:
            key = None
            if key_id is not None:
                key = (await conn.execute(select(agent_keys).where(agent_keys.c.key_id == key_id))
                       ).first()
                if key is None or key.revoked:
                    raise GathererRefused("the agent key was revoked")
            row = (await conn.execute(
                select(gatherers.c.gather_id, gatherers.c.key_id).where(gatherers.c.mac_addr == mac)
            )).first()
            if row is None and key is not None and key.takeover_gather_id is not None:
                row = await self._take_over(conn, key, mac)
            if row is None:
                if key is not None:
                    await self._check_room(conn, key)
                result = await conn.execute(
                    gatherers.insert().values(
                        mac_addr=mac,
                        key_id=key_id,
                        name_set=name_pc or mac,
                        status=1,
                        created=now,
                        updated=now,
                        **facts,
                    )
                )
                gather_id = result.inserted_primary_key[0]
            else:
                gather_id = row.gather_id
                bind: dict[str, Any] = {}
                if key is not None and row.key_id != key_id:
                    if row.key_id is not None:
                        raise GathererRefused(
                            f"gatherer {gather_id} ({mac}) belongs to another agent key")
                    await self._check_room(conn, key)
                    bind = {"key_id": key_id}
                    log.info("gatherer %d (%s) is now bound to agent key %r", gather_id, mac,
                             key.name)
                await conn.execute(
                    update(gatherers)
                    .where(gatherers.c.gather_id == gather_id)
                    .values(status=1, updated=now, **facts, **bind)
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

    @staticmethod
    async def _check_room(conn, key) -> None:  # type: ignore[no-untyped-def]
        """Refuse one more gatherer for a key that has its ``max_gatherers`` already."""
        bound = (await conn.execute(
            select(func.count()).select_from(gatherers).where(gatherers.c.key_id == key.key_id)
        )).scalar_one()
        if bound >= key.max_gatherers:
            raise GathererRefused(
                f"agent key {key.name!r} may register {key.max_gatherers} gatherer(s) and has "
                f"{bound}; `relay agent-key limit` raises it, `relay agent-key rebind` moves one")

    @staticmethod
    async def _take_over(conn, key, mac: str):  # type: ignore[no-untyped-def]
        """The operator's re-bind: the key's pending gatherer becomes the machine with ``mac``."""
        await conn.execute(update(agent_keys).where(agent_keys.c.key_id == key.key_id)
                           .values(takeover_gather_id=None))
        row = (await conn.execute(
            select(gatherers.c.gather_id, gatherers.c.key_id, gatherers.c.mac_addr)
            .where(gatherers.c.gather_id == key.takeover_gather_id)
        )).first()
        if row is None or row.key_id != key.key_id:
            return None  # deleted, or re-bound to another key since
        await conn.execute(update(gatherers).where(gatherers.c.gather_id == row.gather_id)
                           .values(mac_addr=mac))
        log.warning("gatherer %d moves from MAC %s to %s (re-bound by an operator, key %r)",
                    row.gather_id, row.mac_addr, mac, key.name)
        return row

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
