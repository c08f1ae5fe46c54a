"""Agents registering as gatherers, many in one transaction: the rules of who may be which gatherer.

A relay that restarts meets every agent at once; registering them one transaction each (a handful
of statements, each a trip to the driver's thread) made thousands of agents wait for minutes. Here a
batch costs a few set-based statements whatever its size, and each registration is decided in
order, as if alone: a refusal is that agent's answer and changes nothing, never the batch's.

The rules (``Gatherers`` docstring): a gatherer belongs to the agent key that first registered it;
another key's hello for it is refused; a key registers at most ``max_gatherers`` machines; a gatherer
no key owns yet is bound to the first key that registers it; an operator's pending re-bind of a key
gives the key's next hello from an unknown MAC that gatherer (replaced hardware).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import GathererRefused
from .macs import normal_mac
from .schema import agent_keys, cameras, gatherers

log = logging.getLogger(__name__)

#: Ids per ``IN (…)`` list (SQLite allows 32,766 variables a statement; keep well below).
CHUNK = 500


@dataclass(frozen=True)
class Registration:
    """One agent's hello, as the catalogue takes it. ``key_id`` None: no key (tests seed so)."""

    mac_addr: str
    key_id: int | None
    ip_addr: str = ""
    name_pc: str = ""
    os_name: str = ""
    devices: tuple[dict[str, Any], ...] = field(default=())
    #: The registering link's epoch (``relay.hub``); the row keeps the largest it has seen.
    epoch: int = 0

    def __post_init__(self) -> None:
        mac = normal_mac(self.mac_addr)
        if mac is None:
            raise ValueError(f"not a MAC address: {self.mac_addr!r}")
        object.__setattr__(self, "mac_addr", mac)


def chunks(values: list[Any]) -> list[list[Any]]:
    return [values[at:at + CHUNK] for at in range(0, len(values), CHUNK)]


_REFRESH = (
    update(gatherers)
    .where(gatherers.c.gather_id == bindparam("which"))
    .values(status=1, updated=bindparam("now"), ip_addr=bindparam("ip"), name_pc=bindparam("pc"),
            os_name=bindparam("os"), key_id=bindparam("owner"),
            link_epoch=case((gatherers.c.link_epoch < bindparam("epoch"), bindparam("epoch")),
                            else_=gatherers.c.link_epoch))
)


class _Batch:
    """What the batch knows so far: keys, how many gatherers each owns, gatherers by MAC."""

    def __init__(self, keys: dict[int, Any], by_mac: dict[str, dict[str, Any]]) -> None:
        self.keys = keys
        self.owned: dict[int, int] = {}
        self.by_mac = by_mac
        self.takeovers_done: set[int] = set()
        self.new: list[tuple[dict[str, Any], Registration]] = []  # inserted together at the end

    async def claim(self, conn: AsyncConnection, key: Any) -> None:
        """Count one more gatherer for ``key``, or refuse it when the key has all it may have.
        (Counted on first need only: a batch of agents relinking never counts.)"""
        have = self.owned.get(key.key_id)
        if have is None:
            have = (await conn.execute(select(func.count()).select_from(gatherers)
                                       .where(gatherers.c.key_id == key.key_id))).scalar_one()
        if have >= key.max_gatherers:
            raise GathererRefused(
                f"agent key {key.name!r} may register {key.max_gatherers} gatherer(s) and has "
                f"{have}; `relay agent-key limit` raises it, `relay agent-key rebind` moves one")
        self.owned[key.key_id] = have + 1


