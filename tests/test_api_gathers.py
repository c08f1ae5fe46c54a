"""3.3 list_gather and 3.4 mod_gather, and the paging rules every list shares."""

from __future__ import annotations

import re

OFFLINE = {"err_code": 10002, "err_msg": "没有在线的采集端。"}
TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


async def test_list_gather_fields(api):
    gather_id = await api.gatherer("aa:bb:cc:dd:ee:01", ip_addr="10.0.0.5", name_pc="PC-1",
                                   os_name="Windows7")
    answer = await api.call("list_gather")
    assert answer["total_num"] == 1 and answer["max_page"] == 1
    assert answer["cur_page"] == 1 and answer["per_page"] == 10
    [row] = answer["data"]
    assert list(row) == [
        "gather_id", "mac_addr", "ip_addr", "name_pc", "name_set", "os_name", "main_rate",
        "sub_rate", "auto_dvr", "auto_fds", "slice_val", "inter_val", "snap_val", "status",
        "created", "updated",
    ]
    assert row["gather_id"] == gather_id and row["mac_addr"] == "aa:bb:cc:dd:ee:01"
    assert row["ip_addr"] == "10.0.0.5" and row["name_pc"] == "PC-1" and row["os_name"] == "Windows7"
    assert (row["main_rate"], row["sub_rate"], row["auto_dvr"], row["auto_fds"]) == (1024, 512, 0, 1)
    assert (row["slice_val"], row["inter_val"], row["snap_val"], row["status"]) == (0, 0, 2, 1)
    assert TIME.fullmatch(row["created"]) and TIME.fullmatch(row["updated"])


async def test_registration_updates_the_same_gatherer(api):
    first = await api.gatherer("aa:bb:cc:dd:ee:02", ip_addr="10.0.0.1")
    again = await api.gatherer("aa:bb:cc:dd:ee:02", ip_addr="10.0.0.2")
    assert first == again
    [row] = (await api.call("list_gather"))["data"]
    assert row["ip_addr"] == "10.0.0.2"


async def test_paging_edges(api):
    ids = [await api.gatherer(f"aa:bb:cc:dd:{i // 256:02x}:{i % 256:02x}") for i in range(25)]
    page1 = await api.call("list_gather", per=10)
    assert page1["total_num"] == 25 and page1["max_page"] == 3
    assert [row["gather_id"] for row in page1["data"]] == ids[::-1][:10]  # newest first
    page3 = await api.call("list_gather", per=10, cur=3)
    assert [row["gather_id"] for row in page3["data"]] == ids[::-1][20:]
    beyond = await api.call("list_gather", per=10, cur=4)
    assert beyond["data"] == [] and beyond["cur_page"] == 4 and beyond["total_num"] == 25
    exact = await api.call("list_gather", per=25)
    assert exact["max_page"] == 1 and len(exact["data"]) == 25
    capped = await api.call("list_gather", per=1000000)
    assert capped["per_page"] == 100 and capped["max_page"] == 1
    one = await api.call("list_gather", per=1)
    assert one["max_page"] == 25 and len(one["data"]) == 1


async def test_empty_list_has_zero_pages(api):
    answer = await api.call("list_gather")
    assert answer["total_num"] == 0 and answer["max_page"] == 0 and answer["data"] == []


async def test_bad_paging_values_are_refused(api):
    for key in ("cur", "per"):
        for value in ("0", "-1", "abc", "1.5", "1e3", " 1", "0x10", "１", "99999999999999999999"):
            answer = await api.call("list_gather", **{key: value})
            assert answer["err_code"] == 1009, (key, value)
            assert answer["err_param"] == key


async def test_mod_gather_changes_settings_and_reports_transmit(api):
    gather_id = await api.gatherer()
    answer = await api.call(
        "mod_gather", gather_id=gather_id, name_set="采集端一", main_rate=2048, sub_rate=256,
        auto_dvr=1, auto_fds=0, slice_val=30, inter_val=3, snap_val=5,
    )
    assert answer == {"err_code": 0, "err_msg": "OK", "transmit": OFFLINE}
    [row] = (await api.call("list_gather"))["data"]
    assert row["name_set"] == "采集端一"
    assert (row["main_rate"], row["sub_rate"], row["auto_dvr"], row["auto_fds"]) == (2048, 256, 1, 0)
    assert (row["slice_val"], row["inter_val"], row["snap_val"]) == (30, 3, 5)
    partial = await api.call("mod_gather", gather_id=gather_id, snap_val=1)
    assert partial["err_code"] == 0
    [row] = (await api.call("list_gather"))["data"]
    assert row["snap_val"] == 1 and row["main_rate"] == 2048


async def test_mod_gather_refusals_change_nothing(api):
    gather_id = await api.gatherer()
    assert (await api.call("mod_gather"))["err_code"] == 1010
    assert (await api.call("mod_gather", gather_id=999))["err_code"] == 1010
    assert (await api.call("mod_gather", gather_id="x"))["err_code"] == 1010
    for key, value in (("slice_val", 31), ("inter_val", 4), ("auto_dvr", 2), ("snap_val", 0),
                       ("main_rate", -5), ("sub_rate", "fast"), ("name_set", "a" * 129),
                       ("name_set", "bad\x00name")):
        params = {"name_set": "ok", key: value}
        answer = await api.call("mod_gather", gather_id=gather_id, **params)
        assert answer["err_code"] == 1009 and answer["err_param"] == key, (key, value)
    [row] = (await api.call("list_gather"))["data"]
    assert row["name_set"] != "ok" and row["slice_val"] == 0
