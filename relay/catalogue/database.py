"""The engine behind the catalogue: connects, creates and versions the schema, hands out transactions.

SQLite runs in WAL mode with foreign keys on; write transactions start with ``BEGIN IMMEDIATE`` so two
writers (say the server and a ``relay user`` command) queue on the lock instead of failing on upgrade.

On SQLite, this process's writes pass a ``WriteGate`` first, so they meet SQLite's lock one at a
time, in the order they asked: the lock itself is no queue, and SQLite's busy handler lets a writer
that happens to retry at the right moment overtake one that has slept for seconds. The busy timeout
is left for other processes (a ``relay user`` command beside the server).

On a SQLite file, work runs in the event loop's own thread where it can without waiting
(``inline.py``): write transactions, and the point reads and one-statement writes of the request
path (a token's account, a camera's started flag) through ``lookup`` and ``write_one``, the writes
of one loop turn committed together. Other reads, and whatever finds the lock taken, go through
the engine's worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Executable, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import migrations
from .inline import InlineConnection, InlineSQLite
from .schema import SCHEMA_VERSION, meta, metadata

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


class WriteGate:
    """One holder at a time, admitted strictly in arrival order (first come, first served).

    Why not leave the queueing to SQLite: every pool connection waiting in ``BEGIN IMMEDIATE``
    sleeps in SQLite's busy handler (1, 2, 5 … up to 100 ms a try) and whoever retries first once
    the lock is free wins, so with 20 writers some waited 3.4 s behind transactions of a
    millisecond. Here they wait in the event loop, hold no pool connection while they do, and
    ``leave`` hands the gate straight to the next in line (nobody can slip in between).
    A holder must do database work only: whatever else it awaits, every writer waits for too.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    def try_enter(self) -> bool:
        """Enter now if the gate is free and nobody is waiting; never waits."""
        if self._held or self._waiting:
            return False
        self._held = True
        return True

    async def enter(self) -> None:
        if self.try_enter():
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(admitted)
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():  # handed the gate, then cancelled
                self.leave()
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(admitted)
            raise

    def leave(self) -> None:
        while self._waiting:
            admitted = self._waiting.popleft()
            if not admitted.done():  # (skips a waiter cancelled meanwhile)
                admitted.set_result(None)  # the gate stays held: it is the next one's now
                return
        self._held = False


class Database:
    """Owns the engine. ``write()`` and ``read()`` yield connections inside one transaction."""

    def __init__(self, engine: AsyncEngine, sqlite_path: str | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = (
            engine.execution_options(sqlite_begin="IMMEDIATE") if self.dialect == "sqlite" else engine
        )
        # PostgreSQL locks rows, not the database: its writers need no queue of ours.
        self._gate = WriteGate() if self.dialect == "sqlite" else None
        self._inline = (
            InlineSQLite(sqlite_path, engine.dialect, self._gate)
            if sqlite_path and self._gate is not None else None
        )
        self._checkpoint: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, create: bool = True) -> Database:
        """Connect and bring the schema up to date; ``create=False`` refuses an empty database
        instead of making a catalogue in it (management commands pointed at the wrong place)."""
        parsed = make_url(url)
        where = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if not create and not path.exists():
                raise CatalogueUnavailable(f"no catalogue at {path.resolve()}")
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_pre_ping=parsed.get_backend_name() != "sqlite")
        sqlite_path = None
        if parsed.get_backend_name() == "sqlite":
            _tune_sqlite(engine)
            if parsed.database and parsed.database != ":memory:" and not parsed.query:
                sqlite_path = parsed.database
        database = cls(engine, sqlite_path)
        try:
            await database._migrate(create)
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise CatalogueUnavailable(f"cannot open catalogue: {exc.__class__.__name__}") from exc
        except CatalogueUnavailable as exc:
            await engine.dispose()
            raise CatalogueUnavailable(f"{exc} ({where})") from exc
        except RuntimeError as exc:  # a migration step found the data unusable
            await engine.dispose()
            raise CatalogueUnavailable(f"cannot upgrade the catalogue at {where}: {exc}") from exc
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

        On a SQLite file it runs inline with the other writes of this turn of the event loop, once
        their turn at the gate comes; through the engine when it cannot (another process holds the
        lock, the statement fails), and then waits for the gate again. Same rules for ``statement``
        as ``lookup``.
        """
        if self._inline is not None:
            changed = await self._inline.execute(statement, params)
            if changed is not None:
                self._maybe_checkpoint()
                return changed
        async with self.write() as conn:
            return (await conn.execute(statement, params)).rowcount

    def _maybe_checkpoint(self) -> None:
        """After an inline commit: every so often the engine copies the WAL into the file."""
        if self._inline is not None and self._inline.checkpoint_due() and self._checkpoint is None:
            self._checkpoint = asyncio.create_task(self._run_checkpoint())

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
    async def write(self, offload: bool = False) -> AsyncIterator[AsyncConnection | InlineConnection]:
        """A write transaction, committed on exit (rolled back on an exception).

        On SQLite it first waits its turn at the gate, then runs in the event loop's thread on a
        SQLite file (``inline.py``): an ``InlineConnection`` offers the methods of an
        ``AsyncConnection`` the catalogue uses, and a point write costs a third of what it costs
        through the engine. Through the engine (taking a pool connection only then) when that
        cannot start at once (another process holds the lock), on PostgreSQL, and with
        ``offload``: for a transaction that may change thousands of rows (deleting cameras with
        their records), so the loop keeps serving while SQLite works (20,000 records: the loop
        stalls ~20 ms through the engine, ~150 ms or more in its own thread).
        """
        if self._gate is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        await self._gate.enter()
        try:
            inline = None if offload else self._inline
            connection = inline.begin() if inline is not None else None
            if inline is None or connection is None:
                async with self._writer.begin() as conn:
                    yield conn
                return
            with connection:
                try:
                    yield InlineConnection(connection)
                except BaseException:
                    connection.rollback()
                    raise
                connection.commit()
            inline.committed()
            self._maybe_checkpoint()
        finally:
            self._gate.leave()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def _migrate(self, create: bool = True) -> None:
        async with self.write() as conn:
            exists = await conn.run_sync(lambda sync: sync.dialect.has_table(sync, meta.name))
            if not exists and not create:
                raise CatalogueUnavailable("no catalogue there yet")
            await conn.run_sync(metadata.create_all)  # tables this version adds, or all of them
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
        if version < SCHEMA_VERSION:
            await migrations.upgrade(self.engine, version, SCHEMA_VERSION)

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
