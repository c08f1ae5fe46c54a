"""/admin over real HTTP: the sign-in form and its CSRF cookie, sessions, the credential page,
rotation, sign-out and the throttling of failed sign-ins.

Every visitor is its own aiohttp.ClientSession with its own cookie jar, talking to the ``api``
fixture's server over a real socket, so cookies travel exactly as a browser would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

import relay.throttle
from relay.admin.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from relay.throttle import FAILURE_WINDOW

ADMIN_PASSWORD = "correct horse"  # the password the api fixture gives ``admin``
CSRF_FIELD = re.compile(r"<input type=hidden name=csrf value='([^']*)'>")
CREDENTIAL = re.compile(r"<code id=credential>([^<]*)</code>")
SIGN_IN_FORM = "<form method=post action=/admin/login>"


@dataclass
class Reply:
    status: int
    text: str
    headers: CIMultiDictProxy[str]
    cookies: SimpleCookie

    @property
    def csrf(self) -> str:
        tokens = set(CSRF_FIELD.findall(self.text))
        assert len(tokens) == 1, self.text
        return tokens.pop()

    @property
    def credentials(self) -> list[str]:
        return CREDENTIAL.findall(self.text)

    @property
    def is_sign_in_form(self) -> bool:
        return SIGN_IN_FORM in self.text and "id=sign-in" in self.text and "id=sign-out" not in self.text


class Visitor:
    """One browser: its own cookie jar (IP hosts allowed), no automatic redirects on POST."""

    def __init__(
        self, base: str, cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.http = aiohttp.ClientSession(
            base_url=base, cookie_jar=cookie_jar or aiohttp.CookieJar(unsafe=True), headers=headers
        )

    async def _reply(self, response: aiohttp.ClientResponse) -> Reply:
        async with response:
            return Reply(response.status, await response.text(), response.headers, response.cookies)

    async def get(self, path: str = "/admin", **kwargs: Any) -> Reply:
        return await self._reply(await self.http.get(path, allow_redirects=False, **kwargs))

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> Reply:
        return await self._reply(
            await self.http.post(path, data=data, allow_redirects=False, **kwargs)
        )

    async def sign_in(self, name: str, password: str) -> Reply:
        """Load the form (which sets the CSRF cookie) and submit it the way a browser would."""
        form = await self.get()
        assert form.status == 200 and form.is_sign_in_form, form.text
        return await self.post("/admin/login", {"csrf": form.csrf, "name": name, "password": password})

    async def signed_in(self, name: str, password: str) -> Reply:
        """Sign in and return the page /admin then shows."""
        reply = await self.sign_in(name, password)
        assert reply.status == 303, reply.text
        page = await self.get()
        assert page.status == 200 and not page.is_sign_in_form, page.text
        return page

    def cookie(self, name: str) -> str | None:
        for morsel in self.http.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None


@pytest.fixture
async def visitor(api) -> AsyncIterator[Callable[..., Visitor]]:  # type: ignore[no-untyped-def]
    base = f"http://{api.client.server.host}:{api.client.server.port}"
    opened: list[Visitor] = []

    def open_visitor(
        cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
        headers: dict[str, str] | None = None,
    ) -> Visitor:
        opened.append(Visitor(base, cookie_jar, headers))
        return opened[-1]

    yield open_visitor
    for each in opened:
        await each.http.close()


def replay(visitor: Callable[..., Visitor], session_cookie: str) -> Visitor:
    """A fresh visitor that sends only the given session cookie, whatever the server answers."""
    return visitor(aiohttp.DummyCookieJar(), {"Cookie": f"{SESSION_COOKIE}={session_cookie}"})


async def api_call(api, name: str, **params: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = await api.client.get(f"/api/v1/{name}", params=params)
    assert response.status == 200
    return await response.json()


async def current_credential(api, name: str = "admin") -> str:  # type: ignore[no-untyped-def]
    account = await api.services.catalogue.accounts.by_name(name)
    assert account is not None
    return account.credential


# The sign-in form


async def test_sign_in_form_sets_the_login_csrf_cookie_and_security_headers(api, visitor):
    page = await visitor().get()
    assert page.status == 200
    assert page.is_sign_in_form
    assert "<title>登录 Sign in · 云监控</title>" in page.text
    assert "<input type=text id=name name=name" in page.text
    assert "<input type=password id=password name=password" in page.text
    assert not page.credentials and api.credential not in page.text

    cookie = page.cookies[LOGIN_CSRF_COOKIE]
    assert cookie.value == page.csrf  # double submit: the form field repeats the cookie
    assert api.services.signer.verify("login-csrf", cookie.value, 1) is not None
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert SESSION_COOKIE not in page.cookies

    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "form-action 'self'" in csp
    assert page.headers["Content-Type"].startswith("text/html")


async def test_each_form_gets_a_fresh_csrf_token(visitor):
    first, second = await visitor().get(), await visitor().get()
    assert first.csrf != second.csrf


async def test_wrong_password_is_401_without_a_session(api, visitor):
    browser = visitor()
    for name, password in (("admin", "wrong horse"), ("nobody", ADMIN_PASSWORD), ("admin", "")):
        reply = await browser.sign_in(name, password)
        assert reply.status == 401, (name, password)
        assert reply.is_sign_in_form
        assert '<p class=error id=error>' in reply.text and "Wrong account or password" in reply.text
        assert SESSION_COOKIE not in reply.cookies
        assert browser.cookie(SESSION_COOKIE) is None
        assert not reply.credentials and api.credential not in reply.text
        assert reply.headers["Cache-Control"] == "no-store"
    assert (await browser.get()).is_sign_in_form


async def test_sign_in_without_the_right_csrf_token_is_403_without_a_session(api, visitor):
    browser = visitor()
    form = await browser.get()
    good = form.csrf
    forged = api.services.signer.sign("admin-csrf", "x" * 32)  # signed, but for another purpose
    for data in (
        {"name": "admin", "password": ADMIN_PASSWORD},  # no field at all
        {"csrf": "", "name": "admin", "password": ADMIN_PASSWORD},
        {"csrf": "garbage", "name": "admin", "password": ADMIN_PASSWORD},
        {"csrf": good + "x", "name": "admin", "password": ADMIN_PASSWORD},
        {"csrf": forged, "name": "admin", "password": ADMIN_PASSWORD},
    ):
        reply = await browser.post("/admin/login", data)
        assert reply.status == 403, data
        assert "The form expired" in reply.text
        assert SESSION_COOKIE not in reply.cookies and browser.cookie(SESSION_COOKIE) is None

    # The right field but no cookie (a cross-site post cannot carry it): refused too.
    cookieless = visitor(aiohttp.DummyCookieJar())
    reply = await cookieless.post(
        "/admin/login", {"csrf": good, "name": "admin", "password": ADMIN_PASSWORD}
    )
    assert reply.status == 403 and SESSION_COOKIE not in reply.cookies

    # Cookie and field agree but neither was issued by us (an attacker planting both): refused.
    planted = "A" * 32 + ".notasignature"
    attacker = visitor(aiohttp.DummyCookieJar())
    reply = await attacker.post(
        "/admin/login", {"csrf": planted, "name": "admin", "password": ADMIN_PASSWORD},
        headers={"Cookie": f"{LOGIN_CSRF_COOKIE}={planted}"},
    )
    assert reply.status == 403 and SESSION_COOKIE not in reply.cookies


# Signing in


async def test_admin_signs_in_and_sees_exactly_their_credential(api, visitor):
    browser = visitor()
    reply = await browser.sign_in("admin", ADMIN_PASSWORD)
    assert reply.status == 303
    assert reply.headers["Location"] == "/admin"
    session = reply.cookies[SESSION_COOKIE]
    assert session["httponly"] is True
    assert session["samesite"] == "Strict"
    assert session["path"] == "/admin"
    assert int(session["max-age"]) == api.services.settings.session_ttl
    assert api.services.signer.verify("admin-session", session.value, 1) is not None
    assert browser.cookie(LOGIN_CSRF_COOKIE) is None  # the login cookie was cleared

    overview = await browser.get()
    assert overview.status == 200
    assert "Signed in as <b>admin</b> (administrator)" in overview.text
    assert "id=no-api" not in overview.text and "id=sign-out" in overview.text
    assert overview.headers["Cache-Control"] == "no-store"
    assert overview.headers["X-Frame-Options"] == "DENY"
    assert not overview.credentials  # the credential is on the accounts page only
    # /admin/ is the same page.
    assert "id=nav-accounts" in (await browser.get("/admin/")).text

    page = await browser.get("/admin/accounts")
    assert page.status == 200
    assert page.credentials == [api.credential]
    assert page.credentials == [await current_credential(api)]
    assert f"access_token?unionid={api.credential}" in page.text  # the example uses it
    assert "id=rotate" in page.text and "id=sign-out" in page.text
    # The session's CSRF token is not the login one; every form of the page carries it.
    assert len(CSRF_FIELD.findall(page.text)) >= 2
    assert api.services.signer.verify("admin-csrf", page.csrf, 1) is not None


async def test_cookies_are_secure_when_the_public_url_is_https(api, visitor):
    browser = visitor()
    plain = await browser.get()
    assert not plain.cookies[LOGIN_CSRF_COOKIE]["secure"]  # plain http: a Secure cookie is lost
    api.services.settings = dataclasses.replace(
        api.services.settings, public_url="https://relay.example.test"
    )
    form = await browser.get()
    assert form.cookies[LOGIN_CSRF_COOKIE]["secure"] is True
    # Our client keeps Secure cookies off plain http, as a browser would: send it by hand.
    behind_tls = visitor(aiohttp.DummyCookieJar(), {"Cookie": f"{LOGIN_CSRF_COOKIE}={form.csrf}"})
    reply = await behind_tls.post(
        "/admin/login", {"csrf": form.csrf, "name": "admin", "password": ADMIN_PASSWORD}
    )
    assert reply.status == 303
    assert reply.cookies[SESSION_COOKIE]["secure"] is True
    assert reply.cookies[SESSION_COOKIE]["httponly"] is True


async def test_non_admin_sees_no_credential_and_cannot_rotate(api, visitor):
    teacher = await api.services.catalogue.accounts.add("teacher", "password1", is_admin=False)
    browser = visitor()
    page = await browser.signed_in("teacher", "password1")
    assert "id=no-api>" in page.text
    assert "API access, are for administrators" in page.text
    assert "Signed in as <b>teacher</b>." in page.text
    assert not page.credentials
    assert teacher.credential not in page.text and api.credential not in page.text
    assert "id=rotate" not in page.text and "id=sign-out" in page.text

    # Even with their own valid CSRF token, a rotation is refused and changes nothing.
    refused = await browser.post("/admin/rotate", {"csrf": page.csrf})
    assert refused.status == 403
    assert "This is for administrators only" in refused.text
    accounts = await browser.get("/admin/accounts")
    assert accounts.status == 403 and not accounts.credentials
    assert await current_credential(api, "teacher") == teacher.credential
    assert await current_credential(api) == api.credential
    assert (await api.call("list_camera"))["err_code"] == 0


# Rotating the credential


async def test_rotation_needs_the_sessions_csrf_token(api, visitor):
    browser = visitor()
    page = await browser.signed_in("admin", ADMIN_PASSWORD)
    other = visitor()
    other_page = await other.signed_in("admin", ADMIN_PASSWORD)  # a second session, same account
    assert other_page.csrf != page.csrf
    login_csrf = (await visitor().get()).csrf

    for data in (
        {},
        {"csrf": ""},
        {"csrf": "garbage"},
        {"csrf": page.csrf + "x"},
        {"csrf": other_page.csrf},  # valid, but for another session
        {"csrf": login_csrf},  # a login token is no session token
    ):
        reply = await browser.post("/admin/rotate", data)
        assert reply.status == 403, data
        assert "This form has expired" in reply.text
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert await current_credential(api) == api.credential, data

    assert (await browser.get("/admin/accounts")).credentials == [api.credential]
    assert (await api.call("list_camera"))["err_code"] == 0

    # Without a session at all, the form only leads back to sign-in.
    anonymous = await visitor().post("/admin/rotate", {"csrf": page.csrf})
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/admin"
    assert await current_credential(api) == api.credential


async def test_rotation_issues_a_new_credential_and_voids_the_old_one(api, visitor):
    browser = visitor()
    page = await browser.signed_in("admin", ADMIN_PASSWORD)
    old_credential, old_token = api.credential, api.token
    assert (await api.call("list_camera", token=old_token))["err_code"] == 0

    reply = await browser.post("/admin/rotate", {"csrf": page.csrf})
    assert reply.status == 303
    assert reply.headers["Location"] == "/admin/accounts"

    after = await browser.get(reply.headers["Location"])
    assert after.status == 200
    assert "a new credential was issued" in after.text
    [new_credential] = after.credentials
    assert new_credential != old_credential
    assert new_credential == await current_credential(api)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", new_credential)
    assert old_credential not in after.text

    old_token_answer = await api.call("list_camera", token=old_token)
    assert old_token_answer["err_code"] == 1007, old_token_answer
    old_unionid = await api_call(api, "access_token", unionid=old_credential)
    assert old_unionid["err_code"] == 1002, old_unionid

    exchanged = await api_call(api, "access_token", unionid=new_credential)
    assert exchanged["err_code"] == 0, exchanged
    listing = await api.call("list_camera", token=exchanged["token"])
    assert listing["err_code"] == 0, listing

    # The session survives the rotation and its CSRF token still works.
    assert (await browser.get("/admin/accounts")).credentials == [new_credential]


# Sessions


async def test_sign_out_ends_the_session_on_the_server(api, visitor):
    browser = visitor()
    page = await browser.signed_in("admin", ADMIN_PASSWORD)
    session_cookie = browser.cookie(SESSION_COOKIE)
    assert session_cookie

    # Without the CSRF token, signing out is refused and the session lives on.
    refused = await browser.post("/admin/logout", {"csrf": "garbage"})
    assert refused.status == 403
    assert (await (replay(visitor, session_cookie)).get("/admin/accounts")).credentials == [api.credential]

    reply = await browser.post("/admin/logout", {"csrf": page.csrf})
    assert reply.status == 303 and reply.headers["Location"] == "/admin"
    deleted = reply.cookies[SESSION_COOKIE]
    assert deleted.value == "" and deleted["path"] == "/admin"
    assert browser.cookie(SESSION_COOKIE) is None
    assert (await browser.get()).is_sign_in_form

    # Replaying the old cookie does not bring the session back ...
    stale = replay(visitor, session_cookie)
    again = await stale.get()
    assert again.status == 200 and again.is_sign_in_form
    assert not again.credentials and api.credential not in again.text
    # ... nor lets its forms act.
    rotate = await stale.post("/admin/rotate", {"csrf": page.csrf})
    assert rotate.status == 303 and rotate.headers["Location"] == "/admin"
    assert await current_credential(api) == api.credential


async def test_signing_out_one_session_leaves_the_others(api, visitor):
    first, second = visitor(), visitor()
    first_page = await first.signed_in("admin", ADMIN_PASSWORD)
    await second.signed_in("admin", ADMIN_PASSWORD)
    assert (await first.post("/admin/logout", {"csrf": first_page.csrf})).status == 303
    assert (await first.get()).is_sign_in_form
    assert (await second.get("/admin/accounts")).credentials == [api.credential]


async def test_tampered_or_forged_session_cookies_are_ignored(api, visitor):
    browser = visitor()
    await browser.signed_in("admin", ADMIN_PASSWORD)
    genuine = browser.cookie(SESSION_COOKIE)
    assert genuine
    token, _, signature = genuine.rpartition(".")
    flipped = ("B" if token[0] == "A" else "A") + token[1:]
    signer = api.services.signer
    for cookie in (
        f"{flipped}.{signature}",  # another session id under the old signature
        f"{token}.{signature[:-2]}",  # a damaged signature
        token,  # no signature
        signer.sign("admin-session", "A" * 43),  # well signed, but no such session
        signer.sign("admin-csrf", token),  # the session id signed for another purpose
        signer.sign("login-csrf", token),
        "",
        "x" * 2000,
    ):
        page = await (replay(visitor, cookie)).get()
        assert page.status == 200, cookie
        assert page.is_sign_in_form, cookie
        assert not page.credentials and api.credential not in page.text
    # The genuine cookie still works, so the refusals above were about the tampering.
    assert (await (replay(visitor, genuine)).get("/admin/accounts")).credentials == [api.credential]


async def test_sessions_expire_on_the_server(api, visitor):
    browser = visitor()
    await browser.signed_in("admin", ADMIN_PASSWORD)
    api.clock.advance(api.services.settings.session_ttl - 60)
    assert (await browser.get("/admin/accounts")).credentials == [api.credential]
    api.clock.advance(120)
    assert (await browser.get()).is_sign_in_form


# Throttling failed sign-ins


async def test_eleventh_sign_in_after_ten_failures_is_refused_even_with_the_right_password(
    api, visitor, monkeypatch
):
    browser = visitor()
    for attempt in range(10):
        reply = await browser.sign_in("admin", f"wrong password {attempt}")
        assert reply.status == 401, attempt  # not yet throttled
    blocked = await browser.sign_in("admin", ADMIN_PASSWORD)
    assert blocked.status == 429
    assert blocked.is_sign_in_form and "Too many failed attempts" in blocked.text
    assert SESSION_COOKIE not in blocked.cookies and browser.cookie(SESSION_COOKIE) is None
    # The block is per address, not per visitor: a fresh cookie jar does not lift it.
    assert (await visitor().sign_in("admin", ADMIN_PASSWORD)).status == 429

    # Once the window has passed, the right password works again.
    real = relay.throttle.time.monotonic
    monkeypatch.setattr(
        relay.throttle, "time", SimpleNamespace(monotonic=lambda: real() + FAILURE_WINDOW + 1)
    )
    assert (await browser.sign_in("admin", ADMIN_PASSWORD)).status == 303
    assert (await browser.get("/admin/accounts")).credentials == [api.credential]


async def test_a_successful_sign_in_resets_the_failure_count(visitor):
    browser = visitor()
    for attempt in range(9):
        assert (await browser.sign_in("admin", f"wrong {attempt}")).status == 401
    assert (await browser.sign_in("admin", ADMIN_PASSWORD)).status == 303
    # Same address, new visitor: nine more failures still leave room for the right password.
    later = visitor()
    for attempt in range(9):
        assert (await later.sign_in("admin", f"wrong again {attempt}")).status == 401
    assert (await later.sign_in("admin", ADMIN_PASSWORD)).status == 303


async def test_parallel_failed_sign_ins_cannot_exceed_the_limit(api, visitor):
    """Forty wrong passwords sent at once: only ten may be checked, the rest are refused."""
    form = await visitor().get()
    # One CSRF pair, replayed by every request, as a script would.
    attacker = visitor(aiohttp.DummyCookieJar(), {"Cookie": f"{LOGIN_CSRF_COOKIE}={form.csrf}"})

    async def attempt(number: int) -> int:
        data = {"csrf": form.csrf, "name": "admin", "password": f"guess {number}"}
        return (await attacker.post("/admin/login", data)).status

    statuses = await asyncio.gather(*(attempt(number) for number in range(40)))
    assert statuses.count(401) == 10, sorted(statuses)
    assert statuses.count(429) == 30, sorted(statuses)
    assert (await visitor().sign_in("admin", ADMIN_PASSWORD)).status == 429


async def test_another_accounts_success_does_not_clear_the_failures_against_one(api, visitor):
    """Once: nine wrong guesses for ``admin``, then ``bob`` signs in, over and over, never locked."""
    await api.services.catalogue.accounts.add("bob", "bob's long password", is_admin=False)
    guesser = visitor()
    statuses = []
    for round_no in range(3):
        for attempt in range(9):
            statuses.append((await guesser.sign_in("admin", f"guess {round_no}.{attempt}")).status)
        statuses.append((await visitor().sign_in("bob", "bob's long password")).status)
    assert statuses[:9] == [401] * 9 and statuses[9] == 303  # bob is let in once
    assert statuses[10] == 401  # the tenth failure from this address
    assert set(statuses[11:]) == {429}  # and then it is blocked, bob's right password too
    assert (await visitor().sign_in("admin", ADMIN_PASSWORD)).status == 429


@pytest.mark.parametrize("shared", [False, True], ids=["one node", "cluster (Redis)"])
async def test_failures_count_per_account_across_addresses_and_a_success_clears_only_its_own(
        shared: bool) -> None:
    async with throttle(shared) as failures:
        await _count_per_account(failures)


@contextlib.asynccontextmanager
async def throttle(shared: bool) -> AsyncIterator[relay.throttle.SignInThrottle]:
    """The one-node count, or the cluster's in this machine's Redis under a prefix of its own."""
    if not shared:
        yield relay.throttle.FailedSignIns(limit=3, window=60)
        return
    import redis.asyncio as redis

    from relay.cluster.throttle import SharedFailedSignIns

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"relay-test-{secrets.token_hex(6)}"
    try:
        yield SharedFailedSignIns(client, prefix, limit=3, window=60)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        assert keys and not any("boss" in key or "10.0.0" in key for key in keys)
        await client.delete(*keys)
        await client.aclose()


async def _count_per_account(failures: relay.throttle.SignInThrottle) -> None:
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # one guess each, from three addresses
        assert await failures.attempt(address, "boss")
    assert await failures.blocked("10.0.0.4", "boss")  # the account has had its three
    assert not await failures.blocked("10.0.0.4", "bob")  # others may sign in from there
    assert await failures.attempt("10.0.0.1", "bob")
    await failures.succeeded("10.0.0.1", "bob")  # bob's right password clears bob's failure only
    assert await failures.blocked("10.0.0.1", "boss")
    await failures.succeeded("10.0.0.1", "boss")  # the owner signs in from .1: .2 and .3 still count
    assert not await failures.blocked("10.0.0.1", "boss")
    assert await failures.attempt("10.0.0.2", "boss")  # the third failure again
    assert await failures.blocked("10.0.0.9", "boss")


async def test_the_cluster_count_is_one_for_every_node() -> None:
    """Guesses spread over two nodes count together; a node without Redis still counts."""
    import redis.asyncio as redis

    from relay.cluster.throttle import SharedFailedSignIns

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"relay-test-{secrets.token_hex(6)}"
    nodes = [SharedFailedSignIns(client, prefix, limit=4, window=60) for _ in range(2)]
    try:
        results = await asyncio.gather(*(nodes[n % 2].attempt(f"10.1.0.{n}", "boss")
                                         for n in range(10)))
        assert results.count(True) == 4  # parallel attempts on both nodes: four in all
        assert await nodes[0].blocked("10.9.9.9", "boss") and await nodes[1].blocked("10.9.9.9",
                                                                                     "boss")
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        await client.delete(*keys)
        await client.aclose()
    gone = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        alone = SharedFailedSignIns(gone, prefix, limit=2, window=60)
        assert [await alone.attempt("10.2.0.1", "boss") for _ in range(3)] == [True, True, False]
    finally:
        await gone.aclose()
