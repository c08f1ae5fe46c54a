"""3.14–3.17: courses, with the time-format (1011), overlap (1012) and cross-day (1013) rules."""

from __future__ import annotations

import pytest

OFFLINE = {"err_code": 10002, "err_msg": "没有在线的采集端。"}


@pytest.fixture
async def camera(api):
    return await api.camera(await api.gatherer())


async def add(api, camera_id, start, elapse, week=3, spelling="elapse_sec"):
    return await api.call("add_course", camera_id=camera_id, week_id=week, start_time=start,
                          **{spelling: elapse})


async def test_add_and_list_course(api, camera):
    answer = await add(api, camera, "10:30:30", 3600, spelling="elapsed_sec")
    assert answer["err_code"] == 0 and answer["camera_id"] == camera
    assert answer["transmit"] == OFFLINE
    listing = await api.call("list_course", camera_id=camera)
    assert listing["total_num"] == 1 and listing["max_page"] == 1
    [row] = listing["data"]
    assert list(row) == ["course_id", "camera_id", "repeat_id", "week_id", "elapse_sec",
                         "start_time", "end_time", "created", "updated"]
    assert row["course_id"] == answer["course_id"] and row["repeat_id"] == 2
    assert row["week_id"] == 3 and row["elapse_sec"] == 3600
    assert row["start_time"].endswith(" 10:30:30") and row["end_time"].endswith(" 11:30:30")


async def test_list_course_counts_only_that_camera(api, camera):
    other = await api.camera(await api.gatherer("aa:00:00:00:00:09"), "其他")
    for hour in range(12):
        assert (await add(api, camera, f"{hour:02d}:00:00", 600))["err_code"] == 0
    assert (await add(api, other, "08:00:00", 600))["err_code"] == 0
    page2 = await api.call("list_course", camera_id=camera, cur=2, per=5)
    assert page2["total_num"] == 12 and page2["max_page"] == 3 and len(page2["data"]) == 5
    assert {row["camera_id"] for row in page2["data"]} == {camera}
    assert (await api.call("list_course", camera_id=other))["total_num"] == 1
    assert (await api.call("list_course"))["err_code"] == 1010
    assert (await api.call("list_course", camera_id=777))["err_code"] == 1010


@pytest.mark.parametrize(
    ("start", "elapse", "code"),
    [
        ("00:00:00", 1, 0),
        ("23:59:58", 1, 0),           # ends 23:59:59: same day
        ("23:00:00", 3599, 0),        # ends 23:59:59
        ("23:00:00", 3600, 1013),     # ends 24:00:00: past 23:59:59
        ("23:59:59", 1, 1013),
        ("00:00:00", 86399, 0),
        ("00:00:00", 86400, 1013),
        ("12:00:00", 10**9, 1013),
        ("2017-05-10 12:12:12", 60, 0),  # the date part is accepted and ignored
        ("24:00:00", 60, 1011),
        ("12:60:00", 60, 1011),
        ("12:00:60", 60, 1011),
        ("9:00:00", 60, 1011),
        ("12:00", 60, 1011),
        ("noon", 60, 1011),
        ("12:00:00", 0, 1011),
        ("12:00:00", -5, 1011),
        ("12:00:00", "1h", 1011),
        ("12:00:00' OR '1'='1", 60, 1011),
    ],
)
async def test_time_rules(api, camera, start, elapse, code):
    answer = await add(api, camera, start, elapse)
    assert answer["err_code"] == code, answer
    total = (await api.call("list_course", camera_id=camera))["total_num"]
    assert total == (1 if code == 0 else 0)


@pytest.mark.parametrize("week", ["7", "-1", "x", ""])
async def test_bad_weekday_is_1011(api, camera, week):
    answer = await api.call("add_course", camera_id=camera, week_id=week, elapse_sec=60,
                            start_time="10:00:00")
    assert answer["err_code"] == 1011 and answer["err_param"] == "week_id"


# Existing course: 10:00:00-11:00:00 on Wednesday (week 3).
@pytest.mark.parametrize(
    ("start", "elapse", "week", "overlaps"),
    [
        ("09:00:00", 3600, 3, False),   # ends exactly when it starts: touching is allowed
        ("11:00:00", 600, 3, False),    # starts exactly when it ends
        ("09:30:00", 3600, 3, True),    # covers its start
        ("10:30:00", 3600, 3, True),    # covers its end
        ("10:15:00", 600, 3, True),     # inside it
        ("09:00:00", 10800, 3, True),   # around it
        ("10:00:00", 3600, 3, True),    # the same interval
        ("10:59:59", 1, 3, True),       # its last second
        ("10:00:00", 3600, 4, False),   # another weekday
    ],
)
async def test_overlap_matrix(api, camera, start, elapse, week, overlaps):
    existing = await add(api, camera, "10:00:00", 3600)
    answer = await add(api, camera, start, elapse, week=week)
    if overlaps:
        assert answer["err_code"] == 1012
        assert answer["err_msg"] == (
            f"输入时间与已有时间发生重叠: 10:00:00-11:00:00 (course_id={existing['course_id']})"
        )
    else:
        assert answer["err_code"] == 0


