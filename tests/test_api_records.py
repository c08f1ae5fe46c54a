"""3.12 list_record, 3.13 del_record and 3.19 play_record, with stored files on disk."""

from __future__ import annotations

import pytest

from relay.present import Presenter, disptime


@pytest.fixture
async def camera(api):
    return await api.camera(await api.gatherer(), "三班")


async def record(api, camera_id, name="r", duration=60, size=6598647, start=None, end=None):
    video = api.store(f"records/{camera_id}/{name}.mp4", b"\x00" * 64)
    thumb = api.store(f"records/{camera_id}/{name}.jpg", b"\xff\xd8jpeg")
    record_id = await api.services.catalogue.records.add(camera_id, video, thumb, size, duration,
                                                         start, end)
    return record_id, video, thumb


async def test_list_record_fields(api, camera):
    record_id, video, thumb = await record(api, camera)
    answer = await api.call("list_record")
    assert answer["storage_addr"] == api.services.settings.base_url
    assert (answer["total_num"], answer["max_page"], answer["cur_page"], answer["per_page"]) == (
        1, 1, 1, 10)
    [row] = answer["data"]
    assert list(row) == ["record_id", "gather_id", "camera_id", "camera_name", "file_fdfs",
                         "image_fdfs", "file_size", "duration", "disptime", "clicks", "created",
                         "updated", "start_time", "end_time"]
    assert row["record_id"] == record_id and row["camera_id"] == camera
    assert row["camera_name"] == "三班" and row["file_fdfs"] == video
    assert row["image_fdfs"] == thumb and row["file_size"] == 6598647
    assert row["duration"] == 60 and row["disptime"] == "01:00"
    # storage_addr + file_fdfs is a working URL.
    response = await api.client.get(row["file_fdfs"])
    assert response.status == 200 and await response.read() == b"\x00" * 64
    assert response.headers["Content-Type"] == "video/mp4"


def test_disptime():
    assert [disptime(s) for s in (0, 59, 60, 3599, 3600, 3661, 86399)] == [
        "00:00", "00:59", "01:00", "59:59", "01:00:00", "01:01:01", "23:59:59"]


async def test_del_record_removes_rows_and_files(api, camera):
    first, video1, thumb1 = await record(api, camera, "a")
    second, video2, thumb2 = await record(api, camera, "b")
    storage = api.services.storage
    assert (await api.call("del_record", record_id=f"{first},404"))["err_code"] == 1010
    assert storage.path_of(video1).exists()
    answer = await api.call("del_record", record_id=first)
    assert answer == {"err_code": 0, "err_msg": "OK"}
    assert not storage.path_of(video1).exists() and not storage.path_of(thumb1).exists()
    assert storage.path_of(video2).exists() and storage.path_of(thumb2).exists()
    assert [row["record_id"] for row in (await api.call("list_record"))["data"]] == [second]
    assert (await api.client.get(video1)).status == 404
    for junk in ("", "x", "1,", "-3", "0"):
        assert (await api.call("del_record", record_id=junk))["err_code"] == 1010, junk


async def test_del_record_survives_an_already_missing_file(api, camera):
    record_id, video, _ = await record(api, camera)
    api.services.storage.path_of(video).unlink()
    assert (await api.call("del_record", record_id=record_id))["err_code"] == 0
    assert (await api.call("list_record"))["total_num"] == 0


async def test_play_record_page_plays_the_file(api, camera):
    record_id, video, _ = await record(api, camera)
    answer = await api.call("play_record", record_id=record_id, width=640, height=360)
    assert answer["err_code"] == 0
    url = answer["play_url"]
    assert url.startswith(f"{api.services.settings.base_url}/play/record/{record_id}?ticket=")
    assert "width=640" in url and "height=360" in url and api.token not in url
    path = url.removeprefix(api.services.settings.base_url)
    page = await api.client.get(path)
    assert page.status == 200 and "<video" in await page.text()
    assert (await api.services.catalogue.records.get(record_id))["clicks"] == 1
    info = await (await api.client.get(path.replace("?", "/info?", 1))).json()
    assert info["url"] == api.services.settings.base_url + video
    assert (await api.call("play_record", record_id=999))["err_code"] == 1010
    assert (await api.call("play_record", record_id=record_id, width=0))["err_code"] == 1009


