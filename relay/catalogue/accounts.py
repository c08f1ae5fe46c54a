"""Accounts, their API credentials (``unionid``) and their /admin sign-in sessions."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from .. import passwords
from .cache import HotRows
from .database import Database
from .errors import AlreadyExists, NotFound
from .schema import accounts, sessions

CREDENTIAL_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


@dataclass(frozen=True)
class Account:
    account_id: int
    name: str
    is_admin: bool
    credential: str

    @functools.cached_property
    def credential_tag(self) -> str:
        """A short digest of the credential; tokens carry it so rotation voids them. (Computed once
        per account read: ``by_id`` hands the token checks of the next seconds the same object.)"""
        return hashlib.sha256(self.credential.encode()).hexdigest()[:16]


def new_credential() -> str:
    return secrets.token_urlsafe(24)  # 32 URL-safe characters


def _account(row) -> Account:  # type: ignore[no-untyped-def]
    return Account(row.account_id, row.name, bool(row.is_admin), row.credential)


def _account_of(rows: list[dict]) -> Account | None:
    if not rows:
        return None
    row = rows[0]
    return Account(row["account_id"], row["name"], bool(row["is_admin"]), row["credential"])


_BY_ID = select(accounts).where(accounts.c.account_id == bindparam("account_id"))
_BY_CREDENTIAL = select(accounts).where(accounts.c.credential == bindparam("credential"))


def _session_hash(session_token: str) -> str:
    return hashlib.sha256(session_token.encode()).hexdigest()


class Accounts:
    def __init__(self, db: Database, clock, hot: HotRows) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock
        self._hot = hot

    async def add(self, name: str, password: str, is_admin: bool) -> Account:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError("account names are 1-64 of A-Z a-z 0-9 _ . @ -")
        password_hash = await passwords.hash_password_async(password)
        now = int(self._clock())
        credential = new_credential()
        try:
            async with self._db.write() as conn:
                result = await conn.execute(
                    accounts.insert().values(
                        name=name,
                        password_hash=password_hash,
                        is_admin=int(is_admin),
                        credential=credential,
                        created=now,
                        updated=now,
                    )
                )
                account_id = result.inserted_primary_key[0]
        except IntegrityError as exc:
            raise AlreadyExists(f"account {name!r} already exists") from exc
        return Account(account_id, name, is_admin, credential)

    async def count(self) -> int:
        async with self._db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(accounts))).scalar_one()

    async def list(self) -> list[Account]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(accounts).order_by(accounts.c.name))
            return [_account(row) for row in rows]

    async def by_name(self, name: str) -> Account | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.name == name))).first()
        return _account(row) if row else None

    async def by_id(self, account_id: int) -> Account | None:
        """Every API call's token check reads this: from this node's cache (``cache.py``)."""
        async def load() -> Account | None:
            return _account_of(await self._db.lookup(_BY_ID, account_id=account_id))

        return await self._hot.accounts.get(account_id, load)

    async def by_credential(self, credential: str) -> Account | None:
        if not CREDENTIAL_PATTERN.fullmatch(credential):
            return None
        return _account_of(await self._db.lookup(_BY_CREDENTIAL, credential=credential))

    async def check_password(self, name: str, password: str) -> Account | None:
        """The account when ``password`` is right; None otherwise, in the same time either way."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.name == name))).first()
        stored = row.password_hash if row else passwords.dummy_hash()
        ok = await passwords.check_password_async(password, stored)
        return _account(row) if row and ok else None

    async def _set(self, name: str, **values: object) -> None:
        try:
            async with self._db.write() as conn:
                result = await conn.execute(
                    update(accounts)
                    .where(accounts.c.name == name)
                    .values(updated=int(self._clock()), **values)
                )
                if result.rowcount == 0:
                    raise NotFound(f"no account named {name!r}")
                await self._hot.notify(conn, "account")
        finally:
            self._hot.forget("account")  # after the commit: nothing read before it survives

    async def rotate(self, name: str) -> str:
        """Issue a new credential; every token of the old one stops working."""
        credential = new_credential()
        await self._set(name, credential=credential)
        return credential

    async def set_admin(self, name: str, is_admin: bool) -> None:
        await self._set(name, is_admin=int(is_admin))

    async def set_password(self, name: str, password: str, keep_session: str = "") -> None:
        """A new password; every sign-in session of the account ends with the old one (a stolen
        session must not outlive a reset), except ``keep_session``: the one setting it."""
        password_hash = await passwords.hash_password_async(password)
        kept = _session_hash(keep_session) if keep_session else ""
        try:
            async with self._db.write() as conn:
                found = (await conn.execute(
                    select(accounts.c.account_id).where(accounts.c.name == name))).first()
                if found is None:
                    raise NotFound(f"no account named {name!r}")
                await conn.execute(update(accounts).where(accounts.c.account_id == found[0])
                                   .values(password_hash=password_hash,
                                           updated=int(self._clock())))
                await conn.execute(delete(sessions).where(sessions.c.account_id == found[0])
                                   .where(sessions.c.session_hash != kept))
                await self._hot.notify(conn, "account", [found[0]])
        finally:
            self._hot.forget("account")

    # Sign-in sessions: the browser holds a random token, the table holds only its digest.

    async def open_session(self, account_id: int, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        now = int(self._clock())
        async with self._db.write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.expires < now))
            await conn.execute(
                sessions.insert().values(
                    session_hash=_session_hash(token),
                    account_id=account_id,
                    expires=now + ttl,
                    created=now,
                )
            )
        return token

    async def session_account(self, session_token: str) -> Account | None:
        now = int(self._clock())
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(accounts)
                    .join(sessions, sessions.c.account_id == accounts.c.account_id)
                    .where(sessions.c.session_hash == _session_hash(session_token))
                    .where(sessions.c.expires >= now)
                )
            ).first()
        return _account(row) if row else None

    async def close_session(self, session_token: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                delete(sessions).where(sessions.c.session_hash == _session_hash(session_token))
            )
