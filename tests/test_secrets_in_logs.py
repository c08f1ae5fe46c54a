"""No secret in any log line: the whole system, as real processes, at debug level.

A real ``relay serve`` (stopped and started again once, so two runs' logs) and a real ``relay agent``
with an agent config naming a mode-0 IP camera, both with ``RELAY_LOG_LEVEL=debug``. The test makes
and uses every kind of secret the system has: the admin password and API credential of the first
start's banner, tokens (query and path form), the agent key (and a wrong one), play tickets and their
renewals, viewer session ids (session, heartbeat, MSE socket, WebRTC offer, bye), push ids, /admin
sign-ins (a wrong and the right password, CSRF tokens, the session cookie), camera passwords (a
mode-2 ``rtsp://user:secretpass@`` URL, a mode-0 ``device_pass`` from the agent config and one set
by ``mod_camera``) and requests aiohttp cannot parse that carry a credential or token.

Push ids are made by the relay and handed to the agent, so the test reads them where they travel: the
agent dials the relay through a byte-forwarding TCP proxy in this process, which keeps the start of
every connection (the HTTP request of each media socket, ``/agent/media?…&push_id=P``).

Then every line the relay (each run) and the agent logged is searched for every secret, raw and in
its percent-encoded forms; a hit fails the test and prints the line with the secret masked. The
logs must also show the lines that prove each secret went by (redacted), so an empty or silent log
cannot pass.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from conftest import eventually, start_agent
from live_system import LiveSystem, api

MODE2_URL = "rtsp://user:secretpass@127.0.0.1:9/x"
DEVICE_PASSWORD = "Dev!ce@pass/7:x"  # needs percent-encoding in the RTSP URL the agent builds
NEW_DEVICE_PASSWORD = "N3w+dev/pass=="  # base64 of it has "+", "/" and "="
WRONG_PASSWORD = "wrong-Passw0rd-guess"
WRONG_AGENT_KEY = "rk_WrongKeyTypedByHand0123456789abcdef"


@dataclass
class Secrets:
    """Every secret the test made or saw, by kind."""

    found: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, value: str) -> None:
        assert value and len(value) >= 8, (kind, value)
        self.found.setdefault(value, kind)

    def forms(self) -> dict[str, str]:
        """Each secret as it could appear: raw, percent-encoded (as quote/urlencode write it, and
        every byte encoded, either case), form-encoded."""
        forms: dict[str, str] = {}
        for value, kind in self.found.items():
            every = "".join(f"%{byte:02X}" for byte in value.encode())
            for form in (value, quote(value, safe=""), quote(value), quote_plus(value), every,
                         every.lower()):
                forms.setdefault(form, kind)
        return forms


class Proxy:
    """Forwards TCP connections to the relay, keeping the first bytes each client sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.openings: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        opening = bytearray()
        self.openings.append(b"")
        index = len(self.openings) - 1

        def upward() -> None:
            self._pump(client, upstream, opening, index)

        threading.Thread(target=upward, daemon=True).start()
        self._pump(upstream, client, None, index)

    def _pump(self, source: socket.socket, sink: socket.socket, keep: bytearray | None,
              index: int) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None and len(keep) < 8192:
                    keep.extend(data[:8192 - len(keep)])
                    self.openings[index] = bytes(keep)
                elif keep is not None and data.startswith((b"GET ", b"POST ", b"PUT ")):
                    # A later request on a kept-alive connection (the agent's uploads share the
                    # HTTP client with its media sockets): keep its head too.
                    self.openings.append(data[:8192])
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def push_ids(self) -> set[str]:
        return {match.group(1).decode() for opening in list(self.openings)
                for match in re.finditer(rb"[?&]push_id=([A-Za-z0-9_-]+)", opening)}

    def close(self) -> None:
        self._server.close()


class SecretsSystem(LiveSystem):
    """LiveSystem whose agent has a config file (a mode-0 IP camera) and dials through a proxy."""

    proxy: Proxy | None = None

    def start_agent(self) -> None:
        if self.proxy is None:
            self.proxy = Proxy(self.port)
        config = self.tmp / "agent.toml"
        config.write_text(
            'name_pc = "secrets-lab"\n'
            "[[devices]]\n"
            'camera_name = "gate"\n'
            'device_ip = "127.0.0.1"\n'
            'device_user = "admin"\n'
            f'device_pass = "{base64.b64encode(DEVICE_PASSWORD.encode()).decode()}"\n'
            "rtsp_port = 9\n"
        )
        self.agent = start_agent(self.proxy.url, self.key, self.tmp / "agent", "--config", str(config))


