"""Stored files at /files/: range requests, content types, and no way out of the files directory."""

from __future__ import annotations

import asyncio

import pytest


async def raw_get(api, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (clients normalise '..' away; attackers don't)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_range_requests_and_types(api):
    content = bytes(range(256)) * 40
    video = api.store("records/1/clip.mp4", content)
    image = api.store("snapshots/1/shot.jpg", b"\xff\xd8\xff\xe0jpeg")
    whole = await api.client.get(video)
    assert whole.status == 200 and await whole.read() == content
    assert whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = await api.client.get(video, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(content)}"
    tail = await api.client.get(video, headers={"Range": "bytes=-10"})
    assert tail.status == 206 and await tail.read() == content[-10:]
    beyond = await api.client.get(video, headers={"Range": f"bytes={len(content) + 5}-"})
    assert beyond.status == 416
    shot = await api.client.get(image)
    assert shot.headers["Content-Type"] == "image/jpeg"
    assert shot.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "target",
    [
        "/files/../relay.sqlite3",
        "/files/..%2frelay.sqlite3",
        "/files/%2e%2e/relay.sqlite3",
        "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/files/records/../../relay.sqlite3",
        "/files//etc/passwd",
        "/files/%00",
        "/files/",
        "/files/records",
        "/files/records/1/missing.mp4",
    ],
)
async def test_nothing_outside_the_files_directory(api, target):
    api.store("records/1/clip.mp4", b"ok")
    status, body = await raw_get(api, target)
    assert status in (400, 403, 404), (target, status)
    assert b"SQLite format" not in body and b"root:" not in body


async def test_symlinks_out_of_the_files_directory_are_refused(api, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    link = api.services.settings.files_dir / "records" / "link.mp4"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    response = await api.client.get("/files/records/link.mp4")
    assert response.status == 404
    assert "top secret" not in await response.text()
