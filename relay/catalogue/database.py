"""The engine behind the catalogue: connects, creates and versions the schema, hands out transactions.

SQLite runs in WAL mode with foreign keys on; write transactions start with ``BEGIN IMMEDIATE`` so two
writers (say the server and a ``relay user`` command) queue on the lock instead of failing on upgrade.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Owns the engine. ``write()`` and ``read()`` yield connections inside one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = (
            engine.execution_options(sqlite_begin="IMMEDIATE") if self.dialect == "sqlite" else engine
        )

    @classmethod
    async def open(cls, url: str) -> Database:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_pre_ping=parsed.get_backend_name() != "sqlite")
        if parsed.get_backend_name() == "sqlite":
            _tune_sqlite(engine)
        database = cls(engine)
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
        await self.engine.dispose()

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
