"""How many agents the relay takes in at once, and when the others should come back.

An agent that is let in but not welcomed within 20 s gives up and dials again; a relay that lets
everyone in at once (a restart, thousands of agents within seconds) ends up working for agents
that have already gone. ``Admission`` lets in as many as it has been welcoming in ``target_wait``
seconds (at least ``floor``, the ``agent_admit`` setting); the others are answered at once, before
the WebSocket upgrade, with HTTP 503 and a jittered ``Retry-After`` spread over the time the queue
needs to clear. (A let-in agent holds its place until its welcome, or ``HELLO_TIMEOUT`` at most.)
"""

from __future__ import annotations

import math
import random
import time
from collections import deque

#: How long, at the rate welcomes go out, the agents let in may have to wait for theirs.
TARGET_WAIT = 5.0
MAX_RETRY_AFTER = 30
RATE_WINDOW = 5.0


class Admission:
    def __init__(self, floor: int, target_wait: float = TARGET_WAIT) -> None:
        self.floor = floor  # let in at least this many at once (a cold start has no rate yet)
        self.target_wait = target_wait
        self.pending = 0
        self._welcomed: deque[float] = deque()  # when recent welcomes went out
        self.refused = 0

    def rate(self) -> float:
        """Welcomes a second, over the last few seconds."""
        horizon = time.monotonic() - RATE_WINDOW
        while self._welcomed and self._welcomed[0] < horizon:
            self._welcomed.popleft()
        return len(self._welcomed) / RATE_WINDOW

    def capacity(self) -> int:
        return max(self.floor, int(self.rate() * self.target_wait))

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
        """Whole seconds to come back after: over the time the agents let in need, jittered so
        the refused ones do not all come back in the same second."""
        clear = self.pending / max(self.rate(), self.floor / self.target_wait)
        return min(MAX_RETRY_AFTER, max(1, math.ceil(clear * random.uniform(1.0, 3.0))))
