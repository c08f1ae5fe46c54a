"""Uploads from agents (docs/RECORDING.md, "The upload protocol"), against a real ``relay serve``.

The agent side is this test speaking the protocol over real sockets (so it can do what a broken or
hostile agent would), and the real ``Uploader`` over a real spool for the agent's own behaviour.
Gatherers are registered by a real hello on ``/agent``; cameras are added through the API.
The relay's catalogue is a SQLite file; two tests of what an upload leaves in the catalogue (a
whole upload's record, and a relay killed mid-upload resumed with one row: ``BOTH``) run on a
fresh PostgreSQL database too, for CI's time (it must stay under 25 minutes). The others (offsets,
sizes, checksums, refusals, space, snapshots, restarts) do not: their catalogue calls are the
same statements those two make on each backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import secrets
import signal
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from conftest import RelayProcess, fresh_postgres, run_relay, start_relay, stop_relay

from relay.agent.spool import Spool
from relay.agent.uploader import Uploader
from relay.link import protocol
from relay.vod.durable import WRITE_BACK_EVERY
from relay.vod.uploads import UPLOAD_READ, large_reads

FAST = ("--command-timeout", "2", "--agent-key-recheck", "1")
VIDEO = secrets.token_bytes(300_000)  # (what the relay stores, it never decodes)
POSTER = b"\xff\xd8\xff\xe0poster" + secrets.token_bytes(500)
#: A test of what an upload leaves in the catalogue: on SQLite and on PostgreSQL.
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Site:
    relay: RelayProcess
    token: str
    key: str
    camera_id: int
    other_key: str
    other_camera_id: int
    env: dict[str, str] = field(default_factory=dict)  # RELAY_DATABASE_URL on PostgreSQL

    @property
    def base(self) -> str:
        return self.relay.base_url

    def api(self, name: str, **params: Any) -> dict[str, Any]:
        query = urlencode({"token": self.token, **params})
        with urllib.request.urlopen(f"{self.base}/api/v1/{name}?{query}", timeout=30) as answer:
            return json.load(answer)

    def records(self) -> list[dict[str, Any]]:
        return self.api("list_record", cur=1, per=50)["data"]

    def db_rows(self, sql: str) -> list[tuple]:
        url = self.env.get("RELAY_DATABASE_URL")
        if url:  # (off the test's loop, which this call may not wait on)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, _pg_rows(url, sql)).result()
        with sqlite3.connect(self.relay.data / "relay.sqlite3") as db:
            found = db.execute(sql).fetchall()
        db.close()
        return found

    def stored_files(self) -> list[Path]:
        return sorted(p for p in (self.relay.data / "files").rglob("*") if p.is_file())


async def _pg_rows(url: str, sql: str) -> list[tuple]:
    import asyncpg

    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


async def gatherer(base: str, key: str, mac: str) -> int:
    """Register a gatherer the way an agent does (a hello), then go offline."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            base + "/agent", headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send_json({"type": "hello", "protocol": protocol.PROTOCOL, "version": "test",
                            "mac_addr": mac, "ip_addr": "127.0.0.1", "name_pc": "pc",
                            "os_name": "test", "devices": []})
        welcome = await ws.receive(timeout=10)
        return json.loads(welcome.data)["gather_id"]


def token_of(relay: RelayProcess) -> str:
    with urllib.request.urlopen(
            f"{relay.base_url}/api/v1/access_token?unionid={relay.credential}") as answer:
        return json.load(answer)["token"]


async def make_site(relay: RelayProcess, token: str, env: dict[str, str]) -> Site:
    data = str(relay.data)
    key = run_relay("agent-key", "add", "school", "--data", data, env=env).stdout.strip()
    other = run_relay("agent-key", "add", "other-site", "--data", data, env=env).stdout.strip()
    # On PostgreSQL the relay really is there: no SQLite catalogue appears beside it.
    assert (relay.data / "relay.sqlite3").exists() == (not env)
    cameras = []
    for agent_key, mac in ((key, "02:00:00:00:aa:01"), (other, "02:00:00:00:ee:01")):
        gather_id = await gatherer(relay.base_url, agent_key, mac)
        site = Site(relay, token, key, 0, other, 0)
        answer = site.api("add_camera", camera_name="gate", gather_id=gather_id, stream_prop=1,
                          stream_mp4="/videos/gate.mp4")
        assert answer["err_code"] == 0, answer
        cameras.append(answer["camera_id"])
    return Site(relay, token, key, cameras[0], other, cameras[1], env)


