"""/admin: sign-in, the API credential for administrators, and its rotation.

A signed-in browser holds a signed, HttpOnly, SameSite=Strict cookie naming a server-side session
(the catalogue keeps only its digest), so signing out really ends it. Every form carries a CSRF
token: bound to the session once signed in, a double-submit cookie before. Repeated failed sign-ins
from one address, or for one account, are refused for a while (429).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import deque

from aiohttp import web

from ..catalogue import Account, NotFound
from ..services import SERVICES, Services
from . import pages

log = logging.getLogger(__name__)

SESSION_COOKIE = "relay_session"
LOGIN_CSRF_COOKIE = "relay_login_csrf"
MAX_FAILURES = 10
FAILURE_WINDOW = 15 * 60

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}


class FailedSignIns:
    """Counts failed sign-ins per client address and per account over a sliding window.

    Either count at ``limit`` refuses the next attempt: an address cannot guess on, nor can many
    addresses guess one account's password together. A correct password clears only that
    account's failures from that address: another account signing in never wipes the failures
    against the one being guessed (9 wrong guesses for ``boss``, then ``bob`` signs in, used to
    start the count over), nor does the real owner signing in lift a guesser elsewhere.

    Nothing is remembered past the window, so memory stays bounded by what one window sees.
    Behind a reverse proxy every client shares the proxy's address: put the limit on the proxy
    there, or accept that it is shared (the per-account count still holds).
    """

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        # Each failure, once under its address and once under its account: (when, the other one).
        self._by_address: dict[str, deque[tuple[float, str]]] = {}
        self._by_account: dict[str, deque[tuple[float, str]]] = {}

    def _recent(self, table: dict[str, deque[tuple[float, str]]], key: str
                ) -> deque[tuple[float, str]]:
        horizon = time.monotonic() - self.window
        failures = table.get(key, deque())
        while failures and failures[0][0] < horizon:
            failures.popleft()
        if len(table) > 10_000:
            for stale in [k for k, value in table.items() if not value or value[-1][0] < horizon]:
                del table[stale]
        return failures

    def blocked(self, address: str, account: str) -> bool:
        return (len(self._recent(self._by_address, address)) >= self.limit
                or len(self._recent(self._by_account, account)) >= self.limit)

    def attempt(self, address: str, account: str) -> bool:
        """Count an attempt before its password is checked; False (uncounted) when over a limit.

        Counting first, with no ``await`` between the check and the count, keeps parallel attempts
        from all slipping under the limit while their passwords are being checked.
        """
        if self.blocked(address, account):
            return False
        now = time.monotonic()
        self._by_address.setdefault(address, self._recent(self._by_address, address)).append(
            (now, account))
        self._by_account.setdefault(account, self._recent(self._by_account, account)).append(
            (now, address))
        return True

    def succeeded(self, address: str, account: str) -> None:
        """The password was right: forget this account's failures from this address, only."""
        for table, key, other in ((self._by_address, address, account),
                                  (self._by_account, account, address)):
            kept = deque(entry for entry in table.get(key, ()) if entry[1] != other)
            if kept:
                table[key] = kept
            else:
                table.pop(key, None)


FAILED_SIGN_INS = web.AppKey("failed_sign_ins", FailedSignIns)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=_HEADERS)


def _secure(services: Services) -> bool:
    return services.settings.base_url.startswith("https://")


def _session_token(request: web.Request) -> str | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    fields = request.app[SERVICES].signer.verify("admin-session", cookie, 1)
    return fields[0] if fields else None


def _session_csrf(services: Services, session_token: str) -> str:
    digest = hashlib.sha256(session_token.encode()).hexdigest()[:32]
    return services.signer.sign("admin-csrf", digest)


async def _signed_in(request: web.Request) -> tuple[str, Account] | None:
    token = _session_token(request)
    if token is None:
        return None
    account = await request.app[SERVICES].catalogue.accounts.session_account(token)
    return (token, account) if account else None


