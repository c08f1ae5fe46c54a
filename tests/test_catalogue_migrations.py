"""Schema versions: a catalogue written by an older relay opens in this one with nothing lost, and
ids are never handed out twice.

``data/catalogue-v1.sql`` is a dump of a catalogue made by the relay at schema version 1 (commit
c43239c): an account, an agent key, three gatherers of which two are one machine registered under
two spellings of its MAC (``02000000aa01`` and ``02:00:00:00:aa:01``), five cameras (camera 5
deleted), courses, a snapshot and a record.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.catalogue import Catalogue
from relay.catalogue.schema import SCHEMA_VERSION, accounts

V1_DUMP = Path(__file__).parent / "data" / "catalogue-v1.sql"


def v1_catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "relay.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V1_DUMP.read_text())
    db.close()
    return path


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        found = db.execute(sql).fetchall()
    db.close()
    return found


async def test_a_version_1_catalogue_is_upgraded_with_nothing_lost(tmp_path: Path):
    path = v1_catalogue(tmp_path)
    before = {table: rows(path, f"SELECT * FROM {table} ORDER BY 1")
              for table in ("accounts", "agent_keys", "cameras", "courses", "records", "snapshots",
                            "meta", "sessions")}
    catalogue = await Catalogue.open(f"sqlite+aiosqlite:///{path}")
    try:
        # The two spellings of one MAC are one gatherer now: the older keeps its id and the
        # newer one's camera; the other machine is untouched.
        gatherers = {row["gather_id"]: row for row in (await catalogue.gatherers.page(1, 10)).rows}
        assert sorted(gatherers) == [1, 3]
        assert gatherers[1]["mac_addr"] == "02:00:00:00:aa:01"
        assert gatherers[3]["mac_addr"] == "02:00:00:00:bb:02"
        cameras = {row["camera_id"]: row["gather_id"] for row in
                   (await catalogue.cameras.page(1, 10)).rows}
        assert cameras == {1: 1, 2: 1, 3: 1, 4: 3}
        record = await catalogue.records.get(1)
        assert record["camera_id"] == 3 and record["gather_id"] == 1
        # Every other row is as it was, ids included.
        for table, old in before.items():
            new = rows(path, f"SELECT * FROM {table} ORDER BY 1")
            if table == "agent_keys":
                new = [row[:len(old[0])] for row in new]  # plus max_gatherers, takeover_gather_id
            if table == "cameras":
                old = [row for row in old if row[0] != 3]  # camera 3 moved gatherer
                new = [row for row in new if row[0] != 3]
            if table == "records":  # its gatherer is the merged one; schema 3's two times
                old = [(row[0], 1, *row[2:], row[-2], row[-2] + row[6]) for row in old]
            if table == "meta":
                old = [row for row in old if row[0] != "schema_version"]
                new = [row for row in new if row[0] != "schema_version"]
            assert new == old, table
        account = await catalogue.accounts.check_password("admin", "correct horse")
        assert account is not None and account.is_admin
        [key] = await catalogue.agent_keys.list()
        assert (key.name, key.max_gatherers, key.gatherers) == ("school-1", 1, ())
        # Ids keep counting past the rows there are: a new camera is never an old one's id.
        added = await catalogue.cameras.add(3, {"camera_name": "new", "stream_prop": 1,
                                                "stream_mp4": "/v/new.mp4"})
        assert added["camera_id"] == 5
        await catalogue.cameras.delete([5])
        again = await catalogue.cameras.add(3, {"camera_name": "newer", "stream_prop": 1,
                                                "stream_mp4": "/v/newer.mp4"})
        assert again["camera_id"] == 6
    finally:
        await catalogue.close()
    assert rows(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert rows(path, "PRAGMA foreign_key_check") == []
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    autoincrement = rows(path, "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE "
                               "'%AUTOINCREMENT%' ORDER BY name")
    assert [name for (name,) in autoincrement] == [
        "accounts", "agent_keys", "cameras", "courses", "gatherers", "records", "snapshots"]
    # Opening it again changes nothing more.
    again_catalogue = await Catalogue.open(f"sqlite+aiosqlite:///{path}")
    await again_catalogue.close()
    assert rows(path, "SELECT count(*) FROM gatherers") == [(2,)]


async def test_ids_are_never_reused(catalogue: Catalogue):
    """On SQLite and PostgreSQL (``catalogue`` fixture)."""
    key = await catalogue.agent_keys.add("site", max_gatherers=5)
    [record] = await catalogue.agent_keys.list()
    gather_id = await catalogue.gatherers.register("02:00:00:00:00:01", key_id=record.key_id)
    assert key.startswith("rk_")
    fields = {"camera_name": "a", "stream_prop": 1, "stream_mp4": "/v/a.mp4"}
    first = (await catalogue.cameras.add(gather_id, fields))["camera_id"]
    await catalogue.cameras.delete([first])
    second = (await catalogue.cameras.add(gather_id, fields))["camera_id"]
    assert second > first
    course = await catalogue.courses.add(camera_id=second, week_id=1, start_sec=0,
                                         elapse_sec=60)
    await catalogue.courses.delete([course["course_id"]])
    assert (await catalogue.courses.add(camera_id=second, week_id=1, start_sec=0,
                                        elapse_sec=60))["course_id"] > course["course_id"]
    account = await catalogue.accounts.add("someone", "long enough", False)
    async with catalogue.db.write() as conn:
        await conn.execute(accounts.delete().where(accounts.c.account_id == account.account_id))
    assert (await catalogue.accounts.add("someone", "long enough", False)).account_id > (
        account.account_id)


# Schema 2 → 3. ``data/catalogue-v2.sql`` (SQLite) and ``data/catalogue-v2.pg.sql`` (pg_dump
# --inserts) are catalogues made by the relay at schema version 2 (commit f632911): an account with
# a session, an agent key with two gatherers, three cameras of which camera 2 was deleted, two
# courses, two snapshots of camera 1 and two records (one clicked).

V2_DUMP = Path(__file__).parent / "data" / "catalogue-v2.sql"
V2_PG_DUMP = Path(__file__).parent / "data" / "catalogue-v2.pg.sql"
V2_TABLES = ("accounts", "agent_keys", "gatherers", "cameras", "courses", "records", "snapshots",
             "meta", "sessions")


def as_today(table: str, old: list[tuple]) -> list[tuple]:
    """What today's schema holds for schema 2's rows: records gain start_time (created) and
    end_time (created + duration) (3); gatherers gain link_epoch 0 (4); the schema version is
    today's; everything else is as it was."""
    if table == "records":
        return [(*row, row[-2], row[-2] + row[6]) for row in old]
    if table == "gatherers":
        return [(*row, 0) for row in old]
    if table == "meta":
        return [(key, str(SCHEMA_VERSION) if key == "schema_version" else value)
                for key, value in old]
    return old


