"""Agent keys and accounts, for administrators: the same catalogue calls as ``relay agent-key``
and ``relay user``, with the same rules (names, the password's length).

A new agent key is shown once, on the page that answers its creation (never in a URL, a flash
cookie or a log line); the catalogue keeps only its digest. The console also keeps one rule of its
own: the last administrator cannot take their own rights away (nobody could give them back but
``relay user admin NAME on`` on the server).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..catalogue import AlreadyExists, NotFound
from ..passwords import MIN_LENGTH
from ..services import SERVICES
from .forms import confirm
from .sessions import Visit, action, done, page, render

log = logging.getLogger(__name__)

MAX_GATHERERS_FORM = 100_000


@page(admin=True)
async def keys_page(request: web.Request, visit: Visit) -> web.StreamResponse:
    keys = await request.app[SERVICES].catalogue.agent_keys.list()
    return render(request, "keys.html", {"visit": visit, "keys": keys})


@action()
async def add_key(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    services = request.app[SERVICES]
    name = form.get("name", "").strip()
    gatherers = form.get("gatherers", "1").strip() or "1"
    if not gatherers.isdigit() or not 1 <= int(gatherers) <= MAX_GATHERERS_FORM:
        raise done(request, "/admin/keys", f"采集端数量应为 1–{MAX_GATHERERS_FORM} · The number "
                   f"of gatherers must be 1–{MAX_GATHERERS_FORM}.", False)
    try:
        key = await services.catalogue.agent_keys.add(name, int(gatherers))
    except (ValueError, AlreadyExists) as exc:
        raise done(request, "/admin/keys", f"未创建 · Not created: {exc}.", False) from None
    log.info("admin: %r created agent key %r (%s gatherer(s))", visit.account.name, name,
             gatherers)
    return render(request, "key_made.html", {
        "visit": visit, "name": name, "key": key, "gatherers": int(gatherers),
        "server": services.settings.base_url})


@action()
async def revoke_key(request: web.Request, visit: Visit, form: dict[str, str]
                     ) -> web.StreamResponse:
    name = form.get("name", "")
    asked = confirm(request, visit, form, "吊销密钥 · Revoke agent key",
                    f"吊销 “{name}”？使用它的采集端将被断开且不能再连接 · Revoke “{name}”? "
                    "Gatherers using it are cut off and cannot connect again.", "/admin/keys")
    if asked is not None:
        return asked
    try:
        await request.app[SERVICES].catalogue.agent_keys.revoke(name)
    except NotFound:
        raise done(request, "/admin/keys", "没有这个密钥 · No such key.", False) from None
    log.info("admin: %r revoked agent key %r", visit.account.name, name)
    raise done(request, "/admin/keys", f"已吊销 · Revoked “{name}”.")


@page(admin=True)
async def accounts_page(request: web.Request, visit: Visit) -> web.StreamResponse:
    services = request.app[SERVICES]
    return render(request, "accounts.html", {
        "visit": visit, "accounts": await services.catalogue.accounts.list(),
        "base_url": services.settings.base_url, "min_password": MIN_LENGTH})


def _password_problem(password: str) -> str:
    if len(password) < MIN_LENGTH:
        return f"密码至少 {MIN_LENGTH} 个字符 · The password needs at least {MIN_LENGTH} characters."
    return ""


@action()
async def add_account(request: web.Request, visit: Visit, form: dict[str, str]
                      ) -> web.StreamResponse:
    name, password = form.get("name", "").strip(), form.get("password", "")
    is_admin = form.get("is_admin") == "1"
    if problem := _password_problem(password):
        raise done(request, "/admin/accounts", problem, False)
    try:
        await request.app[SERVICES].catalogue.accounts.add(name, password, is_admin)
    except (ValueError, AlreadyExists) as exc:
        raise done(request, "/admin/accounts", f"未创建 · Not created: {exc}.", False) from None
    role = "administrator" if is_admin else "viewer"
    log.info("admin: %r created account %r (%s)", visit.account.name, name, role)
    raise done(request, "/admin/accounts", f"已创建 · Created {name} ({role}).")


@action()
async def set_role(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    accounts = request.app[SERVICES].catalogue.accounts
    name, to_admin = form.get("name", ""), form.get("is_admin") == "1"
    if not to_admin:
        admins = [account.name for account in await accounts.list() if account.is_admin]
        if admins == [name]:
            raise done(request, "/admin/accounts", "至少要保留一个管理员 · There must be at least "
                       "one administrator left.", False)
    try:
        await accounts.set_admin(name, to_admin)
    except NotFound:
        raise done(request, "/admin/accounts", "没有这个帐号 · No such account.", False) from None
    log.info("admin: %r made %r %s", visit.account.name, name,
             "an administrator" if to_admin else "a viewer")
    back = "/admin" if name == visit.account.name and not to_admin else "/admin/accounts"
    raise done(request, back, f"{name}: " + (  # (one's own rights gone, the accounts page too)
        "现在是管理员 · now an administrator." if to_admin else "现在只能观看 · now a viewer."))


@action()
async def set_password(request: web.Request, visit: Visit, form: dict[str, str]
                       ) -> web.StreamResponse:
    name, password = form.get("name", ""), form.get("password", "")
    if problem := _password_problem(password):
        raise done(request, "/admin/accounts", problem, False)
    try:
        await request.app[SERVICES].catalogue.accounts.set_password(name, password, visit.token)
    except NotFound:
        raise done(request, "/admin/accounts", "没有这个帐号 · No such account.", False) from None
    log.info("admin: %r set the password of %r", visit.account.name, name)
    raise done(request, "/admin/accounts", f"{name}: 密码已更改 · password changed.")


@action()
async def rotate(request: web.Request, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
    """A new API credential for an account (one's own when the form names none)."""
    name = form.get("name") or visit.account.name
    try:
        await request.app[SERVICES].catalogue.accounts.rotate(name)
    except NotFound:
        raise done(request, "/admin/accounts", "没有这个帐号 · No such account.", False) from None
    log.info("admin: %r rotated the API credential of %r", visit.account.name, name)
    raise done(request, "/admin/accounts", f"{name}: 已更换凭证，旧凭证及其 token 立即失效 · "
               "a new credential was issued; the old one and its tokens stopped working.")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/keys", keys_page)
    app.router.add_post("/admin/keys", add_key)
    app.router.add_post("/admin/keys/revoke", revoke_key)
    app.router.add_get("/admin/accounts", accounts_page)
    app.router.add_post("/admin/accounts", add_account)
    app.router.add_post("/admin/accounts/role", set_role)
    app.router.add_post("/admin/accounts/password", set_password)
    app.router.add_post("/admin/accounts/rotate", rotate)
    app.router.add_post("/admin/rotate", rotate)
