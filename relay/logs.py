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
* ``Authorization`` header values and ``Bearer`` credentials; agent keys (``rk_…``) anywhere.

Over-redaction is preferred to a leak: a value runs to the next separator (whitespace, ``&``,
``#``, ``"``), so a password with a ``'`` or ``,`` in it is cut whole.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

#: Names whose values grant something. ``session`` also covers ``relay_session`` (the /admin
#: cookie), ``key`` covers ``agent_key``; a name may carry a ``…_`` prefix.
SECRET_NAMES = ("token", "ticket", "session", "sessionid", "push_id", "unionid", "credential",
                "password", "passwd", "pass", "pwd", "secret", "key", "csrf", "auth", "cookie",
                "authorization")
#: Names of the API's path form (``/token/T``): exact, since ``access_token`` is an endpoint.
PATH_NAMES = ("token", "ticket", "session", "push_id", "unionid", "credential", "password",
              "device_pass", "secret", "key", "csrf")
_NAME = r"(?:[a-z0-9]+_)*(?:" + "|".join(sorted(SECRET_NAMES, key=len, reverse=True)) + r")"
_ENC = r"%(?:25)?"  # "%" or "%25": percent-encoded once or twice


def _after(*separators: str) -> str:
    """Lookbehinds for each separator raw or percent-encoded once or twice (each fixed-width)."""
    forms = [form for sep in separators
             for form in ((f"%{sep}", f"%25{sep}") if sep[0].isdigit() else (re.escape(sep),))]
    return "(?:" + "|".join(f"(?<={form})" for form in forms) + ")"


# A name starts a word, or follows an encoded separator (%3F ?, %26 &, %2F /, %20 space).
_START = r"(?:(?<![a-z0-9_])|" + _after("3F", "26", "2F", "20") + ")"

_RAW_VALUE = r"[^\s&#\"]*"  # a raw query value ends at a raw separator; "%26" is part of it
_ENC_VALUE = rf"(?:(?!{_ENC}26)[^\s&#\"])*"  # inside an encoded query, "%26" ends it too
_PATH_NAME = "(?:" + "|".join(sorted(PATH_NAMES, key=len, reverse=True)) + ")"

#: (triggers, pattern, replacement): a pattern runs only when one of its (lower-case) triggers
#: is in the line, so a line without "=", "/", "@"... costs a few substring tests.
_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    # name=value: a query, a form, a cookie, plain text; name%3Dvalue: inside an encoded URL
    (("=",), re.compile(_START + rf"({_NAME}=){_RAW_VALUE}", re.I), r"\1***"),
    (("%3d", "%253d"), re.compile(_START + rf"({_NAME}{_ENC}3D){_ENC_VALUE}", re.I), r"\1***"),
    # /name/value: the API's path form (a value's own "/" is "%2F"); %2Fname%2Fvalue encoded
    (("/",), re.compile(rf"(?<=/)({_PATH_NAME}/)[^\s/?#\"]*", re.I), r"\1***"),
    (("%2f", "%252f"), re.compile(_after("2F") + rf"({_PATH_NAME}{_ENC}2F)"
                                  rf"(?:(?!{_ENC}(?:2F|3F|26|23))[^\s/?#&\"])*", re.I), r"\1***"),
    # "name": "value", 'name': 'value': JSON, a dict's repr
    (("\":", "':", "\" :", "' :"),
     re.compile(rf"(['\"])({_NAME})\1(\s*:\s*)(['\"])(?:\\.|(?!\4)[^\\])*\4", re.I),
     r"\1\2\1\3\4***\4"),
    # scheme://userinfo@: to the last "@" before whitespace (a password may hold "@" or "/")
    (("@",), re.compile(r"(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)\S*@", re.I), r"\1***@"),
    (("%40", "%2540"), re.compile(rf"({_ENC}3A{_ENC}2F{_ENC}2F)[^\s&#\"]*(?:{_ENC}40|@)", re.I),
     r"\1***%40"),
    # Authorization: <anything>, Bearer <token>, agent keys
    (("authorization",), re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n]+", re.I),
     r"\1***"),
    (("bearer",), re.compile(r"\b(bearer)\s+[^\s'\",;]+", re.I), r"\1 ***"),
    (("rk_",), re.compile(r"\brk_[A-Za-z0-9_-]+"), "rk_***"),
)


def redact(text: str) -> str:
    """``text`` with every secret cut out (see the module docstring); URLs and free text alike."""
    lowered = text.lower()
    for triggers, pattern, replacement in _RULES:
        for trigger in triggers:
            if trigger in lowered:
                text = pattern.sub(replacement, text)
                break
    return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message, traceback and stack before any handler formats it.

    The message is formatted here once and stored without arguments, so the formatter does not
    format it again; the traceback is formatted here too and kept in ``exc_text``, which the
    formatter uses as it is."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "redacted", False):
            message = record.getMessage()
            record.msg, record.args = redact(message), None
            record.redacted = True
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
        line = (f"{request.remote} {request.method} {redact(request.raw_path)} {response.status} "
                f"{time * 1000:.1f}ms")
        self.logger.info(line, extra={"redacted": True})  # the filter need not scan it again


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
