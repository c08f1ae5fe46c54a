"""Logging: one line per event on stderr, and no secret in any line.

Secrets are cut out twice. At the source, the access log and our own messages redact what they
log. As the last line of defence, :class:`RedactingFilter` sits on the root handlers and redacts
every record that reaches them, whichever library logged it (aiohttp, asyncio, aioice, aiortc,
PyAV through ``libav.*``), tracebacks included: a library that echoes a URL cannot leak it.

What is cut out (``***``), in URL query and ``/name/value`` path form, raw or percent-encoded, as
``name=value`` in plain text and ``"name": "value"`` in JSON or a Python repr:

* values of names that grant something: ``token``, ``ticket``, ``session``, ``push_id``,
  ``unionid``, ``credential``, ``password``/``pass``/``passwd``/``pwd``, ``secret``, ``key``,
  ``csrf``, ``auth``, ``cookie`` and anything ending in ``_<one of them>`` (``device_pass``,
  ``relay_session``, ``access_token``);
* the userinfo of any URL (``rtsp://user:pass@host`` → ``rtsp://***@host``), also percent-encoded
  inside another URL (``stream_url=rtsp%3A%2F%2Fadmin%3Apw%40…``);
* upload ids in ``/agent/uploads/<id>``;
* ``Authorization`` header values and ``Bearer`` credentials; agent keys (``rk_…``) anywhere;
  ICE passwords (``a=ice-pwd:``) of the SDPs aiortc logs.

aiosqlite's debug lines are not logged even at ``debug``: one per driver call, each with its SQL
parameters (a credential being written, say), which carry no name a filter could go by.

Over-redaction is preferred to a leak: a value runs to the next separator (whitespace, ``&``,
``#``, ``"``), so a password with a ``'`` or ``,`` in it is cut whole.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .forwarded import client_of

#: Names whose values grant something; a name may also carry a ``…_`` prefix (``device_pass``,
#: ``relay_session``, ``access_token``, ``agent_key``).
SECRET_NAMES = ("token", "ticket", "session", "sessionid", "push_id", "unionid", "credential",
                "password", "passwd", "pass", "pwd", "secret", "key", "csrf", "auth", "cookie",
                "authorization")
#: Names of the API's path form (``/token/T``): exact, since ``access_token`` is an endpoint.
#: ``uploads``: ``/agent/uploads/<upload id>`` (an upload id lets its holder write that upload).
PATH_NAMES = ("token", "ticket", "session", "push_id", "unionid", "credential", "password",
              "device_pass", "secret", "key", "csrf", "uploads")
_SECRET_SET = frozenset(SECRET_NAMES)
_PATH_SEGMENTS = tuple(f"/{name}/" for name in PATH_NAMES)


_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def _lower(text: str) -> str:
    """``text`` in lower case, each character where it was (``str.lower`` may lengthen non-ASCII)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _names(names: Iterable[str]) -> str:
    return "(?:" + "|".join(sorted(names, key=len, reverse=True)) + ")"


_ENC = "%(?:25)?"  # "%" or "%25": percent-encoded once or twice
#: & ? / and space, encoded once or twice: what may stand right before a name inside an encoded URL.
_ENCODED_SEPARATORS = ("%26", "%3f", "%2f", "%20", "%2526", "%253f", "%252f", "%2520")


@dataclass(frozen=True)
class _Rule:
    """A pattern run on the lower-cased line (its first characters are literals, so CPython's
    regex engine scans for them fast, which ``re.IGNORECASE`` would prevent); the span of its
    ``secret`` group is cut out of the line as it was. It runs only when one of its ``triggers``
    is in the line. ``standalone``: the match must not be the end of a longer word
    (``bypass=``), though it may end a ``…_`` name or follow an encoded separator."""

    triggers: tuple[str, ...]
    pattern: re.Pattern[str]
    standalone: bool = False


def _rule(triggers: tuple[str, ...], pattern: str, standalone: bool = False) -> _Rule:
    return _Rule(triggers, re.compile(pattern), standalone)


_RULES = (
    # name=value: a query, a form, a cookie, plain text; a raw value ends at a raw separator
    # ("%26" is part of it). name%3Dvalue inside an encoded URL also ends at an encoded "&".
    _rule(("=",), _names(SECRET_NAMES) + r"=(?P<secret>[^\s&#\"]*)", standalone=True),
    _rule(("%3d", "%253d"), _names(SECRET_NAMES) + rf"{_ENC}3d(?P<secret>(?:(?!{_ENC}26)[^\s&#\"])*)",
          standalone=True),
    # /name/value: the API's path form (a value's own "/" is "%2F"); %2Fname%2Fvalue encoded
    _rule(("/",), "/" + _names(PATH_NAMES) + r"/(?P<secret>[^\s/?#\"]*)"),
    _rule(("%2f", "%252f"), rf"{_ENC}2f{_names(PATH_NAMES)}{_ENC}2f"
                            rf"(?P<secret>(?:(?!{_ENC}(?:2f|3f|26|23))[^\s/?#&\"])*)"),
    # "name": "value", 'name': 'value': JSON, a dict's repr
    _rule(("\":", "':", "\" :", "' :"),
          rf"(['\"])(?:\w*_)?{_names(SECRET_NAMES)}\1\s*:\s*(['\"])(?P<secret>(?:\\.|(?!\2)[^\\])*)\2"),
    # scheme://userinfo@: to the last "@" before whitespace (a password may hold "@" or "/")
    _rule(("@",), r"://(?P<secret>\S*)@"),
    _rule(("%40", "%2540"), rf"{_ENC}3a{_ENC}2f{_ENC}2f(?P<secret>[^\s&#\"]*)(?:{_ENC}40|@)"),
    # Authorization: <anything>, Bearer <token>, agent keys, ICE passwords (aiortc logs SDPs)
    _rule(("authorization",), r"authorization['\"]?\s*[:=]\s*['\"]?(?P<secret>[^'\"\r\n]+)"),
    _rule(("bearer",), r"bearer\s+(?P<secret>[^\s'\",;]+)"),
    _rule(("rk_",), r"rk_(?P<secret>[a-z0-9_-]{16,})", standalone=True),
    _rule(("ice-pwd",), r"ice-pwd:(?P<secret>\S+)"),
)


