"""What an agent declares when it starts an upload (docs/RECORDING.md, "The upload protocol"),
checked field by field, and the refusals every upload request may answer with."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from typing import Any

MIB = 1 << 20
#: A poster's most (decoded). A PUT may carry the whole rest of its upload (what reached the disk
#: when it is cut short counts): one request, as ``curl -T`` sends a file.
MAX_POSTER = MIB
#: A declaration's most: a base64 poster and the fields.
MAX_DECLARATION = MAX_POSTER * 4 // 3 + 64 * 1024

UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
SHA256 = re.compile(r"[0-9a-f]{64}")
KINDS = {"record": ("records", "mp4"), "snapshot": ("snapshots", "jpg")}


def upload_label(upload_id: str) -> str:
    """How logs name an upload: a digest of its id (the id itself lets its holder write)."""
    return hashlib.sha256(upload_id.encode()).hexdigest()[:8]


class Refusal(Exception):
    """An answer other than 200: ``status``, ``message``, extra fields, a metrics reason."""

    def __init__(self, status: int, message: str, reason: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.extra = status, message, reason, extra


def _number(body: dict[str, Any], name: str, low: float, high: float, integer: bool) -> Any:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or \
            not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise Refusal(400, f"{name} must be {kind} from {low:g} to {high:g}", "malformed")
    return value


def parse_declaration(body: Any) -> dict[str, Any]:
    """The manifest fields of a declaration, checked (``Refusal`` 400 names the first bad one)."""
    if not isinstance(body, dict):
        raise Refusal(400, "the body must be a JSON object", "malformed")
    upload_id = body.get("upload_id")
    if not isinstance(upload_id, str) or not UPLOAD_ID.fullmatch(upload_id):
        raise Refusal(400, "upload_id must be 32 lowercase hex characters", "malformed")
    kind = body.get("kind")
    if kind not in KINDS:
        raise Refusal(400, "kind must be 'record' or 'snapshot'", "malformed")
    sha256 = body.get("sha256")
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256.lower()):
        raise Refusal(400, "sha256 must be 64 hex characters", "malformed")
    fields = {
        "upload_id": upload_id,
        "kind": kind,
        "camera_id": _number(body, "camera_id", 1, 2**31 - 1, True),
        "size": _number(body, "size", 1, 2**50, True),
        "sha256": sha256.lower(),
        "start_time": _number(body, "start_time", 0, 2**40, False),
        "end_time": _number(body, "end_time", 0, 2**40, False),
        "duration": _number(body, "duration", 0, 7 * 86400, False),
        "width": _number(body, "width", 0, 65535, True),
        "height": _number(body, "height", 0, 65535, True),
    }
    if fields["end_time"] < fields["start_time"]:
        raise Refusal(400, "end_time must not be before start_time", "malformed")
    poster = body.get("poster", "")
    if not isinstance(poster, str) or (poster and kind != "record"):
        raise Refusal(400, "poster must be a base64 string, for a record only", "malformed")
    try:
        fields["poster"] = base64.b64decode(poster, validate=True) if poster else b""
    except (binascii.Error, ValueError):
        raise Refusal(400, "poster is not valid base64", "malformed") from None
    if len(fields["poster"]) > MAX_POSTER:
        raise Refusal(400, f"poster over {MAX_POSTER} bytes", "malformed")
    return fields
