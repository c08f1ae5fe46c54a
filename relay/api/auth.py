"""API tokens: what ``access_token`` issues for a credential and every other call must carry.

A token reads ``<account_id>.<expires>.<credential tag>.<signature>``: URL-safe, so it works in the
path form too. It is refused (1006) when malformed, forged or its account is gone; (1007) once
expired, or once the credential it was issued for has been rotated (the client must exchange its
new credential); (1003) when the account is no longer an administrator.
"""

from __future__ import annotations

from ..catalogue import Account
from ..services import Services
from .errors import ApiError, Code

PURPOSE = "api-token"


def issue_token(services: Services, account: Account) -> tuple[str, int]:
    ttl = services.settings.token_ttl
    expires_at = int(services.clock()) + ttl
    token = services.signer.sign(PURPOSE, account.account_id, expires_at, account.credential_tag)
    return token, ttl


async def authenticate(services: Services, token: str | None) -> Account:
    if not token:
        raise ApiError(Code.NO_TOKEN, "token")
    fields = services.signer.verify(PURPOSE, token, 3)
    if fields is None or not fields[0].isdigit() or not fields[1].isdigit():
        raise ApiError(Code.BAD_TOKEN, "token")
    account_id, expires_at, tag = int(fields[0]), int(fields[1]), fields[2]
    if services.clock() >= expires_at:
        raise ApiError(Code.TOKEN_EXPIRED, "token")
    account = await services.catalogue.accounts.by_id(account_id)
    if account is None:
        raise ApiError(Code.BAD_TOKEN, "token")
    if account.credential_tag != tag:
        raise ApiError(Code.TOKEN_EXPIRED, "token")
    if not account.is_admin:
        raise ApiError(Code.NOT_ADMIN, "token")
    return account
