"""Point reads and one-statement writes on the SQLite file, run in the event loop's own thread.

Why: every API call reads a row or two (the token's account, a camera) and some write one. Through
the engine, each statement is a trip to aiosqlite's worker thread and back, 200–400 µs on these
machines; the statement itself takes 5–25 µs. Run here, the API's command round trip costs about
what a bare aiohttp WebSocket echo does (bench/RESULTS.md).

It never waits: the connection has no busy timeout, so when another writer holds the lock (the
engine's thread, a ``relay user`` command) or anything else goes wrong, the caller gets ``None``
and sends the statement through the engine, which waits in its worker thread. A reader in WAL mode
never waits for writers and sees every committed write. It never checkpoints the WAL either (that
copies pages into the database file and fsyncs): ``checkpoint_due`` tells its owner when to have
the engine do it.
"""

from __future__ import annotations

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

    def fetch(self, statement: Executable, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The rows of ``statement``, or None when it cannot run here at once."""
        plan = _plan(statement, self._dialect)
        cursor = self._run(plan, params)
        if cursor is None:
            return None
        names = plan.columns or [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, statement: Executable, params: dict[str, Any]) -> int | None:
        """Run one INSERT, UPDATE or DELETE as its own transaction: the rows it changed, or None
        (nothing written) when it cannot run here at once."""
        cursor = self._run(_plan(statement, self._dialect), params)
        if cursor is None:
            return None
        self._commits += 1
        return cursor.rowcount

    def checkpoint_due(self) -> bool:
        """True once every ``CHECKPOINT_EVERY`` commits made here."""
        if self._commits < CHECKPOINT_EVERY:
            return False
        self._commits = 0
        return True

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run(self, plan: _Plan, params: dict[str, Any]) -> sqlite3.Cursor | None:
        try:
            return self._open().execute(plan.sql, plan.values(params))
        except sqlite3.Error as exc:  # busy, locked, another thread: the engine will do it
            log.debug("inline SQLite declined (%s); going through the engine", exc)
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
