"""Reading a call's parameters from either URL form, and checking each one strictly.

``/api/v1/<name>?k1=v1&k2=v2`` and ``/api/v1/<name>/k1/v1/k2/v2`` are equivalent; the path form is
split on the raw (still percent-encoded) path so an encoded ``/`` inside a value stays in that value.
A key given twice, a key the endpoint does not take, or a malformed path is refused with 1009.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

from ..ids import MAX_ID
from .errors import ApiError, Code

MAX_PER_PAGE = 100
MAX_IDS = 1000
_DIGITS = re.compile(r"[0-9]{1,16}")  # bounded before int(); MAX_ID (2**31-1) has 10 digits
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Params:
    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    @classmethod
    def parse(cls, query_string: str, path_tail: str) -> Params:
        pairs: list[tuple[str, str]] = []
        if query_string and "%" not in query_string and "+" not in query_string:
            # Nothing to decode (the usual case): what parse_qsl would do, without its cost.
            for field in query_string.split("&"):
                key, sep, value = field.partition("=")
                if not sep:
                    raise ApiError(Code.BAD_PARAM, "query")
                pairs.append((key, value))
        else:
            try:
                pairs.extend(
                    parse_qsl(query_string, keep_blank_values=True,
                              strict_parsing=bool(query_string), errors="strict")
                )
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(Code.BAD_PARAM, "query") from exc
        if path_tail:
            segments = path_tail.strip("/").split("/")
            if len(segments) % 2 or any(not segment for segment in segments[::2]):
                raise ApiError(Code.BAD_PARAM, "path")
            try:
                decoded = [unquote(segment, errors="strict") for segment in segments]
            except UnicodeDecodeError as exc:
                raise ApiError(Code.BAD_PARAM, "path") from exc
            pairs.extend(zip(decoded[::2], decoded[1::2], strict=True))
        values: dict[str, str] = {}
        for key, value in pairs:
            if key in values:
                raise ApiError(Code.BAD_PARAM, key)
            values[key] = value
        return cls(values)

    def keys(self) -> set[str]:
        return set(self._values)

    def allow_only(self, allowed: set[str]) -> None:
        for key in sorted(self._values):
            if key not in allowed:
                raise ApiError(Code.BAD_PARAM, key[:64])

    def raw(self, name: str) -> str | None:
        """The value as given; an empty value counts as absent."""
        value = self._values.get(name)
        return value if value else None

    def text(self, name: str, max_len: int, missing: Code | None = None) -> str | None:
        """A free-text value, without control characters; ``missing`` is raised when absent."""
        value = self.raw(name)
        if value is None:
            if missing is not None:
                raise ApiError(missing, name)
            return None
        value = value.strip()
        if not value:
            if missing is not None:
                raise ApiError(missing, name)
            return None
        if len(value) > max_len or _CONTROL.search(value):
            raise ApiError(Code.BAD_PARAM, name)
        return value

    def integer(self, name: str, low: int, high: int, code: Code = Code.BAD_PARAM) -> int | None:
        """A whole number in [low, high], or None when absent; ``code`` when malformed."""
        value = self.raw(name)
        if value is None:
            return None
        if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
            raise ApiError(code, name)
        return int(value)

    def flag(self, name: str) -> int | None:
        return self.integer(name, 0, 1)

    def ident(self, name: str) -> int:
        """A required positive id: 1010 when missing or not a positive whole number."""
        value = self.integer(name, 1, MAX_ID, code=Code.NO_ID)
        if value is None:
            raise ApiError(Code.NO_ID, name)
        return value

    def ident_list(self, name: str) -> list[int]:
        """A required comma list of positive ids, each once (``1,2,3``)."""
        value = self.raw(name)
        if value is None:
            raise ApiError(Code.NO_ID, name)
        parts = value.split(",")
        if len(parts) > MAX_IDS or not all(
            _DIGITS.fullmatch(part) and 0 < int(part) <= MAX_ID for part in parts
        ):
            raise ApiError(Code.NO_ID, name)
        return list(dict.fromkeys(int(part) for part in parts))

    def paging(self) -> tuple[int, int]:
        """``cur`` (default 1) and ``per`` (default 10, at most ``MAX_PER_PAGE``)."""
        cur = self.integer("cur", 1, 10**9) or 1
        per = self.integer("per", 1, 10**9) or 10
        return cur, min(per, MAX_PER_PAGE)
