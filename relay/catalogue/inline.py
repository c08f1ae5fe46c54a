"""The catalogue's work on the SQLite file done in the event loop's own thread: point reads,
one-statement writes, and whole write transactions.

Why: every API call reads a row or two (the token's account, a camera) and some write one. Through
the engine, each statement is three or four trips to aiosqlite's worker thread and back, 200–400 µs
each on these machines and far more when the loop is busy (each trip waits for the GIL and for the
loop); the statement itself takes 5–25 µs. Run here, the API's command round trip costs about what
a bare aiohttp WebSocket echo does, and a write transaction (``del_record``: four statements) about
a third of the engine's (bench/RESULTS.md).

It never blocks the loop waiting for a lock: its connections have no busy timeout, so when another
process holds the lock (a ``relay user`` command) or anything else goes wrong, the work is declined
(``None``) and goes through the engine, which waits in its worker thread. It does hold the loop for
as long as SQLite works, which for the catalogue's point reads and writes is tens of microseconds;
deleting a camera with 20,000 records holds it ~150 ms (``Database.write(offload=True)`` sends such
a transaction to the engine instead). A reader in WAL mode never waits for writers and sees every
committed write.

Every write made here holds the process's write gate (``database.WriteGate``) while it runs, so
this process's writes meet SQLite's lock one at a time and in arrival order. Writes queued in the
same turn of the event loop commit together, one transaction for all (under load that halves what
a write costs), as one holder of the gate; each caller hears only once the commit is done. When the
gate is taken, that batch waits in line (taking in the writes that arrive meanwhile). Whole write
transactions (``Database.write``) run on a second connection through a synchronous SQLAlchemy
engine (``begin``, ``InlineConnection``), so uncommitted rows are never seen by the reads here.
Nothing here checkpoints the WAL (that copies pages into the database file and fsyncs):
``checkpoint_due`` tells the owner when to have the engine do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Executable, create_engine, event
from sqlalchemy.engine import Connection, Dialect, Engine, Result
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from .database import WriteGate

log = logging.getLogger(__name__)

#: Commits between the checkpoints the owner is asked for (SQLite's own default is 1,000 pages).
#: A batch of writes is one commit, and so is a whole write transaction.
CHECKPOINT_EVERY = 500


_REQUIRED = object()


@dataclass(frozen=True)
class _Plan:
    """A statement compiled once: its SQL, where each argument comes from, its column names."""

    sql: str
    arguments: tuple[tuple[str, Any], ...]  # (parameter name, value when the caller gives none)
    columns: list[str] | None = None

    def values(self, params: dict[str, Any]) -> list[Any]:
        values = [params.get(name, fixed) for name, fixed in self.arguments]
        if _REQUIRED in values:
            missing = [name for name, fixed in self.arguments if fixed is _REQUIRED and name not in params]
            raise KeyError(f"statement parameters missing: {missing}")
        return values


@functools.lru_cache(maxsize=256)
def _plan(statement: Executable, dialect: Dialect) -> _Plan:
    compiled: Any = statement.compile(dialect=dialect)
    binds = [compiled.binds[name] for name in compiled.positiontup or ()]
    arguments = tuple(
        (bind.key, _REQUIRED if bind.required else bind.effective_value) for bind in binds
    )
    selected = getattr(statement, "selected_columns", None)  # a SELECT's columns, by their keys
    columns = list(selected.keys()) if selected is not None else None
    return _Plan(compiled.string, arguments, columns)


class InlineConnection:
    """What a write transaction's body calls on its connection, as on the engine's
    ``AsyncConnection`` (``execute``, ``scalars``, ``scalar``, ``exec_driver_sql``, ``run_sync``,
    ``dialect``), each done at once on a synchronous connection in the loop's thread.

    Rows come back read to the end, as the engine's do, so a result outlives its transaction.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.dialect = connection.dialect

    async def execute(self, statement: Executable, parameters: Any = None, **options: Any) -> Result[Any]:
        return _buffered(self._connection.execute(statement, parameters, **options))

    async def scalars(self, statement: Executable, parameters: Any = None, **options: Any) -> Any:
        return (await self.execute(statement, parameters, **options)).scalars()

    async def scalar(self, statement: Executable, parameters: Any = None, **options: Any) -> Any:
        return (await self.execute(statement, parameters, **options)).scalar()

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **options: Any) -> Result[Any]:
        return _buffered(self._connection.exec_driver_sql(statement, parameters, **options))

    async def run_sync(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self._connection, *args, **kwargs)


def _buffered(result: Any) -> Any:
    """A SELECT's rows all fetched now (an INSERT's, UPDATE's or DELETE's result is complete)."""
    return result.freeze()() if result.returns_rows else result


