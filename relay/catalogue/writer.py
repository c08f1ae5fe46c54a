"""Every write on a SQLite catalogue: one synchronous connection, one queue, one order.

All of this process's writes take this path, whatever their kind: a transaction run whole
(``call``: a function of the connection), a transaction written as an ``async with`` body
(``transaction``), and one-statement writes (``run_one``: the request path's, e.g. a camera's
started flag). They pass the ``WriteGate`` one at a time in the order they asked, and run on the
writer's one connection; nothing is ever declined and retried elsewhere, so nothing is reordered
(the old inline path fell back to the engine, which could put a declined write behind a later
one).

Where the work runs, measured (``bench/commands.py``, bench/RESULTS.md): in the event loop's own
thread. A trip to any other thread and back costs ~100 µs on these machines (a bare
``run_in_executor`` of a no-op: 106 µs median; through aiosqlite a write is four or five such trips,
~1.3 ms), while the statements themselves take 5–25 µs. With every transaction sent whole to a
dedicated thread (one trip each), ``start_camera`` cost 2.7–3.2× the bare aiohttp echo at 1 and 200
callers (goal ≤ 2×, bench/RESULTS.md); run here, within it. The thread (``_executor``) is still
used, on the same connection and still holding the gate, for what must not hold up the loop:

- waiting for another process's lock (a ``relay user`` command beside the server): ``BEGIN
  IMMEDIATE`` is tried here with no busy timeout, and when the lock is taken it is retried there
  with one (``BUSY_TIMEOUT_S``); the transaction then goes on as before, in the same place in line;
- transactions that may change thousands of rows (``offload``: deleting cameras with their
  records; 20,000 records hold the loop ~150 ms otherwise), each statement there;
- checkpoints: the connection never checkpoints the WAL itself (``wal_autocheckpoint=0``, a
  checkpoint copies pages and fsyncs); every ``CHECKPOINT_EVERY`` commits a second connection does
  a passive one there.

One-statement writes asked for in the same turn of the event loop commit together, one
transaction (and one gate entry) for all of them, each caller answered after the commit; one that
fails alone gets its own error and the others stay committed (SQLite undoes just that statement).
(The inline path this replaces measured half the cost per write under load that way.)

Reads do not come here: in WAL mode a reader never waits for a writer and sees every committed
write. Point reads run in the loop's thread on a read-only connection of their own, the others on
the engine's pool (database.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Executable, create_engine
from sqlalchemy.engine import Connection, Dialect, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a write waits for another process's lock (in the writer's thread) before failing.
BUSY_TIMEOUT_S = 10.0
#: Commits between passive checkpoints of the WAL (SQLite's own default is 1,000 pages); a batch
#: of one-statement writes is one commit.
CHECKPOINT_EVERY = 500

_REQUIRED = object()


def buffered(result: Any) -> Any:
    """A SELECT's rows all fetched now; an INSERT's, UPDATE's or DELETE's rowcount read now (the
    result then outlives its cursor and the thread it ran in)."""
    if result.returns_rows:
        return result.freeze()()
    _ = result.rowcount
    return result


@dataclass(frozen=True)
class _Plan:
    """A statement compiled once: its SQL and where each positional argument comes from."""

    sql: str
    arguments: tuple[tuple[str, Any], ...]  # (parameter name, value when the caller gives none)
    columns: tuple[str, ...] | None = None  # a SELECT's columns, by their keys

    def values(self, params: dict[str, Any]) -> list[Any]:
        values = [params.get(name, fixed) for name, fixed in self.arguments]
        if _REQUIRED in values:
            missing = [name for name, fixed in self.arguments
                       if fixed is _REQUIRED and name not in params]
            raise KeyError(f"statement parameters missing: {missing}")
        return values


@functools.lru_cache(maxsize=256)
def compiled(statement: Executable, dialect: Dialect) -> _Plan:
    """The statement's SQL for ``dialect`` and its arguments' order, compiled once (by the
    statement's identity: build ``run_one``'s statements once, as module constants). Also used
    for PostgreSQL's one-statement writes (database.py)."""
    compiled: Any = statement.compile(dialect=dialect)
    binds = [compiled.binds[name] for name in compiled.positiontup or ()]
    selected = getattr(statement, "selected_columns", None)
    return _Plan(compiled.string, tuple(
        (bind.key, _REQUIRED if bind.required else bind.effective_value) for bind in binds),
        tuple(selected.keys()) if selected is not None else None)