def _starts_a_name(lowered: str, start: int) -> bool:
    before = lowered[max(0, start - 6):start]
    return not before or not before[-1].isalnum() or before.endswith(_ENCODED_SEPARATORS)


def _cut(rule: _Rule, text: str, lowered: str) -> str:
    pieces: list[str] = []
    last = 0
    for match in rule.pattern.finditer(lowered):
        if rule.standalone and not _starts_a_name(lowered, match.start()):
            continue
        start, end = match.span("secret")
        if end > start:
            pieces += (text[last:start], "***")
            last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def redact(text: str) -> str:
    """``text`` with every secret cut out (see the module docstring); URLs and free text alike."""
    lowered = _lower(text)
    for rule in _RULES:
        for trigger in rule.triggers:  # a loop, not any(): a generator costs more than the tests
            if trigger in lowered:
                cut = _cut(rule, text, lowered)
                if cut is not text:
                    text, lowered = cut, _lower(cut)
                break
    return text


def _is_secret_name(name: str) -> bool:
    name = name.lower()
    return name in _SECRET_SET or ("_" in name and (
        name.rpartition("_")[2] in _SECRET_SET or name.endswith("_push_id")))


def redact_url(target: str) -> str:
    """A request target redacted as :func:`redact` would, in a few microseconds: the access log
    redacts every request's URL, so its usual shape (a path, a query of ``name=value`` pairs) is
    taken apart with string methods; only a URL with a ``%``, an ``@`` or an agent key goes through
    the patterns as well."""
    path, sep, query = target.partition("?")
    lowered = path.lower()
    for segment in _PATH_SEGMENTS:
        if segment in lowered:
            path = redact(path)
            break
    if sep:
        parts = _QUERY_SEPARATORS.split(query)
        for index in range(0, len(parts), 2):
            name, eq, _ = parts[index].partition("=")
            if eq and _is_secret_name(name):
                parts[index] = name + "=***"
        query = "".join(parts)
    target = path + sep + query
    if "%" in target or "@" in target or "rk_" in target:
        target = redact(target)
    return target


_QUERY_SEPARATORS = re.compile(r"([&;])")


class Redacted(str):
    """A message redacted already (by the access log, or by the filter on another handler)."""

    __slots__ = ()


class RedactingFilter(logging.Filter):
    """Redacts a record's message, traceback and stack before any handler formats it, and keeps
    the message on one line (line breaks written as ``\\n``: a value a client sent cannot start a
    log line of its own; aiortc's multi-line SDP dumps become one line).

    The message is formatted here once and stored without arguments, so the formatter does not
    format it again; the traceback is formatted here too and kept in ``exc_text``, which the
    formatter uses as it is."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if type(record.msg) is not Redacted:
            message = redact(record.getMessage())
            if "\n" in message or "\r" in message:  # one line per event: no forged lines either
                message = message.replace("\r", "\\r").replace("\n", "\\n")
            record.msg, record.args = Redacted(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class AccessLogger(AbstractAccessLogger):
    """One line per request: address, method, the URL redacted, status, time."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):  # skip the redaction work too
            return
        self.logger.info(Redacted(  # so the filter need not scan it again
            f"{client_of(request) or request.remote} {request.method} "
            f"{redact_url(request.raw_path)} {response.status} {time * 1000:.1f}ms"))


def _log_uncaught(kind: str, exc_type: type[BaseException], exc: BaseException | None,
                  tb: Any) -> None:
    logging.getLogger("relay").critical("uncaught exception%s", kind, exc_info=(exc_type, exc, tb))


def setup_logging(level: str) -> None:
    """Log to stderr through the redacting filter; uncaught exceptions (main thread, other threads,
    "Exception ignored in" ones) are logged through it too instead of printed raw."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
        else:
            _log_uncaught("", exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            name = args.thread.name if args.thread else "?"
            _log_uncaught(f" in thread {name}", args.exc_type, args.exc_value, args.exc_traceback)

    def unraisable_hook(unraisable: Any) -> None:
        where = unraisable.err_msg or "Exception ignored in"
        logging.getLogger("relay").error(
            "%s: %r", where, unraisable.object,
            exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
