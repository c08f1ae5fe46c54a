"""The weekly timetable: is a camera inside one of its course windows now, and when that changes.

Courses come from the relay (``week_id`` 0 = Sunday … 6, ``start_sec`` seconds after midnight,
``elapse_sec``; a course never crosses midnight). Their times are the relay's wall-clock times, so
they are read in the zone the relay names in the desired state (``zone``, an IANA name; else
``utc_offset`` seconds; else this machine's zone). Everything here is a pure function of the
courses and a unix time: a clock stepped by an hour is followed at the next check.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

DAY = 86_400


def zone_of(state: dict[str, Any]) -> dt.tzinfo | None:
    """The zone the relay's course times are in (None: this machine's own)."""
    name = state.get("zone")
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("unknown time zone %r from the relay; using its UTC offset", name[:64])
    offset = state.get("utc_offset")
    if type(offset) is int and -DAY < offset < DAY:
        return dt.timezone(dt.timedelta(seconds=offset))
    return None


def _local(now: float, zone: dt.tzinfo | None) -> tuple[int, int]:
    """(week_id, seconds since midnight) of ``now`` in ``zone``."""
    moment = dt.datetime.fromtimestamp(now, zone) if zone else dt.datetime.fromtimestamp(now)
    week_id = (moment.weekday() + 1) % 7  # Python's Monday is 0; the API's Sunday is
    return week_id, moment.hour * 3600 + moment.minute * 60 + moment.second


def current_course(courses: Sequence[dict[str, Any]], now: float, zone: dt.tzinfo | None
                   ) -> dict[str, Any] | None:
    """The course whose window holds ``now``, if any."""
    week_id, second = _local(now, zone)
    for course in courses:
        try:
            start, length = int(course["start_sec"]), int(course["elapse_sec"])
            if int(course["week_id"]) == week_id and start <= second < start + length:
                return course
        except (KeyError, TypeError, ValueError):
            continue
    return None


def seconds_to_change(courses: Sequence[dict[str, Any]], now: float, zone: dt.tzinfo | None,
                      longest: float = 60.0) -> float:
    """Seconds until some window opens or closes (at most ``longest``, at least a tenth)."""
    week_id, second = _local(now, zone)
    fraction = now % 1
    best = longest
    for course in courses:
        try:
            start, end = int(course["start_sec"]), int(course["start_sec"]) + int(course["elapse_sec"])
            if int(course["week_id"]) != week_id:
                continue
        except (KeyError, TypeError, ValueError):
            continue
        for edge in (start, end):
            if edge > second:
                best = min(best, edge - second - fraction)
    return max(0.1, best)


def starts_within(courses: Sequence[dict[str, Any]], now: float, lead: float,
                  zone: dt.tzinfo | None) -> bool:
    """Some course's window opens within ``lead`` seconds of ``now`` (to open a stream early)."""
    first, last = _local(now, zone), _local(now + lead, zone)
    spans = ([(first[0], first[1], last[1])] if first[0] == last[0]
             else [(first[0], first[1], DAY), (last[0], 0, last[1])])  # past midnight
    for course in courses:
        try:
            week_id, start = int(course["week_id"]), int(course["start_sec"])
        except (KeyError, TypeError, ValueError):
            continue
        if any(week_id == day and begin <= start <= end for day, begin, end in spans):
            return True
    return False
