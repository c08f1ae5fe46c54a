"""Point reads and one-statement writes on the SQLite file, run in the event loop's own thread.

Why: every API call reads a row or two (the token's account, a camera) and some write one. Through
the engine, each statement is a trip to aiosqlite's worker thread and back, 200–400 µs on these
machines; the statement itself takes 5–25 µs. Run here, the API's command round trip costs about
what a bare aiohttp WebSocket echo does (bench/RESULTS.md).

It never waits: the connection has no busy timeout, so when another writer holds the lock (the
engine's thread, a ``relay user`` command) or anything else goes wrong, the caller gets ``None``
and sends the statement through the engine, which waits in its worker thread. A reader in WAL mode
never waits for writers and sees every committed write. Writes queued in the same turn of the event
loop commit together, one transaction for all (under load that halves what a write costs); each
caller hears only once the commit is done. It never checkpoints the WAL (that copies pages into
the database file and fsyncs): ``checkpoint_due`` tells its owner when to have the engine do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect

log = logging.getLogger(__name__)

#: Commits between the checkpoints the owner is asked for (SQLite's own default is 1,000 pages).
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


class InlineSQLite:
    """A connection of its own to the SQLite file, used only from the thread that opened it."""

    def __init__(self, path: str, dialect: Dialect) -> None:
        self._path = path
        self._dialect = dialect
        self._connection: sqlite3.Connection | None = None
        self._commits = 0
        self._queue: list[tuple[str, list[Any], asyncio.Future[int | None]]] = []
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
        if len(self._queue) == 1:
            loop.call_soon(self._commit_queue)
        return future

    def _commit_queue(self) -> None:
        queue, self._queue = self._queue, []
        for (_sql, _values, future), changed in zip(queue, self._commit(queue), strict=True):
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
            connection = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            try:
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA synchronous=NORMAL")  # as the engine's (database.py)
                connection.execute("PRAGMA wal_autocheckpoint=0")
            except sqlite3.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection
