"""/admin attacked: hostile names (stored XSS), posts without CSRF tokens or sessions, a viewer
reaching for administrators' pages, off-site redirects, forged flashes, unconfirmed deletions,
secrets in logs, and ids and filters no form would send.

Routes are read from ``app.router``, so a route added later is attacked too. Every visitor is a
real HTTP client with its own cookie jar (``test_admin.Visitor``) against the ``api`` fixture.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from test_admin import ADMIN_PASSWORD, Visitor

from relay.admin.sessions import FLASH_COOKIE, SESSION_COOKIE
from relay.link import protocol

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
QUOTE = "'><svg onload=alert(3)>"
PAYLOADS = (SCRIPT, IMG, QUOTE)
HOSTILE = "".join(PAYLOADS)  # one name carrying all three
RAW_MARKERS = ("<script>alert", "<img src=x", "<svg onload", "onerror=alert(2)>")
VIEWER, VIEWER_PASSWORD = "teacher", "password1"
OFF_SITE = ("//evil.example/x", "https://evil.example/", "/\\evil.example", "\\\\evil.example",
            "http:evil.example", "/admin\\..\\\\evil.example", " //evil.example")


@pytest.fixture
async def visitor(api) -> AsyncIterator[Callable[..., Visitor]]:  # type: ignore[no-untyped-def]
    base = f"http://{api.client.server.host}:{api.client.server.port}"
    opened: list[Visitor] = []

    def open_visitor(cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
                     headers: dict[str, str] | None = None) -> Visitor:
        opened.append(Visitor(base, cookie_jar, headers))
        return opened[-1]

    yield open_visitor
    for each in opened:
        await each.http.close()


@dataclass
class Site:
    """One of everything the console shows, each named by an attacker."""

    gather_id: int
    camera_id: int
    course_id: int
    record_id: int
    key: str


async def hostile_site(api) -> Site:  # type: ignore[no-untyped-def]
    """A gatherer whose agent reported hostile facts, renamed hostile by the API; a hostile
    camera with a course and a recording; an agent key."""
    gather_id = await api.gatherer("00:11:22:33:44:55", name_pc=HOSTILE, os_name=HOSTILE,
                                   ip_addr=HOSTILE[:64])  # (a hello's ip_addr is at most 64)
    answer = await api.call("mod_gather", gather_id=gather_id, name_set=HOSTILE)
    assert answer["err_code"] == 0, answer
    camera_id = await api.camera(gather_id, HOSTILE)
    answer = await api.call("mod_camera", camera_id=camera_id, camera_name=HOSTILE, stream_prop=2,
                            stream_url="rtsp://h/live", device_user=HOSTILE)
    assert answer["err_code"] == 0, answer
    course = await api.call("add_course", camera_id=camera_id, week_id=1, start_time="08:00:00",
                            elapse_sec=2700)
    assert course["err_code"] == 0, course
    video = api.store("r/a.mp4", b"\x00" * 16)
    record_id = await api.services.catalogue.records.add(camera_id, video, "", 16, 60)
    key = await api.services.catalogue.agent_keys.add("east", 2)
    return Site(gather_id, camera_id, course["course_id"], record_id, key)


async def signed_in(visitor: Callable[..., Visitor], name: str = "admin",
                    password: str = ADMIN_PASSWORD) -> tuple[Visitor, str]:
    """A signed-in visitor and the CSRF token of its session."""
    who = visitor()
    page = await who.signed_in(name, password)
    return who, page.csrf


def admin_routes(api, method: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every /admin route of ``method`` the app has (sign-in aside), as its path template;
    signing out comes last, so a visitor is still signed in for all the others."""
    found = set()
    for route in api.client.server.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == method and path.startswith("/admin") and path != "/admin/login" \
                and not path.startswith("/admin/static"):
            found.add(path)
    assert found, method
    return sorted(found, key=lambda path: (path == "/admin/logout", path))


def fill(path: str, site: Site) -> str:
    """``path`` with its ``{id}`` naming the site's thing of that kind."""
    kinds = {"/admin/cameras/": site.camera_id, "/admin/courses/": site.course_id,
             "/admin/recordings/": site.record_id, "/admin/gatherers/": site.gather_id}
    for prefix, target in kinds.items():
        if path.startswith(prefix + "{id}"):
            return path.replace("{id}", str(target))
    assert "{" not in path, f"a new kind of id in {path}: teach fill() about it"
    return path


async def snapshot(api) -> Any:  # type: ignore[no-untyped-def]
    """What an action could change, to compare before and after a refused post."""
    catalogue = api.services.catalogue
    return (
        await catalogue.gatherers.get(1),
        [await catalogue.cameras.get(row["camera_id"])
         for row in (await catalogue.cameras.page(1, 100)).rows],
        await catalogue.courses.of_camera(1),
        (await catalogue.records.page_of(1, 100, None)).rows,
        [(key.name, key.revoked) for key in await catalogue.agent_keys.list()],
        [(a.name, a.is_admin, a.credential) for a in await catalogue.accounts.list()],
    )


def assert_no_raw_payload(text: str, where: str) -> None:
    for marker in RAW_MARKERS:
        assert marker not in text, f"{where} shows {marker!r} unescaped"


def assert_on_site(location: str) -> None:
    """A redirect to a path of this site: not another host, scheme, or a backslash trick."""
    parts = urlsplit(location)
    assert location.startswith("/") and not location.startswith("//"), location
    assert "\\" not in location and not parts.scheme and not parts.netloc, location


class Tags(HTMLParser):
    """What a browser would run on a page: inline scripts, on* handlers, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.handlers: list[tuple[str, str]] = []
        self.script_urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self.inline_scripts += 1
        if tag in ("svg", "img") and any(name.startswith("on") for name in names):
            self.handlers.append((tag, str(attrs)))
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                    "javascript:"):
                self.script_urls.append(value or "")


# Stored XSS


async def test_hostile_names_are_escaped_on_every_page(api, visitor):
    site = await hostile_site(api)
    admin, _ = await signed_in(visitor)
    pages = [fill(path, site) for path in admin_routes(api, "GET")]
    pages += [f"/admin/recordings?camera={site.camera_id}", "/admin/recordings?day=2020-01-01"]
    seen_escaped = 0
    for path in pages:
        page = await admin.get(path)
        assert page.status in (200, 400), (path, page.status)
        assert_no_raw_payload(page.text, path)
        seen_escaped += "&lt;script&gt;" in page.text
    assert seen_escaped >= 6, "the hostile names were not rendered at all"

    camera = await admin.get(f"/admin/cameras/{site.camera_id}")
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in camera.text or \
        "&quot;&gt;&lt;img" in camera.text  # inside value="..." of the edit form
    assert "&#39;&gt;&lt;svg onload=alert(3)&gt;" in camera.text


async def test_hostile_names_are_escaped_on_confirmation_pages_and_flashes(api, visitor):
    site = await hostile_site(api)
    admin, csrf = await signed_in(visitor)
    asks = [
        (f"/admin/cameras/{site.camera_id}/delete", {}),
        (f"/admin/recordings/{site.record_id}/delete", {"back": HOSTILE}),
        (f"/admin/courses/{site.course_id}/delete", {"camera_id": str(site.camera_id),
                                                      "label": HOSTILE, HOSTILE: HOSTILE}),
        ("/admin/keys/revoke", {"name": HOSTILE}),
    ]
    for path, extra in asks:
        reply = await admin.post(path, {"csrf": csrf, **extra})
        assert reply.status == 200 and "id=confirm" in reply.text, (path, reply.text)
        assert_no_raw_payload(reply.text, path)
        assert "&lt;script&gt;" in reply.text, path

    # The flash after deleting a hostile camera names it: escaped on the page it leads to.
    done = await admin.post(f"/admin/cameras/{site.camera_id}/delete",
                            {"csrf": csrf, "confirm": "yes"})
    assert done.status == 303, done.text
    page = await admin.get(done.headers["Location"])
    assert "id=flash" in page.text and "&lt;script&gt;" in page.text
    assert_no_raw_payload(page.text, "the flash")


# CSRF


async def test_every_admin_post_needs_the_sessions_csrf_token(api, visitor):
    site = await hostile_site(api)
    admin, csrf = await signed_in(visitor)
    _, other_csrf = await signed_in(visitor)  # another session's token is no good either
    assert other_csrf != csrf
    before = await snapshot(api)
    form = {"name": "admin", "is_admin": "0", "password": "a new password", "confirm": "yes",
            "camera_id": str(site.camera_id), "gatherers": "1", "camera_name": "x",
            "week_id": "2", "start": "09:00", "minutes": "5", "name_set": "x"}
    for path in (fill(each, site) for each in admin_routes(api, "POST")):
        for token in (None, "", other_csrf, csrf + "x", "é" * 10, "\u2028"):
            data = dict(form) if token is None else {**form, "csrf": token}
            reply = await admin.post(path, data)
            assert reply.status == 403, (path, token, reply.status, reply.text[:300])
            assert "id=sign-out" in reply.text  # still signed in: the refusal page, not a 500
        assert await snapshot(api) == before, path
    assert (await admin.get("/admin")).status == 200  # the session survived it all


async def test_every_admin_post_without_a_session_goes_to_the_sign_in(api, visitor):
    site = await hostile_site(api)
    _, csrf = await signed_in(visitor)
    before = await snapshot(api)
    stranger = visitor()
    forged = visitor(aiohttp.DummyCookieJar(), {"Cookie": f"{SESSION_COOKIE}=x.y.é"})
    for path in (fill(each, site) for each in admin_routes(api, "POST")):
        for who in (stranger, forged):
            reply = await who.post(path, {"csrf": csrf, "confirm": "yes", "name": "admin"})
            assert reply.status == 303 and reply.headers["Location"] == "/admin", (path, reply)
    assert await snapshot(api) == before


# Roles


async def test_a_viewer_is_refused_every_admin_action_and_sees_no_secret(api, visitor):
    site = await hostile_site(api)
    await api.services.catalogue.accounts.add(VIEWER, VIEWER_PASSWORD, is_admin=False)
    viewer_account = await api.services.catalogue.accounts.by_name(VIEWER)
    assert viewer_account is not None
    teacher, csrf = await signed_in(visitor, VIEWER, VIEWER_PASSWORD)
    before = await snapshot(api)
    secrets = (api.credential, api.token, site.key, viewer_account.credential, ADMIN_PASSWORD)

    for path in (fill(each, site) for each in admin_routes(api, "POST")):
        if path == "/admin/logout":  # the one action a viewer may take
            continue
        reply = await teacher.post(path, {"csrf": csrf, "confirm": "yes", "name": "admin",
                                          "is_admin": "1", "camera_id": str(site.camera_id)})
        assert reply.status == 403, (path, reply.status)
        assert "administrators only" in reply.text, path
    assert await snapshot(api) == before
    assert not (await api.services.catalogue.accounts.by_name(VIEWER)).is_admin

    admin_only = {"/admin/keys", "/admin/accounts", f"/admin/gatherers/{site.gather_id}"}
    for path in (fill(each, site) for each in admin_routes(api, "GET")):
        page = await teacher.get(path)
        expected = 403 if path in admin_only else 200
        assert page.status == expected and not page.is_sign_in_form, (path, page.status)
        for secret in secrets:
            assert secret not in page.text, (path, "shows a secret")
        assert "rtsp://h/" not in page.text and "device_user" not in page.text, path
        posts = set(re.findall(r'<form method=post action="([^"]+)"', page.text))
        assert posts <= {"/admin/logout"}, (path, posts)


# Open redirects


async def test_no_redirect_leaves_the_site(api, visitor):
    site = await hostile_site(api)
    admin, csrf = await signed_in(visitor)
    for back in OFF_SITE:
        record_id = await api.services.catalogue.records.add(
            site.camera_id, api.store(f"r/{len(back)}.mp4", b"x"), "", 1, 1)
        reply = await admin.post(f"/admin/recordings/{record_id}/delete",
                                 {"csrf": csrf, "confirm": "yes", "back": back})
        assert reply.status == 303, reply.text
        assert reply.headers["Location"] == "/admin/recordings", back
    for camera_id in ("//evil.example", "1/../../evil", "-1", "1e3"):
        reply = await admin.post(f"/admin/courses/{site.course_id}/move",
                                 {"csrf": csrf, "camera_id": camera_id, "week_id": "3",
                                  "start": "10:00", "minutes": "5"})
        assert reply.status == 303
        assert_on_site(reply.headers["Location"])
    # Every redirect any action answers stays on the site.
    for path in (fill(each, site) for each in admin_routes(api, "POST")):
        if path == "/admin/logout":
            continue
        reply = await admin.post(path, {"csrf": csrf, "back": "//evil.example",
                                        "camera_id": "//evil.example", "name": "nobody"})
        if "Location" in reply.headers:
            assert_on_site(reply.headers["Location"])


# Flashes


def flash_cookie(text: str, mac: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"ok": True, "text": text}).encode()).decode()
    return f"{payload}~{mac}"


async def test_a_forged_or_tampered_flash_is_never_shown(api, visitor):
    admin, csrf = await signed_in(visitor)
    session = admin.cookie(SESSION_COOKIE)
    real = await admin.post("/admin/accounts/rotate", {"csrf": csrf, "name": "nobody"})
    genuine = real.cookies[FLASH_COOKIE].value
    _, _, good_mac = genuine.partition("~")
    forged = (flash_cookie("<b>FORGED</b>", "x" * 20), flash_cookie("FORGED", good_mac),
              flash_cookie("FORGED", ""), flash_cookie("FORGED", "é"),
              "FORGED~" + good_mac, "%%%~é", "~", base64.urlsafe_b64encode(b"[1]").decode()
              + "~" + good_mac)
    for cookie in forged:
        who = visitor(aiohttp.DummyCookieJar(),
                      {"Cookie": f"{SESSION_COOKIE}={session}; {FLASH_COOKIE}={cookie}"})
        page = await who.get("/admin")
        assert page.status == 200, (cookie, page.status)
        assert "FORGED" not in page.text and "id=flash" not in page.text, cookie
    # The genuine one still shows, once.
    who = visitor(aiohttp.DummyCookieJar(),
                  {"Cookie": f"{SESSION_COOKIE}={session}; {FLASH_COOKIE}={genuine}"})
    assert "id=flash" in (await who.get("/admin")).text


# Confirmations


async def test_deletions_without_confirm_yes_change_nothing(api, visitor):
    site = await hostile_site(api)
    admin, csrf = await signed_in(visitor)
    before = await snapshot(api)
    deletes = {
        f"/admin/cameras/{site.camera_id}/delete": {},
        f"/admin/courses/{site.course_id}/delete": {"camera_id": str(site.camera_id)},
        f"/admin/recordings/{site.record_id}/delete": {},
        "/admin/keys/revoke": {"name": "east"},
    }
    for path, extra in deletes.items():
        for confirm in (None, "", "no", "YES", "yes "):
            data = {"csrf": csrf, **extra}
            if confirm is not None:
                data["confirm"] = confirm
            reply = await admin.post(path, data)
            assert reply.status == 200 and "id=confirm" in reply.text, (path, confirm)
            assert 'name=confirm value=yes' in reply.text
    assert await snapshot(api) == before


# Secrets


async def test_new_agent_keys_and_passwords_stay_out_of_logs_urls_and_cookies(api, visitor,
                                                                              caplog):
    caplog.set_level(logging.DEBUG)
    admin, csrf = await signed_in(visitor)
    made = await admin.post("/admin/keys", {"csrf": csrf, "name": "north", "gatherers": "1"})
    assert made.status == 200 and "Location" not in made.headers
    key = re.search(r"<code id=new-key>([^<]+)</code>", made.text)
    assert key is not None
    key_text = key.group(1)
    assert await api.services.catalogue.agent_keys.add("probe") != key_text  # a real key
    for morsel in made.cookies.values():
        assert key_text not in morsel.value
    for password in ("a fresh secret 1", "another secret 2"):
        reply = await admin.post("/admin/accounts", {"csrf": csrf, "name": f"u{len(password)}"
                                                     + password[-1], "password": password})
        assert reply.status == 303
        assert_on_site(reply.headers["Location"])
        assert password not in reply.headers["Location"]
        reply = await admin.post("/admin/accounts/password",
                                 {"csrf": csrf, "name": "admin", "password": password[::-1]})
        assert reply.status == 303
        assert password[::-1] not in reply.headers["Location"]
        flash = reply.cookies[FLASH_COOKIE].value
        assert password[::-1] not in base64.urlsafe_b64decode(flash.partition("~")[0]).decode()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "north" in logged  # the log did capture the console's lines
    for secret in (key_text, "a fresh secret 1", "another secret 2", "1 terces hserf a",
                   "2 terces rehtona", ADMIN_PASSWORD):
        assert secret not in logged


async def test_console_pages_forbid_inline_scripts(api, visitor):
    site = await hostile_site(api)
    admin, _ = await signed_in(visitor)
    for path in (fill(each, site) for each in admin_routes(api, "GET")):
        page = await admin.get(path)
        csp = page.headers["Content-Security-Policy"]
        script_src = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
        assert script_src.split() == ["script-src", "'self'"], (path, csp)
        assert "default-src 'none'" in csp
        # and the pages need nothing the policy forbids (nor carry anything hostile that it
        # would have to stop): no inline script, event handler or javascript: URL
        tags = Tags()
        tags.feed(page.text)
        assert tags.inline_scripts == 0, path
        assert not tags.handlers, (path, tags.handlers)
        assert not tags.script_urls, (path, tags.script_urls)


# Bad input


@pytest.mark.parametrize("raw", ["abc", "99999999999999999999", "-1", "0", "1.5", "%C2%B2",
                                 "1" * 5000, "9007199254740993"])
async def test_ids_no_form_sends_answer_404_never_500(api, visitor, raw):
    site = await hostile_site(api)
    admin, csrf = await signed_in(visitor)
    for template in admin_routes(api, "GET") + admin_routes(api, "POST"):
        if "{id}" not in template:
            continue
        path = template.replace("{id}", raw)
        reply = await (admin.get(path) if template in admin_routes(api, "GET")
                       else admin.post(path, {"csrf": csrf, "confirm": "yes",
                                              "camera_id": str(site.camera_id)}))
        assert reply.status == 404, (path[:80], reply.status, reply.text[:200])


@pytest.mark.parametrize("query", [
    "day=yesterday", "day=2024-02-30", "day=%00",
    "day=" + "9" * 5000, "camera=abc", "camera=-1", "camera=99999999999999999999",
    "camera=%C2%B2", "camera=abc&day=bad",
])
async def test_a_bad_recordings_filter_answers_400_with_a_message(api, visitor, query):
    await hostile_site(api)
    admin, _ = await signed_in(visitor)
    page = await admin.get(f"/admin/recordings?{query}")
    assert page.status == 400, (query, page.status, page.text[:300])
    assert '<p class=error>' in page.text


@pytest.mark.parametrize("query", ["camera=424242", "page=abc", "page=9007199254740992",
                                   "page=-3", "day=9999-12-30", "day=9999-12-31",
                                   "day=0001-01-01", "day=0001-01-02"])
async def test_odd_but_well_formed_filters_answer_a_page(api, visitor, query):
    await hostile_site(api)
    admin, _ = await signed_in(visitor)
    page = await admin.get(f"/admin/recordings?{query}")
    assert page.status in (200, 400), (query, page.status, page.text[:300])
    assert "id=records-total" in page.text


async def test_huge_form_fields_are_refused_not_500(api, visitor):
    site = await hostile_site(api)
    admin, csrf = await signed_in(visitor)
    huge = "x" * 4_000  # 13 fields: just under the console's 64 KB body limit, far over any field
    for path in (fill(each, site) for each in admin_routes(api, "POST")):
        if path == "/admin/logout":
            continue
        data = {"csrf": csrf, "camera_name": huge, "name": huge, "password": huge,
                "name_set": huge, "start": huge, "minutes": huge, "week_id": huge,
                "camera_id": str(site.camera_id), "gatherers": huge, "label": huge,
                "stream_url": huge, "main_rate": huge}
        reply = await admin.post(path, data)
        assert reply.status in (200, 303, 403, 404), (path, reply.status, reply.text[:300])
    name = (await api.services.catalogue.cameras.get(site.camera_id))["camera_name"]
    assert name == HOSTILE
    too_big = await admin.post(f"/admin/cameras/{site.camera_id}/edit",
                               {"csrf": csrf, "camera_name": "x" * 3_000_000})
    assert too_big.status == 413


async def test_a_non_ascii_login_csrf_is_refused_not_500(api, visitor):
    who = visitor(aiohttp.DummyCookieJar(), {"Cookie": "relay_login_csrf=%C3%A9"})
    reply = await who.post("/admin/login", {"csrf": "é", "name": "admin",
                                            "password": ADMIN_PASSWORD})
    assert reply.status == 403 and reply.is_sign_in_form, (reply.status, reply.text[:200])
    who = visitor(aiohttp.DummyCookieJar(), {"Cookie": "relay_login_csrf=\u00e9"})
    reply = await who.post("/admin/login", {"csrf": "\u00e9", "name": "admin",
                                            "password": ADMIN_PASSWORD})
    assert reply.status == 403 and reply.is_sign_in_form


async def raw_request(api, head: bytes, body: bytes = b"") -> bytes:  # type: ignore[no-untyped-def]
    """The status line the console answers to bytes no HTTP client library would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    writer.write(head + b"\r\nHost: x\r\nConnection: close\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0]


async def test_cookies_and_fields_that_are_not_utf8_are_ignored_not_500(api, visitor):
    """Cookie bytes that are not UTF-8 reach handlers as lone surrogates, which neither
    ``str.encode`` nor ``compare_digest`` take: every check must still just say no."""
    admin, csrf = await signed_in(visitor)
    session = (admin.cookie(SESSION_COOKIE) or "").encode()
    for cookie in (b"relay_flash=\xff~x", b"relay_flash=ab\xff~\xff", b"relay_flash=ab~\xff",
                   b"relay_session=a.b.\xff", b"relay_session=\xff\xfe",
                   b"relay_login_csrf=\xff"):
        status = await raw_request(api, b"GET /admin HTTP/1.1\r\nCookie: " + cookie)
        assert status == b"HTTP/1.1 200 OK", (cookie, status)
    form = b"application/x-www-form-urlencoded"
    status = await raw_request(
        api, b"POST /admin/login HTTP/1.1\r\nContent-Type: " + form
        + b"\r\nCookie: relay_login_csrf=\xff", b"csrf=%FF&name=admin&password=x")
    assert status.startswith(b"HTTP/1.1 403"), status
    status = await raw_request(
        api, b"POST /admin/keys HTTP/1.1\r\nContent-Type: " + form
        + b"\r\nCookie: relay_session=\xff", b"csrf=" + csrf.encode() + b"&name=k")
    assert status.startswith(b"HTTP/1.1 303"), status
    for field, answer in ((b"csrf=%FF%FE&name=k", b"403"), (b"csrf=%ED%A0%80&name=k", b"403"),
                          (b"csrf=\xff&name=k", b"400")):
        for path in (b"/admin/keys", b"/admin/login"):
            status = await raw_request(
                api, b"POST " + path + b" HTTP/1.1\r\nContent-Type: " + form
                + b"\r\nCookie: relay_session=" + session, field)
            assert status.startswith(b"HTTP/1.1 " + answer), (path, field, status)
    assert not await api.services.catalogue.agent_keys.list()


async def test_a_path_cannot_forge_log_lines(api, visitor, caplog):
    """The refusal logs name the path; a %0A in it must not start a line of its own."""
    caplog.set_level(logging.DEBUG)
    site = await hostile_site(api)
    await api.services.catalogue.accounts.add(VIEWER, VIEWER_PASSWORD, is_admin=False)
    admin, _ = await signed_in(visitor)
    teacher, teacher_csrf = await signed_in(visitor, VIEWER, VIEWER_PASSWORD)
    for template in admin_routes(api, "POST"):
        if "{id}" not in template:
            continue
        path = template.replace("{id}", "1%0Aadmin: forged%0D%0Aline")
        assert (await admin.post(path, {"csrf": "stale"})).status == 403
        assert (await teacher.post(path, {"csrf": teacher_csrf})).status == 403
    refusals = [record.getMessage() for record in caplog.records
                if record.name.startswith("relay.admin")]
    assert sum("forged" in line for line in refusals) >= 2 * len(
        [t for t in admin_routes(api, "POST") if "{id}" in t])
    for line in refusals:
        assert "\n" not in line and "\r" not in line, line
    # nothing was started or stopped by any of it
    assert (await api.services.catalogue.cameras.get(site.camera_id))["started"]


@pytest.mark.parametrize("target", [b"//evil.example", b"//evil.example/admin", b"/\\evil.example",
                                    b"/admin//evil.example", b"/%2F%2Fevil.example",
                                    b"/admin/static/..%2F..%2Fsessions.py",
                                    b"/admin/static/%2e%2e/sessions.py", b"/admin/static//x"])
async def test_odd_request_targets_never_redirect_off_site(api, target):
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    head = (await reader.read()).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    writer.close()
    assert head.startswith("HTTP/1.1 404"), head
    assert "location:" not in head.lower()


async def answer_commands(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Play the agent's part: every command done at once, so no page waits for its timeout."""
    async for message in ws:
        command = json.loads(message.data)
        if command.get("type") == "command":
            await ws.send_json({"type": "reply", "id": command["id"], "err_code": 0,
                                "err_msg": "", "data": {}})


async def test_what_a_hostile_agent_reports_is_escaped(api, visitor):
    """A gatherer's agent is another machine: its hello (version, name, os) and its recording
    reports (upload and record errors) reach the overview and the camera page as text only."""
    key = await api.services.catalogue.agent_keys.add("hostile")
    ws = await api.client.ws_connect("/agent", headers={"Authorization": f"Bearer {key}"})
    answering: asyncio.Task[None] | None = None
    try:
        await ws.send_json({"type": "hello", "protocol": protocol.PROTOCOL, "version": SCRIPT,
                            "mac_addr": "02:00:00:00:00:bb", "ip_addr": "127.0.0.1",
                            "name_pc": HOSTILE, "os_name": HOSTILE, "devices": []})
        welcome = await ws.receive_json(timeout=5)
        assert welcome["type"] == "welcome", welcome
        gather_id = welcome["gather_id"]
        answering = asyncio.create_task(answer_commands(ws))
        camera_id = await api.camera(gather_id, "gate")
        await ws.send_json({"type": "recording", "camera_id": camera_id, "recording": 1,
                            "spool_bytes": 0, "upload_error": HOSTILE, "record_error": IMG})
        for _ in range(100):
            if await api.services.hub.recording(gather_id, camera_id):
                break
            await asyncio.sleep(0.05)
        assert (await api.services.hub.recording(gather_id, camera_id))["upload_error"] == HOSTILE
        admin, _ = await signed_in(visitor)
        for path in ("/admin", "/admin/overview/live", f"/admin/cameras/{camera_id}",
                     f"/admin/gatherers/{gather_id}"):
            page = await admin.get(path)
            assert page.status == 200, path
            assert_no_raw_payload(page.text, path)
            assert "&lt;script&gt;" in page.text, path
            tags = Tags()
            tags.feed(page.text)
            assert not tags.handlers and tags.inline_scripts == 0, path
    finally:
        if answering is not None:
            answering.cancel()
        await ws.close()


async def test_a_demoted_administrator_is_refused_at_once(api, visitor):
    """Roles are read from the catalogue on every request, not remembered in the session."""
    await api.services.catalogue.accounts.add("deputy", "password2", is_admin=True)
    deputy, deputy_csrf = await signed_in(visitor, "deputy", "password2")
    admin, csrf = await signed_in(visitor)
    assert (await deputy.get("/admin/keys")).status == 200
    reply = await admin.post("/admin/accounts/role", {"csrf": csrf, "name": "deputy",
                                                      "is_admin": "0"})
    assert reply.status == 303
    assert (await deputy.get("/admin/keys")).status == 403
    reply = await deputy.post("/admin/keys", {"csrf": deputy_csrf, "name": "sneaky"})
    assert reply.status == 403
    assert not await api.services.catalogue.agent_keys.list()
