"""The per-node cache of hot rows (``relay/catalogue/cache.py``) on SQLite and PostgreSQL: this
node's writes are seen at once, another node's within a fraction of a second on PostgreSQL
(NOTIFY), another process's within the expiry on SQLite; the listener survives losing its
connection; and ``set_started`` is one conditional UPDATE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from conftest import POSTGRES, run_relay
from sqlalchemy import select, update

from relay.catalogue import Catalogue, NotFound
from relay.catalogue import cache as cache_module
from relay.catalogue.schema import cameras


async def _camera(catalogue: Catalogue) -> dict:
    gather_id = await catalogue.gatherers.register("02:00:00:00:00:01")
    return await catalogue.cameras.add(
        gather_id, {"camera_name": "door", "stream_prop": 1, "stream_mp4": "/srv/door.mp4"})


async def _within(seconds: float, check: Callable[[], Awaitable[bool]]) -> float:
    """How long until ``check()`` holds, failing past ``seconds``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def _stored(catalogue: Catalogue, camera_id: int) -> tuple[int, int]:
    async with catalogue.db.read() as conn:
        return tuple((await conn.execute(select(cameras.c.started, cameras.c.updated)
                                         .where(cameras.c.camera_id == camera_id))).one())


async def test_hot_rows_are_answered_from_memory_and_this_nodes_writes_seen_at_once(
    catalogue: Catalogue,
) -> None:
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    key = await catalogue.agent_keys.add("site-1")
    camera = await _camera(catalogue)
    hot = catalogue.hot
    assert (await catalogue.accounts.by_id(account.account_id)).is_admin
    misses = hot.accounts.misses
    for _ in range(5):
        assert await catalogue.accounts.by_id(account.account_id) is not None
    assert hot.accounts.misses == misses  # from memory
    assert (await catalogue.agent_keys.check(key)) is not None
    assert (await catalogue.cameras.hot(camera["camera_id"])).started == 1

    await catalogue.accounts.set_admin("ann", False)
    assert not (await catalogue.accounts.by_id(account.account_id)).is_admin
    credential = await catalogue.accounts.rotate("ann")
    assert (await catalogue.accounts.by_id(account.account_id)).credential == credential
    await catalogue.agent_keys.revoke("site-1")
    assert await catalogue.agent_keys.check(key) is None
    await catalogue.cameras.set_started(camera["camera_id"], 0)
    assert (await catalogue.cameras.hot(camera["camera_id"])).started == 0
    await catalogue.cameras.delete([camera["camera_id"]])
    assert await catalogue.cameras.hot(camera["camera_id"]) is None
    with pytest.raises(NotFound):
        await catalogue.cameras.set_started(camera["camera_id"], 1)
    assert await catalogue.accounts.by_id(10**9) is None  # misses are not kept
    assert len(hot.accounts) <= 1  # (ann's, unless this node's own NOTIFY just cleared it)


async def test_set_started_is_one_conditional_update(catalogue: Catalogue) -> None:
    camera = await _camera(catalogue)
    camera_id = camera["camera_id"]
    assert await catalogue.cameras.set_started(camera_id, 0) == camera["gather_id"]
    assert (await _stored(catalogue, camera_id))[0] == 0
    async with catalogue.db.write() as conn:  # mark the row to see any rewrite
        await conn.execute(update(cameras).where(cameras.c.camera_id == camera_id)
                           .values(updated=7))
    assert await catalogue.cameras.set_started(camera_id, 0) == camera["gather_id"]
    assert await _stored(catalogue, camera_id) == (0, 7)  # already stopped: nothing changed
    assert await catalogue.cameras.set_started(camera_id, 1) == camera["gather_id"]
    started, updated = await _stored(catalogue, camera_id)
    assert started == 1 and updated != 7
    with pytest.raises(NotFound):
        await catalogue.cameras.set_started(camera_id + 1, 1)
    with pytest.raises(NotFound):
        await catalogue.cameras.set_started(camera_id + 1, 0)


async def test_a_read_begun_before_a_write_does_not_store_the_old_row(
    catalogue: Catalogue,
) -> None:
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    rows = catalogue.hot.accounts
    release = asyncio.Event()

    async def slow_old_read() -> object:
        await release.wait()
        return "the row as it was"

    reading = asyncio.ensure_future(rows.get(account.account_id, slow_old_read))
    await asyncio.sleep(0)
    await catalogue.accounts.set_admin("ann", False)  # commits and forgets meanwhile
    release.set()
    assert await reading == "the row as it was"  # that caller gets what it read …
    assert not (await catalogue.accounts.by_id(account.account_id)).is_admin  # … nobody else


