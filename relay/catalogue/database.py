"""The engine behind the catalogue: connects, creates and versions the schema, hands out transactions.

SQLite runs in WAL mode with foreign keys on; write transactions start with ``BEGIN IMMEDIATE`` so two
writers (say the server and a ``relay user`` command) queue on the lock instead of failing on upgrade.

Point reads and one-statement writes on the request path (a token's account, a camera's started
flag) go through ``lookup`` and ``write_one``: on SQLite they run in the event loop's own thread
when they can do so without waiting (``inline.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Executable, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .inline import InlineSQLite
from .schema import MIGRATIONS, SCHEMA_VERSION, meta, metadata

log = logging.getLogger(__name__)


class CatalogueUnavailable(Exception):
    """The database cannot be opened, or its schema is newer than this program."""


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode:  # "" for statements that must run outside a transaction (a checkpoint)
            conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Owns the engine. ``write()`` and ``read()`` yield connections inside one transaction."""

    def __init__(self, engine: AsyncEngine, sqlite_path: str | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = (
            engine.execution_options(sqlite_begin="IMMEDIATE") if self.dialect == "sqlite" else engine
        )
        self._inline = InlineSQLite(sqlite_path, engine.dialect) if sqlite_path else None
        self._checkpoint: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> Database:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_pre_ping=parsed.get_backend_name() != "sqlite")
        sqlite_path = None
        if parsed.get_backend_name() == "sqlite":
            _tune_sqlite(engine)
            if parsed.database and parsed.database != ":memory:" and not parsed.query:
                sqlite_path = parsed.database
        database = cls(engine, sqlite_path)
        try:
            await database._migrate()
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise CatalogueUnavailable(f"cannot open catalogue: {exc.__class__.__name__}") from exc
        except CatalogueUnavailable:
            await engine.dispose()
            raise
        return database

    async def close(self) -> None:
        if self._checkpoint is not None:
            await self._checkpoint
        if self._inline is not None:
            self._inline.close()
        await self.engine.dispose()

    async def lookup(self, statement: Executable, **params: Any) -> list[dict[str, Any]]:
        """The rows of a small read: by primary key or unique index, never a scan.

        On a SQLite file it runs inline (``inline.py``), else through the engine. ``statement``
        should be built once (a module constant with ``bindparam``s): its compiled form is cached
        by identity. Values come back as the driver gives them, which for this schema's Integer and
        String columns is what the engine gives.
        """
        rows = self._inline.fetch(statement, params) if self._inline else None
        if rows is None:
            async with self.read() as conn:
                rows = [dict(row._mapping) for row in await conn.execute(statement, params)]
        return rows

    async def write_one(self, statement: Executable, **params: Any) -> int:
        """Run one INSERT, UPDATE or DELETE and commit it; the rows it changed.

        On a SQLite file it runs inline (with the other writes of this turn of the event loop)
        when the write lock is free at once, else through the engine (which waits for the lock).
        Same rules for ``statement`` as ``lookup``.
        """
        if self._inline is not None:
            changed = await self._inline.execute(statement, params)
            if changed is not None:
                if self._inline.checkpoint_due() and self._checkpoint is None:
                    self._checkpoint = asyncio.create_task(self._run_checkpoint())
                return changed
        async with self.write() as conn:
            return (await conn.execute(statement, params)).rowcount

    async def _run_checkpoint(self) -> None:
        """Copy the WAL into the database file from the engine's thread, not the event loop's."""
        try:
            async with self.engine.execution_options(sqlite_begin="").connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except SQLAlchemyError as exc:
            log.warning("WAL checkpoint failed: %s", exc.__class__.__name__)
        finally:
            self._checkpoint = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def _migrate(self) -> None:
        async with self.write() as conn:
            await conn.run_sync(metadata.create_all)
            version_row = (
                await conn.execute(select(meta.c.value).where(meta.c.key == "schema_version"))
            ).first()
            if version_row is None:
                await conn.execute(
                    meta.insert(),
                    [
                        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                        {"key": "signing_key", "value": secrets.token_hex(32)},
                    ],
                )
                log.info("catalogue created at schema version %d", SCHEMA_VERSION)
                return
            version = int(version_row.value)
            if version > SCHEMA_VERSION:
                raise CatalogueUnavailable(
                    f"catalogue schema version {version} is newer than this program's "
                    f"({SCHEMA_VERSION}); upgrade relay"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(target, []):
                    await conn.exec_driver_sql(statement)
                log.info("catalogue migrated to schema version %d", target)
            if version != SCHEMA_VERSION:
                await conn.execute(
                    meta.update()
                    .where(meta.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )

    async def signing_key(self) -> bytes:
        """The secret every signature (tokens, sessions, tickets) uses; shared by all relay nodes."""
        async with self.read() as conn:
            value = (
                await conn.execute(select(meta.c.value).where(meta.c.key == "signing_key"))
            ).scalar_one()
        return bytes.fromhex(value)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.exec_driver_sql("SELECT 1")
