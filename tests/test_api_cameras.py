"""3.5–3.11: cameras, and del_camera's cascade to courses, records, snapshots and stored files."""

from __future__ import annotations

import base64

OFFLINE = {"err_code": 10002, "err_msg": "没有在线的采集端。"}
CAMERA_KEYS = [
    "camera_id", "camera_name", "image_id", "image_fdfs", "gather_id", "name_set",
    "stream_prop", "stream_url", "stream_mp4", "device_ip", "device_user", "device_pass",
    "device_cmd_port", "device_mirror", "device_osd", "device_twice", "device_show", "status",
    "clicks", "created", "updated",
]


async def test_add_and_list_camera(api):
    gather_id = await api.gatherer(name_pc="PC-7")
    await api.call("mod_gather", gather_id=gather_id, name_set="教学楼")
    added = await api.call(
        "add_camera", camera_name="一班", gather_id=gather_id, stream_prop=2,
        stream_url="rtsp://10.1.1.1:554/live",
    )
    assert added["err_code"] == 0 and added["transmit"] == OFFLINE
    mp4 = await api.call(
        "add_camera", camera_name="二班", gather_id=gather_id, stream_prop=1,
        stream_mp4="F:\\MP4\\a.mp4",
    )
    answer = await api.call("list_camera")
    assert answer["storage_addr"] == api.services.settings.base_url
    assert answer["total_num"] == 2
    newest, oldest = answer["data"]
    assert list(newest) == CAMERA_KEYS
    assert newest["camera_id"] == mp4["camera_id"] and newest["stream_mp4"] == "F:\\MP4\\a.mp4"
    assert oldest["camera_id"] == added["camera_id"]
    assert oldest["stream_prop"] == 2 and oldest["stream_url"] == "rtsp://10.1.1.1:554/live"
    assert oldest["name_set"] == "教学楼" and oldest["gather_id"] == gather_id
    assert oldest["image_id"] == 0 and oldest["image_fdfs"] == "" and oldest["clicks"] == 0


async def test_add_camera_refusals(api):
    gather_id = await api.gatherer()
    cases = [
        ({"gather_id": gather_id, "stream_prop": 1, "stream_mp4": "/a.mp4"}, 1008, "camera_name"),
        ({"camera_name": "  ", "gather_id": gather_id, "stream_prop": 1, "stream_mp4": "/a.mp4"},
         1008, "camera_name"),
        ({"camera_name": "x", "stream_prop": 1, "stream_mp4": "/a.mp4"}, 1010, "gather_id"),
        ({"camera_name": "x", "gather_id": 404, "stream_prop": 1, "stream_mp4": "/a.mp4"},
         1010, "gather_id"),
        ({"camera_name": "x", "gather_id": gather_id, "stream_prop": 1}, 1008, "stream_mp4"),
        ({"camera_name": "x", "gather_id": gather_id, "stream_prop": 2}, 1008, "stream_url"),
        ({"camera_name": "x", "gather_id": gather_id, "stream_prop": 2,
          "stream_url": "http://evil/"}, 1009, "stream_url"),
        ({"camera_name": "x", "gather_id": gather_id, "stream_prop": 0,
          "stream_url": "rtsp://a/"}, 1009, "stream_prop"),
        ({"camera_name": "x", "gather_id": gather_id, "stream_url": "rtsp://a/"}, 1009,
         "stream_prop"),
        ({"camera_name": "x" * 129, "gather_id": gather_id, "stream_prop": 1,
          "stream_mp4": "/a.mp4"}, 1009, "camera_name"),
        # Mode 1 is a file on the gatherer: never a URL the agent would fetch (SSRF).
        *(({"camera_name": "x", "gather_id": gather_id, "stream_prop": 1, "stream_mp4": path},
           1009, "stream_mp4")
          for path in ("http://127.0.0.1:18480/demo.mp4", "file:///etc/passwd", "concat:/a|/b",
                       "rtsp://10.0.0.1/x", "//fileserver/share/a.mp4", "\\\\server\\a.mp4",
                       "videos/a.mp4")),
    ]
    for params, code, param in cases:
        answer = await api.call("add_camera", **params)
        assert (answer["err_code"], answer.get("err_param")) == (code, param), params
    assert (await api.call("list_camera"))["total_num"] == 0