@pytest.fixture
async def backend(request) -> AsyncIterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The relay's environment: RELAY_DATABASE_URL of a fresh PostgreSQL database for the
    postgresql run of a ``BOTH`` test, nothing (its SQLite file) otherwise."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield {}
        return
    async with fresh_postgres() as url:
        yield {"RELAY_DATABASE_URL": url}


@pytest.fixture
async def site(request, tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[Site]:  # type: ignore[no-untyped-def]
    marker = request.node.get_closest_marker("relay_args")
    relay = start_relay(tmp_path / "data", *FAST, *(marker.args if marker else ()), env=backend)
    try:
        yield await make_site(relay, token_of(relay), backend)
    finally:
        stop_relay(relay)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def manifest(camera_id: int, data: bytes = VIDEO, kind: str = "record", **changes: Any
             ) -> dict[str, Any]:
    start = time.time() - 120
    fields = {"upload_id": secrets.token_hex(16), "kind": kind, "camera_id": camera_id,
              "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "start_time": start, "end_time": start + 60.4, "duration": 60.2 if kind == "record"
              else 0, "width": 640, "height": 360}
    return {**fields, **changes}


class Agent:
    """One agent key speaking the protocol."""

    def __init__(self, http: aiohttp.ClientSession, base: str, key: str) -> None:
        self.http, self.url, self.headers = http, base + "/agent/uploads", {
            "Authorization": f"Bearer {key}"}

    async def _json(self, response: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
        body = await response.json()
        if response.status != 200:
            assert body["err_code"] == response.status and body["err_msg"], body
        return response.status, body

    async def declare(self, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url, json=fields, headers=self.headers) as response:
            return await self._json(response)

    async def put(self, upload_id: str, offset: int, data: bytes) -> tuple[int, dict[str, Any]]:
        async with self.http.put(f"{self.url}/{upload_id}", params={"offset": str(offset)},
                                 data=data, headers=self.headers) as response:
            return await self._json(response)

    async def commit(self, upload_id: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.url}/{upload_id}/commit",
                                  headers=self.headers) as response:
            return await self._json(response)

    async def upload(self, fields: dict[str, Any], data: bytes) -> dict[str, Any]:
        status, answer = await self.declare(fields)
        assert (status, answer) == (200, {"state": "open", "offset": 0}), answer
        assert await self.put(fields["upload_id"], 0, data) == (200, {"offset": len(data)})
        status, answer = await self.commit(fields["upload_id"])
        assert status == 200, answer
        return answer


async def download(http: aiohttp.ClientSession, site: Site, fdfs: str) -> bytes:
    storage_addr = site.api("list_record", cur=1, per=1)["storage_addr"]
    async with http.get(storage_addr + fdfs) as response:
        assert response.status == 200
        return await response.read()


def bytes_read(relay: RelayProcess) -> int:
    """What the relay process (all its threads) has read so far: files, sockets, its database."""
    with open(f"/proc/{relay.process.pid}/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


@BOTH
async def test_a_whole_upload_commits_into_one_record_whose_file_downloads(site: Site, http):
    agent = Agent(http, site.base, site.key)
    fields = manifest(site.camera_id)
    import base64
    fields["poster"] = base64.b64encode(POSTER).decode()
    answer = await agent.upload(fields, VIDEO)
    assert answer["state"] == "committed" and answer["fdfs"].startswith(
        f"/files/records/{site.camera_id}/")
    name = answer["fdfs"].rsplit("/", 1)[1]
    assert len(name) == len("0" * 32 + ".mp4") and fields["upload_id"] not in answer["fdfs"]
    [record] = site.records()
    assert record["record_id"] == answer["record_id"]
    assert (record["file_fdfs"], record["file_size"], record["duration"]) == (
        answer["fdfs"], len(VIDEO), 60)
    assert await download(http, site, record["file_fdfs"]) == VIDEO
    assert record["image_fdfs"].startswith(f"/files/posters/{site.camera_id}/")
    assert await download(http, site, record["image_fdfs"]) == POSTER
    [(start, end, created)] = site.db_rows("SELECT start_time, end_time, created FROM records")
    assert start == created == int(fields["start_time"]) and end >= start + 60
    assert list((site.relay.data / "uploads").iterdir()) == []  # the temporary file was renamed
    # A repeat of the declaration or of the commit answers the same; still one row.
    assert await agent.declare(fields) == (200, answer)
    assert await agent.commit(fields["upload_id"]) == (200, answer)
    assert len(site.records()) == 1
    metrics = urllib.request.urlopen(site.base + "/metrics").read().decode()
    assert "relay_recordings_uploaded_total 1.0" in metrics
    assert f"relay_upload_bytes_total {float(len(VIDEO))}" in metrics
    log = stop_relay(site.relay)
    assert f"record {answer['record_id']} stored ({len(VIDEO)} bytes, 60 s)" in log
    assert "sha256 kept while receiving" in log and "read back" not in log
    assert fields["upload_id"] not in log and site.key not in log


async def test_an_upload_resumes_from_the_offset_the_relay_holds(site: Site, http):
    agent = Agent(http, site.base, site.key)
    fields = manifest(site.camera_id)
    upload_id = fields["upload_id"]
    assert (await agent.declare(fields))[1] == {"state": "open", "offset": 0}
    assert await agent.put(upload_id, 0, VIDEO[:100_000]) == (200, {"offset": 100_000})
    # Declaring again (an agent that restarted) tells where to go on.
    assert (await agent.declare(fields))[1] == {"state": "open", "offset": 100_000}
    # A wrong offset is refused with the right one, and changes nothing.
    status, body = await agent.put(upload_id, 0, VIDEO[:100_000])
    assert (status, body["offset"]) == (409, 100_000)
    status, body = await agent.put(upload_id, 150_000, VIDEO[150_000:])
    assert (status, body["offset"]) == (409, 100_000)
    assert await agent.put(upload_id, 100_000, VIDEO[100_000:]) == (200, {"offset": len(VIDEO)})
    status, answer = await agent.commit(upload_id)
    assert status == 200 and answer["state"] == "committed"
    [record] = site.records()
    assert await download(http, site, record["file_fdfs"]) == VIDEO
    # The sha256 was kept across the PUTs (the refused ones changed nothing).
    assert "sha256 kept while receiving" in stop_relay(site.relay)


async def test_a_normal_commit_does_not_read_its_file_again(site: Site, http):
    """The sha256 is computed as the PUTs write: the commit of 6 MB reads (files, sockets and
    database together, as the kernel counts them for the relay's process) far less than 6 MB."""
    data = secrets.token_bytes(6 << 20)
    agent = Agent(http, site.base, site.key)
    fields = manifest(site.camera_id, data)
    await agent.declare(fields)
    for offset in range(0, len(data), 2 << 20):
        chunk = data[offset:offset + (2 << 20)]
        assert await agent.put(fields["upload_id"], offset, chunk) == (
            200, {"offset": offset + len(chunk)})
    before = bytes_read(site.relay)
    status, answer = await agent.commit(fields["upload_id"])
    read = bytes_read(site.relay) - before
    assert status == 200 and answer["state"] == "committed"
    assert read < len(data) // 4, f"the commit read {read} bytes"
    assert await download(http, site, answer["fdfs"]) == data
    assert "sha256 kept while receiving" in stop_relay(site.relay)


async def test_a_large_upload_in_one_put_is_stored_intact_and_the_connection_reads_small_again(
        site: Site, http):
    """Past ``WRITE_BACK_EVERY`` the PUT starts the disk writing while it receives, with 1 MiB
    socket reads: the bytes stored are still exactly those sent, and the connection (kept alive)
    serves its next small request with the transport's usual read size."""
    data = secrets.token_bytes(3 * WRITE_BACK_EVERY + 12345)
    agent = Agent(http, site.base, site.key)
    fields = manifest(site.camera_id, data)
    answer = await agent.upload(fields, data)
    assert answer["state"] == "committed"
    assert hashlib.sha256(await download(http, site, answer["fdfs"])).hexdigest() == fields[
        "sha256"]
    assert await agent.declare(fields) == (200, answer)  # the same connection, a small request
    assert "sha256 kept while receiving" in stop_relay(site.relay)


async def test_large_reads_are_for_one_body_only():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    try:
        usual = transport.max_size  # type: ignore[attr-defined]
        assert usual < UPLOAD_READ
        with large_reads(transport):
            assert transport.max_size == UPLOAD_READ  # type: ignore[attr-defined]
        assert transport.max_size == usual  # type: ignore[attr-defined]
        with pytest.raises(ValueError), large_reads(transport):
            raise ValueError("a refused body")
        assert transport.max_size == usual  # type: ignore[attr-defined]
        with large_reads(None):  # no transport (the client left): nothing to do
            pass
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def test_a_wrong_checksum_or_size_is_refused_at_commit_and_nothing_is_stored(site: Site,
                                                                                    http):
    agent = Agent(http, site.base, site.key)
    wrong_sum = manifest(site.camera_id, sha256="0" * 64)
    await agent.declare(wrong_sum)
    await agent.put(wrong_sum["upload_id"], 0, VIDEO)
    status, body = await agent.commit(wrong_sum["upload_id"])
    assert status == 422 and "checksum" in body["err_msg"]
    # The temporary file is dropped: the agent starts again from 0.
    assert (await agent.declare(wrong_sum))[1] == {"state": "open", "offset": 0}
    short = manifest(site.camera_id)
    await agent.declare(short)
    await agent.put(short["upload_id"], 0, VIDEO[:-1])
    status, body = await agent.commit(short["upload_id"])
    assert status == 422 and "size" in body["err_msg"]
    assert site.records() == [] and site.stored_files() == []
    assert list((site.relay.data / "uploads").iterdir()) == []


async def test_more_than_declared_is_refused_and_what_was_held_stays(site: Site, http):
    agent = Agent(http, site.base, site.key)
    fields = manifest(site.camera_id)
    await agent.declare(fields)
    assert await agent.put(fields["upload_id"], 0, VIDEO[:1000]) == (200, {"offset": 1000})
    status, body = await agent.put(fields["upload_id"], 1000, VIDEO[1000:] + b"extra")
    assert (status, body["offset"]) == (413, 1000)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: refused as it streams
        yield VIDEO[1000:]
        yield b"extra"

    async with http.put(f"{agent.url}/{fields['upload_id']}", params={"offset": "1000"},
                        data=chunked(), headers=agent.headers) as response:
        assert response.status == 413
    assert (await agent.declare(fields))[1] == {"state": "open", "offset": 1000}
    assert (await agent.put(fields["upload_id"], 1000, VIDEO[1000:]))[0] == 200
    assert (await agent.commit(fields["upload_id"]))[0] == 200
    # The PUT refused as it streamed dropped the running sha256: the commit read the file back.
    assert "sha256 read back from disk" in stop_relay(site.relay)


async def test_refusals_of_keys_cameras_names_and_fields(site: Site, http):
    agent = Agent(http, site.base, site.key)
    # Another site's camera, with this site's key (and the other way round).
    status, body = await agent.declare(manifest(site.other_camera_id))
    assert status == 403 and "agent key" in body["err_msg"]
    status, _ = await Agent(http, site.base, site.other_key).declare(manifest(site.camera_id))
    assert status == 403
    # A forged key, and none at all.
    forged = Agent(http, site.base, "rk_" + secrets.token_urlsafe(32))
    assert (await forged.declare(manifest(site.camera_id)))[0] == 401
    assert (await forged.put("0" * 32, 0, b"x"))[0] == 401
    assert (await forged.commit("0" * 32))[0] == 401
    async with http.post(agent.url, json=manifest(site.camera_id)) as response:
        assert response.status == 401
    # No such camera.
    assert (await agent.declare(manifest(999)))[0] == 404
    # Names that would leave the uploads folder, and malformed fields.
    assert (await agent.declare(manifest(site.camera_id, upload_id="../../etc/passwd")))[0] == 400
    async with http.put(f"{agent.url}/..%2F..%2Fx", params={"offset": "0"}, data=b"x",
                        headers=agent.headers) as response:
        assert response.status == 400
        assert (await response.json())["err_code"] == 400
    assert (await agent.commit("..%2F" + "0" * 27))[0] == 400
    assert (await agent.put("a" * 31 + "_", 0, b"x"))[0] == 400
    assert (await agent.commit("A" * 32))[0] == 400
    for bad in ({"kind": "movie"}, {"size": -1}, {"size": "10"}, {"sha256": "xyz"},
                {"camera_id": True}, {"start_time": float("nan")}, {"end_time": 0},
                {"poster": "not base64!"}):
        assert (await agent.declare({**manifest(site.camera_id), **bad}))[0] == 400, bad
    async with http.post(agent.url, data=b"{not json", headers=agent.headers) as response:
        assert response.status == 400
    # Unknown upload; a wrong offset form.
    assert (await agent.put("0" * 32, 0, b"x"))[0] == 404
    assert (await agent.commit("0" * 32))[0] == 404
    fields = manifest(site.camera_id)
    await agent.declare(fields)
    async with http.put(f"{agent.url}/{fields['upload_id']}", params={"offset": "-1"},
                        data=b"x", headers=agent.headers) as response:
        assert response.status == 400
    # The same upload id declared with another size or camera.
    assert (await agent.declare({**fields, "size": 5}))[0] == 409
    # Another key's upload of the same id is another upload: it cannot touch this one.
    other = Agent(http, site.base, site.other_key)
    assert (await other.put(fields["upload_id"], 0, b"x"))[0] == 404
    assert (await other.commit(fields["upload_id"]))[0] == 404
    assert site.records() == [] and site.stored_files() == []
    metrics = urllib.request.urlopen(site.base + "/metrics").read().decode()
    assert 'relay_upload_failures_total{reason="not_yours"} 2.0' in metrics
    assert 'relay_upload_failures_total{reason="bad_key"}' in metrics


@pytest.mark.relay_args("--upload-max-mb", "1")
async def test_an_upload_over_upload_max_mb_is_refused(site: Site, http):
    agent = Agent(http, site.base, site.key)
    status, body = await agent.declare(manifest(site.camera_id, size=(1 << 20) + 1))
    assert status == 413 and "upload_max_mb" in body["err_msg"]
    assert (await agent.declare(manifest(site.camera_id)))[0] == 200


@pytest.mark.relay_args("--storage-quota", "200000", "--storage-min-free", "0")
async def test_a_full_store_answers_507_and_the_uploader_keeps_its_copy(site: Site, http,
                                                                      tmp_path: Path):
    agent = Agent(http, site.base, site.key)
    status, body = await agent.declare(manifest(site.camera_id))  # 300 kB > 200 kB of quota
    assert status == 507 and "storage" in body["err_msg"]
    small = secrets.token_bytes(1000)
    assert (await agent.upload(manifest(site.camera_id, small), small))["state"] == "committed"
    spool = spool_with(tmp_path / "spool", site.camera_id, VIDEO)
    uploader = Uploader(http, site.base.replace("http://", "ws://") + "/agent", site.key, spool,
                        lambda: False)
    stop = asyncio.Event()
    running = asyncio.create_task(uploader.run(stop))
    for _ in range(100):
        if uploader.last_error.get(site.camera_id):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert "507" in uploader.last_error[site.camera_id]
    [entry] = spool.pending()
    assert entry.file.read_bytes() == VIDEO and len(site.records()) == 1



def space_deletions(site: Site) -> float:
    metrics = urllib.request.urlopen(site.base + "/metrics").read().decode()
    [value] = [line.split()[-1] for line in metrics.splitlines()
               if line.startswith('relay_recordings_deleted_total{reason="space"}')]
    return float(value)


def file_of(site: Site, fdfs: str) -> Path:
    return site.relay.data / "files" / fdfs.removeprefix("/files/")


# Room for two 300 kB recordings and a bit; nothing kept free, so only uploads make deletions.
@pytest.mark.relay_args("--storage-quota", "700000", "--storage-min-free", "0")
async def test_an_upload_that_does_not_fit_pushes_out_the_oldest_recordings(site: Site, http):
    agent = Agent(http, site.base, site.key)
    now = time.time()

    def at(start: float, size: int = len(VIDEO)) -> tuple[dict[str, Any], bytes]:
        data = secrets.token_bytes(size)
        return manifest(site.camera_id, data, start_time=start, end_time=start + 60), data

    # Ids out of start order: the second upload started first, so it is the oldest.
    newer, older = at(now - 1000), at(now - 2000)
    import base64
    older[0]["poster"] = base64.b64encode(POSTER).decode()
    kept = await agent.upload(*newer)
    oldest = await agent.upload(*older)
    [oldest_row] = [r for r in site.records() if r["record_id"] == oldest["record_id"]]
    oldest_files = [file_of(site, oldest_row["file_fdfs"]), file_of(site, oldest_row["image_fdfs"])]
    assert all(path.exists() for path in oldest_files) and space_deletions(site) == 0
    # A third does not fit: declaring it deletes the earliest-started recording, row and files.
    third = await agent.upload(*at(now - 500))
    assert {r["record_id"] for r in site.records()} == {kept["record_id"], third["record_id"]}
    assert not any(path.exists() for path in oldest_files)
    assert site.db_rows(f"SELECT 1 FROM records WHERE record_id = {oldest['record_id']}") == []
    assert space_deletions(site) == 1
    # Two declared while there is room for one: the second's PUT makes the room it lacks.
    (one, one_data), (two, two_data) = at(now - 300), at(now - 200)
    assert (await agent.declare(one))[0] == 200  # deletes `kept`, the oldest now
    assert (await agent.declare(two))[0] == 200
    assert await agent.put(one["upload_id"], 0, one_data) == (200, {"offset": len(one_data)})
    assert await agent.put(two["upload_id"], 0, two_data) == (200, {"offset": len(two_data)})
    assert space_deletions(site) == 3  # `third` went for the second PUT
    done = [(await agent.commit(f["upload_id"]))[1]["record_id"] for f in (one, two)]
    assert [r["record_id"] for r in site.records()] == done[::-1]
    stored = site.stored_files()
    # One bigger than the whole quota is refused and deletes nothing.
    huge = manifest(site.camera_id, size=800_000)
    status, body = await agent.declare(huge)
    assert status == 507 and "storage cannot hold 800000" in body["err_msg"]
    assert [r["record_id"] for r in site.records()] == done[::-1]
    assert site.stored_files() == stored and space_deletions(site) == 3
    # A backlog recording older than every stored one still pushes out the oldest (a refusal
    # would hold back the agent's whole queue, newest included).
    backlog = await agent.upload(*at(now - 9000))
    assert [r["record_id"] for r in site.records()] == [backlog["record_id"], done[1]]
    assert space_deletions(site) == 4
    with urllib.request.urlopen(site.base + "/healthz", timeout=10) as answer:
        assert answer.status == 200
    assert site.api("list_camera", cur=1, per=10)["err_code"] == 0
    log = stop_relay(site.relay)
    deletions = [line for line in log.splitlines() if "retention: deleted record" in line]
    assert len(deletions) == 4 and all(" WARNING " in line and "(space)" in line
                                       for line in deletions)
    assert f"deleted record {oldest['record_id']} of camera {site.camera_id}" in deletions[0]
    assert "would not fit even with every recording deleted" in log
    assert "Traceback" not in log

async def test_a_committed_snapshot_replaces_the_cameras_older_one(site: Site, http):
    agent = Agent(http, site.base, site.key)
    first, second = POSTER + b"1", POSTER + b"22"
    one = await agent.upload(manifest(site.camera_id, first, kind="snapshot"), first)
    assert one["fdfs"].startswith(f"/files/snapshots/{site.camera_id}/")
    two = await agent.upload(manifest(site.camera_id, second, kind="snapshot"), second)
    assert two["image_id"] > one["image_id"]
    [camera] = [row for row in site.api("list_camera", cur=1, per=50)["data"]
                if row["camera_id"] == site.camera_id]
    assert (camera["image_id"], camera["image_fdfs"]) == (two["image_id"], two["fdfs"])
    assert await download(http, site, two["fdfs"]) == second
    assert [p.read_bytes() for p in site.stored_files()] == [second]  # the older file went
    assert site.db_rows("SELECT image_id FROM snapshots") == [(two["image_id"],)]


async def test_a_camera_deleted_before_the_commit_stores_nothing(site: Site, http):
    agent = Agent(http, site.base, site.key)
    fields = manifest(site.camera_id)
    await agent.declare(fields)
    await agent.put(fields["upload_id"], 0, VIDEO)
    assert site.api("del_camera", camera_id=site.camera_id)["err_code"] == 0
    status, _ = await agent.commit(fields["upload_id"])
    assert status == 404
    assert site.stored_files() == [] and list((site.relay.data / "uploads").iterdir()) == []


def spool_with(root: Path, camera_id: int, data: bytes, poster: bytes = b"") -> Spool:
    """A spool holding one finished recording, made the way docs/RECORDING.md describes it."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{camera_id}-20250101T080000-{secrets.token_hex(3)}"
    (root / f"{name}.mp4").write_bytes(data)
    if poster:
        (root / f"{name}.poster.jpg").write_bytes(poster)
    fields = manifest(camera_id, data)
    fields.update(file=f"{name}.mp4", poster=f"{name}.poster.jpg" if poster else "")
    (root / f"{name}.json").write_text(json.dumps(fields))
    spool = Spool(root, 0)
    assert len(spool.pending()) == 1
    return spool


async def run_until(uploader: Uploader, check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    running = asyncio.create_task(uploader.run(stop))
    try:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, uploader.last_error
            assert not running.done(), running
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running


async def test_the_uploader_deletes_its_copy_only_after_the_commit(site: Site, http,
                                                                   tmp_path: Path):
    spool = spool_with(tmp_path / "spool", site.camera_id, VIDEO, POSTER)
    [entry] = spool.pending()
    uploader = Uploader(http, site.base, site.key, spool, lambda: True)
    await run_until(uploader, lambda: not spool.pending())
    [record] = site.records()
    assert await download(http, site, record["file_fdfs"]) == VIDEO
    assert await download(http, site, record["image_fdfs"]) == POSTER
    assert not entry.file.exists() and not entry.manifest.exists()
    assert uploader.last_error[site.camera_id] == ""
    # An entry for another site's camera is refused for good: dropped, logged, reported.
    spool = spool_with(tmp_path / "spool-2", site.other_camera_id, VIDEO)
    uploader = Uploader(http, site.base, site.key, spool, lambda: True)
    await run_until(uploader, lambda: not spool.pending())
    assert "403" in uploader.last_error[site.other_camera_id] and len(site.records()) == 1


@BOTH
async def test_a_relay_killed_mid_upload_is_resumed_from_its_offset_with_one_row(
        tmp_path: Path, http, backend: dict[str, str]):
    relay = start_relay(tmp_path / "data", *FAST, env=backend)
    try:
        site = await make_site(relay, token_of(relay), backend)
        spool = spool_with(tmp_path / "spool", site.camera_id, VIDEO)
        [entry] = spool.pending()
        agent = Agent(http, site.base, site.key)
        fields = {**entry.fields(), "poster": ""}
        fields.pop("file")
        await agent.declare(fields)
        assert await agent.put(entry.upload_id, 0, VIDEO[:120_000]) == (200, {"offset": 120_000})
        relay.process.send_signal(signal.SIGKILL)
        relay.process.wait()
        stop_relay(relay)
        relay = start_relay(tmp_path / "data", *FAST, env=backend,
                            port=int(site.base.rsplit(":", 1)[1]))
        site.relay = relay
        # The relay kept what reached its disk; the real uploader goes on from there (over the
        # same client session, whose kept-alive connection died with the relay).
        async with aiohttp.ClientSession() as fresh:
            assert (await Agent(fresh, site.base, site.key).declare(fields))[1] == {
                "state": "open", "offset": 120_000}
        uploader = Uploader(http, site.base, site.key, spool, lambda: True)
        await run_until(uploader, lambda: not spool.pending())
        [record] = site.records()
        assert await download(http, site, record["file_fdfs"]) == VIDEO
        metrics = urllib.request.urlopen(site.base + "/metrics").read().decode()
        assert f"relay_upload_bytes_total {float(len(VIDEO) - 120_000)}" in metrics  # the rest only
        assert site.db_rows("SELECT count(*) FROM records") == [(1,)]
    finally:
        stop_relay(relay)


async def test_a_commit_cut_short_after_its_rename_is_finished_at_the_next_start(
        tmp_path: Path, http, backend: dict[str, str]):
    """The crash window between the rename and the row: the relay's next start finishes it."""
    relay = start_relay(tmp_path / "data", *FAST, env=backend)
    try:
        site = await make_site(relay, token_of(relay), backend)
        agent = Agent(http, site.base, site.key)
        fields = manifest(site.camera_id)
        await agent.declare(fields)
        await agent.put(fields["upload_id"], 0, VIDEO)
        stop_relay(relay)
        # What the commit does before its transaction: the temporary file under its stored name.
        [temp] = list((tmp_path / "data" / "uploads").iterdir())
        [(fdfs,)] = site.db_rows("SELECT file_fdfs FROM uploads")
        stored = tmp_path / "data" / fdfs.lstrip("/")
        stored.parent.mkdir(parents=True)
        os.replace(temp, stored)
        stray = tmp_path / "data" / "uploads" / "left-by-a-crash.part"
        stray.write_bytes(b"x")
        relay = start_relay(tmp_path / "data", *FAST, env=backend,
                            port=int(site.base.rsplit(":", 1)[1]))
        site.relay = relay
        [record] = site.records()
        assert record["file_fdfs"] == fdfs
        assert not stray.exists()
        async with aiohttp.ClientSession() as fresh:  # (the old one's connection died)
            status, answer = await Agent(fresh, site.base, site.key).commit(fields["upload_id"])
        assert (status, answer["record_id"]) == (200, record["record_id"])  # the agent's repeat
        assert len(site.records()) == 1
    finally:
        stop_relay(relay)


async def test_after_a_restart_the_commit_checks_the_bytes_on_disk(
        tmp_path: Path, http, backend: dict[str, str]):
    """The running sha256 dies with the relay: a commit after a SIGKILL reads the file back, so
    bytes changed on disk meanwhile are refused (422), whether the PUTs were done or resumed."""
    relay = start_relay(tmp_path / "data", *FAST, env=backend)
    try:
        site = await make_site(relay, token_of(relay), backend)
        agent = Agent(http, site.base, site.key)
        done, resumed, clean = (manifest(site.camera_id) for _ in range(3))
        for fields in (done, resumed, clean):
            await agent.declare(fields)
        held = {done["upload_id"]: len(VIDEO), resumed["upload_id"]: 120_000,
                clean["upload_id"]: 100_000}  # (sizes that tell the temporary files apart)
        for upload_id, size in held.items():
            assert await agent.put(upload_id, 0, VIDEO[:size]) == (200, {"offset": size})
        relay.process.send_signal(signal.SIGKILL)
        relay.process.wait()
        stop_relay(relay)
        for temp in (tmp_path / "data" / "uploads").glob("*.part"):
            if temp.stat().st_size != 100_000:  # one byte changed, the size kept
                with temp.open("r+b") as file:
                    file.seek(50_000)
                    file.write(bytes([VIDEO[50_000] ^ 1]))
        relay = start_relay(tmp_path / "data", *FAST, env=backend,
                            port=int(site.base.rsplit(":", 1)[1]))
        site.relay = relay
        async with aiohttp.ClientSession() as fresh:
            agent = Agent(fresh, site.base, site.key)
            status, body = await agent.commit(done["upload_id"])
            assert status == 422 and "checksum" in body["err_msg"]
            for fields in (resumed, clean):
                size = held[fields["upload_id"]]
                assert await agent.put(fields["upload_id"], size, VIDEO[size:]) == (
                    200, {"offset": len(VIDEO)})
            status, body = await agent.commit(resumed["upload_id"])
            assert status == 422 and "checksum" in body["err_msg"]
            before = bytes_read(relay)
            status, answer = await agent.commit(clean["upload_id"])
            assert status == 200 and bytes_read(relay) - before >= len(VIDEO)  # read back
        [record] = site.records()
        assert record["record_id"] == answer["record_id"]
        assert await download(http, site, record["file_fdfs"]) == VIDEO
        log = stop_relay(relay)
        assert log.count("sha256 read back from disk") == 1
        assert "kept while receiving" not in log
    finally:
        stop_relay(relay)