async def _checked_form(request: web.Request) -> tuple[str, Account, dict[str, str]]:
    """The session and form of a signed-in POST whose CSRF token is right; 403 otherwise."""
    form = {key: str(value) for key, value in (await request.post()).items()}
    signed_in = await _signed_in(request)
    if signed_in is None:
        raise web.HTTPSeeOther("/admin")
    token, account = signed_in
    expected = _session_csrf(request.app[SERVICES], token)
    if not secrets.compare_digest(form.get("csrf", ""), expected):
        log.warning("admin: refused a form without a valid CSRF token from %s", request.remote)
        raise web.HTTPForbidden(
            text=pages.message_page("Refused", "This form has expired; reload the page."),
            content_type="text/html", headers=_HEADERS,
        )
    return token, account, form


def _login_form(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    services = request.app[SERVICES]
    csrf = services.signer.sign("login-csrf", secrets.token_urlsafe(24))
    response = _html(pages.login_page(csrf, error), status)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, path="/admin", httponly=True,
                        samesite="Strict", secure=_secure(services), max_age=3600)
    return response


async def admin_home(request: web.Request) -> web.Response:
    signed_in = await _signed_in(request)
    if signed_in is None:
        return _login_form(request)
    token, account = signed_in
    services = request.app[SERVICES]
    note = "已更换凭证 · A new credential was issued." if request.query.get("rotated") else ""
    return _html(pages.dashboard_page(
        account.name, account.is_admin, account.credential, services.settings.base_url,
        _session_csrf(services, token), note,
    ))


def _too_many_failures(request: web.Request, address: str, name: str) -> web.Response:
    log.warning("admin: sign-in for %r from %s refused: too many failures", name, address)
    return _login_form(request, "尝试次数过多 · Too many failed attempts; try again later.", 429)


async def sign_in(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    failures = request.app[FAILED_SIGN_INS]
    address = request.remote or "?"
    form = await request.post()
    name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:1024]
    if failures.blocked(address, name):
        return _too_many_failures(request, address, name)
    csrf = str(form.get("csrf", ""))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not secrets.compare_digest(csrf, cookie) or \
            services.signer.verify("login-csrf", csrf, 1) is None:
        return _login_form(request, "表单已过期 · The form expired; please sign in again.", 403)
    if not failures.attempt(address, name):  # a failure until the password proves right
        return _too_many_failures(request, address, name)
    account = await services.catalogue.accounts.check_password(name, password)
    if account is None:
        log.info("admin: failed sign-in for %r from %s", name, address)
        return _login_form(request, "帐号或密码错误 · Wrong account or password.", 401)
    failures.succeeded(address, name)
    session = await services.catalogue.accounts.open_session(
        account.account_id, services.settings.session_ttl
    )
    log.info("admin: %r signed in from %s", account.name, address)
    response = web.HTTPSeeOther("/admin")
    response.set_cookie(
        SESSION_COOKIE, services.signer.sign("admin-session", session), path="/admin",
        httponly=True, samesite="Strict", secure=_secure(services),
        max_age=services.settings.session_ttl,
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    raise response


async def rotate(request: web.Request) -> web.Response:
    _, account, _ = await _checked_form(request)
    if not account.is_admin:
        return _html(pages.message_page("Refused", "API access is for administrators."), 403)
    try:
        await request.app[SERVICES].catalogue.accounts.rotate(account.name)
    except NotFound:
        raise web.HTTPSeeOther("/admin") from None
    log.info("admin: %r rotated their API credential", account.name)
    raise web.HTTPSeeOther("/admin?rotated=1")


async def sign_out(request: web.Request) -> web.Response:
    token, account, _ = await _checked_form(request)
    await request.app[SERVICES].catalogue.accounts.close_session(token)
    log.info("admin: %r signed out", account.name)
    response = web.HTTPSeeOther("/admin")
    response.del_cookie(SESSION_COOKIE, path="/admin")
    raise response


def add_routes(app: web.Application) -> None:
    app[FAILED_SIGN_INS] = FailedSignIns()
    app.router.add_get("/admin", admin_home)
    app.router.add_get("/admin/", admin_home)
    app.router.add_post("/admin/login", sign_in)
    app.router.add_post("/admin/rotate", rotate)
    app.router.add_post("/admin/logout", sign_out)
