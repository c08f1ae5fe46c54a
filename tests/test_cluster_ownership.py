"""Gatherer ownership and node leases on this machine's Redis (a key prefix of this test's own,
deleted after): epochs decide every claim, so races end with one owner and a stale node cannot
take back what moved."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from relay.cluster.ownership import Owner, Ownership
from relay.cluster.redis_link import RedisLink


@pytest.fixture
async def ownership() -> AsyncIterator[Ownership]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"relay-test-{secrets.token_hex(6)}"
    try:
        yield Ownership(client, prefix)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_the_newer_link_wins_whatever_the_order(ownership: Ownership) -> None:
    assert await ownership.claim(7, "a", 100) == (True, "")
    assert await ownership.claim(7, "b", 200) == (True, "a")  # moved to b
    assert await ownership.owner(7) == Owner("b", 200)
    # a's late claim for its older link is refused and names the holder
    assert await ownership.claim(7, "a", 150) == (False, "b")
    assert await ownership.owner(7) == Owner("b", 200)
    assert await ownership.held("a") == set() and await ownership.held("b") == {7}
    # a's release of its old claim changes nothing; b's own does
    assert not await ownership.release(7, "a", 100)
    assert await ownership.owner(7) == Owner("b", 200)
    assert await ownership.release(7, "b", 200)
    assert await ownership.owner(7) is None and await ownership.held("b") == set()


async def test_racing_claims_end_with_one_owner(ownership: Ownership) -> None:
    epochs = list(range(1000, 1050))
    nodes = [f"n{epoch % 5}" for epoch in epochs]
    results = await asyncio.gather(*(ownership.claim(9, node, epoch)
                                     for node, epoch in zip(nodes, epochs, strict=True)))
    assert await ownership.owner(9) == Owner(nodes[-1], epochs[-1])
    held = [await ownership.held(f"n{n}") for n in range(5)]
    assert sum(9 in h for h in held) == 1
    assert results[-1][0]  # the newest claim always succeeds


async def test_a_node_back_after_its_lease_cannot_take_back_what_moved(ownership: Ownership
                                                                       ) -> None:
    assert not await ownership.renew("old", {"url": "http://a"}, 0.2)  # first lease: none before
    assert await ownership.renew("old", {"url": "http://a"}, 0.2)
    await ownership.claim(3, "old", 10)
    await asyncio.sleep(0.3)  # "old" was silent past its lease
    assert await ownership.alive("old") is None
    nodes = await ownership.nodes()
    assert nodes["old"][0] is False and nodes["old"][1]["url"] == "http://a"
    await ownership.claim(3, "new", 20)  # the agent linked elsewhere meanwhile
    assert not await ownership.renew("old", {"url": "http://a"}, 5)  # it learns it had lapsed
    assert await ownership.claim(3, "old", 10) == (False, "new")
    assert (await ownership.nodes())["old"][0] is True


async def test_one_sweeper_at_a_time(ownership: Ownership) -> None:
    assert await ownership.take_turn("sweep", "a", 0.3)
    assert not await ownership.take_turn("sweep", "b", 0.3)
    assert await ownership.take_turn("sweep", "a", 0.3)  # the holder keeps it
    await asyncio.sleep(0.4)
    assert await ownership.take_turn("sweep", "b", 0.3)


async def test_the_redis_link_resubscribes_after_its_connection_is_killed() -> None:
    """redis-py's pub/sub does not come back by itself (redis-py #2089, #2417): ours does."""
    name = f"relay-test-{secrets.token_hex(6)}"
    channel = f"{name}:moved"
    link = RedisLink("redis://127.0.0.1:6379/0", probe=0.1, name=name)
    got: asyncio.Queue[str] = asyncio.Queue()

    async def handler(data: str) -> None:
        await got.put(data)

    link.subscribe(channel, handler)
    await link.start()
    admin = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    try:
        assert link.ready
        await admin.publish(channel, "one")
        assert await asyncio.wait_for(got.get(), 3) == "one"
        # Kill our link's pub/sub connection (only ours: this Redis is shared).
        ours = [client for client in await admin.client_list(_type="pubsub")
                if client.get("name") == name]
        assert len(ours) == 1
        await admin.client_kill_filter(_id=ours[0]["id"])
        # At most once: a message published while it resubscribes may be lost (pub/sub carries
        # hints only), so publish until one arrives.
        received = None
        for _ in range(50):
            await admin.publish(channel, "two")
            try:
                received = await asyncio.wait_for(got.get(), 0.1)
                break
            except TimeoutError:
                continue
        assert received == "two"
        await asyncio.sleep(0.3)  # one subscription of ours left, not two
        assert len([client for client in await admin.client_list(_type="pubsub")
                    if client.get("name") == name]) == 1
    finally:
        await link.stop()
        await admin.aclose()


async def test_the_holder_and_its_lease_in_one_answer(ownership: Ownership) -> None:
    assert await ownership.holder(5) is None
    await ownership.claim(5, "a", 10)
    assert await ownership.holder(5) == (Owner("a", 10), None)  # "a" has no lease: dead
    await ownership.renew("a", {"url": "http://a:1"}, 5)
    assert await ownership.holder(5) == (Owner("a", 10), {"url": "http://a:1"})
