"""play_camera's play_url and the player pages' ticket checks (the page must never need the token)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest


@pytest.fixture
async def cameras(api):
    gather_id = await api.gatherer()
    return await api.camera(gather_id, "A"), await api.camera(gather_id, "B")


async def test_play_camera_url(api, cameras):
    camera_a, _ = cameras
    answer = await api.call("play_camera", camera_id=camera_a)
    url = urlsplit(answer["play_url"])
    assert f"{url.scheme}://{url.netloc}" == api.services.settings.base_url
    assert url.path == f"/play/live/{camera_a}"
    query = parse_qs(url.query)
    assert query["width"] == ["850"] and query["height"] == ["550"]
    assert api.token not in answer["play_url"] and api.credential not in answer["play_url"]
    page = await api.client.get(f"{url.path}?{url.query}")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    assert "X-Frame-Options" not in page.headers  # embeddable in an iframe
    # The camera is offline (no agent here): the session says so instead of opening.
    session = await api.client.post(f"{url.path}/session?{url.query}")
    assert session.status == 409 and "offline" in (await session.json())["error"]
    assert (await api.services.catalogue.cameras.get(camera_a))["clicks"] == 1


async def test_ticket_for_camera_a_does_not_open_camera_b(api, cameras):
    camera_a, camera_b = cameras
    url = urlsplit((await api.call("play_camera", camera_id=camera_a))["play_url"])
    for method, path in (("GET", f"/play/live/{camera_b}"), ("POST", f"/play/live/{camera_b}/session"),
                         ("GET", f"/play/record/{camera_a}")):
        response = await api.client.request(method, f"{path}?{url.query}")
        assert response.status == 403, path
        assert "not for this" in await response.text()
    assert (await api.services.catalogue.cameras.get(camera_b))["clicks"] == 0


async def test_expired_forged_and_missing_tickets(api, cameras):
    camera_a, _ = cameras
    url = urlsplit((await api.call("play_camera", camera_id=camera_a))["play_url"])
    ticket = parse_qs(url.query)["ticket"][0]
    for query, reason in (("", "missing"), ("ticket=" + ticket[:-2] + "xx", "invalid"),
                          ("ticket=" + api.token, "invalid"), ("ticket=%00", "invalid")):
        response = await api.client.post(f"{url.path}/session?{query}")
        assert response.status == 403
        assert reason in (await response.json())["error"]
    api.clock.advance(api.services.settings.play_ticket_ttl)
    response = await api.client.get(f"{url.path}?{url.query}")
    assert response.status == 403 and "expired" in await response.text()
    for bad in ("abc", "0", "-1", "99999999999999999999"):
        response = await api.client.get(f"/play/live/{bad}?{url.query}")
        assert response.status == 403


async def test_player_assets_and_unknown_assets(api):
    for name, kind in (("player.css", "text/css"), ("live.js", "text/javascript")):
        response = await api.client.get(f"/player/{name}")
        assert response.status == 200 and response.headers["Content-Type"].startswith(kind)
    for name in ("../relay.sqlite3", "%2e%2e%2fconfig.py", "nope.js"):
        assert (await api.client.get(f"/player/{name}")).status == 404
