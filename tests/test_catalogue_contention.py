"""Writes under contention on SQLite (``relay/catalogue/writer.py``): this process's writers meet
SQLite's write lock one at a time and in the order they asked, whatever their kind (a transaction
run whole, an ``async with`` body), so none ever sleeps in SQLite's busy handler behind another of
them, none is declined and retried out of order; the busy timeout is only for other processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import bindparam, event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from relay.catalogue import Catalogue, NotFound
from relay.catalogue.schema import cameras, records

WRITERS = 20


@pytest.fixture
async def catalogue(tmp_path: Path) -> AsyncIterator[Catalogue]:
    opened = await Catalogue.open(f"sqlite+aiosqlite:///{tmp_path / 'relay.sqlite3'}")
    yield opened
    await opened.close()


async def _cameras(catalogue: Catalogue, count: int) -> list[int]:
    gather_id = await catalogue.gatherers.register("02:00:00:00:00:01")
    return [
        (await catalogue.cameras.add(
            gather_id, {"camera_name": f"c{n}", "stream_prop": 1, "stream_mp4": "/srv/c.mp4"}
        ))["camera_id"]
        for n in range(count)
    ]


async def _no_busy_timeout(catalogue: Catalogue) -> None:
    """From now on every connection fails at once instead of sleeping in the busy handler, so a
    writer that meets another one's lock shows as ``database is locked``."""

    @event.listens_for(catalogue.db.engine.sync_engine, "connect")
    def _impatient(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.close()

    await catalogue.db.engine.dispose()  # the pooled connections had a busy timeout
    async with catalogue.db.write() as conn:  # the writer's own connection
        await conn.exec_driver_sql("PRAGMA busy_timeout=0")


async def test_concurrent_writers_of_every_kind_never_meet_each_others_lock(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, WRITERS)
    record_ids = [await catalogue.records.add(camera_ids[0], f"/files/r{n}.mp4") for n in range(WRITERS)]
    await _no_busy_timeout(catalogue)

    async def one(n: int) -> str:
        """What the API's mutations do (a refusal too: it opens a write transaction as well)."""
        kind = n % 5
        if kind == 0:
            await catalogue.cameras.update(camera_ids[n], {"camera_name": f"renamed {n}"})
        elif kind == 1:
            await catalogue.records.delete([record_ids[n]])
        elif kind == 2:
            with pytest.raises(NotFound):
                await catalogue.records.delete([10**12 + n])
        elif kind == 3:
            await catalogue.courses.add(camera_ids[n], n % 7, 3600, 60)
        else:
            await catalogue.cameras.set_started(camera_ids[n], 0)  # a transaction run whole
        return "done"

    for _ in range(3):  # a few waves, each one all at once
        assert await asyncio.gather(*(one(n) for n in range(WRITERS))) == ["done"] * WRITERS
        record_ids = [
            await catalogue.records.add(camera_ids[0], f"/files/r{n}.mp4") for n in range(WRITERS)
        ]
        for camera_id in camera_ids:
            await catalogue.cameras.set_started(camera_id, 1)
        async with catalogue.db.write() as conn:
            await conn.exec_driver_sql("DELETE FROM courses")
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        names = dict(other.execute("SELECT camera_id, camera_name FROM cameras"))
    assert all(names[camera_ids[n]] == f"renamed {n}" for n in range(0, WRITERS, 5))


async def test_write_transactions_are_admitted_one_at_a_time_in_arrival_order(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, 1)
    inside: list[int] = []
    admitted: list[int] = []
    most_inside = 0

    def whole(n: int) -> Callable[[Connection], None]:
        def transaction(conn: Connection) -> None:
            nonlocal most_inside
            inside.append(n)
            admitted.append(n)
            most_inside = max(most_inside, len(inside))
            conn.execute(
                update(cameras).where(cameras.c.camera_id == camera_ids[0]).values(clicks=n))
            inside.remove(n)
        return transaction

    async def writer(n: int, run_whole: bool) -> None:
        nonlocal most_inside
        if run_whole:
            await catalogue.db.run(whole(n))
            return
        async with catalogue.db.write() as conn:
            inside.append(n)
            admitted.append(n)
            most_inside = max(most_inside, len(inside))
            await conn.execute(
                update(cameras).where(cameras.c.camera_id == camera_ids[0]).values(clicks=n)
            )
            await asyncio.sleep(0)  # a transaction that spans loop turns: the others queue
            await conn.execute(select(cameras.c.clicks))
            inside.remove(n)

    # Half of them run whole in the writer's thread, half as bodies in the loop.
    await asyncio.gather(*(writer(n, run_whole=n % 2 == 1) for n in range(WRITERS)))
    assert most_inside == 1
    assert admitted == list(range(WRITERS))
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT clicks FROM cameras").fetchone() == (WRITERS - 1,)


async def test_a_write_run_whole_waits_in_line_behind_a_transaction_body(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, 1)
    order: list[str] = []

    async def transaction() -> None:
        async with catalogue.db.write() as conn:  # holds the writer across loop turns
            order.append("transaction")
            await conn.execute(
                update(cameras).where(cameras.c.camera_id == camera_ids[0]).values(clicks=7)
            )
            for _ in range(5):
                await asyncio.sleep(0.01)

    async def whole_write() -> None:
        await asyncio.sleep(0)  # after the transaction has started
        await catalogue.cameras.set_started(camera_ids[0], 0)
        order.append("whole")

    commits = catalogue.db.transactions
    await asyncio.gather(transaction(), whole_write())
    assert order == ["transaction", "whole"]
    assert catalogue.db.transactions == commits + 2  # each committed once, nothing retried
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT started, clicks FROM cameras").fetchone() == (0, 7)


async def test_writes_asked_for_later_are_never_committed_earlier(catalogue: Catalogue) -> None:
    """Order is the order asked, whatever each write's kind: the last one asked for wins."""
    camera_ids = await _cameras(catalogue, 1)

    async def body(n: int) -> None:
        async with catalogue.db.write() as conn:
            await conn.execute(update(cameras).where(cameras.c.camera_id == camera_ids[0])
                               .values(camera_name=f"n{n}"))

    def whole(n: int) -> Callable[[Connection], None]:
        return lambda conn: conn.execute(update(cameras).where(
            cameras.c.camera_id == camera_ids[0]).values(camera_name=f"n{n}")) and None

    await asyncio.gather(*(body(n) if n % 3 else catalogue.db.run(whole(n)) for n in range(60)))
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT camera_name FROM cameras").fetchone() == ("n59",)


async def test_one_failing_write_spoils_none_of_the_others(catalogue: Catalogue) -> None:
    camera_ids = await _cameras(catalogue, 3)
    gather_id = (await catalogue.cameras.get(camera_ids[0]))["gather_id"]
    move = update(cameras).where(cameras.c.camera_id == bindparam("which")).values(
        gather_id=bindparam("to"), camera_name=bindparam("name"))

    def moved(which: int, to: int, name: str) -> Callable[[Connection], int]:
        return lambda conn: conn.execute(move, {"which": which, "to": to, "name": name}).rowcount

    good_1, bad, good_2 = await asyncio.gather(
        catalogue.db.run(moved(camera_ids[0], gather_id, "one")),
        catalogue.db.run(moved(camera_ids[1], 9999, "bad")),  # no such gatherer
        catalogue.db.run(moved(camera_ids[2], gather_id, "two")),
        return_exceptions=True,
    )
    assert good_1 == 1 and good_2 == 1 and isinstance(bad, IntegrityError)
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        names = dict(other.execute("SELECT camera_id, camera_name FROM cameras"))
    assert [names[i] for i in camera_ids] == ["one", "c1", "two"]


async def test_a_held_write_lock_makes_one_trip_writes_wait_off_the_loop(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, 1)
    blocker = sqlite3.connect(catalogue.db.engine.url.database, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        blocker.execute("UPDATE gatherers SET name_pc = 'busy'")
        writes = asyncio.ensure_future(catalogue.cameras.set_started(camera_ids[0], 0))
        ticks = 0
        for _ in range(30):  # the loop keeps turning while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 30 and not writes.done()
        assert (await catalogue.cameras.get(camera_ids[0]))["started"] == 1  # reads answer
        blocker.execute("COMMIT")
        await asyncio.wait_for(writes, 10)
    finally:
        blocker.close()
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT name_pc FROM gatherers").fetchone() == ("busy",)
        assert other.execute("SELECT started FROM cameras").fetchone() == (0,)


async def test_the_wal_is_checkpointed_by_the_writer(catalogue: Catalogue) -> None:
    """Its connection never checkpoints (that would stall the loop); every 500 commits a
    passive checkpoint runs in the writer's thread."""
    await _cameras(catalogue, 1)
    main_file = Path(catalogue.db.engine.url.database)
    with contextlib.closing(sqlite3.connect(main_file)) as other:  # start from an empty WAL
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = hashlib.sha256(main_file.read_bytes()).hexdigest()

    def click(n: int) -> Callable[[Connection], None]:  # (each commit stores another value)
        return lambda conn: conn.execute(update(cameras).values(clicks=n)) and None

    # Well past SQLite's 1,000 WAL pages between checkpoints.
    await asyncio.gather(*(catalogue.db.run(click(n)) for n in range(1, 3001)))
    for _ in range(500):  # (the checkpoint runs in the writer's thread, in the background)
        if hashlib.sha256(main_file.read_bytes()).hexdigest() != before:
            break
        await asyncio.sleep(0.01)
    assert hashlib.sha256(main_file.read_bytes()).hexdigest() != before


async def test_another_process_holding_the_lock_makes_transactions_wait_off_the_loop(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, 1)
    blocker = sqlite3.connect(catalogue.db.engine.url.database, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # a ``relay user`` command mid-transaction
        blocker.execute("UPDATE gatherers SET name_pc = 'busy'")
        renames = asyncio.ensure_future(asyncio.gather(
            *(catalogue.cameras.update(camera_ids[0], {"camera_name": f"n{n}"}) for n in range(5))
        ))
        refusal = asyncio.ensure_future(catalogue.records.delete([12345]))
        ticks = 0
        for _ in range(30):  # the loop keeps turning while they wait
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 30 and not renames.done() and not refusal.done()
        assert (await catalogue.cameras.get(camera_ids[0]))["camera_name"] == "c0"  # reads answer
        blocker.execute("COMMIT")
        rows = await asyncio.wait_for(renames, 10)
        with pytest.raises(NotFound):
            await asyncio.wait_for(refusal, 10)
    finally:
        blocker.close()
    assert [row["camera_name"] for row in rows] == [f"n{n}" for n in range(5)]  # in order
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT name_pc FROM gatherers").fetchone() == ("busy",)
        assert other.execute("SELECT camera_name FROM cameras").fetchone() == ("n4",)


async def test_a_transaction_body_is_all_or_nothing_and_unseen_until_committed(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, 1)
    record_id = await catalogue.records.add(camera_ids[0], "/files/r.mp4")

    class Refused(Exception):
        pass

    with pytest.raises(Refused):
        async with catalogue.db.write() as conn:
            await conn.execute(records.delete().where(records.c.record_id == record_id))
            raise Refused
    assert (await catalogue.records.get(record_id))["record_id"] == record_id  # rolled back

    async with catalogue.db.write() as conn:
        await conn.execute(
            update(cameras).where(cameras.c.camera_id == camera_ids[0]).values(camera_name="new")
        )
        # Not committed yet: no read sees it.
        assert (await catalogue.cameras.get(camera_ids[0]))["camera_name"] == "c0"
        async with catalogue.db.read() as reader:
            assert (await reader.execute(select(cameras.c.camera_name))).scalar() == "c0"
        result = await conn.execute(select(cameras.c.camera_id, cameras.c.camera_name))
    assert [tuple(row) for row in result] == [(camera_ids[0], "new")]  # read after the commit
    assert (await catalogue.cameras.get(camera_ids[0]))["camera_name"] == "new"
