"""Agent keys: what a gatherer agent presents to be let in. Only a digest is stored.

A key is 256 random bits, so a plain SHA-256 digest is enough (no slow KDF needed: there is
nothing to guess). Revoking keys keeps the row, so a revoked key's name cannot be silently reused.

A key owns the gatherers it registered (``gatherers.key_id``), at most ``max_gatherers`` of them
(default 1: one key per site machine). ``rebind`` is the operator's way to move a gatherer to new
hardware or to another key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from .cache import HotRows
from .database import Database
from .errors import AlreadyExists, NotFound
from .schema import agent_keys, gatherers

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
PREFIX = "rk_"
MAX_GATHERERS = 100_000

_BY_HASH = select(agent_keys).where(agent_keys.c.key_hash == bindparam("key_hash"))
_BOUND = (
    select(agent_keys.c.revoked, gatherers.c.gather_id)
    .select_from(agent_keys.outerjoin(gatherers, gatherers.c.key_id == agent_keys.c.key_id))
    .where(agent_keys.c.key_id == bindparam("key_id"))
)


@dataclass(frozen=True)
class AgentKey:
    key_id: int
    name: str
    revoked: bool
    created: int
    max_gatherers: int = 1
    gatherers: tuple[int, ...] = ()  # the gatherers it owns (``list`` fills it in)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AgentKeys:
    def __init__(self, db: Database, clock, hot: HotRows) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock
        self._hot = hot

    async def add(self, name: str, max_gatherers: int = 1) -> str:
        """Create a key named ``name``; returns the key itself (shown once, never stored)."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError("agent key names are 1-64 of A-Z a-z 0-9 _ . @ -")
        _check_limit(max_gatherers)
        key = PREFIX + secrets.token_urlsafe(32)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    agent_keys.insert().values(
                        name=name, key_hash=digest(key), revoked=0, created=int(self._clock()),
                        max_gatherers=max_gatherers,
                    )
                )
        except IntegrityError as exc:
            raise AlreadyExists(f"agent key {name!r} already exists") from exc
        return key

    async def list(self) -> list[AgentKey]:
        async with self._db.read() as conn:
            owned: dict[int, list[int]] = {}
            for key_id, gather_id in await conn.execute(
                select(gatherers.c.key_id, gatherers.c.gather_id)
                .where(gatherers.c.key_id.is_not(None)).order_by(gatherers.c.gather_id)
            ):
                owned.setdefault(key_id, []).append(gather_id)
            rows = await conn.execute(select(agent_keys).order_by(agent_keys.c.name))
            return [AgentKey(r.key_id, r.name, bool(r.revoked), r.created, r.max_gatherers,
                             tuple(owned.get(r.key_id, ()))) for r in rows]

    async def revoke(self, name: str) -> None:
        """New logins with the key are refused at once on this node, within ``cache.py``'s
        expiry on others (at once on PostgreSQL); its links close at their next recheck."""
        try:
            async with self._db.write() as conn:
                result = await conn.execute(
                    update(agent_keys)
                    .where(agent_keys.c.name == name)
                    .values(revoked=int(self._clock()))
                )
                await self._hot.notify(conn, "agent_key")
        finally:
            self._hot.forget("agent_key")
        if result.rowcount == 0:
            raise NotFound(f"no agent key named {name!r}")

    async def set_limit(self, name: str, max_gatherers: int) -> None:
        """How many gatherers the key may own; lowering it never unbinds one it already owns."""
        _check_limit(max_gatherers)
        try:
            async with self._db.write() as conn:
                result = await conn.execute(
                    update(agent_keys).where(agent_keys.c.name == name)
                    .values(max_gatherers=max_gatherers)
                )
                await self._hot.notify(conn, "agent_key")
        finally:
            self._hot.forget("agent_key")
        if result.rowcount == 0:
            raise NotFound(f"no agent key named {name!r}")

    async def rebind(self, name: str, gather_id: int) -> None:
        """Give gatherer ``gather_id`` to key ``name``, for the next hello with that key.

        The gatherer (its id, cameras, courses, recordings) then belongs to the key; if that hello
        comes from another MAC (replaced hardware), the gatherer takes the new MAC. A link of
        another key to the gatherer is closed within ``agent_key_recheck``.
        """
        async with self._db.write() as conn:
            key = (await conn.execute(select(agent_keys).where(agent_keys.c.name == name))).first()
            if key is None:
                raise NotFound(f"no agent key named {name!r}")
            if key.revoked:
                raise ValueError(f"agent key {name!r} is revoked")
            owner = (await conn.execute(
                select(gatherers.c.key_id).where(gatherers.c.gather_id == gather_id))).first()
            if owner is None:
                raise NotFound(f"no gatherer {gather_id}", [gather_id])
            if owner.key_id != key.key_id:
                owned = len((await conn.execute(
                    select(gatherers.c.gather_id).where(gatherers.c.key_id == key.key_id))).all())
                if owned >= key.max_gatherers:
                    raise ValueError(
                        f"agent key {name!r} owns {owned} of its {key.max_gatherers} gatherer(s); "
                        f"raise it first: relay agent-key limit {name} {owned + 1}")
                await conn.execute(update(gatherers).where(gatherers.c.gather_id == gather_id)
                                   .values(key_id=key.key_id))
            await conn.execute(update(agent_keys).where(agent_keys.c.key_id == key.key_id)
                               .values(takeover_gather_id=gather_id))

    async def check(self, key: str) -> AgentKey | None:
        """The key's record when ``key`` is a valid, unrevoked key; None otherwise."""
        if not key.startswith(PREFIX) or len(key) > 128:
            return None
        key_hash = digest(key)

        async def load() -> AgentKey | None:
            rows = await self._db.lookup(_BY_HASH, key_hash=key_hash)
            if not rows:
                return None
            row = rows[0]
            return AgentKey(row["key_id"], row["name"], bool(row["revoked"]), row["created"],
                            row["max_gatherers"])

        found = await self._hot.agent_keys.get(key_hash, load)  # every agent login
        return None if found is None or found.revoked else found

    async def owned(self, key_id: int) -> set[int] | None:
        """The gatherers the key owns now; None once it is revoked (or gone)."""
        rows = await self._db.lookup(_BOUND, key_id=key_id)
        if not rows or rows[0]["revoked"]:
            return None
        return {row["gather_id"] for row in rows if row["gather_id"] is not None}


def _check_limit(max_gatherers: int) -> None:
    if not 1 <= max_gatherers <= MAX_GATHERERS:
        raise ValueError(f"a key may own 1 to {MAX_GATHERERS} gatherers")
