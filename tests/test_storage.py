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


@pytest.mark.parametrize(
    ("wanted", "status", "part"),
    [
        ("bytes=-0", 416, None),            # an empty suffix is unsatisfiable (RFC 9110 §14.1.2)
        ("bytes=-00", 416, None),
        ("bytes=5-2", 416, None),           # last before first: an invalid range, rejected
        ("bytes=999999-", 416, None),       # starts past the end
        ("bytes=-", 416, None),
        ("bytes=0-1,5-6", 200, slice(None)),  # several ranges: ignored, the whole file
        ("items=0-5", 200, slice(None)),      # another unit: ignored (RFC 9110 §14.2)
        ("bytes=-10", 206, slice(-10, None)),
        ("bytes=10-19", 206, slice(10, 20)),
        ("bytes=10-", 206, slice(10, None)),
        ("bytes=0-99999999", 206, slice(None)),  # a last byte past the end is the end
    ],
)
async def test_odd_ranges(api, wanted, status, part):
    content = bytes(range(256)) * 4
    video = api.store("records/1/odd.mp4", content)
    response = await api.client.get(video, headers={"Range": wanted})
    assert response.status == status, (wanted, response.status)
    body = await response.read()
    if status == 416:
        assert response.headers["Content-Range"] == f"bytes */{len(content)}"
        assert body != content
    else:
        assert body == content[part]
        assert response.headers["Content-Type"] == "video/mp4"


async def test_a_file_is_served_under_its_own_name_only(api):
    api.store("records/1/clip.mp4", b"clip")
    for target in ("/files/records/1/clip.mp4/", "/files/records//1/clip.mp4",
                   "/files/records/1/./clip.mp4", "/files/records/1/clip.mp4/."):
        status, body = await raw_get(api, target)
        assert status == 404 and body != b"clip", target
    status, body = await raw_get(api, "/files/records/1/clip.mp4")
    assert (status, body) == (200, b"clip")


@pytest.mark.parametrize("target", ["/files/" + "a" * 300, "/files/records/" + "b" * 256 + "/x.mp4",
                                    "/files/" + "/".join(["c" * 200] * 30)])
async def test_names_the_file_system_refuses_are_404(api, target):
    status, body = await raw_get(api, target)
    assert status == 404, (target[:40], status, body[:200])
    assert b'"err_code": 404' in body


async def test_a_symlink_loop_is_404_not_500(api):
    loop = api.services.settings.files_dir / "records" / "loop.mp4"
    loop.parent.mkdir(parents=True)
    loop.symlink_to(loop)
    status, body = await raw_get(api, "/files/records/loop.mp4")
    assert status == 404, (status, body[:200])
