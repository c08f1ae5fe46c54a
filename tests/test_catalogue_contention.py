"""Writes under contention (``relay/catalogue/database.py``: ``WriteGate``): this process's writers
meet SQLite's write lock one at a time and in the order they asked, so none ever sleeps in SQLite's
busy handler behind another of them; the busy timeout is only for other processes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, select, update

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
    """From now on every engine connection fails at once instead of sleeping in the busy handler,
    so a writer that meets another one's lock shows as ``database is locked``."""

    @event.listens_for(catalogue.db.engine.sync_engine, "connect")
    def _impatient(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.close()

    await catalogue.db.engine.dispose()  # the pooled connections had a busy timeout


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
            await catalogue.cameras.set_started(camera_ids[n], 0)  # an inline write
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

    async def writer(n: int, offload: bool) -> None:
        nonlocal most_inside
        async with catalogue.db.write(offload=offload) as conn:
            inside.append(n)
            admitted.append(n)
            most_inside = max(most_inside, len(inside))
            await conn.execute(
                update(cameras).where(cameras.c.camera_id == camera_ids[0]).values(clicks=n)
            )
            await asyncio.sleep(0)  # a transaction that spans loop turns: the others queue
            await conn.execute(select(cameras.c.clicks))
            inside.remove(n)

    # Half of them through the engine's worker thread (a large transaction), half in the loop.
    await asyncio.gather(*(writer(n, offload=n % 2 == 1) for n in range(WRITERS)))
    assert most_inside == 1
    assert admitted == list(range(WRITERS))
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT clicks FROM cameras").fetchone() == (WRITERS - 1,)


async def test_an_inline_write_waits_in_line_behind_a_transaction_instead_of_falling_back(
    catalogue: Catalogue,
) -> None:
    camera_ids = await _cameras(catalogue, 1)
    inline = catalogue.db._inline
    order: list[str] = []

    async def transaction() -> None:
        async with catalogue.db.write(offload=True) as conn:  # holds the lock in another thread
            order.append("transaction")
            await conn.execute(
                update(cameras).where(cameras.c.camera_id == camera_ids[0]).values(clicks=7)
            )
            for _ in range(5):
                await asyncio.sleep(0.01)

    async def inline_write() -> None:
        await asyncio.sleep(0)  # after the transaction has started
        await catalogue.cameras.set_started(camera_ids[0], 0)
        order.append("inline")

    commits = inline._commits
    await asyncio.gather(transaction(), inline_write())
    assert order == ["transaction", "inline"]
    # It waited at the gate and then committed in the loop's thread: it never tried the lock
    # while the transaction held it, so it was never declined to the engine.
    assert inline._commits == commits + 1
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT started, clicks FROM cameras").fetchone() == (0, 7)


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


async def test_a_transaction_in_the_loop_is_all_or_nothing_and_unseen_until_committed(
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
        # Not committed yet: neither the loop's own reads nor the engine's see it.
        assert (await catalogue.cameras.get(camera_ids[0]))["camera_name"] == "c0"
        async with catalogue.db.read() as reader:
            assert (await reader.execute(select(cameras.c.camera_name))).scalar() == "c0"
        result = await conn.execute(select(cameras.c.camera_id, cameras.c.camera_name))
    assert [tuple(row) for row in result] == [(camera_ids[0], "new")]  # read after the commit
    assert (await catalogue.cameras.get(camera_ids[0]))["camera_name"] == "new"
