"""Who is really asking, behind a balancer: ``X-Forwarded-For`` from a trusted proxy only.

A node behind HAProxy sees every client as the balancer's address: the sign-in count would lock
everyone out together and the logs would name nobody. With ``trusted_proxies`` set (addresses or
networks of the balancers), a request whose peer is one of them is taken to come from the
right-most address of its ``X-Forwarded-For`` that is not itself a trusted proxy: the part of the
header a client cannot forge (a client may send any left-hand part). From any other peer the
header is ignored, so nobody can pick the address the sign-in count and the logs see.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web import BaseRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_trusted: tuple[Network, ...] = ()


def parse_networks(value: str) -> tuple[Network, ...]:
    """``trusted_proxies``' comma list of addresses or networks (``ValueError`` on a bad one)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in value.split(",") if part.strip())


def trust(networks: tuple[Network, ...]) -> None:
    """Set the proxies whose ``X-Forwarded-For`` is believed (``relay serve`` does, once)."""
    global _trusted
    _trusted = networks


def _is_trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _trusted)


def client_of(request: BaseRequest) -> str | None:
    """The client's address as the trusted proxies tell it; None when the peer is no trusted
    proxy, or the header names nothing usable (then the peer is the client)."""
    if not _trusted or request.remote is None or not _is_trusted(request.remote):
        return None
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return None  # garbage from the proxy chain: keep the peer
        if not _is_trusted(hop):
            return hop
    return None


@web.middleware
async def real_client(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    client = client_of(request)
    return await handler(request.clone(remote=client) if client is not None else request)