async def test_mod_camera(api):
    gather_id = await api.gatherer()
    camera_id = await api.camera(gather_id)
    password = base64.b64encode(b"s3cret").decode()
    answer = await api.call(
        "mod_camera", camera_id=camera_id, camera_name="新名字", stream_prop=0,
        device_ip="192.168.1.65", device_user="admin", device_pass=password,
        device_cmd_port=8000, device_mirror=1, device_osd=1, device_twice=1, device_show=0,
    )
    assert answer == {"err_code": 0, "err_msg": "OK", "transmit": OFFLINE}
    refused = await api.call("mod_camera", camera_id=camera_id, camera_name="x", stream_prop=1,
                             stream_mp4="http://127.0.0.1/x.mp4")
    assert (refused["err_code"], refused["err_param"]) == (1009, "stream_mp4")
    [row] = (await api.call("list_camera"))["data"]
    assert row["camera_name"] == "新名字" and row["stream_prop"] == 0
    assert row["device_ip"] == "192.168.1.65" and row["device_pass"] == password
    assert (row["device_mirror"], row["device_osd"], row["device_twice"], row["device_show"]) == (
        1, 1, 1, 0)
    assert row["stream_mp4"] == "/videos/a.mp4"  # untouched fields stay


async def test_mod_camera_refusals_change_nothing(api):
    gather_id = await api.gatherer()
    camera_id = await api.camera(gather_id, "原名")
    cases = [
        ({"camera_name": "x"}, 1010, "camera_id"),
        ({"camera_id": 999, "camera_name": "x"}, 1010, "camera_id"),
        ({"camera_id": camera_id}, 1008, "camera_name"),
        ({"camera_id": camera_id, "camera_name": "x", "stream_prop": 2}, 1008, "stream_url"),
        ({"camera_id": camera_id, "camera_name": "x", "stream_prop": 0}, 1008, "device_ip"),
        ({"camera_id": camera_id, "camera_name": "x", "stream_prop": 3}, 1009, "stream_prop"),
        ({"camera_id": camera_id, "camera_name": "x", "device_pass": "not base64!"}, 1009,
         "device_pass"),
        ({"camera_id": camera_id, "camera_name": "x", "device_cmd_port": 70000}, 1009,
         "device_cmd_port"),
        ({"camera_id": camera_id, "camera_name": "x", "device_ip": "1.2.3.4; rm -rf /"}, 1009,
         "device_ip"),
        ({"camera_id": camera_id, "camera_name": "x", "device_osd": 2}, 1009, "device_osd"),
    ]
    for params, code, param in cases:
        answer = await api.call("mod_camera", **params)
        assert (answer["err_code"], answer.get("err_param")) == (code, param), params
    [row] = (await api.call("list_camera"))["data"]
    assert row["camera_name"] == "原名" and row["stream_prop"] == 1


async def test_status_start_and_stop(api):
    gather_id = await api.gatherer()
    camera_id = await api.camera(gather_id)
    status = await api.call("get_camera_status", camera_id=camera_id)
    # An offline gatherer's camera records nothing as far as the relay knows.
    assert status == {"err_code": 0, "err_msg": "OK", "camera_id": camera_id, "status": 0,
                      "recording": 0, "spool_bytes": 0, "upload_error": "", "record_error": ""}
    assert await api.services.catalogue.cameras.set_statuses(
        [(gather_id, camera_id, 1), (gather_id + 1, camera_id, 0)]) == [True, False]
    assert (await api.call("get_camera_status", camera_id=camera_id))["status"] == 1
    cameras = api.services.catalogue.cameras
    # stop stops and start starts, however often they are called (no toggling).
    for _ in range(2):
        stopped = await api.call("stop_camera", camera_id=camera_id)
        assert stopped == {"err_code": 0, "err_msg": "OK", "transmit": OFFLINE}
        assert (await cameras.get(camera_id))["started"] == 0
    for _ in range(2):
        assert (await api.call("start_camera", camera_id=camera_id))["transmit"] == OFFLINE
        assert (await cameras.get(camera_id))["started"] == 1
    for name in ("get_camera_status", "start_camera", "stop_camera"):
        assert (await api.call(name, camera_id=12345))["err_code"] == 1010
        assert (await api.call(name))["err_code"] == 1010


