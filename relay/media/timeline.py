"""90 kHz timelines that only go forward, whatever the pts they are given.

A source loops or reopens and counts from zero again; an agent restarts; a push restarts within a
GOP. A muxer, an MSE SourceBuffer and a push all need pts that only increase, so a pts that would
not move the timeline forward is placed one frame after the last, and the timeline goes on from there.
"""

from __future__ import annotations

from fractions import Fraction

from ..link.protocol import MEDIA_CLOCK

TIME_BASE = Fraction(1, MEDIA_CLOCK)
DEFAULT_STEP = MEDIA_CLOCK // 25  # a frame's duration until known


class Timeline:
    """Places 90 kHz pts on a forward-only timeline (the relay's fMP4 muxer: pts as they come, the
    frame duration learnt from the gaps between them)."""

    def __init__(self, *, learn_step: bool = True, start_at_zero: bool = False) -> None:
        self.last: int | None = None  # the last pts placed
        self.step = DEFAULT_STEP  # a frame's duration
        self._offset = 0  # from the pts given to the timeline
        self._learn_step = learn_step
        self._rebase = start_at_zero

    def new_pass(self, rate: Fraction | None = None) -> None:
        """The next pts starts a pass (an open, a loop of a file): it goes one frame after the last."""
        self._rebase = True
        if rate:
            self.step = max(1, round(MEDIA_CLOCK / rate))

    def place(self, pts: int | None) -> int:
        """``pts`` (90 kHz; None when unknown: one frame after the last) on the timeline."""
        after = self.last + self.step if self.last is not None else 0
        if pts is None:
            at = after
        else:
            if self._rebase:
                self._offset = after - pts
            at = pts + self._offset
            if self.last is not None:
                if at <= self.last:  # from an earlier time: continue after the last
                    self._offset += after - at
                    at = after
                elif self._learn_step and at - self.last <= MEDIA_CLOCK:
                    self.step = at - self.last
        self._rebase = False
        self.last = at
        return at

    def stamp(self, pts: int | None, time_base: Fraction | None) -> int:
        """A source timestamp in ``time_base`` on the timeline."""
        if pts is None or time_base is None:
            return self.place(None)
        return self.place(round(pts * time_base * MEDIA_CLOCK))


class Clock90(Timeline):
    """A source's clock (the agent): source timestamps → 90 kHz pts from 0, each pass continuing one
    frame after the last; a frame lasts 1/rate of the source (given to ``new_pass``)."""

    def __init__(self) -> None:
        super().__init__(learn_step=False, start_at_zero=True)
