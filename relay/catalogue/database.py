"""The engine behind the catalogue: connects, creates and versions the schema, hands out transactions.

One write path for every backend: each catalogue method that changes something asks ``Database``
for a write transaction, as an ``async with`` body (``write``), a function run whole (``run``) or
one statement that is a transaction by itself (``run_one``: the request path's, a camera's started
flag). Where it goes depends only on the backend, never on whether the lock happens to be free:

- SQLite (a file): every write of this process runs on one synchronous connection, in the order
  asked, in the event loop's thread (``writer.py``, which says why, with the measurements: a trip
  to another thread costs more than the goal leaves); waits for another process's lock and very
  large transactions go to the writer's thread, on the same connection, in the same place in line.
  Transactions start with ``BEGIN IMMEDIATE``, so a writer of another process (a ``relay user``
  command) queues on the lock instead of failing on upgrade.
- PostgreSQL: the engine's pool (asyncpg); it locks rows, not the database, so its writers need no
  queue of ours. ``run`` runs the function on an engine connection (``AsyncConnection.run_sync``);
  ``run_one``, a statement that is a transaction by itself (the request path's: a camera's started
  flag), runs as one round trip in autocommit mode, straight on an asyncpg pool with the SQL that
  SQLAlchemy's dialect compiled once (``_PostgresStatements``), as SQLite's writer runs the same
  statements straight on its sqlite3 connection. Measured (same machine, one caller): the UPDATE
  through the engine in a transaction took 876 µs (a ``SELECT 1`` pre-ping per checkout ~350 µs,
  BEGIN and COMMIT, SQLAlchemy's adaptation of asyncpg), in autocommit without the ping 292 µs,
  straight on asyncpg 87 µs, on that pool 142 µs; the goal of twice the echo leaves ~100 µs
(missed on PostgreSQL, bench/RESULTS.md). The engine's pooled
  connections are checked before use by asking asyncpg whether it saw the socket close
  (``_drop_closed``: what a PostgreSQL restart does) instead of that ping.

Reads use the engine's pool on both (SQLite in WAL mode: a reader never waits for a writer and sees
every committed write), except ``lookup``, the request path's point reads by key (a camera for
get_camera_status, a camera's courses, a key's gatherers): on SQLite in the loop's thread on a
read-only connection of their own (through aiosqlite such a read took ~1 ms of the relay's CPU:
get_camera_status fell from 13,900 to 1,040 calls/s without it, bench/RESULTS.md), on PostgreSQL
on the asyncpg pool; a read that cannot run there at once (SQLite busy in WAL recovery) goes
through the engine, which for a read changes no order. The hot rows of the request path are
answered from memory (``cache.py``).
Schema creation and upgrades at ``open`` run before any other work, through the engine's migration
steps on PostgreSQL and SQLite alike (``migrations.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Executable, event, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import migrations
from .schema import SCHEMA_VERSION, meta, metadata
from .writer import SQLiteWriter, WriterConnection, compiled

log = logging.getLogger(__name__)

#: Seconds to connect to PostgreSQL before a request is answered 503 (a server that does not
#: answer at all, a cut network): never a request hanging on it.
CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


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
        if mode:  # "" for statements that must run outside a transaction (a migration step)
            conn.exec_driver_sql(f"BEGIN {mode}")


def _drop_closed(engine: AsyncEngine) -> None:
    """A pooled asyncpg connection whose socket has closed (PostgreSQL restarted, the backend was
    terminated) is replaced at checkout, with no round trip: SQLAlchemy's pessimistic disconnect
    handling, with asyncpg's own view of the socket as the test."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection, _record, _proxy) -> None:  # type: ignore[no-untyped-def]
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise DisconnectionError("the connection was closed by PostgreSQL")


async def _keep_session(_connection: Any) -> None:
    """asyncpg resets a connection at every release (a round trip: RESET ALL, UNLISTEN …); the
    statements here change no session state, so there is nothing to reset."""


