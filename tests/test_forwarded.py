"""``X-Forwarded-For`` is believed from the trusted balancers only, and only its right-hand part
(what no client can forge); from anyone else it changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp.test_utils import make_mocked_request

from relay import forwarded
from relay.config import ConfigError, load_settings


@pytest.fixture
def balancers() -> Iterator[None]:
    forwarded.trust(forwarded.parse_networks("10.9.0.0/16, 127.0.0.1"))
    try:
        yield
    finally:
        forwarded.trust(())


def client(peer: str, *values: str) -> str | None:
    headers = [("X-Forwarded-For", value) for value in values]
    request = make_mocked_request("GET", "/", headers=headers,
                                  transport=_Transport(peer))
    return forwarded.client_of(request)


class _Transport:
    """What aiohttp asks a transport for ``request.remote`` (the peer's address)."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self._peer, 40000) if name == "peername" else default


def test_only_a_trusted_proxy_is_believed(balancers: None) -> None:
    assert client("10.9.0.4", "203.0.113.7") == "203.0.113.7"
    assert client("127.0.0.1", "203.0.113.7") == "203.0.113.7"
    assert client("198.51.100.1", "203.0.113.7") is None  # a client claiming to be forwarded


def test_the_right_most_untrusted_hop_is_the_client(balancers: None) -> None:
    # The client sent its own X-Forwarded-For (forged "1.2.3.4"); the balancer appended the
    # address it saw; a second balancer appended the first one's.
    assert client("10.9.0.4", "1.2.3.4, 203.0.113.7, 10.9.0.5") == "203.0.113.7"
    assert client("10.9.0.4", "1.2.3.4", "203.0.113.7") == "203.0.113.7"  # two header lines
    assert client("10.9.0.4", "10.9.0.5") is None  # nothing but proxies: the peer it is
    assert client("10.9.0.4", "unknown, 203.0.113.7") == "203.0.113.7"
    assert client("10.9.0.4", "203.0.113.7, garbage") is None
    assert client("10.9.0.4") is None
    assert client("10.9.0.4", "2001:db8::1") == "2001:db8::1"


def test_nothing_is_believed_by_default() -> None:
    assert client("127.0.0.1", "203.0.113.7") is None


def test_the_setting_is_checked() -> None:
    assert load_settings({"trusted_proxies": "10.0.0.0/8,::1"}, environ={}).trusted_proxies
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings({"trusted_proxies": "10.0.0.0/33"}, environ={})
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings({"trusted_proxies": "balancer.example"}, environ={})
