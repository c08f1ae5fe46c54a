"""Retention: old recordings go after record_keep_days; when room is short (a tiny storage_quota
stands in for a full disk) the oldest go first, rows then files; the API keeps answering.

The real app on a real socket over a real SQLite file and over a fresh PostgreSQL database (the
``api`` fixture, or one like it with the loop's own settings), real files under the files
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time

import pytest
from aiohttp.test_utils import TestServer
from conftest import fresh_postgres

from relay.config import ConfigError, load_settings
from relay.server import build_app, open_services
from relay.vod.retention import DAY, RETENTION, Retention

KB = 1000


def retention(api) -> Retention:  # type: ignore[no-untyped-def]
    return api.client.server.app[RETENTION]


def configure(api, **changes) -> None:  # type: ignore[no-untyped-def]
    api.services.settings = dataclasses.replace(api.services.settings, **changes)


async def record(api, camera_id: int, name: str, start: float, size: int = 100 * KB,
                 poster: bool = True) -> tuple[int, list[str]]:  # type: ignore[no-untyped-def]
    files = [api.store(f"records/{camera_id}/{name}.mp4", b"\x00" * size)]
    if poster:
        files.append(api.store(f"posters/{camera_id}/{name}.jpg", b"\xff\xd8" + b"j" * 998))
    record_id = await api.services.catalogue.records.add(
        camera_id, files[0], files[1] if poster else "", size, 60, int(start), int(start) + 60)
    return record_id, files


async def listed(api) -> list[int]:  # type: ignore[no-untyped-def]
    answer = await api.call("list_record", per=100)
    return [row["record_id"] for row in answer["data"]]


async def metrics(api) -> str:  # type: ignore[no-untyped-def]
    return await (await api.client.get("/metrics")).text()


def deleted(text: str, reason: str) -> float:
    match = re.search(rf'^relay_recordings_deleted_total{{reason="{reason}"}} (\S+)$', text, re.M)
    assert match, f"no relay_recordings_deleted_total for {reason}"
    return float(match.group(1))


def free_gauge(text: str) -> float:
    match = re.search(r"^relay_storage_free_bytes (\S+)$", text, re.M)
    assert match, "no relay_storage_free_bytes"
    return float(match.group(1))


@pytest.fixture
async def camera(api) -> int:  # type: ignore[no-untyped-def]
    return await api.camera(await api.gatherer(), "一班")


async def test_records_older_than_keep_days_go_rows_then_files(api, camera, caplog):
    now = api.clock.now
    old, old_files = await record(api, camera, "old", now - 10 * DAY)
    edge, _ = await record(api, camera, "edge", now - 7 * DAY + 60)  # not yet 7 days old
    new, new_files = await record(api, camera, "new", now - 60)
    text = await metrics(api)
    assert deleted(text, "age") == 0 and deleted(text, "space") == 0

    configure(api, record_keep_days=0)  # forever: nothing goes
    assert await retention(api).sweep() == {"age": 0, "space": 0}
    assert await listed(api) == [new, edge, old]

    configure(api, record_keep_days=7)
    with caplog.at_level(logging.WARNING, logger="relay.vod.retention"):
        assert await retention(api).sweep() == {"age": 1, "space": 0}
    assert await listed(api) == [new, edge]
    storage = api.services.storage
    assert not any(storage.path_of(path).exists() for path in old_files)
    assert all(storage.path_of(path).exists() for path in new_files)
    assert (await api.client.get(old_files[0])).status == 404
    [line] = [r for r in caplog.records if r.name == "relay.vod.retention"]
    assert line.levelno == logging.WARNING and f"record {old} " in line.getMessage()
    assert "age" in line.getMessage() and line.exc_info is None
    assert deleted(await metrics(api), "age") == 1
    assert await retention(api).sweep() == {"age": 0, "space": 0}  # nothing more to do


async def test_a_tiny_quota_deletes_the_oldest_until_room_is_back(api, camera, caplog):
    now = api.clock.now
    # Ids out of start order: an agent that was offline uploads an older recording later.
    b, b_files = await record(api, camera, "b", now - 3000)
    c, _ = await record(api, camera, "c", now - 2000)
    a, a_files = await record(api, camera, "a", now - 4000)
    d, _ = await record(api, camera, "d", now - 1000)
    e, _ = await record(api, camera, "e", now)
    used = 5 * (100 * KB + 1000)
    configure(api, storage_quota=used + 50 * KB, storage_min_free=250 * KB)
    assert retention(api).min_free() == 250 * KB
    with caplog.at_level(logging.WARNING, logger="relay.vod.retention"):
        assert await retention(api).sweep() == {"age": 0, "space": 2}
    assert await listed(api) == [e, d, c]  # a and b started first: they went
    storage = api.services.storage
    assert not any(storage.path_of(path).exists() for path in a_files + b_files)
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.vod.retention"]
    assert [m.split(" of camera")[0] for m in lines] == [f"retention: deleted record {a}",
                                                        f"retention: deleted record {b}"]
    assert all("space" in m and "below the minimum (" in m for m in lines)
    room = used + 50 * KB - 3 * (100 * KB + 1000)
    assert retention(api).free_bytes() == room
    text = await metrics(api)
    assert deleted(text, "space") == 2 and deleted(text, "age") == 0
    assert free_gauge(text) == room
    # The API and the process still answer.
    assert (await api.client.get("/healthz")).status == 200
    assert (await api.call("list_camera"))["err_code"] == 0


async def test_the_default_minimum_is_five_percent_of_the_quota(api, camera):
    now = api.clock.now
    await record(api, camera, "1", now - 100, size=480 * KB, poster=False)
    second, _ = await record(api, camera, "2", now, size=480 * KB, poster=False)
    configure(api, storage_quota=1000 * KB)  # 40 KB room, below 5 % = 50 KB
    assert retention(api).min_free() == 50 * KB
    assert await retention(api).sweep() == {"age": 0, "space": 1}
    assert await listed(api) == [second]
    assert retention(api).free_bytes() == 520 * KB
    configure(api, storage_quota=0, storage_min_free=None)  # the whole disk: 2 GiB at most
    assert 0 < retention(api).min_free() <= 2 << 30


async def test_vanished_files_and_an_empty_catalogue_are_no_error(api, camera, caplog):
    now = api.clock.now
    _, files = await record(api, camera, "gone", now - 20 * DAY)
    for path in files:
        api.services.storage.path_of(path).unlink()  # someone removed them by hand
    configure(api, record_keep_days=1)
    with caplog.at_level(logging.INFO):
        assert await retention(api).sweep() == {"age": 1, "space": 0}
    assert await listed(api) == []
    # The files directory is over its quota and nothing is left to delete: said once, no loop.
    api.store("snapshots/1/big.jpg", b"\xff" * 200 * KB)
    configure(api, storage_quota=100 * KB, storage_min_free=10 * KB)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            assert await asyncio.wait_for(retention(api).sweep(), 5) == {"age": 0, "space": 0}
    assert retention(api).free_bytes() == 0
    assert sum("no recording is left" in r.getMessage() for r in caplog.records) == 1
    assert not any(r.exc_info for r in caplog.records)
    assert (await api.client.get("/healthz")).status == 200
    assert (await api.call("list_record"))["total_num"] == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_background_pass_runs_by_itself(tmp_path, aiohttp_client, backend):
    async with contextlib.AsyncExitStack() as stack:
        database = ({"database_url": await stack.enter_async_context(fresh_postgres())}
                    if backend == "postgresql" else {})
        await background_pass(tmp_path, aiohttp_client, database)


async def background_pass(tmp_path, aiohttp_client, database) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings({"data": tmp_path / "data", "record_keep_days": "2",
                              "retention_interval": "0.1", **database}, environ={})
    services = await open_services(settings)
    gather_id = await services.catalogue.gatherers.register("00:11:22:33:44:55")
    camera_id = (await services.catalogue.cameras.add(gather_id, {
        "camera_name": "c", "stream_prop": 1, "stream_mp4": "/videos/a.mp4"}))["camera_id"]
    old = settings.files_dir / "records/old.mp4"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"\x00" * 1000)
    now = time.time()
    await services.catalogue.records.add(camera_id, services.storage.fdfs_of(old), "", 1000, 60,
                                         int(now - 3 * DAY), int(now - 3 * DAY + 60))
    kept = await services.catalogue.records.add(camera_id, "/files/records/new.mp4", "", 1, 1,
                                                int(now), int(now) + 1)
    client = await aiohttp_client(TestServer(build_app(services)))
    deadline = time.monotonic() + 5
    while old.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not old.exists()
    page = await services.catalogue.records.page(1, 10)
    assert [row["record_id"] for row in page.rows] == [kept]
    body = await (await client.get("/metrics")).text()
    assert deleted(body, "age") == 1
    assert free_gauge(body) > 0
    assert (await client.get("/healthz")).status == 200
    assert (tmp_path / "data" / "relay.sqlite3").exists() == (not database)  # the backend it says
    await client.close()  # the app's cleanup closes the catalogue before its database goes


def test_settings():
    settings = load_settings(environ={"RELAY_RECORD_KEEP_DAYS": "30", "RELAY_STORAGE_QUOTA": "0",
                                      "RELAY_STORAGE_MIN_FREE": "0"})
    assert (settings.record_keep_days, settings.storage_quota, settings.storage_min_free) == (
        30, 0, 0)
    defaults = load_settings(environ={})
    assert (defaults.record_keep_days, defaults.storage_quota, defaults.storage_min_free,
            defaults.retention_interval) == (0, 0, None, 60.0)
    for name, bad in (("storage_quota", "-1"), ("record_keep_days", "x"),
                      ("storage_min_free", "2G"), ("retention_interval", "0")):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: bad}, environ={})


async def test_an_upload_that_does_not_fit_pushes_out_the_oldest(api, camera, caplog):
    now = api.clock.now
    ids = [(await record(api, camera, f"r{n}", now - 1000 + n, poster=False))[0]
           for n in range(4)]
    partial = api.services.settings.data / "uploads" / "part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\x00" * 50 * KB)  # an upload under way counts against the quota
    configure(api, storage_quota=500 * KB, storage_min_free=20 * KB)
    assert await retention(api).sweep() == {"age": 0, "space": 0}
    assert retention(api).free_bytes() == 50 * KB
    retention(api).wrote(10 * KB)  # the upload goes on between passes
    assert retention(api).free_bytes() == 40 * KB
    # Room for a 150 KB recording (20 KB kept free): the two oldest make way, no more.
    assert await retention(api).sweep(needed=150 * KB) == {"age": 0, "space": 2}
    assert await listed(api) == [ids[3], ids[2]]
    assert retention(api).free_bytes() == 250 * KB
    # One that would not fit with everything deleted deletes nothing.
    with caplog.at_level(logging.WARNING, logger="relay.vod.retention"):
        assert await retention(api).sweep(needed=10_000 * KB) == {"age": 0, "space": 0}
    assert await listed(api) == [ids[3], ids[2]]
    assert any("would not fit even with every recording deleted" in r.getMessage()
               for r in caplog.records)


async def test_uploads_walk_at_most_every_few_seconds_and_a_commit_pass_runs_by_itself(api,
                                                                                      camera):
    first, _ = await record(api, camera, "first", api.clock.now - 100, poster=False)
    configure(api, storage_quota=300 * KB, storage_min_free=0)
    room = retention(api)
    assert await room.free() == 200 * KB  # walked: 100 KB stored
    api.store("records/by-hand.bin", b"\x00" * 150 * KB)  # not through an upload
    assert await room.free() == 200 * KB  # the last walk is young: not walked again
    room.wrote(10 * KB)  # what uploads write is counted meanwhile
    assert room.free_bytes() == 190 * KB
    assert await room.free(within=0) == 50 * KB  # a new walk sees the disk as it is
    assert await listed(api) == [first]
    configure(api, storage_min_free=100 * KB)
    room.soon()  # what a commit calls: returns at once, the pass runs by itself
    room.soon()
    deadline = time.monotonic() + 5
    # (The row goes first, then the files, in a thread; the count follows the files.)
    while (await listed(api) or deleted(await metrics(api), "space") < 1) and (
            time.monotonic() < deadline):
        await asyncio.sleep(0.02)
    assert await listed(api) == []
    assert deleted(await metrics(api), "space") == 1
    assert room.free_bytes() == 150 * KB
