"""Logging: one line per event on stderr, with secrets (tokens, credentials, tickets, passwords)
cut out of every logged URL, whichever of the two URL forms carried them."""

from __future__ import annotations

import logging
import re

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

SECRET_KEYS = ("token", "unionid", "ticket", "device_pass", "password", "key")
_QUERY_SECRET = re.compile(r"(?<=[?&;])(" + "|".join(SECRET_KEYS) + r")=[^&;#]*", re.I)
_PATH_SECRET = re.compile(r"(?<=/)(" + "|".join(SECRET_KEYS) + r")/[^/?#]*", re.I)


def redact(url: str) -> str:
    path, sep, query = url.partition("?")
    path = _PATH_SECRET.sub(r"\1/***", path)
    if sep:
        query = _QUERY_SECRET.sub(r"\1=***", "&" + query)[1:]
    return path + sep + query


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):  # skip the redaction work too
            return
        self.logger.info(
            "%s %s %s %d %.1fms",
            request.remote,
            request.method,
            redact(request.raw_path),
            response.status,
            time * 1000,
        )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
