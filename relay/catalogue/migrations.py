"""Bringing an older catalogue up to ``SCHEMA_VERSION``, one version at a time, nothing lost.

Each step runs in one transaction and records its version there, so a step either happens whole or
not at all, and a catalogue interrupted between steps resumes at the next start.

Version 2 (ids never reused; agent keys bound to gatherers):

* every table with an id gets SQLite ``AUTOINCREMENT``. SQLite cannot add it to a table in place,
  so each table is rebuilt: a new table from today's definition, every row copied with its id,
  the old one dropped, the new one renamed (SQLite's documented procedure, with foreign keys off so
  dropping a table cascades nothing). PostgreSQL's serial columns already never reuse ids;
* ``agent_keys.max_gatherers`` (1) and ``takeover_gather_id``, ``gatherers.key_id`` (unbound: an
  existing gatherer is bound to the first key that registers it after the upgrade);
* MAC addresses in one form (``02:00:00:00:aa:01``). Two gatherers whose MACs only differed in form
  were one machine registered twice: the older keeps its id and takes the newer one's cameras
  (with their courses, records and snapshots); the newer row goes.

Version 3 (recordings uploaded by agents):

* ``records.start_time`` and ``end_time`` (unix seconds of the recording's first and last packet);
  an existing record starts at its ``created`` and ends ``duration`` seconds later;
* the ``uploads`` table (new tables are made by ``create_all`` before any step runs).

Version 4 (scale-out): ``gatherers.link_epoch`` (0: no link has registered it since the upgrade).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from .macs import normal_mac
from .schema import cameras, gatherers, meta, metadata, records

log = logging.getLogger(__name__)

async def _rebuild_for_autoincrement(conn: AsyncConnection) -> None:
    for table in metadata.sorted_tables:
        if not table.dialect_options["sqlite"]["autoincrement"]:
            continue
        existing = {row[1] for row in await conn.exec_driver_sql(f"PRAGMA table_info({table.name})")}
        columns = ", ".join(column.name for column in table.columns if column.name in existing)
        ddl = str(CreateTable(table).compile(dialect=conn.dialect)).strip()
        staging = f"_new_{table.name}"
        if not ddl.startswith(f"CREATE TABLE {table.name} ("):
            raise RuntimeError(f"unexpected DDL for {table.name}")
        await conn.exec_driver_sql(ddl.replace(f"CREATE TABLE {table.name} (",
                                               f"CREATE TABLE {staging} (", 1))
        await conn.exec_driver_sql(
            f"INSERT INTO {staging} ({columns}) SELECT {columns} FROM {table.name}")
        await conn.exec_driver_sql(f"DROP TABLE {table.name}")
        await conn.exec_driver_sql(f"ALTER TABLE {staging} RENAME TO {table.name}")
        for index in table.indexes:
            await conn.execute(CreateIndex(index))


async def _add_key_columns(conn: AsyncConnection) -> None:
    """The new columns, on a database that can add them in place (PostgreSQL)."""
    for statement in (
        "ALTER TABLE agent_keys ADD COLUMN max_gatherers INTEGER DEFAULT 1 NOT NULL",
        "ALTER TABLE agent_keys ADD COLUMN takeover_gather_id INTEGER",
        "ALTER TABLE gatherers ADD COLUMN key_id INTEGER REFERENCES agent_keys (key_id)",
    ):
        await conn.exec_driver_sql(statement)
    for index in gatherers.indexes:
        await conn.execute(CreateIndex(index))


async def _normalize_macs(conn: AsyncConnection) -> None:
    rows = (await conn.execute(
        select(gatherers.c.gather_id, gatherers.c.mac_addr).order_by(gatherers.c.gather_id))).all()
    machines: dict[str, list[tuple[int, str]]] = {}
    for gather_id, mac in rows:
        machines.setdefault(normal_mac(mac) or mac, []).append((gather_id, mac))
    for normal, ((kept, mac), *again) in machines.items():
        for gather_id, other_mac in again:  # first the duplicates go, then the keeper's MAC changes
            moved = await conn.execute(update(cameras).where(cameras.c.gather_id == gather_id)
                                       .values(gather_id=kept))
            await conn.execute(update(records).where(records.c.gather_id == gather_id)
                               .values(gather_id=kept))
            await conn.execute(delete(gatherers).where(gatherers.c.gather_id == gather_id))
            log.warning("catalogue: gatherer %d (%s) was gatherer %d registered again under another "
                        "spelling of its MAC; its %d camera(s) now belong to gatherer %d", gather_id,
                        other_mac, kept, moved.rowcount, kept)
        if mac != normal:
            await conn.execute(update(gatherers).where(gatherers.c.gather_id == kept)
                               .values(mac_addr=normal))


async def _to_version_2(conn: AsyncConnection) -> None:
    if conn.dialect.name == "sqlite":
        await _rebuild_for_autoincrement(conn)
    else:
        await _add_key_columns(conn)
    await _normalize_macs(conn)
    if conn.dialect.name == "sqlite":
        broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
        if broken:
            raise RuntimeError(f"catalogue migration would break {len(broken)} references")


async def _columns(conn: AsyncConnection, table: str) -> set[str]:
    if conn.dialect.name == "sqlite":
        return {row[1] for row in await conn.exec_driver_sql(f"PRAGMA table_info({table})")}
    return set((await conn.exec_driver_sql(
        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' "
        "AND table_schema = current_schema()")).scalars())


async def _to_version_3(conn: AsyncConnection) -> None:
    have = await _columns(conn, "records")
    for column in ("start_time", "end_time"):
        if column not in have:  # (a schema 1 catalogue got them in step 2's rebuild)
            await conn.exec_driver_sql(
                f"ALTER TABLE records ADD COLUMN {column} BIGINT DEFAULT 0 NOT NULL")
    await conn.execute(update(records).where(records.c.start_time == 0)
                       .values(start_time=records.c.created,
                               end_time=records.c.created + records.c.duration))


async def _to_version_4(conn: AsyncConnection) -> None:
    if "link_epoch" not in await _columns(conn, "gatherers"):  # (a rebuild in step 2 made it)
        await conn.exec_driver_sql(
            "ALTER TABLE gatherers ADD COLUMN link_epoch BIGINT DEFAULT 0 NOT NULL")


STEPS: dict[int, Callable[[AsyncConnection], Awaitable[None]]] = {
    2: _to_version_2,
    3: _to_version_3,
    4: _to_version_4,
}


async def upgrade(engine: AsyncEngine, version: int, target: int) -> None:
    """Run every step from ``version`` + 1 to ``target``, each in a transaction of its own."""
    for step in range(version + 1, target + 1):
        if engine.dialect.name == "sqlite":
            await _sqlite_step(engine, step)
        else:
            async with engine.begin() as conn:
                await _run_step(conn, step)
        log.info("catalogue migrated to schema version %d", step)


async def _run_step(conn: AsyncConnection, step: int) -> None:
    await STEPS[step](conn)
    await conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(step)))


async def _sqlite_step(engine: AsyncEngine, step: int) -> None:
    """SQLite ignores ``PRAGMA foreign_keys`` inside a transaction: off first, on after."""
    async with engine.execution_options(sqlite_begin="").connect() as conn:
        await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                await _run_step(conn, step)
                await conn.exec_driver_sql("COMMIT")
            except BaseException:
                await conn.exec_driver_sql("ROLLBACK")
                raise
        finally:
            await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
