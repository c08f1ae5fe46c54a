"""``relay db copy --to URL``: move a catalogue into another database, PostgreSQL usually (a site
that started on the embedded SQLite file and grows into a cluster), with nothing lost.

Every row of every table is copied with its ids, the signing key included (tokens, play tickets
and sessions stay valid), into a target that must hold no catalogue yet. Ids stay never reused:
each identity column of the target goes on after the highest id the source ever handed out
(SQLite's ``sqlite_sequence`` remembers deleted ones too). The source is only read; the copy is
one transaction on the target, so a failed copy leaves it empty. Stop the relay first: writes made
during the copy are not in it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select, text

from .database import CatalogueUnavailable, Database
from .schema import accounts, gatherers, meta, metadata

log = logging.getLogger(__name__)

BATCH = 1000


async def _highest_ids(source: Database) -> dict[str, int]:
    """The highest id each table's identity column has handed out in ``source``."""
    highest: dict[str, int] = {}
    async with source.read() as conn:
        for table in metadata.sorted_tables:
            for column in table.primary_key.columns:
                if column.identity is not None:
                    found = (await conn.execute(select(func.max(column)))).scalar()
                    highest[table.name] = max(highest.get(table.name, 0), int(found or 0))
        if source.dialect == "sqlite":
            has = await conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'")
            if has.first() is not None:
                for name, seq in await conn.exec_driver_sql("SELECT name, seq FROM sqlite_sequence"):
                    if name in highest:
                        highest[name] = max(highest[name], int(seq or 0))
    return highest


async def copy_catalogue(source: Database, target: Database) -> dict[str, int]:
    """Copy every row of ``source`` into the empty catalogue ``target``; rows copied per table."""
    async with target.read() as conn:
        for table in (accounts, gatherers):
            if (await conn.execute(select(func.count()).select_from(table))).scalar_one():
                raise CatalogueUnavailable(
                    f"the target already holds a catalogue ({table.name} has rows): copy into an "
                    "empty database")
    highest = await _highest_ids(source)
    copied: dict[str, int] = {}
    async with source.read() as reading, target.write() as writing:
        for table in reversed(metadata.sorted_tables):  # the target's own new rows (meta) go
            await writing.execute(table.delete())
        for table in metadata.sorted_tables:
            count = 0
            rows = await reading.stream(select(table))
            batch: list[dict[str, Any]] = []
            async for row in rows:
                batch.append(dict(row._mapping))
                if len(batch) >= BATCH:
                    await writing.execute(table.insert(), batch)
                    count += len(batch)
                    batch = []
            if batch:
                await writing.execute(table.insert(), batch)
                count += len(batch)
            copied[table.name] = count
        if target.dialect == "postgresql":
            for table in metadata.sorted_tables:
                for column in table.primary_key.columns:
                    if column.identity is not None and table.name in highest:
                        await writing.execute(
                            text("SELECT setval(pg_get_serial_sequence(:table, :column), :value, "
                                 ":called)"),
                            {"table": table.name, "column": column.name,
                             "value": max(highest[table.name], 1),
                             "called": highest[table.name] > 0})
    log.info("catalogue copied: %s", ", ".join(f"{name} {count}" for name, count in
                                               copied.items() if name != meta.name))
    return copied