async def test_del_camera_cascades_to_rows_and_files(api):
    gather_id = await api.gatherer()
    doomed = await api.camera(gather_id, "删")
    kept = await api.camera(gather_id, "留")
    catalogue = api.services.catalogue
    doomed_files = []
    for camera_id, files in ((doomed, doomed_files), (kept, [])):
        video = api.store(f"records/{camera_id}/r1.mp4", b"video")
        thumb = api.store(f"records/{camera_id}/r1.jpg", b"jpeg")
        snap = api.store(f"snapshots/{camera_id}/s1.jpg", b"snap")
        await catalogue.records.add(camera_id, video, thumb, 5, 60)
        await catalogue.cameras.add_snapshot(camera_id, snap)
        await api.call("add_course", camera_id=camera_id, week_id=1, elapse_sec=60,
                       start_time="08:00:00")
        files.extend([video, thumb, snap])
    paths = [api.services.storage.path_of(fdfs) for fdfs in doomed_files]
    assert all(path.exists() for path in paths)

    answer = await api.call("del_camera", camera_id=doomed)
    assert answer == {"err_code": 0, "err_msg": "OK", "transmit": OFFLINE}
    assert not any(path.exists() for path in paths)
    cameras = (await api.call("list_camera"))["data"]
    assert [row["camera_id"] for row in cameras] == [kept]
    assert cameras[0]["image_fdfs"].endswith(f"snapshots/{kept}/s1.jpg")
    records = (await api.call("list_record"))["data"]
    assert [row["camera_id"] for row in records] == [kept]
    assert (await api.call("list_course", camera_id=doomed))["err_code"] == 1010
    assert (await api.call("list_course", camera_id=kept))["total_num"] == 1
    kept_files = api.services.settings.files_dir.rglob("*")
    assert sorted(p.name for p in kept_files if p.is_file()) == ["r1.jpg", "r1.mp4", "s1.jpg"]


async def test_del_camera_lists_are_all_or_nothing(api):
    gather_id = await api.gatherer()
    first, second, third = [await api.camera(gather_id, f"c{i}") for i in range(3)]
    answer = await api.call("del_camera", camera_id=f"{first},{second},999")
    assert answer["err_code"] == 1010
    assert (await api.call("list_camera"))["total_num"] == 3
    for junk in ("1,,2", "1,a", ",", "1;2", "-1", "0", "1, 2", "%s" % ("1," * 1001) + "1"):
        assert (await api.call("del_camera", camera_id=junk))["err_code"] == 1010, junk
    assert (await api.call("list_camera"))["total_num"] == 3
    both = await api.call("del_camera", camera_id=f"{first},{second},{first}")
    assert both["err_code"] == 0
    assert [row["camera_id"] for row in (await api.call("list_camera"))["data"]] == [third]


async def test_del_camera_on_two_gatherers_reports_each(api):
    one = await api.gatherer("aa:00:00:00:00:01")
    two = await api.gatherer("aa:00:00:00:00:02")
    a, b = await api.camera(one), await api.camera(two)
    answer = await api.call("del_camera", camera_id=f"{a},{b}")
    assert answer["err_code"] == 0
    transmit = answer["transmit"]
    assert transmit["err_code"] == 10002
    assert [entry["gather_id"] for entry in transmit["gathers"]] == [one, two]
    assert all(entry["err_code"] == 10002 for entry in transmit["gathers"])
