"""MAC addresses in one form: a gatherer is its machine, however the agent spells the address."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[:\-.]")
_HEX = re.compile(r"[0-9a-f]{12}")


def normal_mac(mac: str) -> str | None:
    """``mac`` as six lowercase hex pairs joined by ``:`` (``02:00:00:00:aa:01``), whatever
    separators it came with (``02000000AA01``, ``02-00-00-00-AA-01``, ``0200.0000.aa01``); None when
    it is not a MAC address."""
    digits = _SEPARATORS.sub("", mac).lower()
    if not _HEX.fullmatch(digits):
        return None
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))
