"""The agent protocol: message shapes, limits and codes shared by the relay and the agent.

Every message is one JSON object in a WebSocket text frame.

* agent → relay, first: ``{"type": "hello", "protocol": 1, "version", "mac_addr", "ip_addr",
  "name_pc", "os_name", "devices": [IP cameras from its config]}``; the key travels in the
  ``Authorization: Bearer`` header, so an unknown key is refused before the upgrade.
* relay → agent: ``{"type": "welcome", "gather_id", "state": desired state}``: the whole desired
  state (gatherer settings, cameras, courses), which the agent adopts in place of its own.
* relay → agent: ``{"type": "command", "id", "action", "data"}``; the agent answers
  ``{"type": "reply", "id", "err_code", "err_msg", "data"}`` once it has applied it. Commands carry
  whole objects, so applying one twice changes nothing.
* agent → relay: ``{"type": "status", "camera_id", "status": 0|1, "err_msg"}`` whenever a camera's
  source opens or fails, and for every camera after each welcome.
* agent → relay: ``{"type": "recording", "camera_id", "recording": 0|1, "spool_bytes",
  "upload_error", "record_error"}`` when a camera's recording starts or stops, and when its spool
  or an error changes (at most every few seconds); ``get_camera_status`` shows the last one.
* The welcome's state also names the zone course times are in (``zone``, ``utc_offset``).

Live video travels apart from commands, on its own WebSocket per push:

* relay → agent command ``live.start`` ``{"camera_id", "push_id", "media_url"}``: start pushing that
  camera. The agent opens ``GET <media_url>?camera_id=N&push_id=P`` (same ``Authorization`` header)
  and answers the command once that socket is open. ``media_url`` (``ws(s)://…/agent/media``, sent
  when the relay has a ``node_url``) names the node that owns the camera's live state, which need
  not be the one the link reached; without it the agent opens ``/agent/media`` beside its link.
  Starting a push that already runs with the same push_id changes nothing; a new push_id replaces
  the old push.
* ``live.stop`` ``{"camera_id", "push_id"}``: stop that push, only if ``push_id`` is the one running
  (so a late stop never ends a newer start). ``live.keyframe`` ``{"camera_id"}``: send an IDR soon
  (an agent that passes the source through cannot force one and answers OK all the same).
* Media frames (agent → relay, binary): ``MEDIA_HEADER`` (flags byte, bit 0 = keyframe; then the
  presentation time in 90 kHz units, unsigned 64-bit big-endian) followed by one H.264 access unit
  in Annex-B form (start codes; SPS and PPS in front of every IDR), constrained baseline, no
  B-frames. The first frame of a push is a keyframe: the agent first sends the frames of the
  current GOP it holds (from its last IDR), then live ones.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Any
from urllib.parse import urlsplit

PROTOCOL = 1
MAX_MESSAGE = 256 * 1024
HELLO_TIMEOUT = 10.0
#: The agent's WebSocket ping interval (the relay's is the ``agent_heartbeat`` setting, also 20 s); a
#: link whose pong is missing for half of it more is dropped, so a silent link goes within 30 s.
HEARTBEAT = 20.0
#: Messages per second an agent may send on average, and in a burst, before it is cut off.
RATE, BURST = 200.0, 1000.0
MAX_DEVICES = 256
#: Cameras a link may report recordings of (a gatherer has far fewer).
MAX_CAMERAS = 10_000

# Actions the relay sends.
GATHER_MOD = "gather.mod"
CAMERA_ADD = "camera.add"
CAMERA_MOD = "camera.mod"
CAMERA_DEL = "camera.del"
CAMERA_START = "camera.start"
CAMERA_STOP = "camera.stop"
COURSES_SET = "courses.set"
LIVE_START = "live.start"
LIVE_STOP = "live.stop"
LIVE_KEYFRAME = "live.keyframe"
ACTIONS = (GATHER_MOD, CAMERA_ADD, CAMERA_MOD, CAMERA_DEL, CAMERA_START, CAMERA_STOP, COURSES_SET,
           LIVE_START, LIVE_STOP, LIVE_KEYFRAME)

#: A media frame's header: flags (bit 0 keyframe), 90 kHz pts.
MEDIA_HEADER = struct.Struct(">BQ")
KEYFRAME = 0x01
MAX_MEDIA_FRAME = 4 * 1024 * 1024
MEDIA_CLOCK = 90_000

#: The close code of a link refused as that gatherer (another key owns it, or the key is full).
REFUSED_GATHERER = 4004

# Codes an agent answers with (the relay's own transmit codes are in relay.hub).
OK = 0
UNKNOWN_CAMERA = 20001
BAD_COMMAND = 20002
SOURCE_DOWN = 20003  # live.start for a camera whose source is not open (stopped or failing)

GATHER_FIELDS = (
    "name_set", "main_rate", "sub_rate", "auto_dvr", "auto_fds", "slice_val", "inter_val",
    "snap_val",
)  # fmt: skip
CAMERA_FIELDS = (
    "camera_id", "camera_name", "stream_prop", "stream_url", "stream_mp4", "device_ip",
    "device_user", "device_pass", "device_cmd_port", "device_mirror", "device_osd",
    "device_twice", "device_show", "started",
)  # fmt: skip
COURSE_FIELDS = ("course_id", "week_id", "start_sec", "elapse_sec", "repeat_id")


def gather_settings(row: dict[str, Any]) -> dict[str, Any]:
    return {"gather_id": row["gather_id"], **{key: row[key] for key in GATHER_FIELDS}}


def camera_state(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in CAMERA_FIELDS}


def course_list(camera_id: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"camera_id": camera_id, "courses": [{k: r[k] for k in COURSE_FIELDS} for r in rows]}


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # two letters or more: "C:" is a drive
_ABSOLUTE = re.compile(r"/(?!/)|[A-Za-z]:[\\/]")


def is_file_path(value: str) -> bool:
    """A mode-1 ``stream_mp4``: an absolute path on the gatherer (``/videos/a.mp4``,
    ``D:\\videos\\a.mp4``), never a URL or an FFmpeg protocol (``http:``, ``concat:``, ``file:``)
    nor a network share (``//host/x``, ``\\\\host\\x``): the agent would fetch whatever it names."""
    return (bool(_ABSOLUTE.match(value)) and not _URL_SCHEME.match(value)
            and not any(ord(ch) < 32 for ch in value))


MAX_URL = 1024


def media_url_of(base_url: str) -> str:
    """The ``media_url`` of a relay reached at ``base_url`` (``http(s)://…``)."""
    scheme, _, rest = base_url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}/agent/media"


