"""This node's read-through cache of the request path's hot rows.

What: an account by id (the token check of every API call), an agent key by its digest (every
agent login), a camera by id (its gatherer and started flag: every camera command). Each is read
from the database on a miss and kept for at most ``EXPIRY_SECONDS``; misses (no such row) are not
kept, so a row just added is seen at once and a stranger's guesses fill nothing.

Invalidation:

- This node's own writes: each catalogue method that changes one of these rows forgets it
  (``forget``) once its transaction has ended, so the node's next read sees the change.
- Other nodes' writes, on PostgreSQL: the writing transaction sends ``SELECT pg_notify(CHANNEL,
  payload)`` (``notify``), delivered by PostgreSQL only once it commits, and every node keeps one
  LISTEN connection (``Listener``, asyncpg directly) that forgets what the payload names. The
  payload carries a kind and ids only, nothing secret (``camera:4,7``, ``account``, ``agent_key``).
  Channels are per database in PostgreSQL, so several catalogues (databases) on one server never
  hear each other. The listener reconnects by itself (after a PostgreSQL restart, a network cut)
  and clears the whole cache each time it (re)connects, since notifications sent meanwhile are
  lost; while it is not connected the cache answers nothing from memory (every read goes to the
  database).
- Other processes on SQLite (``relay user``, ``relay agent-key`` run beside a server on the same
  file) cannot notify: the expiry covers them. A password changed by ``relay user password`` is
  checked against the database at every sign-in (never cached) and ends the account's console
  sessions at once; a credential rotated, or admin rights changed, reach a running server's token
  checks within ``EXPIRY_SECONDS``; an agent key revoked by ``relay agent-key revoke`` is refused
  to new logins within ``EXPIRY_SECONDS``, and its links are closed at the next
  ``agent_key_recheck`` (which reads the database, not this cache). On PostgreSQL those commands
  notify as a node does, so every node hears of them at once.

A read that began before an invalidation never stores what it read (``RowCache`` keeps a
generation counter), so a stale row cannot slip in behind the write that replaced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import make_url

from .. import tasks

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

#: How long a row is answered from memory: the safety net for changes no notification reaches
#: (another process on a SQLite file, a notification lost while the listener reconnects).
EXPIRY_SECONDS = 2.0
#: Rows kept per kind; past it the oldest go first.
SIZE = 4096
#: The NOTIFY channel (per database in PostgreSQL; every catalogue in that database shares it).
CHANNEL = "relay_catalogue"
#: Longest payload sent; more ids than fit make it "kind:*" (forget every row of that kind).
MAX_PAYLOAD = 4000
#: The listener's liveness check, and its longest wait between reconnection attempts.
LISTEN_PING_S = 5.0
LISTEN_RETRY_MAX_S = 5.0

KINDS = ("account", "agent_key", "camera")

#: What a writing transaction runs to tell the other nodes (``HotRows.notice`` gives its values).
NOTIFY_STATEMENT = text("SELECT pg_notify(:channel, :payload)")


class RowCache(Generic[K, V]):
    """One kind of row, by key, each kept for ``EXPIRY_SECONDS`` at most."""

    def __init__(self, owner: HotRows, size: int = SIZE) -> None:
        self._owner = owner
        self._size = size
        self._rows: dict[K, tuple[float, V]] = {}
        self._generation = 0
        self.hits = 0
        self.misses = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The row from memory when fresh, else ``load()``'s (kept unless None)."""
        now = time.monotonic()
        trusted = self._owner.trusted
        if trusted:
            kept = self._rows.get(key)
            if kept is not None and now - kept[0] < EXPIRY_SECONDS:
                self.hits += 1
                return kept[1]
        self.misses += 1
        generation = self._generation
        value = await load()
        if value is not None and trusted and generation == self._generation and self._owner.trusted:
            self._rows.pop(key, None)
            if len(self._rows) >= self._size:
                del self._rows[next(iter(self._rows))]  # the oldest
            self._rows[key] = (now, value)  # aged from before the read
        return value

    def forget(self, keys: Iterable[K] | None = None) -> None:
        """Drop these rows (None: all); reads in flight will not store theirs."""
        self._generation += 1
        if keys is None:
            self._rows.clear()
            return
        for key in keys:
            self._rows.pop(key, None)

    def __len__(self) -> int:
        return len(self._rows)


