"""HMAC signatures for everything we hand out and take back: API tokens, sessions, play tickets.

A signed string is its fields joined by ``.`` with a base64url HMAC-SHA256 appended; every field is
URL-safe, so the result works in a query string and as a path segment alike. ``purpose`` separates
the kinds: a play ticket never verifies as an API token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_FIELD = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Signed strings verified recently, remembered so that a client calling with the same token over
#: and over pays for one HMAC; only intact ones are kept, so a forgery costs its HMAC every time.
MEMO_SIZE = 4096


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("signing key too short")
        self._key = key
        self._verified: dict[tuple[str, str], tuple[str, ...]] = {}

    def _mac(self, purpose: str, body: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\0{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, purpose: str, *fields: str | int) -> str:
        parts = [str(field) for field in fields]
        if not all(_FIELD.fullmatch(part) for part in parts):
            raise ValueError("signed fields must be short and URL-safe")
        body = ".".join(parts)
        return f"{body}.{self._mac(purpose, body)}"

    def verify(self, purpose: str, signed: str, count: int) -> list[str] | None:
        """The ``count`` fields when ``signed`` is intact and made for ``purpose``; else None."""
        known = self._verified.get((purpose, signed))
        if known is not None:
            return list(known) if len(known) == count else None
        if len(signed) > 512:
            return None
        body, _, mac = signed.rpartition(".")
        parts = body.split(".")
        if len(parts) != count or not all(_FIELD.fullmatch(part) for part in parts):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(purpose, body).encode()):
            return None
        if len(self._verified) >= MEMO_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[(purpose, signed)] = tuple(parts)
        return parts