async def test_other_process_changes_reach_this_node_within_the_expiry(
    catalogue: Catalogue, catalogue_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another ``Catalogue`` on the same database: another relay node on PostgreSQL (heard at
    once through NOTIFY), another process on SQLite (within ``EXPIRY_SECONDS``)."""
    monkeypatch.setattr(cache_module, "EXPIRY_SECONDS", 0.5)
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    key = await catalogue.agent_keys.add("site-1")
    camera = await _camera(catalogue)
    camera_id = camera["camera_id"]
    assert (await catalogue.accounts.by_id(account.account_id)).is_admin
    assert await catalogue.agent_keys.check(key) is not None
    assert (await catalogue.cameras.hot(camera_id)).started == 1
    other = await Catalogue.open(catalogue_url)
    try:
        await other.accounts.set_admin("ann", False)
        await other.agent_keys.revoke("site-1")
        await other.cameras.set_started(camera_id, 0)
    finally:
        await other.close()
    postgres = catalogue.db.dialect == "postgresql"
    limit = 0.3 if postgres else 0.5 + 0.3

    async def admin_gone() -> bool:
        return not (await catalogue.accounts.by_id(account.account_id)).is_admin

    async def key_refused() -> bool:
        return await catalogue.agent_keys.check(key) is None

    async def stopped() -> bool:
        return (await catalogue.cameras.hot(camera_id)).started == 0

    for check in (admin_gone, key_refused, stopped):
        await _within(limit, check)


@pytest.mark.parametrize("catalogue_url", ["postgresql"], indirect=True)
async def test_another_node_is_heard_within_a_fraction_of_a_second(catalogue: Catalogue,
                                                                    catalogue_url: str) -> None:
    """With the expiry far away, only the notification can make the change show."""
    key = await catalogue.agent_keys.add("site-1")
    camera = await _camera(catalogue)
    camera_id = camera["camera_id"]
    other = await Catalogue.open(catalogue_url)
    try:
        for _ in range(3):
            assert await catalogue.agent_keys.check(key) is not None
            assert (await catalogue.cameras.hot(camera_id)).started == 1
            await other.cameras.set_started(camera_id, 0)

            async def stopped() -> bool:
                return (await catalogue.cameras.hot(camera_id)).started == 0

            assert await _within(0.5, stopped) < 0.5
            await other.cameras.set_started(camera_id, 1)
            await _within(0.5, lambda: _started(catalogue, camera_id))
        await other.agent_keys.revoke("site-1")

        async def refused() -> bool:
            return await catalogue.agent_keys.check(key) is None

        await _within(0.5, refused)
        await other.cameras.delete([camera_id])

        async def gone() -> bool:
            return await catalogue.cameras.hot(camera_id) is None

        await _within(0.5, gone)
    finally:
        await other.close()


async def _started(catalogue: Catalogue, camera_id: int) -> bool:
    return (await catalogue.cameras.hot(camera_id)).started == 1


@pytest.mark.parametrize("catalogue_url", ["postgresql"], indirect=True)
async def test_the_listener_reconnects_after_losing_its_connection_and_clears_the_cache(
    catalogue: Catalogue, catalogue_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache_module, "LISTEN_RETRY_MAX_S", 0.2)
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    camera = await _camera(catalogue)
    await catalogue.accounts.by_id(account.account_id)
    await catalogue.cameras.hot(camera["camera_id"])
    listener = catalogue.hot.listener
    assert listener is not None and listener.connections == 1
    assert len(catalogue.hot.accounts) == 1 and len(catalogue.hot.cameras) == 1
    admin = await asyncpg.connect(POSTGRES)
    try:  # (as a PostgreSQL restart would)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener.backend_pid)
    finally:
        await admin.close()

    async def reconnected() -> bool:
        return listener.connected and listener.connections == 2

    await _within(10, reconnected)
    assert len(catalogue.hot.accounts) == 0 and len(catalogue.hot.cameras) == 0
    # And it hears other nodes again.
    await catalogue.cameras.hot(camera["camera_id"])
    other = await Catalogue.open(catalogue_url)
    try:
        await other.cameras.set_started(camera["camera_id"], 0)
    finally:
        await other.close()

    async def stopped() -> bool:
        return (await catalogue.cameras.hot(camera["camera_id"])).started == 0

    await _within(0.5, stopped)


@pytest.mark.parametrize("catalogue_url", ["postgresql"], indirect=True)
async def test_nothing_is_answered_from_memory_while_the_listener_is_down(
    catalogue: Catalogue,
) -> None:
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    await catalogue.accounts.by_id(account.account_id)
    listener = catalogue.hot.listener
    assert listener is not None
    await listener.close()  # (stands for a listener that cannot reach PostgreSQL)
    misses = catalogue.hot.accounts.misses
    for _ in range(3):
        assert await catalogue.accounts.by_id(account.account_id) is not None
    assert catalogue.hot.accounts.misses == misses + 3


@pytest.mark.parametrize("catalogue_url", ["sqlite"], indirect=True)
async def test_an_agent_key_revoked_by_the_cli_is_refused_within_the_expiry(
    catalogue: Catalogue, tmp_path: Path,
) -> None:
    """``relay agent-key revoke`` in its own process, beside a running node on the same file."""
    key = await catalogue.agent_keys.add("site-1")
    assert await catalogue.agent_keys.check(key) is not None
    revoked = await asyncio.to_thread(run_relay, "agent-key", "revoke", "site-1", "--data",
                                      str(tmp_path / "data"))
    assert revoked.returncode == 0
    started = time.monotonic()

    async def refused() -> bool:
        return await catalogue.agent_keys.check(key) is None

    await _within(cache_module.EXPIRY_SECONDS + 0.5, refused)
    assert time.monotonic() - started <= cache_module.EXPIRY_SECONDS + 0.5


@pytest.mark.parametrize("catalogue_url", ["postgresql"], indirect=True)
async def test_pooled_connections_closed_by_postgresql_are_replaced_before_use(
    catalogue: Catalogue,
) -> None:
    """No ``SELECT 1`` per checkout (database.py): a connection PostgreSQL closed (a restart)
    is found closed by asyncpg and replaced, so the next calls still answer."""
    account = await catalogue.accounts.add("ann", "a long password", is_admin=True)
    camera = await _camera(catalogue)
    name = catalogue.db.engine.url.database
    admin = await asyncpg.connect(POSTGRES)
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
    finally:
        await admin.close()
    assert ended >= 2  # the pool's and the listener's
    await asyncio.sleep(0.2)  # (asyncpg sees the sockets close)
    assert await catalogue.cameras.set_started(camera["camera_id"], 0) == camera["gather_id"]
    assert (await catalogue.accounts.by_name("ann")).account_id == account.account_id
    assert (await catalogue.cameras.get(camera["camera_id"]))["started"] == 0