class HotRows:
    """The node's caches, the notifications its writes send, and (PostgreSQL) its listener."""

    def __init__(self, dialect: str) -> None:
        self.notifying = dialect == "postgresql"
        self.accounts: RowCache[int, Any] = RowCache(self)
        self.agent_keys: RowCache[str, Any] = RowCache(self)
        self.cameras: RowCache[int, Any] = RowCache(self)
        self._listener: Listener | None = None

    @property
    def trusted(self) -> bool:
        """False on PostgreSQL while no listener is connected: nothing is then answered from
        memory (notifications of other nodes' writes would be missed)."""
        return not self.notifying or (self._listener is not None and self._listener.connected)

    def _of(self, kind: str) -> RowCache[Any, Any]:
        return {"account": self.accounts, "agent_key": self.agent_keys,
                "camera": self.cameras}[kind]

    def forget(self, kind: str, ids: Iterable[Any] | None = None) -> None:
        """This node changed these rows (None: rows of that kind, ids unknown)."""
        self._of(kind).forget(ids)

    def clear(self) -> None:
        for kind in KINDS:
            self._of(kind).forget()

    def notice(self, kind: str, ids: Iterable[int] | None = None) -> dict[str, str] | None:
        """Parameters of ``NOTIFY_STATEMENT`` telling other nodes of a change, or None where
        there are no other nodes to tell (SQLite). Sent inside the writing transaction."""
        if not self.notifying:
            return None
        payload = kind if ids is None else f"{kind}:{','.join(str(int(i)) for i in ids)}"
        if len(payload) > MAX_PAYLOAD:
            payload = f"{kind}:*"
        return {"channel": CHANNEL, "payload": payload}

    async def notify(self, conn: Any, kind: str, ids: Iterable[int] | None = None) -> None:
        """``notice`` sent on ``conn`` (a write transaction's connection), when there is one."""
        params = self.notice(kind, ids)
        if params is not None:
            await conn.execute(NOTIFY_STATEMENT, params)

    def notify_sync(self, conn: Any, kind: str, ids: Iterable[int] | None = None) -> None:
        """``notify`` for a transaction run whole (``Database.run``)."""
        params = self.notice(kind, ids)
        if params is not None:
            conn.execute(NOTIFY_STATEMENT, params)

    def heard(self, payload: str) -> None:
        """A notification: forget what it names (anything unreadable: everything)."""
        kind, _, ids = payload.partition(":")
        if kind not in KINDS:
            log.warning("catalogue notification of an unknown kind; clearing the cache")
            self.clear()
            return
        if not ids or ids == "*":
            self.forget(kind)
            return
        try:
            self.forget(kind, [int(one) for one in ids.split(",")])
        except ValueError:
            self.forget(kind)

    async def start(self, url: str) -> None:
        """On PostgreSQL: start listening (in the background; the cache waits for it)."""
        if self.notifying and self._listener is None:
            self._listener = Listener(url, self)
            self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    @property
    def listener(self) -> Listener | None:
        return self._listener



class Listener:
    """One asyncpg connection LISTENing on ``CHANNEL``, kept up for as long as the catalogue is."""

    def __init__(self, url: str, rows: HotRows) -> None:
        parsed = make_url(url)
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._where = parsed.render_as_string(hide_password=True)
        self._rows = rows
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.connections = 0  # how many times it has connected (tests)
        self.backend_pid: int | None = None
        self._up = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="catalogue-listener")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._up.wait(), timeout)

    async def close(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        import asyncpg

        delay = 0.1
        down_logged = False
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=LISTEN_PING_S)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._heard)
                # Listening from now on; whatever changed before it is unknown: forget it all.
                self._rows.clear()
                self.backend_pid = conn.get_server_pid()
                self.connected = True
                self.connections += 1
                self._up.set()
                if down_logged:
                    log.info("catalogue listener reconnected to %s", self._where)
                down_logged = False
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_PING_S)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=LISTEN_PING_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # (PostgreSQL gone, restarting, unreachable)
                if not down_logged:
                    log.warning("catalogue listener lost %s (%s); the cache is off until it is "
                                "back", self._where, exc.__class__.__name__)
                    down_logged = True
            finally:
                self.connected = False
                self._up.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            if not down_logged:  # the connection ended without an error being raised here
                log.warning("catalogue listener lost %s; reconnecting", self._where)
                down_logged = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX_S)

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._rows.heard(payload)
