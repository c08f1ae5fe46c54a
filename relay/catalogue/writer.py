"""Every write transaction on a SQLite catalogue: one thread of its own, one synchronous connection.

Why a thread of our own rather than the engine's (aiosqlite): through aiosqlite each statement is
three or four trips to its worker thread and back (cursor, execute, fetch, close; then BEGIN and
COMMIT), 150–400 µs each on these machines and far more when the loop is busy, for statements that
take 5–25 µs in SQLite. Here a transaction given as one function (``SQLiteWriter.call``) is one
trip: the whole of it runs in this thread, and the results of every transaction finished while the
loop was busy come back in one wake-up of the loop. Measured with ``bench/commands.py`` (see
``bench/RESULTS.md``): a ``start_camera`` costs about one such trip, within the goal of twice a bare
aiohttp echo at 1 and at 200 callers, where aiosqlite's four to five trips per write were not.

Order: the thread takes its work from one FIFO queue, so this process's write transactions meet
SQLite's lock one at a time and in the order they were asked for, whatever their kind; nothing is
ever declined and retried elsewhere (the old inline path could put a declined write behind a later
one). The ``WriteGate`` that used to give the engine's writers that order is not needed: the queue
is the gate. A transaction written as an ``async with`` body (``SQLiteWriter.transaction``) holds
the thread from its ``BEGIN IMMEDIATE`` to its end, one trip per statement, so it must do database
work only (whatever else it awaits, every writer waits for too), as under the gate before.

Waiting: the connection waits up to its busy timeout (10 s) for another process holding the lock (a
``relay user`` command), in this thread, so the event loop keeps serving reads and everything else
meanwhile. The WAL is checkpointed by SQLite itself (``wal_autocheckpoint``, every 1,000 pages), in
this thread too. Deleting a camera with 20,000 records no longer stalls the loop either.

Reads do not come here: in WAL mode a reader never waits for a writer and sees every committed
write, so they keep the engine's pool (several at once, none behind a long write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sqlalchemy import Executable, create_engine, event
from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Results handed back to the loop in one wake-up, at most (the queue's backlog is drained first).
DELIVER_EVERY = 64
#: How long a write waits for another process's lock before failing (``database is locked``).
BUSY_TIMEOUT_S = 10.0


def _buffered(result: Any) -> Any:
    """A SELECT's rows all fetched now, in the writer's thread; an INSERT's, UPDATE's or DELETE's
    rowcount read there too (the result then outlives its cursor and its thread)."""
    if result.returns_rows:
        return result.freeze()()
    _ = result.rowcount
    return result


class _Call:
    """One whole transaction: ``fn(connection)`` between BEGIN IMMEDIATE and COMMIT."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[Connection], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


class _Session:
    """A transaction driven from the loop: the thread runs each step it is sent until the end."""

    __slots__ = ("began", "steps")

    def __init__(self, began: asyncio.Future[None]) -> None:
        self.began = began
        self.steps: queue.SimpleQueue[tuple[str, Callable[[Connection], Any] | None,
                                            asyncio.Future[Any] | None]] = queue.SimpleQueue()


class WriterConnection:
    """What a write transaction's body calls on its connection, as on the engine's
    ``AsyncConnection`` (``execute``, ``scalars``, ``scalar``, ``exec_driver_sql``, ``run_sync``,
    ``dialect``): each one trip to the writer's thread. Rows come back read to the end."""

    def __init__(self, writer: SQLiteWriter, session: _Session) -> None:
        self._writer = writer
        self._session = session
        self.dialect = writer.engine.dialect

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._writer._step(self._session, lambda conn: fn(conn, *args, **kwargs))

    async def execute(self, statement: Executable, parameters: Any = None, **options: Any
                      ) -> Result[Any]:
        return await self.run_sync(
            lambda conn: _buffered(conn.execute(statement, parameters, **options)))

    async def scalars(self, statement: Executable, parameters: Any = None, **options: Any) -> Any:
        return (await self.execute(statement, parameters, **options)).scalars()

    async def scalar(self, statement: Executable, parameters: Any = None, **options: Any) -> Any:
        return (await self.execute(statement, parameters, **options)).scalar()

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **options: Any
                              ) -> Result[Any]:
        return await self.run_sync(
            lambda conn: _buffered(conn.exec_driver_sql(statement, parameters, **options)))