async def test_overlap_is_per_camera(api, camera):
    other = await api.camera(await api.gatherer("aa:00:00:00:00:08"), "其他")
    assert (await add(api, camera, "10:00:00", 3600))["err_code"] == 0
    assert (await add(api, other, "10:00:00", 3600))["err_code"] == 0


async def test_mod_course(api, camera):
    first = await add(api, camera, "08:00:00", 3600)
    second = await add(api, camera, "10:00:00", 3600)
    moved = await api.call("mod_course", course_id=first["course_id"], camera_id=camera, week_id=3,
                           elapse_sec=1800, start_time="08:30:00")
    assert moved == {"err_code": 0, "err_msg": "OK", "course_id": first["course_id"],
                     "camera_id": camera, "transmit": OFFLINE}
    # Modifying a course may keep its own interval: it does not overlap itself.
    same = await api.call("mod_course", course_id=second["course_id"], camera_id=camera,
                          week_id=3, elapsed_sec=3600, start_time="10:00:00")
    assert same["err_code"] == 0
    clash = await api.call("mod_course", course_id=first["course_id"], camera_id=camera,
                           week_id=3, elapse_sec=3600, start_time="09:30:00")
    assert clash["err_code"] == 1012 and "10:00:00-11:00:00" in clash["err_msg"]
    rows = {row["course_id"]: row for row in
            (await api.call("list_course", camera_id=camera))["data"]}
    assert rows[first["course_id"]]["start_time"].endswith("08:30:00")
    assert rows[first["course_id"]]["elapse_sec"] == 1800


async def test_mod_course_refusals(api, camera):
    course = await add(api, camera, "08:00:00", 60)
    base = {"course_id": course["course_id"], "camera_id": camera, "week_id": 1,
            "elapse_sec": 60, "start_time": "09:00:00"}
    for change, code, param in (
        ({"course_id": 999}, 1010, "course_id"),
        ({"course_id": None}, 1010, "course_id"),
        ({"camera_id": 999}, 1010, "camera_id"),
        ({"camera_id": None}, 1010, "camera_id"),
        ({"start_time": "25:00:00"}, 1011, "start_time"),
        ({"elapse_sec": None}, 1011, "elapse_sec"),
        ({"start_time": "23:59:00", "elapse_sec": 60}, 1013, "elapse_sec"),
    ):
        answer = await api.call("mod_course", **{**base, **change})
        assert (answer["err_code"], answer.get("err_param")) == (code, param), change
    conflicting = await api.call("mod_course", **base, elapsed_sec=61)
    assert conflicting["err_code"] == 1009
    [row] = (await api.call("list_course", camera_id=camera))["data"]
    assert row["start_time"].endswith("08:00:00") and row["week_id"] == 3


async def test_mod_course_can_move_a_course_to_another_camera(api, camera):
    other_gatherer = await api.gatherer("aa:00:00:00:00:07")
    other = await api.camera(other_gatherer, "其他")
    first_gatherer = (await api.services.catalogue.cameras.get(camera))["gather_id"]
    course = await add(api, camera, "08:00:00", 60)
    moved = await api.call("mod_course", course_id=course["course_id"], camera_id=other,
                           week_id=3, elapse_sec=60, start_time="08:00:00")
    assert moved["err_code"] == 0 and moved["camera_id"] == other
    # Both gatherers are told (both offline here).
    told = [entry["gather_id"] for entry in moved["transmit"]["gathers"]]
    assert told == [other_gatherer, first_gatherer]
    assert (await api.call("list_course", camera_id=camera))["total_num"] == 0
    assert (await api.call("list_course", camera_id=other))["total_num"] == 1


async def test_del_course(api, camera):
    ids = [(await add(api, camera, f"0{h}:00:00", 60))["course_id"] for h in range(3)]
    refused = await api.call("del_course", course_id=f"{ids[0]},999")
    assert refused["err_code"] == 1010
    assert (await api.call("list_course", camera_id=camera))["total_num"] == 3
    answer = await api.call("del_course", course_id=f"{ids[0]},{ids[1]}")
    assert answer == {"err_code": 0, "err_msg": "OK", "transmit": OFFLINE}
    [row] = (await api.call("list_course", camera_id=camera))["data"]
    assert row["course_id"] == ids[2]
    assert (await api.call("del_course"))["err_code"] == 1010
