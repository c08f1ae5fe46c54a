"""Signing in and out, and the count of failed sign-ins that keeps anyone from guessing
passwords at speed: repeated failures from one address, or for one account, are refused for a
while (429)."""

from __future__ import annotations

import logging
import time
from collections import deque

from aiohttp import web

from ..services import SERVICES
from .sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Visit, action, form_of, login_form, same, secure

log = logging.getLogger(__name__)

MAX_FAILURES = 10
FAILURE_WINDOW = 15 * 60


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


def _too_many_failures(request: web.Request, address: str, name: str) -> web.Response:
    log.warning("admin: sign-in for %r from %s refused: too many failures", name, address)
    return login_form(request, "尝试次数过多 · Too many failed attempts; try again later.", 429)


async def sign_in(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    failures = request.app[FAILED_SIGN_INS]
    address = request.remote or "?"
    form = await form_of(request)
    name, password = form.get("name", "")[:64], form.get("password", "")[:1024]
    if failures.blocked(address, name):
        return _too_many_failures(request, address, name)
    csrf = form.get("csrf", "")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not same(csrf, cookie) or \
            services.signer.verify("login-csrf", csrf, 1) is None:
        return login_form(request, "表单已过期 · The form expired; please sign in again.", 403)
    if not failures.attempt(address, name):  # a failure until the password proves right
        return _too_many_failures(request, address, name)
    account = await services.catalogue.accounts.check_password(name, password)
    if account is None:
        log.info("admin: failed sign-in for %r from %s", name, address)
        return login_form(request, "帐号或密码错误 · Wrong account or password.", 401)
    failures.succeeded(address, name)
    session = await services.catalogue.accounts.open_session(
        account.account_id, services.settings.session_ttl
    )
    log.info("admin: %r signed in from %s", account.name, address)
    response = web.HTTPSeeOther("/admin")
    response.set_cookie(
        SESSION_COOKIE, services.signer.sign("admin-session", session), path="/admin",
        httponly=True, samesite="Strict", secure=secure(services),
        max_age=services.settings.session_ttl,
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    raise response


@action(admin=False)
async def sign_out(request: web.Request, visit: Visit, form: dict[str, str]) -> web.Response:
    await request.app[SERVICES].catalogue.accounts.close_session(visit.token)
    log.info("admin: %r signed out", visit.account.name)
    response = web.HTTPSeeOther("/admin")
    response.del_cookie(SESSION_COOKIE, path="/admin")
    raise response


def add_routes(app: web.Application) -> None:
    app[FAILED_SIGN_INS] = FailedSignIns()
    app.router.add_post("/admin/login", sign_in)
    app.router.add_post("/admin/logout", sign_out)
