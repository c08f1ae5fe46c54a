"""Signing in and out. Repeated failures from one address, or for one account, are refused for a
while (429): the count is ``services.sign_ins`` (``relay.throttle``, shared by every node of a
cluster)."""

from __future__ import annotations

import logging

from aiohttp import web

from ..services import SERVICES
from .sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Visit, action, form_of, login_form, same, secure

log = logging.getLogger(__name__)

def _too_many_failures(request: web.Request, address: str, name: str) -> web.Response:
    log.warning("admin: sign-in for %r from %s refused: too many failures", name, address)
    return login_form(request, "尝试次数过多 · Too many failed attempts; try again later.", 429)


async def sign_in(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    failures = services.sign_ins
    address = request.remote or "?"
    form = await form_of(request)
    name, password = form.get("name", "")[:64], form.get("password", "")[:1024]
    if await failures.blocked(address, name):
        return _too_many_failures(request, address, name)
    csrf = form.get("csrf", "")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not same(csrf, cookie) or \
            services.signer.verify("login-csrf", csrf, 1) is None:
        return login_form(request, "表单已过期 · The form expired; please sign in again.", 403)
    if not await failures.attempt(address, name):  # a failure until the password proves right
        return _too_many_failures(request, address, name)
    account = await services.catalogue.accounts.check_password(name, password)
    if account is None:
        log.info("admin: failed sign-in for %r from %s", name, address)
        return login_form(request, "帐号或密码错误 · Wrong account or password.", 401)
    await failures.succeeded(address, name)
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
    app.router.add_post("/admin/login", sign_in)
    app.router.add_post("/admin/logout", sign_out)