class WriteGate:
    """One holder at a time, admitted strictly in arrival order (first come, first served).

    Why not leave the queueing to SQLite: writers waiting in ``BEGIN IMMEDIATE`` sleep in SQLite's
    busy handler (1, 2, 5 … up to 100 ms a try) and whoever retries first once the lock is free
    wins, so with 20 writers some waited 3.4 s behind transactions of a millisecond. Here they wait
    in the event loop, and ``leave`` hands the gate straight to the next in line (nobody can slip
    in between).
    A holder must do database work only: whatever else it awaits, every writer waits for too.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    def busy(self) -> bool:
        return self._held or bool(self._waiting)

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


class WriterConnection:
    """What a write transaction's body calls on its connection, as on the engine's
    ``AsyncConnection`` (``execute``, ``scalars``, ``scalar``, ``exec_driver_sql``, ``run_sync``,
    ``dialect``): each done at once here, or in the writer's thread for an ``offload``ed one.
    Rows come back read to the end, as the engine's do."""

    def __init__(self, writer: SQLiteWriter, connection: Connection, offload: bool) -> None:
        self._writer = writer
        self._connection = connection
        self._offload = offload
        self.dialect = connection.dialect

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._offload:
            return await self._writer._in_thread(fn, self._connection, *args, **kwargs)
        return fn(self._connection, *args, **kwargs)

    async def execute(self, statement: Executable, parameters: Any = None, **options: Any
                      ) -> Result[Any]:
        return await self.run_sync(
            lambda conn: buffered(conn.execute(statement, parameters, **options)))

    async def scalars(self, statement: Executable, parameters: Any = None, **options: Any) -> Any:
        return (await self.execute(statement, parameters, **options)).scalars()

    async def scalar(self, statement: Executable, parameters: Any = None, **options: Any) -> Any:
        return (await self.execute(statement, parameters, **options)).scalar()

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **options: Any
                              ) -> Result[Any]:
        return await self.run_sync(
            lambda conn: buffered(conn.exec_driver_sql(statement, parameters, **options)))