class InlineSQLite:
    """Connections of its own to the SQLite file, used only from the thread that opened them."""

    def __init__(self, path: str, dialect: Dialect, gate: WriteGate) -> None:
        self._path = path
        self._dialect = dialect
        self._gate = gate
        self._connection: sqlite3.Connection | None = None
        self._transactions: Engine | None = None  # whole write transactions (``begin``)
        self._commits = 0
        self._queue: list[tuple[str, list[Any], asyncio.Future[int | None]]] = []
        self._scheduled = False  # a commit of the queue is coming (this turn, or at the gate)
        self._waiting: asyncio.Task[None] | None = None  # the batch in line at the gate
        self._closed = False

    def fetch(self, statement: Executable, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The rows of ``statement``, or None when it cannot run here at once."""
        plan = _plan(statement, self._dialect)
        cursor = self._run(plan, params)
        if cursor is None:
            return None
        names = plan.columns or [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, statement: Executable, params: dict[str, Any]) -> asyncio.Future[int | None]:
        """Queue one INSERT, UPDATE or DELETE. The future gives the rows it changed once they are
        committed, or None (nothing of it written) when it could not run here at once."""
        plan = _plan(statement, self._dialect)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        self._queue.append((plan.sql, plan.values(params), future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._commit_queue)
        return future

    def _commit_queue(self) -> None:
        """At the end of the turn: commit now if the gate is free, else get in line for it."""
        if self._gate.try_enter():
            self._commit_admitted()
        else:
            self._waiting = asyncio.ensure_future(self._commit_when_admitted())

    async def _commit_when_admitted(self) -> None:
        try:
            await self._gate.enter()
        except asyncio.CancelledError:  # (the loop is closing): nothing of the queue was written
            queue, self._queue, self._scheduled = self._queue, [], False
            for *_, future in queue:
                future.cancel()
            raise
        finally:
            self._waiting = None
        self._commit_admitted()

    def _commit_admitted(self) -> None:
        """Holding the gate: commit everything queued so far, give the gate on, tell the callers."""
        queue, self._queue, self._scheduled = self._queue, [], False
        try:
            results = self._commit(queue)
        finally:
            self._gate.leave()
        for (_sql, _values, future), changed in zip(queue, results, strict=True):
            if not future.done():  # (a caller that gave up)
                future.set_result(changed)

    def _commit(self, queue: list[tuple[str, list[Any], Any]]) -> list[int | None]:
        """Run the queued statements in one transaction: what each changed, None for one that
        failed (SQLite undoes just that statement); all None when nothing could be committed."""
        declined: list[int | None] = [None] * len(queue)
        if self._closed:
            return declined
        try:
            connection = self._open()
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # the lock is taken: the engine will wait for it
            log.debug("inline SQLite declined %d writes (%s)", len(queue), exc)
            return declined
        changed: list[int | None] = []
        for sql, values, _future in queue:
            try:
                changed.append(connection.execute(sql, values).rowcount)
            except sqlite3.Error as exc:
                log.debug("inline SQLite declined a write (%s)", exc)
                if not connection.in_transaction:  # SQLite gave up the whole transaction
                    return declined
                changed.append(None)
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            log.debug("inline SQLite could not commit (%s)", exc)
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            return declined
        self._commits += 1
        return changed

    def begin(self) -> Connection | None:
        """A connection inside a write transaction of its own (``BEGIN IMMEDIATE``), or None
        when that cannot start at once (another process holds the lock, the file is unusable).

        For a holder of the gate only (``Database.write``), which commits or rolls back, closes
        the connection and calls ``committed``.
        """
        if self._closed:
            return None
        try:
            connection = self._transaction_engine().connect()
        except SQLAlchemyError as exc:
            log.debug("inline SQLite cannot open a transaction (%s)", exc.__class__.__name__)
            return None
        try:
            connection.begin()
        except SQLAlchemyError as exc:  # the lock is taken: the engine will wait for it
            connection.close()
            log.debug("inline SQLite declined a transaction (%s)", exc.__class__.__name__)
            return None
        return connection

    def committed(self) -> None:
        """A transaction from ``begin`` was committed (it counts towards the next checkpoint)."""
        self._commits += 1

    def checkpoint_due(self) -> bool:
        """True once every ``CHECKPOINT_EVERY`` commits made here (a batch is one commit)."""
        if self._commits < CHECKPOINT_EVERY:
            return False
        self._commits = 0
        return True

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._transactions is not None:
            self._transactions.dispose()
            self._transactions = None

    def _run(self, plan: _Plan, params: dict[str, Any]) -> sqlite3.Cursor | None:
        values = plan.values(params)
        if self._closed:
            return None
        try:
            return self._open().execute(plan.sql, values)
        except sqlite3.Error as exc:  # another thread, a broken file: the engine will do it
            log.debug("inline SQLite declined a read (%s); going through the engine", exc)
            return None

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _connect(self) -> sqlite3.Connection:
        """A connection set up as the engine's (database.py), but never waiting for a lock and
        never checkpointing; WAL mode too, since a first write may create the file."""
        connection = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _transaction_engine(self) -> Engine:
        """One connection (``StaticPool``) that emits ``BEGIN IMMEDIATE`` itself, SQLAlchemy's
        documented recipe for pysqlite with the driver's own transaction handling off."""
        if self._transactions is None:
            engine = create_engine("sqlite://", creator=self._connect, poolclass=StaticPool)

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            self._transactions = engine
        return self._transactions