async def register_many(conn: AsyncConnection, now: int, arrivals: list[Registration]
                        ) -> list[int | GathererRefused]:
    """Register every arrival, in order; each one's ``gather_id`` or why it was refused."""
    batch = await _known(conn, arrivals)
    decided: list[dict[str, Any] | GathererRefused] = []
    refreshed: dict[int, dict[str, Any]] = {}
    for arrival in arrivals:
        try:
            row = await _decide(batch, arrival, conn)
        except GathererRefused as refusal:
            decided.append(refusal)
            continue
        decided.append(row)
        if row["gather_id"] is not None:  # a known gatherer: refreshed below
            refreshed[row["gather_id"]] = {
                "which": row["gather_id"], "now": now, "ip": arrival.ip_addr,
                "pc": arrival.name_pc, "os": arrival.os_name, "owner": row["key_id"],
                "epoch": max(arrival.epoch, refreshed.get(row["gather_id"], {}).get("epoch", 0))}
    if batch.new:
        inserted = await conn.execute(
            gatherers.insert().returning(gatherers.c.gather_id, sort_by_parameter_order=True),
            [{"mac_addr": arrival.mac_addr, "key_id": arrival.key_id,
              "name_set": arrival.name_pc or arrival.mac_addr, "status": 1, "created": now,
              "updated": now, "ip_addr": arrival.ip_addr, "name_pc": arrival.name_pc,
              "os_name": arrival.os_name, "link_epoch": arrival.epoch}
             for _, arrival in batch.new])
        for (row, _), gather_id in zip(batch.new, inserted.scalars(), strict=True):
            row["gather_id"] = gather_id
    if refreshed:
        await conn.execute(_REFRESH, list(refreshed.values()))
        for ids in chunks(list(refreshed)):
            await conn.execute(update(cameras).where(cameras.c.gather_id.in_(ids)).values(status=-1))
    results = [row if isinstance(row, GathererRefused) else row["gather_id"] for row in decided]
    await _add_devices(conn, now, [(gather_id, arrival) for gather_id, arrival
                                   in zip(results, arrivals, strict=True)
                                   if isinstance(gather_id, int) and arrival.devices])
    return results


async def _known(conn: AsyncConnection, arrivals: list[Registration]) -> _Batch:
    key_ids = sorted({a.key_id for a in arrivals if a.key_id is not None})
    keys = {row.key_id: row for ids in chunks(key_ids) for row in
            await conn.execute(select(agent_keys).where(agent_keys.c.key_id.in_(ids)))}
    macs = sorted({a.mac_addr for a in arrivals})
    by_mac = {row.mac_addr: {"gather_id": row.gather_id, "key_id": row.key_id}
              for part in chunks(macs) for row in await conn.execute(
                  select(gatherers.c.gather_id, gatherers.c.key_id, gatherers.c.mac_addr)
                  .where(gatherers.c.mac_addr.in_(part)))}
    return _Batch(keys, by_mac)


async def _decide(batch: _Batch, arrival: Registration, conn: AsyncConnection) -> dict[str, Any]:
    """The arrival's gatherer (``gather_id`` None: a new one, inserted with the batch's others)."""
    key = None
    if arrival.key_id is not None:
        key = batch.keys.get(arrival.key_id)
        if key is None or key.revoked:
            raise GathererRefused("the agent key was revoked")
    row = batch.by_mac.get(arrival.mac_addr)
    if (row is None and key is not None and key.takeover_gather_id is not None
            and key.key_id not in batch.takeovers_done):
        batch.takeovers_done.add(key.key_id)
        row = await _take_over(conn, key, arrival.mac_addr)
        if row is not None:
            batch.by_mac[arrival.mac_addr] = row
    if row is None:
        if key is not None:
            await batch.claim(conn, key)
        row = batch.by_mac[arrival.mac_addr] = {"gather_id": None, "key_id": arrival.key_id}
        batch.new.append((row, arrival))
        return row
    if key is not None and row["key_id"] != key.key_id:
        if row["key_id"] is not None:
            raise GathererRefused(
                f"gatherer {row['gather_id'] or 'new'} ({arrival.mac_addr}) belongs to another "
                "agent key")
        await batch.claim(conn, key)
        row["key_id"] = key.key_id
        log.info("gatherer %d (%s) is now bound to agent key %r", row["gather_id"],
                 arrival.mac_addr, key.name)
    return row


async def _take_over(conn: AsyncConnection, key: Any, mac: str) -> dict[str, Any] | None:
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
    return {"gather_id": row.gather_id, "key_id": row.key_id}


async def _add_devices(conn: AsyncConnection, now: int,
                       arrivals: list[tuple[int, Registration]]) -> None:
    """The IP cameras an agent's config lists become cameras, once each (keyed by device_ip)."""
    if not arrivals:
        return
    known: set[tuple[int, str]] = set()
    for ids in chunks(sorted({gather_id for gather_id, _ in arrivals})):
        known.update(tuple(row) for row in await conn.execute(
            select(cameras.c.gather_id, cameras.c.device_ip)
            .where(cameras.c.gather_id.in_(ids)).where(cameras.c.stream_prop == 0)))
    new = []
    for gather_id, arrival in arrivals:
        for device in arrival.devices:
            if (gather_id, device["device_ip"]) in known:
                continue
            known.add((gather_id, device["device_ip"]))
            new.append({**device, "gather_id": gather_id, "stream_prop": 0, "status": -1,
                        "created": now, "updated": now})
    if new:
        await conn.execute(cameras.insert(), new)
