"""Who is at the console: the session cookie, CSRF tokens, roles, and the page a handler renders.

A signed-in browser holds a signed, HttpOnly, SameSite=Strict cookie naming a server-side session
(the catalogue keeps only its digest), so signing out really ends it. Every form carries a CSRF
token: bound to the session once signed in, a double-submit cookie before. ``page`` and ``action``
wrap every handler: a page needs a session (else the sign-in form), an action also its CSRF token
(else 403), and either may need an administrator (else 403 saying why). What an action did is
shown on the next page as a flash: a short signed cookie, read once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from ..catalogue import Account
from ..services import SERVICES, Services

log = logging.getLogger(__name__)

SESSION_COOKIE = "relay_session"
LOGIN_CSRF_COOKIE = "relay_login_csrf"
FLASH_COOKIE = "relay_flash"
MAX_FLASH = 1500  # characters of a flash's text (a cookie holds about 4 KB)

ADMINS_ONLY = ("这里只对管理员开放 · This is for administrators only: your account may watch "
               "live video and recordings, nothing else. Ask an administrator to change it.")


@dataclass(frozen=True)
class Visit:
    """A signed-in request: its session, account and the CSRF token its forms carry."""

    token: str
    account: Account
    csrf: str


def headers(services: Services) -> dict[str, str]:
    """Every console page's headers: never cached, never framed, scripts and frames our own."""
    origins = {urlsplit(url)._replace(path="", query="", fragment="").geturl()
               for url in (services.settings.base_url, services.settings.storage_url) if url}
    extra = " ".join(sorted(origins))
    return {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            f"img-src 'self' data: {extra}; frame-src 'self' {extra}; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    }


def secure(services: Services) -> bool:
    return services.settings.base_url.startswith("https://")


def session_token(request: web.Request) -> str | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    fields = request.app[SERVICES].signer.verify("admin-session", cookie, 1)
    return fields[0] if fields else None


def session_csrf(services: Services, token: str) -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()[:32]
    return services.signer.sign("admin-csrf", digest)


async def visit_of(request: web.Request) -> Visit | None:
    token = session_token(request)
    if token is None:
        return None
    services = request.app[SERVICES]
    account = await services.catalogue.accounts.session_account(token)
    return Visit(token, account, session_csrf(services, token)) if account else None


def render(request: web.Request, template: str, context: dict[str, Any],
           status: int = 200) -> web.Response:
    """``template`` with ``context``, the last action's flash (read once) and our headers."""
    services = request.app[SERVICES]
    context = {"flash": take_flash(request), **context}
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(headers(services))
    if FLASH_COOKIE in request.cookies:
        response.del_cookie(FLASH_COOKIE, path="/admin")
    return response


def message(request: web.Request, title: str, text: str, status: int,
            visit: Visit | None = None) -> web.Response:
    return render(request, "message.html", {"title": title, "text": text, "visit": visit},
                  status)


def login_form(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    services = request.app[SERVICES]
    csrf = services.signer.sign("login-csrf", secrets.token_urlsafe(24))
    response = render(request, "login.html", {"csrf": csrf, "error": error, "visit": None},
                      status)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, path="/admin", httponly=True,
                        samesite="Strict", secure=secure(services), max_age=3600)
    return response


# -- flashes: what the last action did, shown once on the page it led to ----------------------

def same(given: str, expected: str) -> bool:
    """``given == expected`` in constant time, for any text a client sends: compare_digest
    refuses non-ASCII str (a TypeError, answered 500), so both are compared as UTF-8 bytes."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"),
                                  expected.encode("utf-8", "surrogatepass"))


def _flash_mac(services: Services, payload: str) -> str:
    return services.signer.sign("admin-flash", hashlib.sha256(payload.encode()).hexdigest()[:32])


def done(request: web.Request, location: str, text: str, ok: bool = True) -> web.HTTPSeeOther:
    """The redirect after an action, carrying what happened to the next page."""
    services = request.app[SERVICES]
    payload = base64.urlsafe_b64encode(json.dumps(
        {"ok": ok, "text": text[:MAX_FLASH]}, ensure_ascii=False).encode()).decode()
    response = web.HTTPSeeOther(location)
    response.set_cookie(FLASH_COOKIE, f"{payload}~{_flash_mac(services, payload)}",
                        path="/admin", httponly=True, samesite="Strict",
                        secure=secure(services), max_age=60)
    return response


def take_flash(request: web.Request) -> dict[str, Any] | None:
    cookie = request.cookies.get(FLASH_COOKIE, "")
    payload, _, mac = cookie.partition("~")
    services = request.app[SERVICES]
    if not payload or not payload.isascii() or not same(mac, _flash_mac(services, payload)):
        return None
    try:
        flash = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except ValueError:
        return None
    return flash if isinstance(flash, dict) else None


# -- the two kinds of handler -----------------------------------------------------------------

Page = Callable[[web.Request, Visit], Awaitable[web.StreamResponse]]


def page(admin: bool = False) -> Callable[[Page], Callable[[web.Request], Awaitable[Any]]]:
    """A GET handler for signed-in accounts (administrators only when ``admin``)."""

    def wrap(handler: Page) -> Callable[[web.Request], Awaitable[Any]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            visit = await visit_of(request)
            if visit is None:
                return login_form(request)
            if admin and not visit.account.is_admin:
                return message(request, "不可用 · Not for you", ADMINS_ONLY, 403, visit)
            return await handler(request, visit)

        return serve

    return wrap


async def form_of(request: web.Request) -> dict[str, str]:
    """The posted form; a body that is not UTF-8 (aiohttp raises UnicodeDecodeError) is 400."""
    try:
        return {key: str(value) for key, value in (await request.post()).items()}
    except ValueError:
        raise web.HTTPBadRequest(text="表单无法读取 · The form could not be read.") from None


Action = Callable[[web.Request, Visit, dict[str, str]], Awaitable[web.StreamResponse]]


def action(admin: bool = True) -> Callable[[Action], Callable[[web.Request], Awaitable[Any]]]:
    """A POST handler: a session, the session's CSRF token, and (by default) an administrator."""

    def wrap(handler: Action) -> Callable[[web.Request], Awaitable[Any]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            form = await form_of(request)
            visit = await visit_of(request)
            if visit is None:
                raise web.HTTPSeeOther("/admin")
            if not same(form.get("csrf", ""), visit.csrf):
                log.warning("admin: refused a form without a valid CSRF token from %s (%r)",
                            request.remote, request.path)  # %r: a path's %0A forges no line
                return message(request, "已拒绝 · Refused",
                               "表单已过期，请重新载入页面 · This form has expired; reload the page.",
                               403, visit)
            if admin and not visit.account.is_admin:
                log.warning("admin: %r (not an administrator) was refused %r",
                            visit.account.name, request.path)
                return message(request, "已拒绝 · Refused", ADMINS_ONLY, 403, visit)
            return await handler(request, visit, form)

        return serve

    return wrap