class SQLiteWriter:
    """The thread and its connection; started on first use, ended by ``close``."""

    def __init__(self, path: str) -> None:
        self._path = path
        self.engine = self._engine()
        self._jobs: queue.SimpleQueue[_Call | _Session | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._closed = False
        self.transactions = 0  # committed ones (tests, benchmarks)

    # ------------------------------------------------------------------ the loop's side

    async def call(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` in one write transaction, committed once it returns (rolled back if it
        raises, and the exception raised here); one trip to the thread for all of it. ``fn`` runs
        in the writer's thread: it must touch nothing of the loop's."""
        future = self._loop_future()
        self._submit(_Call(fn, future))
        return await future

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[WriterConnection]:
        """A write transaction whose body runs in the loop, each statement a trip to the thread;
        committed on exit, rolled back on an exception (or a cancellation)."""
        session = _Session(self._loop_future())
        self._submit(session)
        try:
            await session.began
        except BaseException:
            session.steps.put(("rollback", None, None))  # whenever the thread gets to it
            raise
        try:
            yield WriterConnection(self, session)
        except BaseException:
            session.steps.put(("rollback", None, None))  # later transactions queue behind it
            raise
        committed = self._loop_future()
        session.steps.put(("commit", None, committed))
        await committed

    async def _step(self, session: _Session, fn: Callable[[Connection], T]) -> T:
        future = self._loop_future()
        session.steps.put(("run", fn, future))
        return await future

    def close(self) -> None:
        """End the thread once the work already queued is done (no new work is taken)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
        self.engine.dispose()

    def _loop_future(self) -> asyncio.Future[Any]:
        loop = self._loop = asyncio.get_running_loop()
        return loop.create_future()

    def _submit(self, job: _Call | _Session) -> None:
        if self._closed:
            raise RuntimeError("the catalogue is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="catalogue-writer",
                                            daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _deliver(self, done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        for future, result, error in done:
            if future.done():  # (a caller that gave up)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    # ------------------------------------------------------------------ the thread's side

    def _work(self) -> None:
        connection = self.engine.connect()
        try:
            while True:
                if self._done and (self._jobs.empty() or len(self._done) >= DELIVER_EVERY):
                    self._flush()
                job = self._jobs.get()
                if job is None:
                    break
                if isinstance(job, _Call):
                    self._run_call(connection, job)
                else:
                    self._run_session(connection, job)
        finally:
            self._flush()
            connection.close()

    def _flush(self) -> None:
        if self._done and self._loop is not None:
            done, self._done = self._done, []
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._deliver, done)

    def _run_call(self, connection: Connection, job: _Call) -> None:
        if job.future.cancelled():  # given up before it started: nothing written
            return
        try:
            with connection.begin():
                result = job.fn(connection)
        except BaseException as exc:  # (handed to the caller, who raises it)
            self._done.append((job.future, None, exc))
            return
        self.transactions += 1
        self._done.append((job.future, result, None))

    def _run_session(self, connection: Connection, session: _Session) -> None:
        try:
            transaction = connection.begin()
        except BaseException as exc:
            self._done.append((session.began, None, exc))
            return
        self._done.append((session.began, None, None))
        try:
            while True:
                self._flush()  # the body waits for each answer: hand it over now
                kind, fn, future = session.steps.get()
                if kind == "run":
                    assert fn is not None and future is not None
                    try:
                        self._done.append((future, fn(connection), None))
                    except BaseException as exc:
                        self._done.append((future, None, exc))
                elif kind == "commit":
                    assert future is not None
                    try:
                        transaction.commit()
                    except BaseException as exc:
                        self._done.append((future, None, exc))
                    else:
                        self.transactions += 1
                        self._done.append((future, None, None))
                    return
                else:
                    return
        finally:
            if transaction.is_active:
                try:
                    transaction.rollback()
                except Exception as exc:  # the connection is unusable: the next BEGIN says so
                    log.warning("catalogue rollback failed: %s", exc.__class__.__name__)

    def _engine(self) -> Engine:
        """One connection (``StaticPool``) that emits ``BEGIN IMMEDIATE`` itself, SQLAlchemy's
        documented recipe for pysqlite with the driver's own transaction handling off; set up as
        the async engine's connections are (database.py), WAL since a first write may create the
        file."""
        path = self._path

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                connection.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                connection.close()
                raise
            return connection

        engine = create_engine("sqlite://", creator=connect, poolclass=StaticPool)

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
