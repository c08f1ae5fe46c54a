"""The endpoint table: each API v1 name, the parameters it takes, and its handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..catalogue import Account
from ..services import Services
from .errors import ApiError
from .params import Params


@dataclass(frozen=True)
class Call:
    """One API call as a handler sees it."""

    params: Params
    services: Services
    account: Account | None


Handler = Callable[[Call], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    keys: frozenset[str]
    needs_token: bool


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(name: str, *keys: str, needs_token: bool = True) -> Callable[[Handler], Handler]:
    """Register ``handler`` as ``/api/v1/<name>``, taking ``keys`` (plus ``token``) only."""

    def register(handler: Handler) -> Handler:
        allowed = frozenset(keys) | ({"token"} if needs_token else frozenset())
        ENDPOINTS[name] = Endpoint(name, handler, allowed, needs_token)
        return handler

    return register


async def call_endpoint(services: Services, account: Account, name: str,
                        values: dict[str, str]) -> dict[str, Any]:
    """Run endpoint ``name`` in this process for an account already signed in (the console),
    with the same parameter checks, rules and answer as over HTTP: ``err_code`` 0 and the
    endpoint's fields, or the refusal's ``err_code``/``err_msg``/``err_param``."""
    found = ENDPOINTS[name]
    params = Params(values)
    try:
        params.allow_only(set(found.keys))
        body = await found.handler(Call(params, services, account))
    except ApiError as refusal:
        return refusal.body()
    return {"err_code": 0, "err_msg": "OK", **body}
