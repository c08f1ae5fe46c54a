"""Password hashing with scrypt (memory-hard, in the standard library).

A stored hash reads ``scrypt$N$r$p$salt$hash`` (salt and hash in base64url) so the cost can be raised
later without breaking old hashes. Hashing runs in a worker thread: it takes ~0.1 s and 32 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets

_N, _R, _P = 2**15, 8, 1
#: The shortest password an account may have (``relay user`` and the console alike).
MIN_LENGTH = 8
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_MAXMEM
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def check_password_async(password: str, stored: str) -> bool:
    return await asyncio.to_thread(check_password, password, stored)


@functools.cache
def dummy_hash() -> str:
    """A hash to check when the account does not exist: a wrong name then costs as much as a wrong
    password, so sign-in timing does not reveal which accounts exist."""
    return hash_password(secrets.token_urlsafe(16))
