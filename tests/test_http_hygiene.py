"""HTTP hygiene of a real ``relay serve``: the request-head deadline (slowloris), JSON answers to
requests aiohttp cannot parse (no echo, no traceback), and ``/metrics`` on its own address."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    RelayProcess,
    eventually,
    free_port,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
    stop_relay,
)
from live_system import Drain

HEAD_TIMEOUT = 1.0
SECRET = "UnionSecret0123456789abcdef"


class Relay:
    def __init__(self, process: RelayProcess, log: Drain, metrics_port: int) -> None:
        self.process, self.log, self.metrics_port = process, log, metrics_port
        self.port = int(process.base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    metrics_port = free_port()
    process = start_relay(tmp_path_factory.mktemp("hygiene") / "data",
                          "--header-timeout", str(HEAD_TIMEOUT), "--agent-heartbeat", "1",
                          "--metrics-listen", f"127.0.0.1:{metrics_port}")
    log = Drain(process.process.stderr)  # type: ignore[arg-type]
    yield Relay(process, log, metrics_port)
    stop_relay(process)


def connect(relay: Relay) -> socket.socket:
    return socket.create_connection(("127.0.0.1", relay.port), timeout=10)


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; fails after ``limit`` s."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s (received {data[:200]!r})")
    return data, time.monotonic() - start


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one keep-alive request and read its whole answer (Content-Length bodies)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# The request-head deadline


def test_a_head_trickled_in_is_cut_off_with_408(relay):
    with connect(relay) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        for _ in range(3):
            time.sleep(HEAD_TIMEOUT / 4)
            sock.sendall(b"X-Slow: 1\r\n")  # still trickling: no deadline renewal per byte
        answer, _ = read_until_closed(sock, 10 * HEAD_TIMEOUT)
    status, body = status_and_body(answer)
    assert status == 408 and json.loads(body)["err_code"] == 408


def test_a_connection_that_sends_nothing_is_closed(relay):
    with connect(relay) as sock:
        answer, _ = read_until_closed(sock, 10 * HEAD_TIMEOUT)
    assert answer == b""


def test_kept_alive_connections_idle_between_requests_then_a_slow_head_is_cut(relay):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(relay) as sock:
        assert status_and_body(exchange(sock, request))[0] == 200
        time.sleep(3 * HEAD_TIMEOUT)  # idle: aiohttp's keepalive_timeout (75 s) governs this
        assert status_and_body(exchange(sock, request))[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next head starts and stalls
        answer, _ = read_until_closed(sock, 10 * HEAD_TIMEOUT)
    assert status_and_body(answer)[0] == 408


def test_a_slow_body_after_a_complete_head_is_not_cut(relay):
    body = b"name=admin&password=wrong-password&csrf=x"
    with connect(relay) as sock:
        sock.sendall(b"POST /admin/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), len(body) // 4 + 1):
            time.sleep(HEAD_TIMEOUT * 0.9)
            sock.sendall(body[start:start + len(body) // 4 + 1])
        sock.settimeout(10)
        answer = sock.recv(65536)
    status = int(answer.split(b" ", 2)[1])
    assert status != 408 and status < 500, answer[:300]


def test_a_websocket_outlives_the_head_deadline(relay, tmp_path):
    """The agent's link is a WebSocket that stays quiet for long stretches: it is not cut."""
    data = relay.process.data
    key = run_relay("agent-key", "add", "hygiene", "--data", str(data)).stdout.strip()
    agent = start_agent(relay.process.base_url, key, tmp_path / "agent")
    try:
        def connected() -> bool:
            return "connected from" in relay.log.text()

        eventually(connected)
        time.sleep(4 * HEAD_TIMEOUT)
        assert relay.log.text().count("connected from") == 1, relay.log.text()[-3000:]
        assert "GET /agent " not in relay.log.text()  # the link's access line comes when it ends
    finally:
        stop_agent(agent)


