"""Agent keys: what a gatherer agent presents to be let in. Only a digest is stored.

A key is 256 random bits, so a plain SHA-256 digest is enough (no slow KDF needed: there is
nothing to guess). Revoking keeps the row, so a revoked key's name cannot be silently reused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from .database import Database
from .errors import AlreadyExists, NotFound
from .schema import agent_keys

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
PREFIX = "rk_"

_BY_HASH = select(agent_keys).where(agent_keys.c.key_hash == bindparam("key_hash"))
_REVOKED = select(agent_keys.c.revoked).where(agent_keys.c.key_id == bindparam("key_id"))


@dataclass(frozen=True)
class AgentKey:
    key_id: int
    name: str
    revoked: bool
    created: int


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AgentKeys:
    def __init__(self, db: Database, clock) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock

    async def add(self, name: str) -> str:
        """Create a key named ``name``; returns the key itself (shown once, never stored)."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError("agent key names are 1-64 of A-Z a-z 0-9 _ . @ -")
        key = PREFIX + secrets.token_urlsafe(32)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    agent_keys.insert().values(
                        name=name, key_hash=digest(key), revoked=0, created=int(self._clock())
                    )
                )
        except IntegrityError as exc:
            raise AlreadyExists(f"agent key {name!r} already exists") from exc
        return key

    async def list(self) -> list[AgentKey]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(agent_keys).order_by(agent_keys.c.name))
            return [AgentKey(r.key_id, r.name, bool(r.revoked), r.created) for r in rows]

    async def revoke(self, name: str) -> None:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(agent_keys)
                .where(agent_keys.c.name == name)
                .values(revoked=int(self._clock()))
            )
        if result.rowcount == 0:
            raise NotFound(f"no agent key named {name!r}")

    async def check(self, key: str) -> AgentKey | None:
        """The key's record when ``key`` is a valid, unrevoked key; None otherwise."""
        if not key.startswith(PREFIX) or len(key) > 128:
            return None
        rows = await self._db.lookup(_BY_HASH, key_hash=digest(key))  # every agent login
        if not rows or rows[0]["revoked"]:
            return None
        row = rows[0]
        return AgentKey(row["key_id"], row["name"], False, row["created"])

    async def is_valid(self, key_id: int) -> bool:
        rows = await self._db.lookup(_REVOKED, key_id=key_id)
        return bool(rows) and rows[0]["revoked"] == 0