def call(base: str, name: str, **params: object) -> dict:  # type: ignore[type-arg]
    return api(base, name, **params)


def call_path(base: str, name: str, **params: str) -> dict:  # type: ignore[type-arg]
    tail = "".join(f"/{quote(key, safe='')}/{quote(str(value), safe='')}"
                   for key, value in params.items())
    with urllib.request.urlopen(f"{base}/api/v1/{name}{tail}", timeout=30) as answer:
        return json.load(answer)


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def watch_live(base: str, camera_id: int, ticket: str, secrets: Secrets) -> dict[str, int]:
    """A viewer's whole life over HTTP and WebSocket: session, heartbeat, MSE, WebRTC, bye."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    seen = {"mse_bytes": 0, "webrtc": 0}
    live = f"{base}/play/live/{camera_id}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/play/live/{camera_id}", params={"ticket": ticket}) as page:
            assert page.status == 200
        async with http.post(f"{live}/session", params={"ticket": ticket}) as answer:
            assert answer.status == 200, await answer.text()
            opened = await answer.json()
        session = opened["session"]
        secrets.add("viewer session id", session)
        secrets.add("play ticket (renewed by the session)", opened["ticket"])
        async with http.post(f"{live}/heartbeat", params={"session": session}) as answer:
            assert answer.status == 200, await answer.text()
            beat = await answer.json()
        if "ticket" in beat:
            secrets.add("play ticket (renewed by a heartbeat)", beat["ticket"])
        async with http.ws_connect(f"{live}/mse", params={"session": session}) as ws:
            deadline = time.monotonic() + 20
            while seen["mse_bytes"] < 2000 and time.monotonic() < deadline:
                message = await ws.receive(timeout=20)
                if message.type == aiohttp.WSMsgType.BINARY:
                    seen["mse_bytes"] += len(message.data)
                elif message.type != aiohttp.WSMsgType.TEXT:
                    break
        async with http.post(f"{live}/bye", params={"session": session}) as answer:
            assert answer.status < 500

        # A second viewer over WebRTC, with aiortc as the browser.
        async with http.post(f"{live}/session", params={"ticket": opened["ticket"]}) as answer:
            assert answer.status == 200, await answer.text()
            second = await answer.json()
        secrets.add("viewer session id", second["session"])
        secrets.add("play ticket (renewed by the session)", second["ticket"])
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only
        try:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(f"{live}/webrtc", params={"session": second["session"]},
                                 json={"sdp": pc.localDescription.sdp}) as answer:
                assert answer.status == 200, await answer.text()
                sdp = (await answer.json())["sdp"]
            for offer_or_answer in (pc.localDescription.sdp, sdp):
                for ice_password in re.findall(r"a=ice-pwd:(\S+)", offer_or_answer):
                    secrets.add("ICE password (SDP)", ice_password)
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
            seen["webrtc"] = 1
            for _ in range(50):
                if pc.connectionState in ("connected", "failed"):
                    break
                await asyncio.sleep(0.1)
        finally:
            await pc.close()
        async with http.post(f"{live}/bye", params={"session": second["session"]}) as answer:
            assert answer.status < 500
    return seen


async def use_admin(base: str, password: str, secrets: Secrets) -> str:
    """/admin: a wrong password, then the right one, the dashboard, a credential rotation, an
    agent key and an account made there, and signing out. Returns the new credential."""
    csrf_field = re.compile(r"name=csrf value='([^']+)'")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for attempt in (WRONG_PASSWORD, password):
            async with http.get(f"{base}/admin") as page:
                csrf = csrf_field.search(await page.text()).group(1)  # type: ignore[union-attr]
            secrets.add("/admin sign-in CSRF token", csrf)
            async with http.post(f"{base}/admin/login", allow_redirects=False,
                                 data={"csrf": csrf, "name": "admin", "password": attempt}) as answer:
                assert answer.status == (401 if attempt == WRONG_PASSWORD else 303), answer.status
                cookie = answer.cookies.get("relay_session")
        assert cookie is not None
        secrets.add("/admin session cookie", cookie.value)
        async with http.get(f"{base}/admin") as page:
            dashboard = await page.text()
        session_csrf = csrf_field.search(dashboard).group(1)  # type: ignore[union-attr]
        secrets.add("/admin session CSRF token", session_csrf)
        async with http.post(f"{base}/admin/rotate", data={"csrf": session_csrf}) as answer:
            text = await answer.text()
            assert answer.status == 200 and str(answer.url).endswith("/admin/accounts"), answer.url
            assert "a new credential was issued" in text
            rotated = re.search(r"<code id=credential>([^<]+)</code>", text)
        assert rotated is not None
        secrets.add("API credential (rotated in /admin)", rotated.group(1))
        # An agent key made in the console, and a password set there.
        async with http.post(f"{base}/admin/keys", data={"csrf": session_csrf,
                                                         "name": "console-made"}) as answer:
            made = re.search(r"<code id=new-key>([^<]+)</code>", await answer.text())
        assert made is not None
        secrets.add("agent key made in /admin", made.group(1))
        new_password = "console-set-" + made.group(1)[-12:]
        secrets.add("password set in /admin", new_password)
        async with http.post(f"{base}/admin/accounts", data={
                "csrf": session_csrf, "name": "console-user", "password": new_password}) as answer:
            assert "Created console-user" in await answer.text()
        async with http.post(f"{base}/admin/logout", allow_redirects=False,
                             data={"csrf": session_csrf}) as answer:
            assert answer.status == 303
    return rotated.group(1)


def parser_errors(port: int, credential: str, token: str) -> None:
    """Requests aiohttp cannot parse, carrying a credential or a token (what they are answered
    is tests/test_http_hygiene.py's business; here only what gets logged matters)."""
    for request in (
        b"GET /api/v1/access_token?unionid=" + credential.encode() + b"&pad=" + b"a" * 9000
        + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/list_camera?token=" + token.encode() + b" raw-space HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/access_token/unionid/" + credential.encode() + b" x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/list_camera HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
        + b"\x01\r\n\r\n",
    ):
        assert raw_request(port, request).startswith(b"HTTP/1.")


def wrong_agent_key(base: str) -> None:
    request = urllib.request.Request(f"{base}/agent", headers={
        "Authorization": f"Bearer {WRONG_AGENT_KEY}", "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    })
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as refusal:
        assert refusal.code == 401
    else:
        pytest.fail("a wrong agent key was accepted")


def masked(line: str, form: str, kind: str) -> str:
    return line.replace(form, f"<{kind.upper()}>").rstrip()


def test_no_secret_in_any_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_LOG_LEVEL", "debug")  # the relay's setting and the agent's default
    secrets = Secrets()
    with SecretsSystem.running(tmp_path) as live:
        assert isinstance(live, SecretsSystem) and live.proxy is not None
        base, port = live.base, live.port
        secrets.add("admin password (first start banner)", live.relay.password)
        secrets.add("API credential (first start banner)", live.relay.credential)
        secrets.add("agent key", live.key)
        secrets.add("agent key (a wrong one)", WRONG_AGENT_KEY)
        secrets.add("API token", live.token)
        secrets.add("admin password (a wrong one)", WRONG_PASSWORD)

        # The API: tokens and credentials in both URL forms.
        path_token = call_path(base, "access_token", unionid=live.relay.credential)["token"]
        secrets.add("API token", path_token)
        assert call_path(base, "list_camera", token=path_token, cur="1", per="10")["err_code"] == 0
        assert call(base, "list_camera", token=live.token)["err_code"] == 0
        [gatherer] = call(base, "list_gather", token=live.token)["data"]

        # A mode-2 camera whose URL carries a password; its source fails (nothing on port 9).
        added = call(base, "add_camera", token=live.token, camera_name="rtsp-cam",
                     gather_id=gatherer["gather_id"], stream_prop=2, stream_url=MODE2_URL)
        assert added["err_code"] == 0, added
        secrets.add("camera URL password (mode 2)", "secretpass")
        secrets.add("camera URL userinfo (mode 2)", "user:secretpass")

        # The mode-0 camera of the agent's config, then a new device_pass for it in both URL forms.
        secrets.add("device password (agent config)", DEVICE_PASSWORD)
        secrets.add("device_pass (agent config)", base64.b64encode(DEVICE_PASSWORD.encode()).decode())

        def ip_camera() -> int | None:
            cameras = call(base, "list_camera", token=live.token, per=100)["data"]
            return next((c["camera_id"] for c in cameras if c["stream_prop"] == 0), None)

        ip_camera_id = eventually(ip_camera)
        new_pass = base64.b64encode(NEW_DEVICE_PASSWORD.encode()).decode()
        secrets.add("device password (mod_camera)", NEW_DEVICE_PASSWORD)
        secrets.add("device_pass (mod_camera)", new_pass)
        moved = call(base, "mod_camera", token=live.token, camera_id=ip_camera_id, camera_name="gate",
                     device_pass=new_pass)
        assert moved["err_code"] == 0, moved
        moved = call_path(base, "mod_camera", token=live.token, camera_id=str(ip_camera_id),
                          camera_name="gate", device_pass=new_pass)
        assert moved["err_code"] == 0, moved

        # Live video: a ticket, two viewers (MSE, WebRTC), hence a push and its push id.
        camera_id = live.cameras[0]
        ticket = live.ticket(camera_id)
        secrets.add("play ticket", ticket)
        seen = asyncio.run(watch_live(base, camera_id, ticket, secrets))
        assert seen["mse_bytes"] >= 2000 and seen["webrtc"], seen
        eventually(live.idle, timeout=30)

        # /admin, requests aiohttp cannot parse, a wrong agent key.
        credential = asyncio.run(use_admin(base, live.relay.password, secrets))
        live.token = call(base, "access_token", unionid=credential)["token"]  # the old one is void
        secrets.add("API token", live.token)
        parser_errors(port, live.relay.credential, live.token)
        wrong_agent_key(base)

        # A second relay run: the agent comes back through the proxy with its key.
        live.restart_relay()
        eventually(lambda: call(base, "get_camera_status", token=live.token,
                                camera_id=camera_id)["status"] == 1, timeout=40)
        assert call(base, "list_camera", token=live.token, cur=1)["err_code"] == 0
        for push_id in live.proxy.push_ids():
            secrets.add("push id", push_id)
        live.proxy.close()
    logs = {f"relay run {n}": text for n, text in enumerate(live.relay_logs, 1)}
    logs["agent"] = live.agent_log()
    for name, text in logs.items():  # kept beside the agent's log, for reading after a failure
        (tmp_path / f"{name.replace(' ', '-')}.log").write_text(text)

    hits = [
        f"{name}: {kind}: {masked(line, form, kind)}"
        for name, text in logs.items()
        for line in text.splitlines()
        for form, kind in secrets.forms().items()
        if form in line
    ]
    assert not hits, f"{len(hits)} secret(s) in the logs:\n" + "\n".join(hits[:80])

    # The logs are there, at debug level, and show each kind of secret going by, redacted.
    assert len(live.relay_logs) == 2 and all(live.relay_logs)
    relay_log = "".join(live.relay_logs)
    missing = [expected for expected in (
        " DEBUG ", "token=***", "/token/***", "unionid=***", "/unionid/***", "ticket=***",
        "session=***", "push_id=***", "device_pass=***", "/device_pass/***", "refused a request from",
        "refused agent from", "admin: failed sign-in", "signed in from", "is offline", "ice-pwd:***",
    ) if expected not in relay_log]
    assert not missing, f"not in the relay's logs: {missing}"
    assert " DEBUG " in logs["agent"] and "127.0.0.1:9" in logs["agent"], logs["agent"][-3000:]
    assert "push id" in secrets.found.values(), "the proxy saw no media socket"
    assert "ICE password (SDP)" in secrets.found.values()


# The redaction rules, one line at a time (what the whole-system test relies on)


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("127.0.0.1 GET /api/v1/list_camera?cur=1&token=T0KEN.1.2.sig 200 1.0ms", "T0KEN.1.2.sig"),
        ("127.0.0.1 GET /api/v1/list_camera/cur/1/token/T0KEN.1.2.sig 200 1.0ms", "T0KEN.1.2.sig"),
        ("GET /api/v1/access_token/unionid/CREDENTIAL123 x", "CREDENTIAL123"),
        ("POST /play/live/3/heartbeat?session=S3ss10n_id-x 200", "S3ss10n_id-x"),
        ("GET /agent/media?camera_id=2&push_id=PuSh1d-abcdef", "PuSh1d-abcdef"),
        ("/play/live/3?TICKET=live.3.17.MAC", "live.3.17.MAC"),
        ("/x?a=1;token=semicolon-sep", "semicolon-sep"),
        ("?password=a%26b%3Dc&x=1", "a%26b%3Dc"),
        ("mod_camera device_pass=YWJj+ZA== ok", "YWJj+ZA=="),
        ("/api/v1/mod_camera/device_pass/YW%2FJj%3D/camera_id/1", "YW%2FJj%3D"),
        ("source rtsp://admin:p@ss/w@127.0.0.1:9/x failed", "p@ss/w"),
        ("Connection refused: 'rtsp://admin:secretpass@10.0.0.1/x'", "secretpass"),
        ("add_camera?stream_url=rtsp%3A%2F%2Fadmin%3Asecretpass%40127.0.0.1%2Fx&x=1", "secretpass"),
        ("next=%2Fplay%3Fticket%3Dlive.3.x.mac%26mode%3Dmse", "live.3.x.mac"),
        ("twice %253Fticket%253Dlive.4.y.mac%2526x", "live.4.y.mac"),
        ("%2Fapi%2Fv1%2Flist_camera%2Ftoken%2FT0KEN.9.sig%2Fcur%2F1", "T0KEN.9.sig"),
        ("{'push_id': 'PuSh1d-abcdef', 'camera_id': 3}", "PuSh1d-abcdef"),
        ('{"device_pass": "YWRtaW4xMjM=", "device_ip": "10.0.0.9"}', "YWRtaW4xMjM="),
        ("Authorization: Bearer rk_abcdefghijklmnopqrstuvwxyz", "rk_abcdefghijklmnopqrstuvwxyz"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz', 'Host': 'x'}", "dXNlcjpwYXNz"),
        ("agent key rk_Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MA used", "Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MA"),
        ("Set-Cookie: relay_session=1.2.abc-def; HttpOnly", "1.2.abc-def"),
        ("a=ice-ufrag:XYIS\na=ice-pwd:kChnemS9jLaYj3oxE53rug", "kChnemS9jLaYj3oxE53rug"),
        ("İstanbul ünïcode password=pässwörd-ü", "pässwörd-ü"),
    ],
)
def test_redact_cuts_every_form(line: str, secret: str) -> None:
    from relay import logs

    assert secret not in logs.redact(line), logs.redact(line)
    if line.startswith(("/", "?")):
        assert secret not in logs.redact_url(line), logs.redact_url(line)


@pytest.mark.parametrize("line", [
    "session_ttl=43200 keyframe=1 monkey=3 bypass=1 camera_id=4",
    "camera 3 (gatherer 1) is offline: [Errno 111] Connection refused: 'rtsp://127.0.0.1:9/x'",
    "network_error_in_the_rk_module is a word, not a key",
    "/api/v1/access_token?cur=1&per=10",
])
def test_redact_leaves_what_is_not_secret(line: str) -> None:
    from relay import logs

    assert logs.redact(line) == line
    if line.startswith("/"):
        assert logs.redact_url(line) == line


def test_every_logger_and_every_traceback_goes_through_the_filter(tmp_path: Path) -> None:
    """setup_logging's filter sits on the root handler: library loggers, tracebacks, uncaught
    exceptions in threads and "Exception ignored" ones are redacted too."""
    import subprocess
    import sys

    script = (
        "import logging, threading\n"
        "from relay.logs import setup_logging\n"
        "setup_logging('debug')\n"
        "logging.getLogger('aiohttp.server').error('bad line %s', b'GET /x?token=LEAK1 HTTP/1.1')\n"
        "logging.getLogger('asyncio').debug('opening %r', {'push_id': 'LEAK2'})\n"
        "try:\n"
        "    raise ValueError('cannot open rtsp://u:LEAK3@10.0.0.1/x')\n"
        "except ValueError:\n"
        "    logging.getLogger('aioice.ice').exception('failed')\n"
        "def boom():\n"
        "    raise RuntimeError('ticket=LEAK4')\n"
        "t = threading.Thread(target=boom); t.start(); t.join()\n"
        "class Bad:\n"
        "    def __del__(self):\n"
        "        raise OSError('session=LEAK5')\n"
        "Bad()\n"
        "logging.getLogger('aiosqlite').debug(\"executing ('INSERT', ('LEAK6',))\")\n"
        "logging.getLogger('relay.x').info('camera %s', 'x\\n2099-01-01 00:00:00,000 INFO forged')\n"
        "logging.getLogger('relay.x').info('done')\n"
    )
    checkout = str(Path(__file__).resolve().parent.parent)  # the relay package under test
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": checkout})
    assert result.returncode == 0, result.stderr
    assert "LEAK" not in result.stderr, result.stderr
    for expected in ("bad line", "opening", "ValueError", "RuntimeError", "OSError", "done",
                     "token=***", "'push_id': '***'", "rtsp://***@10.0.0.1",
                     "camera x\\n2099-01-01 00:00:00,000 INFO forged"):
        assert expected in result.stderr, (expected, result.stderr)
    assert not any(line.startswith("2099") for line in result.stderr.splitlines())