async def test_times_are_the_recordings_own_in_the_configured_zone(api, camera):
    api.services.presenter = Presenter("Asia/Shanghai")
    now, api.clock.now = api.clock.now, 1_800_000_000  # uploaded long after it was recorded
    start = 1_700_000_000  # 2023-11-14 22:13:20 UTC
    await record(api, camera, duration=3725, start=start, end=start + 3726)
    api.clock.now = now  # (the token's time)
    [row] = (await api.call("list_record"))["data"]
    assert row["start_time"] == row["created"] == "2023-11-15 06:13:20"
    assert row["end_time"] == "2023-11-15 07:15:26"
    assert row["duration"] == 3725 and row["disptime"] == "01:02:05"
    assert row["updated"] == "2027-01-15 16:00:00"


async def test_list_record_of_one_camera(api, camera):
    other = await api.camera(await api.gatherer("00:11:22:33:44:66"), "四班")
    mine = [(await record(api, camera, f"m{n}"))[0] for n in range(3)]
    theirs, _, _ = await record(api, other, "t")
    everything = await api.call("list_record")
    assert [row["record_id"] for row in everything["data"]] == [theirs, *reversed(mine)]
    answer = await api.call("list_record", camera_id=camera, per=2)
    assert (answer["total_num"], answer["max_page"]) == (3, 2)
    assert [row["record_id"] for row in answer["data"]] == [mine[2], mine[1]]
    assert {row["camera_id"] for row in answer["data"]} == {camera}
    page_two = await api.call_path("list_record", camera_id=camera, per=2, cur=2)
    assert [row["record_id"] for row in page_two["data"]] == [mine[0]]
    answer = await api.call("list_record", camera_id=other)
    assert [row["record_id"] for row in answer["data"]] == [theirs]
    empty = await api.camera(await api.gatherer("00:11:22:33:44:77"), "空")
    answer = await api.call("list_record", camera_id=empty)
    assert (answer["err_code"], answer["total_num"], answer["data"]) == (0, 0, [])
    for bad in ("999", "0", "-1", "abc", "1,2", str(2**53 + 1)):
        answer = await api.call("list_record", camera_id=bad)
        assert (answer["err_code"], answer["err_param"]) == (1010, "camera_id"), bad


async def test_del_camera_removes_its_records_rows_and_files(api, camera):
    other = await api.camera(await api.gatherer("00:11:22:33:44:66"), "四班")
    kept, kept_video, kept_thumb = await record(api, other, "k")
    files = []
    for n in range(2):
        _, video, thumb = await record(api, camera, f"d{n}")
        files += [video, thumb]
    storage = api.services.storage
    assert all(storage.path_of(path).exists() for path in files)
    assert (await api.call("del_camera", camera_id=camera))["err_code"] == 0
    assert not any(storage.path_of(path).exists() for path in files)
    assert storage.path_of(kept_video).exists() and storage.path_of(kept_thumb).exists()
    answer = await api.call("list_record")
    assert [row["record_id"] for row in answer["data"]] == [kept]
    assert (await api.call("list_record", camera_id=camera))["err_code"] == 1010


async def test_the_record_page_names_its_file_escaped(api):
    camera = await api.camera(await api.gatherer(), '<script>alert("x")</script>&')
    record_id, video, thumb = await record(api, camera, start=1_717_200_000)
    url = (await api.call("play_record", record_id=record_id))["play_url"]
    page = await (await api.client.get(url.removeprefix(api.services.settings.base_url))).text()
    base = api.services.settings.storage_url
    assert f'<video id="video" src="{base}{video}" poster="{base}{thumb}"' in page
    assert 'data-camera="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"' in page
    assert f'data-start="{api.services.presenter.time(1_717_200_000)}"' in page
    assert "<script>alert" not in page
