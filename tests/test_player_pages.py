"""play_camera's play_url and the player pages' ticket checks (the page must never need the token)."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import update

from relay.catalogue import schema
from relay.config import load_settings
from relay.live.ingest import LIVE
from relay.metrics import Metrics
from relay.server import build_app


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
    body = await session.json()
    assert session.status == 409 and body["err_code"] == 409 and "offline" in body["err_msg"]
    assert body["state"] == "offline"
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
        body = await response.json()
        assert body["err_code"] == 403 and reason in body["err_msg"]
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


#: Ids that are not 1-16 ASCII digits naming 1..2**31-1: a superscript two (``str.isdigit`` takes
#: it, ``int()`` does not), Arabic-Indic digits, and more digits than ``int()`` reads (4,300).
NOT_IDS = ("%C2%B2", "%D9%A1%D9%A2", "1" * 4400, "0" * 17 + "1", str(2**31), str(2**53 + 1))


async def test_ids_that_are_not_ascii_digits_are_refused_never_500(api, cameras):
    camera_a, _ = cameras
    url = urlsplit((await api.call("play_camera", camera_id=camera_a))["play_url"])
    for bad in NOT_IDS:
        for path in (f"/play/live/{bad}", f"/play/record/{bad}"):
            page = await api.client.get(f"{path}?ticket=x")
            assert page.status == 403 and "text/html" in page.headers["Content-Type"], (path, page)
            assert "no such" in await page.text()
        info = await api.client.get(f"/play/record/{bad}/info?ticket=x")
        assert info.status == 403, (bad, info.status)
        assert (await info.json())["err_code"] == 403
        for method, what in (("POST", "session"), ("POST", "webrtc"), ("POST", "heartbeat"),
                             ("POST", "bye"), ("GET", "mse")):
            response = await api.client.request(method, f"/play/live/{bad}/{what}?{url.query}")
            assert response.status == 404, (bad, what, response.status)
            assert await response.json() == {"err_code": 404, "err_msg": "no such camera"}


async def test_live_errors_have_the_relay_error_shape(api, cameras):
    """Every live refusal is ``{"err_code": <status>, "err_msg": "<why>"}`` like the rest of the
    relay (extra fields the page acts on, such as ``state``, beside them)."""
    camera_a, _ = cameras
    for method, what in (("POST", "webrtc"), ("POST", "heartbeat"), ("GET", "mse")):
        response = await api.client.request(method, f"/play/live/{camera_a}/{what}?session=nope")
        assert response.status == 404
        assert await response.json() == {"err_code": 404, "err_msg": "no such session"}
    ticket = parse_qs(urlsplit((await api.call("play_camera", camera_id=camera_a))["play_url"]).query)
    await api.call("del_camera", camera_id=camera_a)
    response = await api.client.post(f"/play/live/{camera_a}/session?ticket={ticket['ticket'][0]}")
    assert response.status == 404  # gone for good: the page stops asking
    assert await response.json() == {"err_code": 404, "err_msg": "no such camera"}
    info = await api.client.get(f"/play/record/{camera_a}/info?ticket=x")
    assert await info.json() == {"err_code": 403, "err_msg": "invalid play ticket"}


async def test_ice_deadline_is_the_setting(tmp_path, api):
    """``ice_deadline`` (default 20 s) reaches the live controller that answers offers."""
    assert api.client.app[LIVE].timings.ice_deadline == 20.0
    settings = load_settings({"data": tmp_path / "other", "ice_deadline": "3.5"}, environ={})
    app = build_app(dataclasses.replace(api.services, settings=settings, metrics=Metrics()))
    assert app[LIVE].timings.ice_deadline == 3.5


async def test_a_ticket_never_opens_another_camera_under_the_same_id(api, cameras):
    """Ids are never reused, but a catalogue restored from a backup (or upgraded from one that
    reused them) can give an old id to a new camera: the old camera's ticket must not open it."""
    camera_a, _ = cameras
    url = urlsplit((await api.call("play_camera", camera_id=camera_a))["play_url"])
    row = await api.services.catalogue.cameras.get(camera_a)
    async with api.services.catalogue.db.write() as conn:  # the row comes back, made anew
        await conn.execute(update(schema.cameras).where(schema.cameras.c.camera_id == camera_a)
                           .values(created=row["created"] + 1))
    for method, path in (("GET", url.path), ("POST", f"{url.path}/session")):
        response = await api.client.request(method, f"{path}?{url.query}")
        assert response.status == 403, path
        assert "no longer exists" in await response.text()
    assert (await api.services.catalogue.cameras.get(camera_a))["clicks"] == 0
    fresh = urlsplit((await api.call("play_camera", camera_id=camera_a))["play_url"])
    assert (await api.client.get(f"{fresh.path}?{fresh.query}")).status == 200