def checked_media_url(value: Any) -> str:
    """A ``live.start``'s ``media_url`` the agent may send its key to: ``ws(s)://host…``, without
    userinfo, query, fragment or control characters (``ValueError`` otherwise)."""
    if not isinstance(value, str) or len(value) > MAX_URL or any(ord(ch) < 33 for ch in value):
        raise ValueError("media_url must be a short ws(s):// URL")
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or "@" in parts.netloc \
            or parts.query or parts.fragment:
        raise ValueError("media_url must be a ws(s)://host/... URL")
    return value


def push_label(push_id: str) -> str:
    """How logs name a push: a digest of its id, the same on both sides, which grants nothing
    (the push id itself lets whoever holds it publish or stop that camera's video)."""
    return hashlib.sha256(push_id.encode()).hexdigest()[:8]


def answer(err_code: int = OK, err_msg: str = "OK", **data: Any) -> dict[str, Any]:
    return {"err_code": err_code, "err_msg": err_msg, **data}


def desired_state(raw: dict[str, Any], zone: str = "", utc_offset: int = 0) -> dict[str, Any]:
    """The catalogue's desired state of one gatherer, as the welcome carries it, with the zone the
    relay's wall-clock times (course windows) are in: an IANA name, or "" and the UTC offset."""
    by_camera: dict[int, list[dict[str, Any]]] = {row["camera_id"]: [] for row in raw["cameras"]}
    for row in raw["courses"]:
        by_camera.setdefault(row["camera_id"], []).append(row)
    return {
        "gather": gather_settings(raw["gatherer"]),
        "cameras": [camera_state(row) for row in raw["cameras"]],
        "courses": [course_list(camera_id, rows) for camera_id, rows in by_camera.items()],
        "zone": zone,
        "utc_offset": utc_offset,
    }
