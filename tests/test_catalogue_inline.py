"""The catalogue's fast path on SQLite (``relay/catalogue/inline.py``): it must answer exactly as the
engine does, never wait in the event loop, never lose a write, and keep the WAL checkpointed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from relay.catalogue import Catalogue, NotFound
from relay.catalogue import accounts as accounts_module
from relay.catalogue.accounts import _BY_CREDENTIAL, _BY_ID
from relay.catalogue.agent_keys import _BY_HASH, digest
from relay.catalogue.cameras import _ONE, _STARTED
from relay.catalogue.inline import CHECKPOINT_EVERY
from relay.catalogue.schema import agent_keys, cameras

# A one-column point read by key (agent_keys.py's own statements change with its features).
_REVOKED = select(agent_keys.c.revoked).where(agent_keys.c.key_id == bindparam("key_id"))


@pytest.fixture
async def catalogue(tmp_path: Path) -> AsyncIterator[Catalogue]:
    opened = await Catalogue.open(f"sqlite+aiosqlite:///{tmp_path / 'relay.sqlite3'}")
    yield opened
    await opened.close()


async def _camera(catalogue: Catalogue) -> dict:
    gather_id = await catalogue.gatherers.register("02:00:00:00:00:01")
    return await catalogue.cameras.add(
        gather_id, {"camera_name": "door", "stream_prop": 1, "stream_mp4": "/srv/door.mp4"}
    )


async def test_lookups_answer_as_the_engine_does(catalogue: Catalogue) -> None:
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    camera = await _camera(catalogue)
    await catalogue.cameras.add_snapshot(camera["camera_id"], "snapshots/1.jpg")
    key = await catalogue.agent_keys.add("site-1")
    db = catalogue.db
    for statement, params in [
        (_BY_ID, {"account_id": account.account_id}),
        (_BY_CREDENTIAL, {"credential": account.credential}),
        (_ONE, {"camera_id": camera["camera_id"]}),
        (_STARTED, {"camera_id": camera["camera_id"]}),
        (_ONE, {"camera_id": 999}),
        (_BY_HASH, {"key_hash": digest(key)}),
        (_REVOKED, {"key_id": 1}),
    ]:
        inline = db._inline.fetch(statement, params)
        async with db.read() as conn:
            engine = [dict(row._mapping) for row in await conn.execute(statement, params)]
        assert inline == engine
    assert (await catalogue.cameras.get(camera["camera_id"]))["image_fdfs"] == "snapshots/1.jpg"


async def test_set_started_writes_only_changes_and_refuses_unknown_cameras(
    catalogue: Catalogue,
) -> None:
    camera = await _camera(catalogue)
    camera_id = camera["camera_id"]
    path = catalogue.db.engine.url.database

    def stored() -> tuple[int, int]:
        with contextlib.closing(sqlite3.connect(path)) as other:
            return other.execute(
                "SELECT started, updated FROM cameras WHERE camera_id = ?", (camera_id,)
            ).fetchone()

    assert await catalogue.cameras.set_started(camera_id, 0) == camera["gather_id"]
    assert stored()[0] == 0
    with contextlib.closing(sqlite3.connect(path)) as other:  # mark the row to see any rewrite
        other.execute("UPDATE cameras SET updated = 7 WHERE camera_id = ?", (camera_id,))
        other.commit()
    assert await catalogue.cameras.set_started(camera_id, 0) == camera["gather_id"]
    assert stored() == (0, 7)  # already stopped: nothing written
    await catalogue.cameras.set_started(camera_id, 1)
    started, updated = stored()
    assert started == 1 and updated != 7
    with pytest.raises(NotFound):
        await catalogue.cameras.set_started(camera_id + 1, 1)


async def test_a_held_write_lock_makes_writes_wait_off_the_loop_and_none_is_lost(
    catalogue: Catalogue,
) -> None:
    camera = await _camera(catalogue)
    camera_id = camera["camera_id"]
    blocker = sqlite3.connect(catalogue.db.engine.url.database, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        blocker.execute("UPDATE gatherers SET name_pc = 'busy'")
        assert camera["started"] == 1
        writes = asyncio.ensure_future(catalogue.cameras.set_started(camera_id, 0))
        ticks = 0
        for _ in range(30):  # the loop keeps turning while the writes wait
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 30 and not writes.done()
        # Reads still answer at once, from the last committed state.
        assert (await catalogue.cameras.get(camera_id))["started"] == camera["started"]
        blocker.execute("COMMIT")
        assert await asyncio.wait_for(writes, 10) == camera["gather_id"]
    finally:
        blocker.close()
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        assert other.execute("SELECT name_pc FROM gatherers").fetchone() == ("busy",)
        assert other.execute("SELECT started FROM cameras").fetchone() == (0,)


async def test_inline_commits_are_checkpointed_from_the_engine_thread(tmp_path: Path) -> None:
    ticks = itertools.count(1_000_000)  # a clock that moves on every call: each write differs
    catalogue = await Catalogue.open(f"sqlite+aiosqlite:///{tmp_path / 'relay.sqlite3'}",
                                     ticks.__next__)
    try:
        await _checkpointed(catalogue)
    finally:
        await catalogue.close()


async def _checkpointed(catalogue: Catalogue) -> None:
    camera = await _camera(catalogue)
    main_file = Path(catalogue.db.engine.url.database)

    def main_digest() -> str:
        return hashlib.sha256(main_file.read_bytes()).hexdigest()

    with contextlib.closing(sqlite3.connect(main_file)) as other:  # start from an empty WAL
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = main_digest()
    # Write transactions count too: creating the catalogue, the gatherer and the camera.
    already = catalogue.db._inline._commits
    assert already == 3
    for turn in range(CHECKPOINT_EVERY - already - 1):
        await catalogue.cameras.set_started(camera["camera_id"], turn % 2)
    assert main_digest() == before  # inline commits only append to the WAL
    last = (CHECKPOINT_EVERY - already - 1) % 2  # every call flips the flag: each one is a commit
    await catalogue.cameras.set_started(camera["camera_id"], last)
    for _ in range(500):
        if main_digest() != before:
            break
        await asyncio.sleep(0.01)
    assert main_digest() != before  # the checkpoint copied the WAL into the database file
    with contextlib.closing(sqlite3.connect(main_file)) as other:
        assert other.execute("SELECT started FROM cameras").fetchone() == (last,)


async def test_account_changes_show_at_once_here_and_within_the_memo_time_elsewhere(
    catalogue: Catalogue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_module, "MEMO_SECONDS", 0.3)
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    assert (await catalogue.accounts.by_id(account.account_id)).is_admin
    await catalogue.accounts.set_admin("ann", False)  # this process: at once
    assert not (await catalogue.accounts.by_id(account.account_id)).is_admin
    other = await Catalogue.open(f"sqlite+aiosqlite:///{tmp_path / 'relay.sqlite3'}")
    try:  # another process (``relay user``), as far as this catalogue can tell
        credential = await other.accounts.rotate("ann")
    finally:
        await other.close()
    await asyncio.sleep(0.35)
    assert (await catalogue.accounts.by_id(account.account_id)).credential == credential


async def test_writes_of_one_loop_turn_commit_together_and_one_bad_write_spoils_none(
    catalogue: Catalogue,
) -> None:
    gather_id = await catalogue.gatherers.register("02:00:00:00:00:01")
    ids = [
        (await catalogue.cameras.add(
            gather_id, {"camera_name": f"c{n}", "stream_prop": 1, "stream_mp4": "/srv/c.mp4"}
        ))["camera_id"]
        for n in range(20)
    ]
    commits = catalogue.db._inline._commits
    assert await asyncio.gather(*(catalogue.cameras.set_started(i, 0) for i in ids)) == [
        gather_id
    ] * 20
    assert catalogue.db._inline._commits == commits + 1  # twenty writes, one transaction
    # A write that breaks a constraint (a gatherer that does not exist) between two good ones:
    # it alone fails, through the engine, with the engine's error; the others are committed.
    move = update(cameras).where(cameras.c.camera_id == bindparam("which")).values(
        gather_id=bindparam("to"), camera_name=bindparam("name"))
    good_1, bad, good_2 = await asyncio.gather(
        catalogue.db.write_one(move, which=ids[0], to=gather_id, name="one"),
        catalogue.db.write_one(move, which=ids[1], to=9999, name="bad"),
        catalogue.db.write_one(move, which=ids[2], to=gather_id, name="two"),
        return_exceptions=True,
    )
    assert good_1 == 1 and good_2 == 1 and isinstance(bad, IntegrityError)
    with contextlib.closing(sqlite3.connect(catalogue.db.engine.url.database)) as other:
        names = dict(other.execute("SELECT camera_id, camera_name FROM cameras"))
        started = {row[0] for row in other.execute("SELECT started FROM cameras")}
    assert (names[ids[0]], names[ids[1]], names[ids[2]]) == ("one", "c1", "two")
    assert started == {0}
