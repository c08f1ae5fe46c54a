"""Row ids as they arrive in URLs and messages: ASCII digits of bounded length, nothing else.

``str.isdigit`` also accepts ``²`` and other Unicode digits that ``int()`` then refuses, and a very
long digit string runs into ``int()``'s 4,300-digit limit; both used to answer 500. Every id a
client or agent sends is read here instead.
"""

from __future__ import annotations

import re

#: The largest id we hand out or accept: what every catalogue backend's id columns hold
#: (PostgreSQL's INTEGER; SQLite's are wider). A larger one names no row anywhere: it is refused
#: here, never sent to the database (where PostgreSQL's driver would fail on it).
MAX_ID = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,16}")


def parse_id(raw: object) -> int | None:
    """``raw`` as a positive id when it is 1-16 ASCII digits naming 1..MAX_ID; None otherwise."""
    if not isinstance(raw, str) or not _DIGITS.fullmatch(raw):
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None


def is_id(value: object) -> bool:
    """A JSON id: a real int (not a bool) in 1..MAX_ID."""
    return type(value) is int and 0 < value <= MAX_ID
