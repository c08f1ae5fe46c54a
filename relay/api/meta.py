"""3.1 version and 3.2 access_token: the two calls that need no token."""

from __future__ import annotations

import logging
import platform
from typing import Any

from .. import __version__
from ..catalogue.accounts import CREDENTIAL_PATTERN
from .auth import issue_token
from .errors import ApiError, Code
from .registry import Call, endpoint

log = logging.getLogger(__name__)


@endpoint("version", needs_token=False)
async def version(call: Call) -> dict[str, Any]:
    uname = platform.uname()
    return {
        "API": "v1",
        "Name": "云监控",
        "Version": __version__,
        "Server": f"{uname.system} {uname.release} {uname.machine}",
    }


@endpoint("access_token", "unionid", needs_token=False)
async def access_token(call: Call) -> dict[str, Any]:
    unionid = call.params.raw("unionid")
    if unionid is None or not CREDENTIAL_PATTERN.fullmatch(unionid):
        raise ApiError(Code.BAD_UNIONID, "unionid")
    account = await call.services.catalogue.accounts.by_credential(unionid)
    if account is None:
        raise ApiError(Code.UNKNOWN_UNIONID, "unionid")
    if not account.is_admin:
        raise ApiError(Code.NOT_ADMIN, "unionid")
    try:
        token, expires = issue_token(call.services, account)
    except ValueError as exc:
        log.error("could not issue a token for account %d: %s", account.account_id, exc)
        raise ApiError(Code.TOKEN_ISSUE_FAILED) from exc
    log.info("issued an API token to account %r", account.name)
    return {"token": token, "expires": expires}
