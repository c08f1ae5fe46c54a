"""HTTP connections: a deadline for each request head, and parser errors answered in JSON.

aiohttp has no header-read timeout: a client that opens connections and trickles a request head a
byte at a time (slowloris) holds each one as long as it likes. :class:`GuardedHandler`, aiohttp's
connection handler with two additions, gives every request head ``header_timeout`` seconds:

* from the moment the connection opens (a connection that never sends a head is closed), and
  again from the first byte of each later head on a kept-alive connection (the idle time between
  requests stays with aiohttp's ``keepalive_timeout``);
* never after a head is complete: a slow request body, a long response and a WebSocket are not
  timed. A head that timed out after some of it arrived is answered 408; a connection that sent
  nothing is just closed.

aiohttp answers a request it cannot parse with a text/plain 400 that echoes the offending bytes,
and logs them at ERROR with a traceback: a token in an over-long URL ends up in the answer and the
log. Here such a request gets a JSON ``{"err_code", "err_msg"}`` that echoes nothing: 414 for a
request line over ``max_line_size`` (8190 bytes), 431 for a header field over ``max_field_size``
or too many headers, 400 for anything else (a raw space in the query, a bad header...), and one
INFO line naming the client and the reason, without the request (it replaces the access log
line, which would read ``UNKNOWN /``).

This leans on ``RequestHandler`` internals (``_request_count``, ``_messages``, ``_upgraded``,
``_payload_parser``, tested with aiohttp 3.14); tests/test_http_hygiene.py checks every behaviour
above against a real ``relay serve``, so an aiohttp change that breaks it fails there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .logs import redact

log = logging.getLogger(__name__)

#: Longest method name llhttp knows, plus its space: where a request line's URL starts at latest.
_METHOD_ROOM = 32


def _answer(status: int, reason: str) -> bytes:
    return json.dumps({"err_code": status, "err_msg": reason}).encode()


def _reason_of(exc: HttpProcessingError) -> str:
    """What the parser objected to, without the bytes it quotes (they may carry a token)."""
    for line in exc.message.splitlines():
        line = line.strip()
        if not line or line == "Bad status line:" or line[0] in "'\"^" or \
                line.startswith(("b'", 'b"', "bytearray(")):
            continue
        for quote in (": b'", ": '", ': "', ": bytearray("):
            line = line.split(quote, 1)[0]
        return redact(line.rstrip(":. "))[:100] or "bad request"
    return "bad request"


def _is_request_line(exc: LineTooLong, data: bytes, pending: int, limit: int) -> bool:
    """Whether the line that was too long is the request line (414) rather than a header (431).

    It is when the head's request line had not ended before the limit, counting the bytes of the
    head that came in earlier chunks; or when the start of the offending bytes, which aiohttp
    quotes, follows a method in this chunk (a head pipelined behind another request)."""
    room = max(0, limit + _METHOD_ROOM - max(pending, 0))
    if pending >= 0 and b"\n" not in data[:room]:
        return True
    quoted = exc.args[0] if exc.args and isinstance(exc.args[0], (bytes, bytearray)) else b""
    start = bytes(quoted).removesuffix(b"...")[:40]
    return bool(start) and re.search(rb"(?:^|\n)[A-Z]{3,12} " + re.escape(start), data) is not None


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler with a request-head deadline and JSON parser errors."""

    __slots__ = ("_head_deadline", "_head_timer", "_last_body", "_line_pending", "_refusal",
                 "_url_too_long")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_deadline = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_body: Any = None  # the payload of the last complete head: a body may follow
        # Bytes of the head in progress seen without a line end, or -1 once its request line ended.
        self._line_pending = 0
        self._url_too_long = False
        self._refusal: web.StreamResponse | None = None  # the answer to a request not parsed

    # The head deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._payload_parser is not None:  # a WebSocket: not a head
            super().data_received(data)
            return
        count, pending = self._request_count, self._line_pending
        super().data_received(data)
        if self._request_count != count:  # a head is complete (or refused)
            self._stop_head_timer()
            self._line_pending = 0
            if self._messages:
                message, self._last_body = self._messages[-1]
                exc = getattr(message, "exc", None)
                if isinstance(exc, LineTooLong):
                    self._url_too_long = _is_request_line(exc, data, pending, self.max_line_size)
            return
        if self._last_body is not None:
            if not self._last_body.is_eof():
                return  # a request body, not a head
            self._last_body = None
        if self._head_timer is None:
            self._start_head_timer()  # the first bytes of a head on a kept-alive connection
        if self._line_pending >= 0:
            self._line_pending = -1 if b"\n" in data else self._line_pending + len(data)

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._head_deadline, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close:
            return
        started = self._line_pending != 0
        log.debug("closing a connection from %s: no complete request head within %g s%s",
                  self._peer(), self._head_deadline, "" if started else " (it sent nothing)")
        if self._request_in_progress:  # a pipelined head behind a running request: end after it
            self.close()
            return
        if started:
            body = _answer(408, "request head not complete in time")
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.force_close()

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # Parser errors

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong) and self._url_too_long:
            status, reason = 414, f"request line longer than {self.max_line_size} bytes"
        elif isinstance(exc, LineTooLong):
            status, reason = 431, f"header field longer than {self.max_field_size} bytes"
        elif "Too many headers" in exc.message:
            status, reason = 431, f"more than {self.max_headers} header fields"
        else:
            status, reason = 400, _reason_of(exc)
        log.info("refused a request from %s: %s (%d)", request.remote, reason, status)
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already under way")
        answer = web.Response(body=_answer(status, reason), status=status,
                              content_type="application/json")
        answer.force_close()
        self._refusal = answer
        return answer

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        if response is not self._refusal:  # a refusal has its line already, with the reason
            super().log_access(request, response, time)


class GuardedServer(web.Server):
    """aiohttp's low-level server, making :class:`GuardedHandler` connections."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, header_timeout=self.header_timeout,
                              **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are :class:`GuardedHandler` ones."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs on_startup, freezes the app
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=asyncio.get_running_loop(), header_timeout=self._header_timeout,
                             **plain._kwargs)