class _SQLiteReads:
    """``lookup`` on a SQLite file: one connection in the loop's thread, no busy timeout (it never
    waits), read-only; each SELECT is its own read transaction (the latest commit)."""

    def __init__(self, path: str, dialect: Any) -> None:
        self._path = path
        self._dialect = dialect
        self._connection: sqlite3.Connection | None = None

    def fetch(self, statement: Executable, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The rows, or None when it cannot run here at once."""
        plan = compiled(statement, self._dialect)
        values = plan.values(params)
        try:
            if self._connection is None:
                self._connection = sqlite3.connect(self._path, timeout=0, isolation_level=None,
                                                   check_same_thread=False)
                self._connection.execute("PRAGMA query_only=ON")
            cursor = self._connection.execute(plan.sql, values)
            names = plan.columns or tuple(column[0] for column in cursor.description)
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            log.debug("point read through the engine (%s)", exc.__class__.__name__)
            return None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _PostgresStatements:
    """One-statement writes on PostgreSQL: an asyncpg pool of their own (opened on first use,
    connections PostgreSQL closed replaced by asyncpg at acquire), each statement compiled once by
    the engine's dialect and run in autocommit (one round trip, asyncpg's prepared statements)."""

    def __init__(self, url: str, dialect: Any) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._dialect = dialect
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None

    async def fetch(self, statement: Executable, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A point read's rows as dicts (by the statement's column keys, as the engine gives)."""
        plan = compiled(statement, self._dialect)
        rows = await self.run(statement, params)
        return [dict(zip(plan.columns or tuple(row.keys()), tuple(row), strict=True))
                for row in rows]

    async def run(self, statement: Executable, params: dict[str, Any]) -> list[Any]:
        import asyncpg

        plan = compiled(statement, self._dialect)
        values = plan.values(params)
        pool = self._pool or await self._open()
        try:
            return list(await pool.fetch(plan.sql, *values))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(plan.sql, values, exc) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise OperationalError(plan.sql, values, exc) from exc

    async def _open(self) -> Any:
        import asyncpg

        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                try:
                    # No floor (min_size 0): asyncpg would keep reconnecting to restore it while
                    # the database is down, logging a traceback each time. Connections time out
                    # after CONNECT_TIMEOUT s, never hanging a request on an unreachable server.
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=0, max_size=8, reset=_keep_session,
                        timeout=CONNECT_TIMEOUT)
                except (asyncpg.PostgresError, OSError) as exc:
                    raise OperationalError("connect", None, exc) from exc
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class Database:
    """Owns the engine (and on SQLite the writer). ``run``/``write`` write, ``read`` reads."""

    def __init__(self, engine: AsyncEngine, url: str, sqlite_path: str | None = None) -> None:
        self.engine = engine
        self.url = url  # (with its password: for this process's own connections only, never logged)
        self.dialect = engine.dialect.name
        self._writer = SQLiteWriter(sqlite_path) if sqlite_path is not None else None
        self._statements = (_PostgresStatements(url, engine.dialect)
                            if self.dialect == "postgresql" else None)
        self._reads = (_SQLiteReads(sqlite_path, self._writer.dialect)
                       if self._writer is not None and sqlite_path is not None else None)

    @classmethod
    async def open(cls, url: str, create: bool = True) -> Database:
        """Connect and bring the schema up to date; ``create=False`` refuses an empty database
        instead of making a catalogue in it (management commands pointed at the wrong place)."""
        parsed = make_url(url)
        where = parsed.render_as_string(hide_password=True)
        sqlite_path = None
        if parsed.get_backend_name() == "sqlite":
            if not parsed.database or parsed.database == ":memory:" or parsed.query:
                raise CatalogueUnavailable(
                    f"a SQLite catalogue is a file, given by its path alone ({where})")
            path = Path(parsed.database)
            if not create and not path.exists():
                raise CatalogueUnavailable(f"no catalogue at {path.resolve()}")
            path.parent.mkdir(parents=True, exist_ok=True)
            sqlite_path = parsed.database
        engine = create_async_engine(
            url, **({} if sqlite_path is not None else {"connect_args": {"timeout": CONNECT_TIMEOUT}}))
        if sqlite_path is not None:
            _tune_sqlite(engine)
        else:
            _drop_closed(engine)
        database = cls(engine, url, sqlite_path)
        try:
            await database._migrate(create)
        except SQLAlchemyError as exc:
            await database.close()
            raise CatalogueUnavailable(f"cannot open catalogue: {exc.__class__.__name__}") from exc
        except CatalogueUnavailable as exc:
            await database.close()
            raise CatalogueUnavailable(f"{exc} ({where})") from exc
        except RuntimeError as exc:  # a migration step found the data unusable
            await database.close()
            raise CatalogueUnavailable(f"cannot upgrade the catalogue at {where}: {exc}") from exc
        return database

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()  # (waits for the writes already asked for)
        if self._statements is not None:
            await self._statements.close()
        if self._reads is not None:
            self._reads.close()
        await self.engine.dispose()

    @property
    def transactions(self) -> int:
        """Write transactions committed by this process's SQLite writer (0 on PostgreSQL)."""
        return self._writer.transactions if self._writer is not None else 0

    async def lookup(self, statement: Executable, **params: Any) -> list[dict[str, Any]]:
        """The rows of a small read (by primary key or unique index, never a scan), as dicts.
        ``statement`` must be built once (a module constant with ``bindparam``s): its compiled
        form is cached by identity."""
        if self._reads is not None:
            rows = self._reads.fetch(statement, params)
            if rows is not None:
                return rows
        elif self._statements is not None:
            return await self._statements.fetch(statement, params)
        async with self.read() as conn:
            return [dict(row._mapping) for row in await conn.execute(statement, params)]

    async def run(self, fn: Callable[[Connection], T], offload: bool = False) -> T:
        """``fn(connection)`` in one write transaction, committed when it returns, rolled back when
        it raises (and the exception raised here); ``fn`` uses only the connection it is given. On
        SQLite on the writer's connection (in its thread with ``offload``); on PostgreSQL on an
        engine connection (``run_sync``)."""
        if self._writer is not None:
            return await self._writer.call(fn, offload)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def run_one(self, statement: Executable, params: dict[str, Any]) -> list[Any]:
        """One INSERT, UPDATE or DELETE that is a whole transaction by itself; the rows it returns
        (``RETURNING``). On SQLite through the writer's queue, committed with the others of this
        turn of the loop; on PostgreSQL in autocommit mode, a single round trip. ``statement``
        must be built once (a module constant with ``bindparam``s): its compiled form is cached by
        identity; raises SQLAlchemy's errors (``IntegrityError``, ``OperationalError``) on both."""
        if self._writer is not None:
            return await self._writer.run_one(statement, params)
        if self._statements is not None:
            return await self._statements.run(statement, params)
        async with self.engine.connect() as conn:  # (another backend: the engine)
            rows = list((await conn.execute(statement, params)).all())
            await conn.commit()
            return rows

    @asynccontextmanager
    async def write(self, offload: bool = False
                    ) -> AsyncIterator[AsyncConnection | WriterConnection]:
        """A write transaction, committed on exit (rolled back on an exception).

        On SQLite it waits for its turn at the writer (``writer.py``) and holds it until the end,
        so the body must do database work only; with ``offload`` (a transaction that may change
        thousands of rows) its statements run in the writer's thread. The connection offers the
        methods of an ``AsyncConnection`` the catalogue uses.
        """
        if self._writer is not None:
            async with self._writer.transaction(offload) as conn:
                yield conn
            return
        async with self.engine.begin() as engine_conn:
            yield engine_conn

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