# Requests aiohttp cannot parse


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /api/v1/access_token?unionid=" + SECRET.encode() + b"&pad=" + b"a" * 9000
         + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /api/v1/access_token?unionid=" + SECRET.encode() + b" raw-space HTTP/1.1\r\n"
         b"Host: x\r\n\r\n", 400),
        (b"GET /api/v1/list_camera?token=" + SECRET.encode() + b"\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
         400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad header: " + SECRET.encode() + b"\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nCookie: relay_session=" + SECRET.encode() + b"\x01\r\n\r\n",
         400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + SECRET.encode() + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, SECRET.encode())
                                                    for i in range(200)) + b"\r\n", 431),
        (b"GET /?token=" + SECRET.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ],
    ids=["long-url", "raw-space", "bad-url-char", "bad-header-name", "bad-header-value",
         "long-header", "many-headers", "bad-version"],
)
def test_unparsable_requests_get_json_without_echo_and_one_log_line(relay, request_bytes, status):
    before = len(relay.log.text())
    with connect(relay) as sock:
        sock.sendall(request_bytes)
        answer, _ = read_until_closed(sock, 10)
    got, body = status_and_body(answer)
    assert got == status, answer[:300]
    assert b"application/json" in answer.partition(b"\r\n\r\n")[0]
    assert json.loads(body)["err_code"] == status
    assert SECRET.encode() not in answer and b"aaaa" not in answer
    eventually(lambda: "refused a request" in relay.log.text()[before:], timeout=5)
    time.sleep(0.2)
    logged = relay.log.text()[before:]
    assert SECRET not in logged, logged
    assert "Traceback" not in logged and " ERROR " not in logged, logged
    assert logged.count("refused a request from 127.0.0.1") == 1, logged
    assert "UNKNOWN /" not in logged, logged


LONG_URL = (b"GET /api/v1/x?unionid=" + SECRET.encode() + b"&pad=" + b"a" * 9000
            + b" HTTP/1.1\r\nHost: x\r\n\r\n")
LONG_HEADER = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("chunks", "status"),
    [
        ([LONG_URL[:5000], LONG_URL[5000:]], 414),
        ([LONG_URL[:8100], LONG_URL[8100:]], 414),
        ([LONG_HEADER[:10], LONG_HEADER[10:5000], LONG_HEADER[5000:]], 431),
        ([HEALTHZ + LONG_URL], 414),  # pipelined behind a request, in one chunk
        ([HEALTHZ + LONG_HEADER], 431),
        ([HEALTHZ, LONG_URL], 414),  # on a kept-alive connection
    ],
    ids=["url-in-two", "url-split-near-the-limit", "header-in-three", "pipelined-url",
         "pipelined-header", "kept-alive-url"],
)
def test_too_long_is_414_for_the_url_and_431_for_a_header_however_it_arrives(relay, chunks, status):
    with connect(relay) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.2)
        answer, _ = read_until_closed(sock, 10)
    last = answer[answer.rfind(b"HTTP/1."):]
    assert status_and_body(last)[0] == status, answer[-300:]


# /metrics on its own address


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_on_their_own_address_only(relay):
    status, body = get(f"http://127.0.0.1:{relay.metrics_port}/metrics")
    assert status == 200 and b"relay_agents_connected" in body
    status, body = get(f"{relay.process.base_url}/metrics")
    assert status == 404 and json.loads(body)["err_code"] == 404
    status, body = get(f"http://127.0.0.1:{relay.metrics_port}/healthz")
    assert status == 404 and json.loads(body)["err_code"] == 404
    assert get(f"{relay.process.base_url}/healthz")[0] == 200


def test_metrics_on_the_main_listener_by_default(relay_server):
    status, body = get(f"{relay_server.base_url}/metrics")
    assert status == 200 and b"relay_agents_connected" in body


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-listen", "nonsense"], "'metrics_listen': 'nonsense' is not HOST:PORT"),
        (["--metrics-listen", "127.0.0.1:99999"], "is not HOST:PORT"),
        (["--metrics-listen", "127.0.0.1:%C2%B2"], "is not HOST:PORT"),
        (["--header-timeout", "0"], "'header_timeout'"),
        (["--header-timeout", "soon"], "'header_timeout'"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tmp_path: Path, args, message):
    result = run_relay("serve", "--data", str(tmp_path / "data"), *args, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_listen_equal_to_listen_is_refused(tmp_path: Path):
    port = free_port()
    result = run_relay("serve", "--data", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}",
                       "--metrics-listen", f"127.0.0.1:{port}", check=False)
    assert result.returncode == 1 and "must differ from 'listen'" in result.stderr, result.stderr


def test_a_metrics_address_in_use_is_a_clear_error(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_relay("serve", "--data", str(tmp_path / "data"), "--listen",
                           f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{port}",
                           check=False)
    assert result.returncode == 1, result.stderr
    assert f"'metrics_listen': cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
