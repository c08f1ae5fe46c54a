"""How many agents the relay takes in at once, and when each of the others should come back.

An agent that is let in but not welcomed within 20 s gives up and dials again; a relay that lets
everyone in at once (a restart: thousands of agents within seconds) ends up working for agents that
have already gone. ``Admission`` lets in as many as it welcomes in ``target_wait`` seconds (at
least ``floor``, the ``agent_admit`` setting).

Each of the others is answered at once, before the WebSocket upgrade, with HTTP 503 and a
``Retry-After`` that is an appointment: refused agents are given successive times, spaced at the
rate agents are being welcomed, after the ones let in and the appointments still to come, so they
come back about as fast as they can be served, neither all at once nor leaving the relay idle. An
appointment counts only until it is due (an agent refused again gets a new one; its old one does
not push the others back).

The rate is the one measured over the last seconds, raised by ``PROBE``: while agents are kept
waiting, the welcomes that go out are those the appointments let come back, so a rate taken as it
is would never rise to what the relay can do. Asking a little more each time finds it: when the
relay cannot keep up, agents wait longer for their welcomes, fewer are let in, and the measured
rate is the relay's own. It is a wall-clock rate, so a relay that gets little CPU (a busy machine)
lets in only as many as it really welcomes in time.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque

#: How long the agents let in may wait for their welcomes (an agent gives up after 20 s).
TARGET_WAIT = 5.0
#: How much faster than measured agents are asked back, and the rate assumed at least.
PROBE = 1.5
MIN_RATE = 500.0
#: Seconds over which the welcome rate is measured.
WINDOW = 3.0
MAX_RETRY_AFTER = 30


class Admission:
    def __init__(self, floor: int, target_wait: float = TARGET_WAIT) -> None:
        self.floor = floor
        self.target_wait = target_wait
        self.pending = 0
        self.refused = 0
        self._welcomed: deque[float] = deque()  # when recent welcomes went out
        self._appointments: deque[float] = deque()  # when refused agents are due back

    def measured(self) -> float:
        """Welcomes a second over the last ``WINDOW`` seconds."""
        horizon = time.monotonic() - WINDOW
        while self._welcomed and self._welcomed[0] < horizon:
            self._welcomed.popleft()
        return len(self._welcomed) / WINDOW

    def rate(self) -> float:
        """Welcomes a second to plan appointments for: the measured rate raised by ``PROBE``
        (``MIN_RATE`` at least, as on a cold start)."""
        return max(MIN_RATE, self.measured()) * PROBE

    def capacity(self) -> int:
        """Agents let in at once: ``floor``, or what ``target_wait`` seconds of welcomes are."""
        return max(self.floor, int(self.measured() * PROBE * self.target_wait))

    def enter(self) -> bool:
        """Let one more agent in, if there is room; ``leave`` must follow."""
        if self.pending >= self.capacity():
            self.refused += 1
            return False
        self.pending += 1
        return True

    def leave(self, welcomed: bool) -> None:
        self.pending -= 1
        if welcomed:
            self._welcomed.append(time.monotonic())

    def retry_after(self) -> int:
        """Whole seconds until this refused agent's appointment: after the agents let in and the
        appointments not yet due, at the rate of ``rate``."""
        now = time.monotonic()
        while self._appointments and self._appointments[0] <= now:
            self._appointments.popleft()
        due = now + (self.pending + len(self._appointments) + 1) / self.rate()
        self._appointments.append(due)
        wait = (due - now) * random.uniform(0.9, 1.1)
        return min(MAX_RETRY_AFTER, max(1, math.ceil(wait)))