class SQLiteWriter:
    """The connection, the gate, the thread; the connection opens on first use."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._gate = WriteGate()
        self._engine = self._make_engine()
        self._connection: Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalogue-writer")
        self._queue: list[tuple[_Plan, list[Any], asyncio.Future[list[Any]]]] = []
        self._scheduled = False  # a commit of the queue is coming (this turn, or at the gate)
        self._checkpoint: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # commits waiting for the gate or the lock
        self._since_checkpoint = 0
        self._closed = False
        self.transactions = 0  # committed ones (tests, benchmarks)

    @property
    def dialect(self) -> Dialect:
        return self._engine.dialect

    # ------------------------------------------------------------------ whole transactions

    async def call(self, fn: Callable[[Connection], T], offload: bool = False) -> T:
        """``fn(connection)`` in one write transaction, committed once it returns (rolled back if
        it raises, and the exception raised here); in the writer's thread with ``offload``."""
        async with self._turn() as connection:
            await self._begin(connection)
            try:
                result = (await self._in_thread(fn, connection)) if offload else fn(connection)
            except BaseException:
                self._end(connection, commit=False)
                raise
            self._end(connection, commit=True)
            return result

    @contextlib.asynccontextmanager
    async def transaction(self, offload: bool = False) -> AsyncIterator[WriterConnection]:
        """A write transaction whose body runs in the loop (its statements here, or in the
        writer's thread with ``offload``); committed on exit, rolled back on an exception. It
        holds the gate throughout: the body must do database work only."""
        async with self._turn() as connection:
            await self._begin(connection)
            try:
                yield WriterConnection(self, connection, offload)
            except BaseException:
                self._end(connection, commit=False)
                raise
            self._end(connection, commit=True)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[Connection]:
        if self._closed:
            raise RuntimeError("the catalogue is closed")
        await self._gate.enter()
        try:
            yield self._open()
        finally:
            self._gate.leave()

    async def _begin(self, connection: Connection) -> None:
        """BEGIN IMMEDIATE here when the lock is free, else waiting for it in the thread."""
        raw = connection.connection.driver_connection
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise _wrapped("BEGIN IMMEDIATE", exc) from exc
        try:
            await self._in_thread(_begin_waiting, connection)
        except BaseException:  # (cancelled while the thread got the lock: give it back)
            if raw.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    raw.execute("ROLLBACK")
            raise

    def _end(self, connection: Connection, commit: bool) -> None:
        raw = connection.connection.driver_connection
        try:
            if connection.in_transaction():  # (SQLAlchemy began its own on the first execute)
                connection.commit() if commit else connection.rollback()
            if raw.in_transaction:
                raw.execute("COMMIT" if commit else "ROLLBACK")
        except BaseException:
            if raw.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    raw.execute("ROLLBACK")
            raise
        if commit:
            self._committed()

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the writer's thread; a cancelled caller still waits for it to finish (the
        connection must not be used by two threads at once)."""
        done = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs))
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(done)
                break
            except asyncio.CancelledError:
                if done.done():
                    raise
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return result

    # ------------------------------------------------------------------ one-statement writes

    def run_one(self, statement: Executable, params: dict[str, Any]) -> asyncio.Future[list[Any]]:
        """Queue one INSERT, UPDATE or DELETE; the future gives the rows it returned (RETURNING)
        once it is committed with the others of this turn, or its own error."""
        if self._closed:
            raise RuntimeError("the catalogue is closed")
        plan = compiled(statement, self._engine.dialect)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((plan, plan.values(params), future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._commit_queue)
        return future

    def _commit_queue(self) -> None:
        """At the end of the turn: commit now if the gate and the lock are free (all of it here,
        no task, no wait), else get in line for them."""
        if not self._gate.try_enter():
            self._background(self._commit_when_admitted())
            return
        queue, self._queue, self._scheduled = self._queue, [], False
        try:
            raw = self._open().connection.driver_connection
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # busy (another process), or worse: found out there
            self._background(self._commit_admitted(queue))
            return
        except Exception as exc:  # (a file that cannot be opened): each caller hears it
            self._gate.leave()
            _deliver(queue, [exc] * len(queue))
            return
        results = self._run_batch(queue)
        if results is None:  # SQLite gave up the whole transaction
            self._background(self._commit_admitted(queue, begun=False, one_by_one=True))
            return
        self._gate.leave()
        _deliver(queue, results)

    async def _commit_when_admitted(self) -> None:
        try:
            await self._gate.enter()
        except asyncio.CancelledError:  # (the loop is closing): nothing of the queue was written
            queue, self._queue, self._scheduled = self._queue, [], False
            for *_, future in queue:
                future.cancel()
            raise
        queue, self._queue, self._scheduled = self._queue, [], False
        await self._commit_admitted(queue)

    async def _commit_admitted(self, queue: list[tuple[_Plan, list[Any], Any]],
                               begun: bool = False, one_by_one: bool = False) -> None:
        """Holding the gate: commit ``queue`` (waiting for the lock as needed), give the gate on,
        tell the callers."""
        try:
            if self._closed and not begun:
                results: list[Any] | None = [RuntimeError("the catalogue is closed")] * len(queue)
            elif one_by_one:
                results = await self._one_by_one(queue)
            else:
                await self._begin(self._open())
                results = self._run_batch(queue)
                if results is None:
                    results = await self._one_by_one(queue)
        except BaseException as exc:
            results = [exc] * len(queue)
        finally:
            self._gate.leave()
        _deliver(queue, results)

    def _run_batch(self, queue: list[tuple[_Plan, list[Any], Any]]) -> list[Any] | None:
        """Inside a begun transaction: the statements, then COMMIT; each one's rows or its own
        error; None when SQLite gave up the whole transaction (nothing of it written)."""
        raw = self._open().connection.driver_connection
        results: list[Any] = []
        for plan, values, _future in queue:
            try:
                results.append(raw.execute(plan.sql, values).fetchall())
            except sqlite3.Error as exc:
                if not raw.in_transaction:
                    return None
                results.append(_wrapped(plan.sql, exc, values))
        try:
            raw.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                raw.execute("ROLLBACK")
            return [_wrapped("COMMIT", exc)] * len(queue)
        self._committed()
        return results

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one_by_one(self, queue: list[tuple[_Plan, list[Any], Any]]) -> list[Any]:
        """After a failure that undid the whole batch: each statement in its own transaction."""
        connection = self._open()
        raw = connection.connection.driver_connection
        results: list[Any] = []
        for plan, values, _future in queue:
            try:
                await self._begin(connection)
                rows = raw.execute(plan.sql, values).fetchall()
                raw.execute("COMMIT")
            except sqlite3.Error as exc:
                if raw.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        raw.execute("ROLLBACK")
                results.append(_wrapped(plan.sql, exc, values))
                continue
            except DBAPIError as exc:
                results.append(exc)
                continue
            self._committed()
            results.append(rows)
        return results

    # ------------------------------------------------------------------ the rest

    def _committed(self) -> None:
        self.transactions += 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._since_checkpoint = 0
            self._checkpoint = asyncio.ensure_future(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        """Copy the WAL into the database file, on a connection of its own, in the thread."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint_now)
        except (OSError, sqlite3.Error) as exc:
            log.warning("WAL checkpoint failed: %s", exc.__class__.__name__)
        finally:
            self._checkpoint = None
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._closed:  # (a busy spell)
            self._since_checkpoint = 0
            self._checkpoint = asyncio.ensure_future(self._run_checkpoint())

    def _checkpoint_now(self) -> None:
        with contextlib.closing(sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S)) as other:
            other.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        """Wait for the writes already asked for, then close the connection and the thread."""
        self._closed = True
        while self._gate.busy() or self._tasks or self._scheduled:
            await asyncio.sleep(0.01)
        if self._checkpoint is not None:
            await self._checkpoint
        self._executor.shutdown(wait=True)
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._engine.dispose()

    def _open(self) -> Connection:
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection

    def _make_engine(self) -> Engine:
        """One connection (``StaticPool``) with the driver's own transaction handling off (we emit
        BEGIN IMMEDIATE ourselves), set up as the async engine's are (database.py) but with no busy
        timeout (a wait happens in the thread) and no automatic checkpoints."""
        path = self._path

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(path, timeout=0, isolation_level=None,
                                         check_same_thread=False)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA busy_timeout=0")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA wal_autocheckpoint=0")
            except sqlite3.Error:
                connection.close()
                raise
            return connection

        return create_engine("sqlite://", creator=connect, poolclass=StaticPool)


def _deliver(queue: list[tuple[_Plan, list[Any], asyncio.Future[Any]]], results: list[Any]
             ) -> None:
    for (_, _, future), result in zip(queue, results, strict=True):
        if future.done():  # (a caller that gave up)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _begin_waiting(connection: Connection) -> None:
    """In the thread: BEGIN IMMEDIATE, waiting up to ``BUSY_TIMEOUT_S`` for the lock."""
    raw = connection.connection.driver_connection
    raw.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _wrapped("BEGIN IMMEDIATE", exc) from exc
    finally:
        raw.execute("PRAGMA busy_timeout=0")


def _wrapped(sql: str, exc: sqlite3.Error, values: Any = None) -> DBAPIError:
    """The driver's error as SQLAlchemy's (``IntegrityError``, ``OperationalError`` …), what the
    engine would have raised."""
    return DBAPIError.instance(sql, values, exc, sqlite3.Error)
