"""The agent's weekly timetable: windows in the relay's zone, edges, a stepped clock."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from relay.agent.schedule import current_course, seconds_to_change, starts_within, zone_of

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str, zone: dt.tzinfo = SHANGHAI) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


# 2026-12-02 is a Wednesday: week_id 3 (0 = Sunday).
LESSON = {"course_id": 7, "week_id": 3, "start_sec": 8 * 3600, "elapse_sec": 45 * 60,
          "repeat_id": 2}


def test_a_window_holds_its_start_and_not_its_end():
    courses = [LESSON]
    assert current_course(courses, at("2026-12-02 07:59:59"), SHANGHAI) is None
    assert current_course(courses, at("2026-12-02 08:00:00"), SHANGHAI) == LESSON
    assert current_course(courses, at("2026-12-02 08:44:59"), SHANGHAI) == LESSON
    assert current_course(courses, at("2026-12-02 08:45:00"), SHANGHAI) is None
    # Another weekday, same time: no lesson.
    assert current_course(courses, at("2026-12-03 08:10:00"), SHANGHAI) is None
    # Sunday is week_id 0.
    sunday = {**LESSON, "week_id": 0}
    assert current_course([sunday], at("2026-12-06 08:10:00"), SHANGHAI) == sunday


def test_times_are_read_in_the_relays_zone_not_the_agents():
    # 08:10 in Shanghai is 00:10 UTC: an agent on UTC still records the Shanghai lesson.
    moment = at("2026-12-02 08:10:00")
    assert current_course([LESSON], moment, zone_of({"zone": "Asia/Shanghai"})) == LESSON
    assert current_course([LESSON], moment, zone_of({"zone": "UTC"})) is None
    # Without a zone name, the UTC offset the relay sent.
    assert current_course([LESSON], moment, zone_of({"zone": "", "utc_offset": 8 * 3600})) == LESSON
    assert zone_of({"zone": "Mars/Olympus", "utc_offset": 3600}) == dt.timezone(dt.timedelta(hours=1))
    assert zone_of({}) is None
    assert zone_of({"utc_offset": 10**9}) is None


def test_seconds_to_the_next_edge():
    courses = [LESSON]
    assert abs(seconds_to_change(courses, at("2026-12-02 07:59:50"), SHANGHAI) - 10) < 1e-6
    assert abs(seconds_to_change(courses, at("2026-12-02 08:44:30"), SHANGHAI) - 30) < 1e-6
    assert seconds_to_change(courses, at("2026-12-02 12:00:00"), SHANGHAI, longest=60) == 60
    assert seconds_to_change([], at("2026-12-02 12:00:00"), SHANGHAI, longest=5) == 5


def test_a_stepped_clock_is_followed_at_the_next_check():
    courses = [LESSON]
    before = at("2026-12-02 07:30:00")
    assert current_course(courses, before, SHANGHAI) is None
    assert current_course(courses, before + 3600, SHANGHAI) == LESSON  # stepped an hour ahead


def test_malformed_courses_are_ignored():
    bad = [{"week_id": "x", "start_sec": 0, "elapse_sec": 10}, {"week_id": 3}, LESSON]
    assert current_course(bad, at("2026-12-02 08:00:01"), SHANGHAI) == LESSON
    assert seconds_to_change(bad, at("2026-12-02 07:59:59"), SHANGHAI) > 0


def test_a_course_starting_soon_is_seen_ahead_even_past_midnight():
    assert starts_within([LESSON], at("2026-12-02 07:59:51"), 10, SHANGHAI)
    assert not starts_within([LESSON], at("2026-12-02 07:59:40"), 10, SHANGHAI)
    assert not starts_within([LESSON], at("2026-12-02 08:00:01"), 10, SHANGHAI)  # already on
    thursday_midnight = {**LESSON, "week_id": 4, "start_sec": 2}
    assert starts_within([thursday_midnight], at("2026-12-02 23:59:55"), 10, SHANGHAI)
    assert not starts_within([thursday_midnight], at("2026-12-02 23:59:40"), 10, SHANGHAI)
