"""``relay db copy --to URL``: an embedded (SQLite) catalogue moved into a fresh PostgreSQL database
by the real command, with nothing lost: every row of every table, the signing key (old tokens
still work), ids that stay never reused; then ``relay serve`` runs on it with the old credential."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from conftest import fresh_postgres, run_relay, start_relay, stop_relay
from sqlalchemy import select

from relay.catalogue import Catalogue
from relay.catalogue.schema import metadata


async def table_rows(catalogue: Catalogue) -> dict[str, list[tuple]]:
    found = {}
    async with catalogue.db.read() as conn:
        for table in metadata.sorted_tables:
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            found[table.name] = [tuple(row) for row in rows]
    return found


async def test_an_embedded_catalogue_moves_to_postgresql_with_nothing_lost(tmp_path: Path):
    data = tmp_path / "data"
    source = await Catalogue.open(f"sqlite+aiosqlite:///{(data / 'relay.sqlite3').resolve()}")
    admin = await source.accounts.add("admin", "correct horse", is_admin=True)
    await source.accounts.add("teacher", "password1", is_admin=False)
    await source.agent_keys.add("east", 2)
    gather_id = await source.gatherers.register("02:00:00:00:00:01", name_pc="pc", ip_addr="10.0.0.9")
    cameras = [await source.cameras.add(gather_id, {"camera_name": f"班{i}", "stream_prop": 1,
                                                    "stream_mp4": f"/v/{i}.mp4"}) for i in range(3)]
    await source.courses.add(camera_id=cameras[0]["camera_id"], week_id=1, start_sec=28_800,
                             elapse_sec=2_700)
    await source.records.add(cameras[0]["camera_id"], "/files/records/1/a.mp4", "", 1234, 60,
                             1_700_000_000, 1_700_000_060)
    await source.cameras.add_snapshot(cameras[1]["camera_id"], "/files/snapshots/2/a.jpg")
    deleted = cameras[2]["camera_id"]  # the highest camera id, then gone: never to be reused
    await source.cameras.delete([deleted])
    before = await table_rows(source)
    key = await source.signing_key()
    await source.close()

    async with fresh_postgres() as url:
        copied = run_relay("db", "copy", "--to", url, "--data", str(data))
        assert "copied the catalogue to postgresql+asyncpg://" in copied.stderr, copied.stderr
        target = await Catalogue.open(url)
        try:
            assert await table_rows(target) == before
            assert await target.signing_key() == key
            camera = await target.cameras.add(gather_id, {"camera_name": "new", "stream_prop": 1,
                                                          "stream_mp4": "/v/n.mp4"})
            assert camera["camera_id"] == deleted + 1  # after every id the source handed out
        finally:
            await target.close()

        again = run_relay("db", "copy", "--to", url, "--data", str(data), check=False)
        assert again.returncode == 1 and "already holds a catalogue" in again.stderr, again.stderr

        relay = start_relay(tmp_path / "node", "--database-url", url)
        try:
            query = f"{relay.base_url}/api/v1/access_token?unionid={admin.credential}"
            with urllib.request.urlopen(query, timeout=10) as answer:
                token = json.load(answer)["token"]
            with urllib.request.urlopen(f"{relay.base_url}/api/v1/list_camera?token={token}",
                                        timeout=10) as answer:
                names = sorted(row["camera_name"] for row in json.load(answer)["data"])
            assert names == ["new", "班0", "班1"]
        finally:
            stop_relay(relay)


def test_a_copy_from_no_catalogue_is_refused(tmp_path: Path):
    refused = run_relay("db", "copy", "--to", "postgresql+asyncpg://postgres@127.0.0.1:5432/x",
                        "--data", str(tmp_path / "nothing"), check=False)
    assert refused.returncode == 1 and "no catalogue" in refused.stderr, refused.stderr
