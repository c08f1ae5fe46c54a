"""The count of failed sign-ins that keeps anyone from guessing passwords at speed.

``FailedSignIns`` counts in this process; a cluster shares one count in Redis
(``relay.cluster.throttle``), so a guesser gains nothing by spreading attempts over the nodes.
Both offer ``blocked``, ``attempt`` and ``succeeded`` (``SignInThrottle``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol


class SignInThrottle(Protocol):
    limit: int
    window: float

    async def blocked(self, address: str, account: str) -> bool: ...

    async def attempt(self, address: str, account: str) -> bool:
        """Count an attempt before its password is checked; False (uncounted) when over a limit."""
        ...

    async def succeeded(self, address: str, account: str) -> None:
        """The password was right: forget this account's failures from this address, only."""
        ...


MAX_FAILURES = 10
FAILURE_WINDOW = 15 * 60


class FailedSignIns:
    """Counts failed sign-ins per client address and per account over a sliding window.

    Either count at ``limit`` refuses the next attempt: an address cannot guess on, nor can many
    addresses guess one account's password together. A correct password clears only that
    account's failures from that address: another account signing in never wipes the failures
    against the one being guessed (9 wrong guesses for ``boss``, then ``bob`` signs in, used to
    start the count over), nor does the real owner signing in lift a guesser elsewhere.

    Nothing is remembered past the window, so memory stays bounded by what one window sees.
    Behind a reverse proxy every client shares the proxy's address: put the limit on the proxy
    there, or accept that it is shared (the per-account count still holds).
    """

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        # Each failure, once under its address and once under its account: (when, the other one).
        self._by_address: dict[str, deque[tuple[float, str]]] = {}
        self._by_account: dict[str, deque[tuple[float, str]]] = {}

    def _recent(self, table: dict[str, deque[tuple[float, str]]], key: str
                ) -> deque[tuple[float, str]]:
        horizon = time.monotonic() - self.window
        failures = table.get(key, deque())
        while failures and failures[0][0] < horizon:
            failures.popleft()
        if len(table) > 10_000:
            for stale in [k for k, value in table.items() if not value or value[-1][0] < horizon]:
                del table[stale]
        return failures

    async def blocked(self, address: str, account: str) -> bool:
        return self.blocked_now(address, account)

    def blocked_now(self, address: str, account: str) -> bool:
        return (len(self._recent(self._by_address, address)) >= self.limit
                or len(self._recent(self._by_account, account)) >= self.limit)

    async def attempt(self, address: str, account: str) -> bool:
        return self.attempt_now(address, account)

    def attempt_now(self, address: str, account: str) -> bool:
        """Count an attempt before its password is checked; False (uncounted) when over a limit.

        Counting first, with no ``await`` between the check and the count, keeps parallel attempts
        from all slipping under the limit while their passwords are being checked.
        """
        if self.blocked_now(address, account):
            return False
        now = time.monotonic()
        self._by_address.setdefault(address, self._recent(self._by_address, address)).append(
            (now, account))
        self._by_account.setdefault(account, self._recent(self._by_account, account)).append(
            (now, address))
        return True

    async def succeeded(self, address: str, account: str) -> None:
        """The password was right: forget this account's failures from this address, only."""
        for table, key, other in ((self._by_address, address, account),
                                  (self._by_account, account, address)):
            kept = deque(entry for entry in table.get(key, ()) if entry[1] != other)
            if kept:
                table[key] = kept
            else:
                table.pop(key, None)
