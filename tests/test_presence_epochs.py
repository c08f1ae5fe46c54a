"""Presence in the catalogue follows link epochs (``relay.hub``): a link that ends takes its
gatherer offline only while no newer link has registered it, whichever node holds that one.
On SQLite and on this machine's PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import fresh_postgres

from relay.catalogue import Catalogue
from relay.catalogue.registrations import Registration

MAC = "02:00:00:00:0e:01"


@pytest.fixture(params=["sqlite", "postgresql"])
async def catalogue(request, tmp_path: Path) -> AsyncIterator[Catalogue]:  # type: ignore[no-untyped-def]
    async with contextlib.AsyncExitStack() as stack:
        url = (await stack.enter_async_context(fresh_postgres()) if request.param == "postgresql"
               else f"sqlite+aiosqlite:///{tmp_path / 'relay.sqlite3'}")
        catalogue = await Catalogue.open(url)
        stack.push_async_callback(catalogue.close)
        yield catalogue


async def link(catalogue: Catalogue, epoch: int) -> int:
    [(gather_id, _state)] = await catalogue.gatherers.register_many(
        [Registration(MAC, None, epoch=epoch)])
    return gather_id


async def presence(catalogue: Catalogue, gather_id: int) -> tuple[int, int, list[int]]:
    row = await catalogue.gatherers.get(gather_id)
    statuses = [camera["status"] for camera in (await catalogue.cameras.page(1, 100)).rows]
    return row["status"], row["link_epoch"], statuses


async def test_an_older_link_ending_leaves_a_newer_one_online(catalogue: Catalogue) -> None:
    gather_id = await link(catalogue, 10)
    camera = await catalogue.cameras.add(gather_id, {"camera_name": "c", "stream_prop": 1,
                                                     "stream_mp4": "/x.mp4"})
    assert await catalogue.cameras.set_statuses([(gather_id, camera["camera_id"], 1)]) == [True]
    assert (await presence(catalogue, gather_id))[:2] == (1, 10)
    assert await link(catalogue, 20) == gather_id  # the agent relinked (here or on another node)
    assert await catalogue.gatherers.set_offline([(gather_id, 10)]) == []
    assert (await presence(catalogue, gather_id))[:2] == (1, 20)
    assert await catalogue.gatherers.online_links() == [(gather_id, 20)]
    # A registration that arrives late with an older epoch never lowers it.
    await link(catalogue, 15)
    assert (await presence(catalogue, gather_id))[:2] == (1, 20)
    assert await catalogue.gatherers.set_offline([(gather_id, 15)]) == []
    # The newest link ending takes it offline, its cameras with it.
    assert await catalogue.gatherers.set_offline([(gather_id, 20), (gather_id, 5)]) == [gather_id]
    assert await presence(catalogue, gather_id) == (0, 20, [0])
    assert await catalogue.gatherers.online_links() == []


async def test_offline_links_of_many_gatherers_in_one_call(catalogue: Catalogue) -> None:
    arrivals = [Registration(f"02:00:00:00:{n // 256:02x}:{n % 256:02x}", None, epoch=100 + n)
                for n in range(700)]  # more than one chunk of ids
    ids = [gather_id for gather_id, _state in await catalogue.gatherers.register_many(arrivals)]
    # Every other one relinked since (a newer epoch): only the rest go offline.
    await catalogue.gatherers.register_many([Registration(arrival.mac_addr, None, epoch=10_000 + n)
                                             for n, arrival in enumerate(arrivals[::2])])
    gone = await catalogue.gatherers.set_offline([(gid, 100 + n) for n, gid in enumerate(ids)])
    assert sorted(gone) == sorted(ids[1::2])
    assert sorted(gid for gid, _epoch in await catalogue.gatherers.online_links()) == \
        sorted(ids[::2])