async def use_upgraded(catalogue: Catalogue) -> None:
    """The upgraded catalogue works: records list with their times, an upload commits, ids go on."""
    record = await catalogue.records.get(1)
    assert (record["start_time"], record["end_time"], record["created"]) == (
        1700000240, 1700000840, 1700000240)
    [key] = await catalogue.agent_keys.list()
    fields = {"kind": "record", "camera_id": 3, "size": 5, "sha256": "ab" * 32,
              "start_time": 1700001000, "end_time": 1700001060, "duration": 60, "width": 640,
              "height": 360, "file_fdfs": "/files/records/3/20231114/new.mp4", "image_fdfs": ""}
    await catalogue.uploads.declare(key.key_id, "0" * 32, fields)
    committed = await catalogue.uploads.commit(key.key_id, "0" * 32, "")
    assert committed.upload["record_id"] == 3  # after the two there were
    assert (await catalogue.records.get(3))["created"] == 1700001000
    added = await catalogue.cameras.add(1, {"camera_name": "new", "stream_prop": 1,
                                            "stream_mp4": "/v/new.mp4"})
    assert added["camera_id"] == 4  # camera 2 was deleted: its id is not handed out again


async def test_a_version_2_catalogue_is_upgraded_with_nothing_lost(tmp_path: Path):
    path = tmp_path / "relay.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V2_DUMP.read_text())
    db.close()
    before = {table: rows(path, f"SELECT * FROM {table} ORDER BY 1") for table in V2_TABLES}
    assert len(before["records"]) == 2 and len(before["snapshots"]) == 2
    catalogue = await Catalogue.open(f"sqlite+aiosqlite:///{path}")
    try:
        for table, old in before.items():
            assert rows(path, f"SELECT * FROM {table} ORDER BY 1") == as_today(table, old), table
        assert rows(path, "SELECT count(*) FROM uploads") == [(0,)]
        await use_upgraded(catalogue)
    finally:
        await catalogue.close()
    assert rows(path, "PRAGMA foreign_key_check") == []
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    again = await Catalogue.open(f"sqlite+aiosqlite:///{path}")  # opening again changes nothing
    await again.close()
    assert rows(path, "SELECT count(*) FROM records") == [(3,)]


async def test_a_version_2_catalogue_on_postgresql_is_upgraded_with_nothing_lost():
    import secrets

    import asyncpg

    name = f"relay_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        loader = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        await loader.execute(V2_PG_DUMP.read_text())  # (it empties search_path: its own session)
        await loader.close()
        db = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            async def pg_rows(table: str) -> list[tuple]:
                return [tuple(row) for row in await db.fetch(f"SELECT * FROM {table} ORDER BY 1")]

            before = {table: await pg_rows(table) for table in V2_TABLES}
            assert len(before["records"]) == 2 and before["meta"][0] == ("schema_version", "2")
            catalogue = await Catalogue.open(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
            try:
                for table, old in before.items():
                    assert await pg_rows(table) == as_today(table, old), table
                assert await db.fetchval("SELECT count(*) FROM uploads") == 0
                await use_upgraded(catalogue)
            finally:
                await catalogue.close()
            assert await db.fetchval("SELECT count(*) FROM records") == 3
        finally:
            await db.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
