"""The OpenAPI 3.1 document of API v1 and the API reference (docs/API.md), from one set of tables.

The endpoint table (``registry.ENDPOINTS``) says which keys each endpoint takes; this module says
what each key means (``PARAMETERS``, one entry per parameter name, with ``OVERRIDES`` where one
endpoint reads a name differently), which are required and what each endpoint answers
(``OPERATIONS``). A unit test checks that every key of every endpoint is described here, so the
document cannot drift from the table, and that docs/API.md is what ``reference_markdown`` renders.

Decisions: the token is documented as an ``apiKey`` security scheme in the query (``token``), not as
a parameter of every operation, so tools offer it once. Every API answer is HTTP 200 (the
customer's specification), so a refusal is a second shape of the 200 body (``err_code`` ≠ 0,
limited to the codes that endpoint can answer) rather than a 4xx. The path form cannot be expressed
in OpenAPI (its keys are data); it is explained in the description and exercised by the tests.
``servers`` names the relay's public URL, so a client generated from the document calls the relay
it was read from.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from .. import __version__
from ..hub import FAILED, OFFLINE, TIMEOUT, TRANSMIT_MESSAGES
from ..ids import MAX_ID
from ..link import protocol
from .errors import MESSAGES, Code
from .params import MAX_IDS, MAX_PER_PAGE
from .registry import ENDPOINTS

OPENAPI_PATH = "/api/v1/openapi.json"
#: The command that writes docs/API.md.
REGENERATE = ("`.venv/bin/python -c 'from relay.api.openapi import reference_markdown as r; "
              "print(r(), end=\"\")' > docs/API.md`")
API_PREFIX = "/api/v1/"


@dataclass(frozen=True)
class Param:
    """One parameter: its JSON schema, what it means, and how the reference shows its type."""

    schema: dict[str, Any]
    meaning: str
    shape: str = ""  # the type and range as the reference shows it; derived from schema when empty
    default: str = ""  # what an absent value means, when that is not "nothing"


def _integer(low: int, high: int, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, **extra}


#: Text the relay stores: no control characters (1009), as ``Params.text`` checks.
_PRINTABLE = "^[^\\u0000-\\u001f\\u007f]*$"

#: Controls and every character ``str.isspace`` calls a space (an explicit class: ``\s`` differs
#: between regex engines).
_SPACE = ("\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f"
          "\\u205f\\u3000\\ufeff")

#: An absolute path, POSIX (not ``//``: a network share) or with a drive letter, as
#: ``protocol.is_file_path`` accepts it.
_FILE_PATH = "^(?:/[^/\\u0000-\\u001f\\u007f]|[A-Za-z]:[\\\\/])[^\\u0000-\\u001f\\u007f]*$"

_MP4_RULE = ("the full path of an MP4 file on the gatherer's disk, absolute (`/videos/a.mp4`, "
             "`D:\\videos\\a.mp4`). A URL, an FFmpeg protocol (`http:`, `concat:`) or a network "
             "share (`//host/x`) is 1009: the agent would fetch whatever it names.")


def _text(max_len: int, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": _PRINTABLE, **extra}


_ID = _integer(1, MAX_ID)
_ID_LIST = {"type": "array", "items": _ID, "minItems": 1, "maxItems": MAX_IDS}
_FLAG = {"type": "integer", "enum": [0, 1]}
_TEXT_NOTE = "surrounding spaces are trimmed; control characters are refused (1009)"
_START_TIME = (
    r"^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}[ T])?(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"
)
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


#: Every parameter name of API v1, once. ``token`` is the security scheme's description.
PARAMETERS: dict[str, Param] = {
    "token": Param(
        {"type": "string", "minLength": 1},
        "The access token (访问凭证) that `access_token` issued. Every call except `version` and "
        "`access_token` needs it, in either URL form.",
        shape="string",
    ),
    "unionid": Param(
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{32}$"},
        "The API credential (API 凭证) an administrator sees in `/admin` (or `relay user "
        "credential NAME` prints).",
        shape="32 characters `A-Z a-z 0-9 _ -`",
    ),
    "cur": Param(_integer(1, 10**9, default=1), "Page number, from 1. A page past the end is empty.",
                 default="1"),
    "per": Param(
        _integer(1, 10**9, default=10),
        f"Rows per page. Above {MAX_PER_PAGE} it is answered as {MAX_PER_PAGE} (`per_page` says so).",
        default="10",
    ),
    "gather_id": Param(_ID, "A gatherer, by the `gather_id` of `list_gather`."),
    "name_set": Param(_text(128), f"The gatherer's display name (采集端名称); {_TEXT_NOTE}."),
    "main_rate": Param(_integer(1, 100_000), "Main stream bitrate (recording), Kbps (主码流)."),
    "sub_rate": Param(_integer(1, 100_000), "Sub stream bitrate (live), Kbps (子码流)."),
    "auto_dvr": Param(_FLAG, "1: the agent reopens a failed camera source by itself (自动重连通道)."),
    "auto_fds": Param(_FLAG, "1: reconnect to the storage server by itself (自动重连存储服务器)."),
    "slice_val": Param(_integer(0, 30), "Recording slice length in minutes; 0 = no slicing."),
    "inter_val": Param(_integer(0, 3), "Keyframes by which recording slices overlap; 0 = none."),
    "snap_val": Param(_integer(1, 1440), "Minutes between camera snapshots (new gatherers: 2)."),
    "camera_id": Param(_ID, "A camera (通道), by the `camera_id` of `list_camera`. There is no `id` "
                            "parameter."),
    "camera_name": Param(_text(128), f"The camera's (class's) name, 通道名称 (班级); {_TEXT_NOTE}."),
    "stream_prop": Param(
        {"type": "integer", "enum": [0, 1, 2]},
        "Source mode: 0 IP camera (device_*), 1 MP4 file on the gatherer (`stream_mp4`), "
        "2 stream forward (`stream_url`). The source field of the new mode must be set (1008).",
    ),
    "stream_url": Param(
        _text(1024, pattern=f"^[Rr][Tt][MmSs][Pp]://[^{_SPACE}]+$"),
        "Mode 2: the `rtsp://` or `rtmp://` URL to forward (no spaces); another scheme is 1009.",
        shape="`rtsp://…` or `rtmp://…`, ≤ 1024 chars",
    ),
    "stream_mp4": Param(
        _text(1024, pattern=_FILE_PATH),
        f"Mode 1: {_MP4_RULE}",
        shape="absolute path, ≤ 1024 chars",
    ),
    "device_ip": Param(
        {"type": "string", "pattern": "^[A-Za-z0-9.:\\[\\]-]{1,255}$"},
        "Mode 0: the IP camera's address (host name, IPv4 or IPv6).",
        shape="host name or IP, ≤ 255 chars",
    ),
    "device_user": Param(_text(128), "Mode 0: the IP camera's user name."),
    "device_pass": Param(
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _BASE64},
        "Mode 0: the IP camera's password, **base64** (设备密码(base64 编码)); not base64 is 1009. "
        "In the query form send `+` as `%2B` (a bare `+` is a space).",
        shape="base64, ≤ 255 chars",
    ),
    "device_cmd_port": Param(_integer(1, 65535), "Mode 0: the camera's command port (new: 8000)."),
    "device_mirror": Param(_FLAG, "Mode 0: mirror the picture (new cameras: 0)."),
    "device_osd": Param(_FLAG, "Mode 0: on-screen display (new cameras: 0)."),
    "device_twice": Param(_FLAG, "Mode 0: dual-stream mode (new cameras: 0)."),
    "device_show": Param(_FLAG, "Mode 0: picture preview (new cameras: 1)."),
    "course_id": Param(_ID, "A recording course (录像任务), by the `course_id` of `list_course`."),
    "week_id": Param(_integer(0, 6), "Weekday: 0 Sunday, 1 Monday … 6 Saturday; else 1011."),
    "elapse_sec": Param(
        _integer(1, 10**9),
        "Duration in seconds; the course must end by 23:59:59 (else 1013). One of `elapse_sec` "
        "or `elapsed_sec` is required (1011 without); given both, they must agree (1009).",
    ),
    "elapsed_sec": Param(_integer(1, 10**9),
                         "The spelling of §3.15 for `elapse_sec`; accepted the same way."),
    "start_time": Param(
        {"type": "string", "pattern": _START_TIME},
        "Start, time of day 00:00:00–23:59:59; a leading `YYYY-MM-DD ` is accepted and ignored "
        "(only the time of day matters). Malformed: 1011.",
        shape="`HH:MM:SS`",
    ),
    "record_id": Param(_ID, "A recording, by the `record_id` of `list_record`."),
    "width": Param(_integer(1, 10_000, default=850), "Player width in pixels.", default="850"),
    "height": Param(_integer(1, 10_000, default=550), "Player height in pixels.", default="550"),
}

_LIST_NOTE = (f"A comma list (`1,2,3`, at most {MAX_IDS}) is all-or-nothing: an unknown id refuses "
              "the whole call (1010). A repeated id counts once.")

#: Where one endpoint reads a parameter differently from ``PARAMETERS``.
OVERRIDES: dict[tuple[str, str], Param] = {
    ("del_camera", "camera_id"): Param(_ID_LIST, f"The cameras to delete. {_LIST_NOTE}",
                                       shape="comma list of ids"),
    ("del_record", "record_id"): Param(_ID_LIST, f"The recordings to delete. {_LIST_NOTE}",
                                       shape="comma list of ids"),
    ("del_course", "course_id"): Param(_ID_LIST, f"The courses to delete. {_LIST_NOTE}",
                                       shape="comma list of ids"),
    ("add_camera", "stream_prop"): Param(
        {"type": "integer", "enum": [1, 2]},
        "Source mode: 1 MP4 file on the gatherer (`stream_mp4` required), 2 stream forward "
        "(`stream_url` required). Mode 0 cameras come from the agent's registration. Missing or "
        "another value: 1009.",
    ),
    ("add_camera", "stream_url"): Param(
        PARAMETERS["stream_url"].schema,
        "Required when `stream_prop` is 2 (1008 without): the `rtsp://` or `rtmp://` URL.",
        shape=PARAMETERS["stream_url"].shape,
    ),
    ("add_camera", "stream_mp4"): Param(
        PARAMETERS["stream_mp4"].schema,
        f"Required when `stream_prop` is 1 (1008 without): {_MP4_RULE}",
        shape=PARAMETERS["stream_mp4"].shape,
    ),
    ("add_camera", "gather_id"): Param(_ID, "The gatherer the camera belongs to (1010 if none)."),
    ("list_course", "camera_id"): Param(_ID, "The camera whose courses are listed."),
    ("list_record", "camera_id"): Param(
        _ID, "Only this camera's recordings (our extension; absent: every camera's). One that "
             "names no camera, or is not an id, is 1010."),
    ("add_course", "camera_id"): Param(_ID, "The camera the course records."),
    ("mod_course", "camera_id"): Param(_ID, "The camera the course records; another camera moves it."),
}


def parameter(endpoint: str, key: str) -> Param:
    return OVERRIDES.get((endpoint, key)) or PARAMETERS[key]


@dataclass(frozen=True)
class Operation:
    """What the reference says about one endpoint beyond its keys."""

    section: str
    tag: str
    title: str  # the specification's own heading
    summary: str
    answer: dict[str, Any]  # properties of a success body besides err_code/err_msg
    required: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()  # codes beyond those every endpoint (with a token) can answer
    notes: str = ""
    example: dict[str, str] = field(default_factory=dict)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page_of(item: str, storage: bool = False) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "total_num": {"type": "integer", "minimum": 0, "description": "Rows in all pages."},
        "max_page": {"type": "integer", "minimum": 0, "description": "ceil(total_num / per_page); "
                     "0 when there are none."},
        "cur_page": {"type": "integer", "minimum": 1, "description": "The page answered."},
        "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                     "description": f"Rows per page (at most {MAX_PER_PAGE})."},
    }
    if storage:
        fields["storage_addr"] = {"type": "string", "description": "Base URL of stored files: "
                                  "`storage_addr + file_fdfs` is a file's URL."}
    fields["data"] = {"type": "array", "items": _ref(item), "description": "Newest first."}
    return fields


_TRANSMIT = {"transmit": _ref("Transmit")}
_ID_OUT = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_PLAY_URL = {"play_url": {"type": "string", "description": "The player page, for an `<iframe>`. "
                          "It carries a play ticket for this one target (opens within "
                          "`play_ticket_ttl`, 600 s), never the API token."}}
_ID_ERRORS = (Code.NO_ID,)
_COURSE_ERRORS = (Code.NO_ID, Code.BAD_TIME, Code.OVERLAP, Code.CROSS_DAY)
_SCHEDULE = ("camera_id", "week_id", "start_time")

#: Every endpoint, in the order of the specification's section 3.
OPERATIONS: dict[str, Operation] = {
    "version": Operation(
        "3.1", "meta", "获取服务器版本信息", "The server's version.",
        {"API": {"const": "v1"}, "Name": {"type": "string", "description": "云监控"},
         "Version": {"type": "string", "description": "The relay's version."},
         "Server": {"type": "string", "description": "OS name, release and machine."}},
        notes="Needs no token. Its answer has no `err_code`/`err_msg` in the specification's "
              "example; ours has them too, like every answer.",
    ),
    "access_token": Operation(
        "3.2", "meta", "用“API 凭证”换取“访问凭证”",
        "Exchange the API credential for an access token.",
        {"token": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$",
                   "description": "The access token: URL-safe, works in both URL forms."},
         "expires": {"type": "integer", "minimum": 1,
                     "description": "Seconds the token is valid (`token_ttl`, 7200)."}},
        required=("unionid",),
        errors=(Code.BAD_UNIONID, Code.UNKNOWN_UNIONID, Code.NOT_ADMIN, Code.TOKEN_ISSUE_FAILED),
        notes="Needs no token. Only administrators' credentials are accepted (1003 otherwise). "
              "A token stops working when it expires (1007), when its credential is rotated "
              "(1007: exchange the new one) and when its account stops being an administrator "
              "(1003).",
        example={"unionid": "CREDENTIAL"},
    ),
    "list_gather": Operation(
        "3.3", "gatherers", "获取采集端列表", "List gatherers, one page.", _page_of("Gatherer"),
        notes="Gatherers are created by their agent's registration, never through the API.",
        example={"cur": "1", "per": "10"},
    ),
    "mod_gather": Operation(
        "3.4", "gatherers", "修改采集端", "Change a gatherer's settings.", _TRANSMIT,
        required=("gather_id",), errors=_ID_ERRORS,
        notes="Absent settings keep their value. The new settings are sent to the agent "
              "(`transmit`).",
        example={"gather_id": "1", "name_set": "采集端", "snap_val": "2"},
    ),
    "list_camera": Operation(
        "3.5", "cameras", "获取通道列表", "List cameras, one page.", _page_of("Camera", True),
        example={"cur": "1", "per": "10"},
    ),
    "add_camera": Operation(
        "3.6", "cameras", "添加通道 => 只能添加“MP4 文件”和“流转发”",
        "Add a camera of mode 1 (MP4 file) or 2 (rtsp/rtmp forward).",
        {"camera_id": {**_ID_OUT, "description": "The new camera."}, **_TRANSMIT},
        required=("camera_name", "gather_id", "stream_prop"),
        errors=(Code.NO_NAME, Code.NO_ID),
        notes="New cameras start out started. The camera is sent to its gatherer's agent.",
        example={"camera_name": "一班", "gather_id": "1", "stream_prop": "2",
                 "stream_url": "rtsp://192.0.2.7/live"},
    ),
    "mod_camera": Operation(
        "3.7", "cameras", "修改通道", "Change a camera.", _TRANSMIT,
        required=("camera_id", "camera_name"), errors=(Code.NO_NAME, Code.NO_ID),
        notes="Absent fields keep their value; `camera_name` is required (1008), as in the "
              "specification. Works for every mode, mode-0 IP cameras included.",
        example={"camera_id": "3", "camera_name": "二班"},
    ),
    "del_camera": Operation(
        "3.8", "cameras", "删除通道", "Delete cameras with their courses, records, snapshots and "
        "stored files.", _TRANSMIT, required=("camera_id",), errors=_ID_ERRORS,
        notes="Each agent concerned is told (`transmit`; with several gatherers, `gathers` holds "
              "each answer).",
        example={"camera_id": "1,2,3"},
    ),
    "get_camera_status": Operation(
        "3.9", "cameras", "获取通道运行状态", "A camera's status.",
        {"camera_id": _ID_OUT, "status": _ref("CameraStatus"),
         "recording": {**_FLAG, "description": "Extension: 1 while the agent records it."},
         "spool_bytes": {"type": "integer", "minimum": 0, "description":
                         "Extension: bytes of its recordings waiting on the gatherer for upload."},
         "upload_error": {"type": "string", "description":
                          "Extension: why its last upload failed (\"\" when it went through)."},
         "record_error": {"type": "string", "description":
                          "Extension: why recording it failed last (a main stream that does not "
                          "open, a full disk; \"\" when it records)."}},
        required=("camera_id",), errors=_ID_ERRORS, example={"camera_id": "1"},
    ),
    "start_camera": Operation(
        "3.10", "cameras", "启动通道", "Start a camera (its desired state becomes started).",
        _TRANSMIT, required=("camera_id",), errors=_ID_ERRORS,
        notes="Repeating it changes nothing (no toggling).", example={"camera_id": "1"},
    ),
    "stop_camera": Operation(
        "3.11", "cameras", "停止通道", "Stop a camera (its desired state becomes stopped).",
        _TRANSMIT, required=("camera_id",), errors=_ID_ERRORS,
        notes="Repeating it changes nothing (no toggling).", example={"camera_id": "1"},
    ),
    "list_record": Operation(
        "3.12", "records", "获取录像文件列表", "List recordings, one page.", _page_of("Record", True),
        errors=_ID_ERRORS,
        notes="`camera_id` (an extension of the specification) lists one camera's recordings; "
              "`total_num` then counts that camera's only. Retention (`record_keep_days`, "
              "`storage_min_free`, `storage_quota`) deletes the oldest recordings by itself.",
        example={"cur": "1", "per": "10"},
    ),
    "del_record": Operation(
        "3.13", "records", "删除录像", "Delete recordings with their video and snapshot files.", {},
        required=("record_id",), errors=_ID_ERRORS, example={"record_id": "1,2,3"},
    ),
    "list_course": Operation(
        "3.14", "courses", "获取指定通道下的录像任务列表", "List one camera's recording courses.",
        _page_of("Course"), required=("camera_id",), errors=_ID_ERRORS,
        notes="`total_num` counts that camera's courses only.",
        example={"camera_id": "1", "cur": "1", "per": "10"},
    ),
    "add_course": Operation(
        "3.15", "courses", "添加录像任务", "Add a weekly recording course to a camera.",
        {"course_id": _ID_OUT, "camera_id": _ID_OUT, **_TRANSMIT},
        required=_SCHEDULE, errors=_COURSE_ERRORS,
        notes="A course covers [start, start + duration): one may start the second another ends. "
              "An overlap with another course of the same camera and weekday is 1012, its "
              "interval and id appended to `err_msg`. The camera's whole schedule is sent to its "
              "agent.",
        example={"camera_id": "1", "week_id": "3", "elapse_sec": "3600", "start_time": "10:30:30"},
    ),
    "mod_course": Operation(
        "3.16", "courses", "修改录像任务", "Change a recording course (it may move to another "
        "camera).", {"course_id": _ID_OUT, "camera_id": _ID_OUT, **_TRANSMIT},
        required=("course_id", *_SCHEDULE), errors=_COURSE_ERRORS,
        notes="Same rules as `add_course`; the course itself never counts as its own overlap.",
        example={"course_id": "1", "camera_id": "1", "week_id": "3", "elapse_sec": "3600",
                 "start_time": "10:30:30"},
    ),
    "del_course": Operation(
        "3.17", "courses", "删除录像任务", "Delete recording courses.", _TRANSMIT,
        required=("course_id",), errors=_ID_ERRORS, example={"course_id": "1,2,3"},
    ),
    "play_camera": Operation(
        "3.18", "play", "播放直播通道", "The live player page of a camera.", _PLAY_URL,
        required=("camera_id",), errors=_ID_ERRORS,
        notes="The page plays over WebRTC, or MSE as a fallback, sends a heartbeat every 12 s "
              "and a goodbye when closed; the camera pushes only while someone watches.",
        example={"camera_id": "1", "width": "850", "height": "550"},
    ),
    "play_record": Operation(
        "3.19", "play", "播放录像文件", "The player page of a recording.", _PLAY_URL,
        required=("record_id",), errors=_ID_ERRORS,
        example={"record_id": "1", "width": "850", "height": "550"},
    ),
}

#: When each API error code is answered (the texts are the specification's, in ``MESSAGES``).
ERROR_MEANINGS: dict[int, str] = {
    Code.OK: "Success.",
    Code.BAD_UNIONID: "`unionid` missing or malformed.",
    Code.UNKNOWN_UNIONID: "No account has that credential.",
    Code.NOT_ADMIN: "The account is not (or no longer) an administrator.",
    Code.NO_TOKEN: "`token` missing.",
    Code.TOKEN_ISSUE_FAILED: "The token could not be issued (the specification lists this text "
                             "under 1004 in §3.2; 1005 keeps it apart from \"no token\").",
    Code.BAD_TOKEN: "Token malformed, forged, or of a deleted account.",
    Code.TOKEN_EXPIRED: "Token expired, or issued for a credential since rotated.",
    Code.NO_NAME: "A required name is missing: `camera_name`, or the source field of the camera's "
                  "mode (`stream_mp4`, `stream_url`, `device_ip`).",
    Code.BAD_PARAM: "Ours (the specification skips 1009): a parameter present but unusable: an "
                    "unknown key (e.g. `id`, `elapsd_sec`), a key given twice, a malformed path "
                    "form or query, a value out of range or of the wrong type.",
    Code.NO_ID: "A required id is missing, not a positive whole number, or names no row.",
    Code.BAD_TIME: "`start_time` is not `HH:MM:SS` within the day, or `week_id`/duration is "
                   "missing or malformed.",
    Code.OVERLAP: "The course overlaps another course of the camera on that weekday (its "
                  "interval and id follow the message).",
    Code.CROSS_DAY: "start + duration passes 23:59:59.",
}

TRANSMIT_MEANINGS: dict[int, str] = {
    OFFLINE: "The gatherer has no live link; the agent receives the change with its full desired "
             "state when it reconnects.",
    TIMEOUT: "The agent did not answer within `command_timeout` (10 s).",
    FAILED: "The link to the agent broke while the command was under way.",
}

AGENT_MEANINGS: dict[int, str] = {
    protocol.OK: "The agent applied the command; `data` may hold what it reports.",
    protocol.UNKNOWN_CAMERA: "The agent does not hold that camera.",
    protocol.BAD_COMMAND: "The agent found the command malformed (or could not carry it out).",
    protocol.SOURCE_DOWN: "The camera's source is not open (stopped or failing).",
}

#: The HTTP-level answers outside the endpoint table.
NOT_FOUND_EXAMPLE = {"err_code": 404, "err_msg": "unknown endpoint: list_cameras"}
METHOD_EXAMPLE = {"err_code": 405, "err_msg": "only GET is supported"}
URI_TOO_LONG_EXAMPLE = {"err_code": 414, "err_msg": "request line longer than 8190 bytes"}

_COMMON = (Code.BAD_PARAM,)
_TOKEN_ERRORS = (Code.NOT_ADMIN, Code.NO_TOKEN, Code.BAD_TOKEN, Code.TOKEN_EXPIRED)


def error_codes(name: str) -> list[int]:
    """The err_codes ``name`` can answer besides 0, in rising order."""
    codes = set(_COMMON) | set(OPERATIONS[name].errors)
    if ENDPOINTS[name].needs_token:
        codes |= set(_TOKEN_ERRORS)
    return sorted(int(code) for code in codes)


def _code_table(rows: dict[int, str], messages: dict[int, str] | None) -> str:
    head = "| code | err_msg | when |\n| --- | --- | --- |\n" if messages else \
        "| code | when |\n| --- | --- |\n"
    lines = []
    for code, meaning in rows.items():
        if messages:
            lines.append(f"| {code} | {messages[code]} | {meaning} |")
        else:
            lines.append(f"| {code} | {meaning} |")
    return head + "\n".join(lines) + "\n"


_OVERVIEW = """\
API v1 of the cloud monitor, as the customer's specification (云监控 API 接口) defines it. This
document is generated from the relay's endpoint table and served by every relay at
`{openapi}`.

## Quick start

```sh
curl 'http://RELAY:8080/api/v1/access_token?unionid=CREDENTIAL'       # → token, expires 7200
curl 'http://RELAY:8080/api/v1/list_camera?token=TOKEN&cur=1&per=10'
curl 'http://RELAY:8080/api/v1/list_camera/token/TOKEN/cur/1/per/10'   # the same call, path form
curl 'http://RELAY:8080/api/v1/get_camera_status?token=TOKEN&camera_id=1'
```

## Calling

* Every call is a `GET` (`HEAD` is answered too); names are lower case and case-sensitive.
* Two URL forms, equivalent, which may be mixed in one call:
  * query form: `/api/v1/<name>?k1=v1&k2=v2`
  * path form: `/api/v1/<name>/k1/v1/k2/v2` (each key followed by its value)

  Values are UTF-8, percent-encoded. In the path form an encoded `/` (`%2F`) stays inside its
  value; in the query form `+` means a space, so send a literal `+` (base64!) as `%2B`.
  An empty value counts as absent. A key the endpoint does not take, a key given twice (in either
  form) or a path form with a key but no value is refused with 1009, so typos such as `id=` for
  `camera_id=` or `elapsd_sec=` are caught, not ignored.
* Things are named by their own id parameter: `gather_id`, `camera_id`, `course_id`,
  `record_id`, as the listings answer them. There is no `id` parameter.

## Answers

Every answer of a known endpoint is HTTP 200, `application/json` (UTF-8), with `err_code` (0 on
success) and `err_msg` (`"OK"`, or the specification's Chinese text). A refusal also names the
offending parameter in `err_param`, so a client need not parse `err_msg`. Outside the table:

* an unknown endpoint answers HTTP 404 `{not_found}`;
* a method other than `GET`/`HEAD` answers HTTP 405 `{method}` with `Allow: GET, HEAD`;
* a request the HTTP layer cannot take is refused in the same JSON shape, echoing nothing of the
  request: 414 `{uri_too_long}` (keep id lists within that), 431 for
  an over-long or too many header fields, 408 for a request head not complete within
  `header_timeout`, 400 for a malformed request (a raw space in the query, say).

## Tokens

1. An administrator signs in at `/admin` and copies the API credential (API 凭证, `unionid`).
2. `access_token?unionid=…` exchanges it for an access token (访问凭证) valid `expires` seconds
   (7200 by default).
3. Every other call except `version` carries it as `token`, in either form:
   `/api/v1/list_camera?token=TOKEN` or `/api/v1/list_camera/token/TOKEN`.

The token is URL-safe (`account.expiry.credential-tag.signature`, HMAC-SHA256). Missing: 1004;
malformed, forged or of a deleted account: 1006; expired, or issued for a credential that has since
been rotated: 1007 (exchange again); the account is no longer an administrator: 1003.

## Ids and lists

An id is a whole number 1–2^31-1 (2,147,483,647) in ASCII digits. A missing, non-numeric, zero
or negative id, a larger one, or one that names no row, is 1010. Ids are never reused.
`del_camera`, `del_record` and `del_course` take a comma list (`1,2,3`, at most {max_ids} ids),
all-or-nothing: one unknown id refuses the whole call and nothing is deleted.

## Paging

`list_*` take `cur` (page, from 1, default 1) and `per` (rows per page, default 10, at most
{max_per}: a larger `per` is answered as {max_per}) and answer `total_num`, `max_page`
(ceil(total_num / per_page), 0 when empty), `cur_page` and `per_page` (integers), and `data`,
newest first. A page past the end is empty. `cur` or `per` below 1 or not a number is 1009.

## transmit

Calls that change something a gatherer's agent holds answer `transmit`: the relay's account of the
command sent to the agent. The API call itself succeeded (the catalogue holds the change) whatever
`transmit` says; `transmit` says whether the agent applied it now. It is the agent's own answer
(`err_code`, `err_msg`, maybe `data`), or one of the relay's codes. A call touching several
gatherers answers the first failure's code with every gatherer's answer under `gathers`.

Relay codes:

{transmit}
Agent codes (the reference agent's; `err_msg` is the agent's own text):

{agent}
## Error codes

{errors}
## Times and files

Times are `YYYY-MM-DD HH:MM:SS` in the relay's configured time zone. Stored files (recordings,
snapshots) are at `storage_addr + file_fdfs` (or `+ image_fdfs`), served with range requests.
"""


def overview() -> str:
    return _OVERVIEW.format(
        openapi=OPENAPI_PATH,
        not_found=json.dumps(NOT_FOUND_EXAMPLE, ensure_ascii=False),
        method=json.dumps(METHOD_EXAMPLE, ensure_ascii=False),
        uri_too_long=json.dumps(URI_TOO_LONG_EXAMPLE, ensure_ascii=False),
        max_ids=MAX_IDS,
        max_per=MAX_PER_PAGE,
        transmit=_code_table(TRANSMIT_MEANINGS, TRANSMIT_MESSAGES),
        agent=_code_table(AGENT_MEANINGS, None),
        errors=_code_table(ERROR_MEANINGS, MESSAGES),
    )


_TIME = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"}
_COUNT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_INT = {"type": "integer"}


def _object(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


def _components() -> dict[str, Any]:
    stamps = {"created": _described(_TIME, "When the row was created."),
              "updated": _described(_TIME, "When the row last changed.")}
    gatherer = _object({
        "gather_id": _described(_ID_OUT, "The gatherer's id (`gather_id` of mod_gather, "
                                "add_camera)."),
        "mac_addr": _described(_STR, "The agent's MAC address."),
        "ip_addr": _described(_STR, "The agent's IP address."),
        "name_pc": _described(_STR, "The agent machine's host name."),
        "name_set": _described(_STR, "Display name (set with mod_gather)."),
        "os_name": _described(_STR, "The agent's operating system."),
        **{key: _described(PARAMETERS[key].schema, PARAMETERS[key].meaning) for key in (
            "main_rate", "sub_rate", "auto_dvr", "auto_fds", "slice_val", "inter_val", "snap_val")},
        "status": {"type": "integer", "enum": [0, 1], "description": "0 offline, 1 online."},
        **stamps,
    }, "A gatherer (采集端): one agent machine next to the cameras.")
    camera = _object({
        "camera_id": _described(_ID_OUT, "The camera's id: what every camera call takes as "
                                "`camera_id`."),
        "camera_name": _described(_STR, "Name (通道名称 (班级))."),
        "image_id": _described(_COUNT, "Latest snapshot's id, 0 when none."),
        "image_fdfs": _described(_STR, "Latest snapshot: `storage_addr + image_fdfs`; \"\" none."),
        "gather_id": _described(_ID_OUT, "Its gatherer."),
        "name_set": _described(_STR, "Its gatherer's display name."),
        "stream_prop": {"type": "integer", "enum": [0, 1, 2],
                        "description": "0 IP camera, 1 MP4 file, 2 rtsp/rtmp forward."},
        "stream_url": _described(_STR, "Mode 2: the forwarded URL."),
        "stream_mp4": _described(_STR, "Mode 1: the MP4 file on the gatherer."),
        "device_ip": _described(_STR, "Mode 0: address."),
        "device_user": _described(_STR, "Mode 0: user."),
        "device_pass": _described(_STR, "Mode 0: password, base64."),
        "device_cmd_port": _described(_INT, "Mode 0: command port (the specification's example "
                                      "spells it `device_cmd_prot`)."),
        **{key: _described(_FLAG, PARAMETERS[key].meaning) for key in (
            "device_mirror", "device_osd", "device_twice", "device_show")},
        "status": _ref("CameraStatus"),
        "clicks": _described(_COUNT, "Live page opens."),
        **stamps,
    }, "A camera (通道).")
    record = _object({
        "record_id": _described(_ID_OUT, "The recording's id (`record_id` of play_record, "
                                "del_record)."),
        "gather_id": _described(_ID_OUT, "The gatherer that recorded it."),
        "camera_id": _described(_ID_OUT, "Its camera."),
        "camera_name": _described(_STR, "Its camera's name."),
        "file_fdfs": _described(_STR, "The video: `storage_addr + file_fdfs`."),
        "image_fdfs": _described(_STR, "Its snapshot: `storage_addr + image_fdfs`; \"\" none."),
        "file_size": _described(_COUNT, "Bytes (an integer; the specification's example quotes it)."),
        "duration": _described(_COUNT, "Seconds of video."),
        "disptime": {"type": "string", "pattern": "^(?:[0-9]{2,}:)?[0-5][0-9]:[0-5][0-9]$",
                     "description": "Duration shown: `MM:SS` under an hour, else `HH:MM:SS`."},
        "clicks": _described(_COUNT, "Player page opens."),
        "created": _described(_TIME, "When the recording started (its first frame)."),
        "updated": stamps["updated"],
        "start_time": _described(_TIME, "When the recording started (as `created`; ours)."),
        "end_time": _described(_TIME, "When its last frame was recorded (ours)."),
    }, "A recording.")
    course = _object({
        "course_id": _described(_ID_OUT, "The course's id (`course_id` of mod_course, "
                                "del_course)."),
        "camera_id": _described(_ID_OUT, "The camera it records."),
        "repeat_id": _described(_INT, "Repetition: 2 = weekly (the only one)."),
        "week_id": _described(_integer(0, 6), "0 Sunday … 6 Saturday."),
        "elapse_sec": _described({"type": "integer", "minimum": 1}, "Duration, seconds."),
        "start_time": _described(_TIME, "Start; only the time of day matters (the date is that "
                                 "of the last change)."),
        "end_time": _described(_TIME, "start_time + elapse_sec."),
        **stamps,
    }, "A weekly recording course (录像任务) of one camera.")
    answer = {"err_code": {"type": "integer"}, "err_msg": {"type": "string"},
              "data": {"type": "object", "description": "What the agent reports."}}
    transmit = {
        "type": "object",
        "description": "The relay's account of the command sent to the agent (see the overview).",
        "properties": {
            **answer,
            "err_code": {"type": "integer", "description": "0 applied; relay codes "
                         f"{', '.join(map(str, TRANSMIT_MEANINGS))}; agent codes "
                         f"{', '.join(map(str, list(AGENT_MEANINGS)[1:]))}."},
            "gathers": {"type": "array", "description": "With several gatherers: each answer.",
                        "items": {"type": "object", "additionalProperties": False,
                                  "required": ["gather_id", "err_code", "err_msg"],
                                  "properties": {"gather_id": _ID_OUT, **answer}}},
        },
        "required": ["err_code", "err_msg"],
        "additionalProperties": False,
    }
    http_error = {
        "type": "object", "required": ["err_code", "err_msg"], "additionalProperties": False,
        "properties": {"err_code": _INT, "err_msg": _STR},
    }
    return {
        "securitySchemes": {"token": {
            "type": "apiKey", "in": "query", "name": "token",
            "description": PARAMETERS["token"].meaning + " In the path form: `…/token/TOKEN`.",
        }},
        "schemas": {
            "Gatherer": gatherer, "Camera": camera, "Record": record, "Course": course,
            "Transmit": transmit,
            "CameraStatus": {"type": "integer", "enum": [-1, 0, 1],
                             "description": "-1 reset (not yet reported), 0 offline, 1 online."},
            "ErrorCode": {"oneOf": [
                {"const": int(code), "description": f"{MESSAGES[code]}: {ERROR_MEANINGS[code]}"}
                for code in ERROR_MEANINGS
            ]},
            "NotFound": {**copy.deepcopy(http_error), "examples": [NOT_FOUND_EXAMPLE]},
            "MethodNotAllowed": {**copy.deepcopy(http_error), "examples": [METHOD_EXAMPLE]},
            "HttpRefusal": {**copy.deepcopy(http_error), "examples": [URI_TOO_LONG_EXAMPLE]},
        },
        "responses": {"UriTooLong": {
            "description": "The request line is longer than 8190 bytes (a long id list, say).",
            "content": {"application/json": {"schema": _ref("HttpRefusal")}},
        }},
    }


_URI_TOO_LONG = {"414": {"$ref": "#/components/responses/UriTooLong"}}


def _typed(value: str, schema: dict[str, Any]) -> Any:
    """An example's text as the value its schema describes."""
    if schema.get("type") == "array":
        return [int(part) for part in value.split(",")]
    return int(value) if schema.get("type") == "integer" or "enum" in schema else value


def _query_parameter(name: str, key: str, required: bool) -> dict[str, Any]:
    param = parameter(name, key)
    entry: dict[str, Any] = {
        "name": key, "in": "query", "required": required, "description": param.meaning,
        "schema": param.schema,
    }
    example = OPERATIONS[name].example.get(key)
    if example is not None:
        entry["example"] = _typed(example, param.schema)
    if param.schema.get("type") == "array":
        entry.update(style="form", explode=False)
    if not required:
        entry["allowEmptyValue"] = True  # an empty value counts as absent
    return entry


def _answer_schema(name: str) -> dict[str, Any]:
    op = OPERATIONS[name]
    success = _object({"err_code": {"const": 0}, "err_msg": {"const": "OK"}, **op.answer},
                      "Success.")
    refusal = {
        "type": "object", "description": "A refusal.",
        "required": ["err_code", "err_msg"], "additionalProperties": False,
        "properties": {
            "err_code": {"enum": error_codes(name)},
            "err_msg": {"type": "string", "description": "The specification's text (1012: with "
                        "the overlapping interval and course_id appended)."},
            "err_param": {"type": "string", "description": "The offending parameter."},
        },
    }
    return {"oneOf": [success, refusal]}


def _operation(name: str) -> dict[str, Any]:
    op = OPERATIONS[name]
    keys = [key for key in _ordered_keys(name) if key != "token"]
    description = f"§{op.section} {op.title}. {op.notes}".strip()
    errors = ", ".join(f"{code} {MESSAGES[code]}" for code in error_codes(name))
    return {
        "operationId": name,
        "tags": [op.tag],
        "summary": op.summary,
        "description": f"{description}\n\nPath form: `{_path_form(name, op.example)}`.\n\n"
                       f"Refusals: {errors}.",
        "security": [{"token": []}] if ENDPOINTS[name].needs_token else [],
        "parameters": [_query_parameter(name, key, key in op.required) for key in keys],
        "responses": {"200": {
            "description": "Success or refusal, told apart by `err_code`.",
            "content": {"application/json": {"schema": _answer_schema(name)}},
        }, **_URI_TOO_LONG},
    }


def _ordered_keys(name: str) -> list[str]:
    """The endpoint's keys: the token, the required ones, then the rest in the table's order."""
    keys = ENDPOINTS[name].keys
    required = OPERATIONS[name].required
    others = [key for key in PARAMETERS if key in keys and key not in required and key != "token"]
    return [*(["token"] if "token" in keys else []), *required, *others]


def _query_form(name: str, example: dict[str, str]) -> str:
    pairs = ([("token", "TOKEN")] if ENDPOINTS[name].needs_token else []) + list(example.items())
    query = "&".join(f"{key}={value}" for key, value in pairs)
    return f"{API_PREFIX}{name}" + (f"?{query}" if query else "")


def _path_form(name: str, example: dict[str, str]) -> str:
    pairs = ([("token", "TOKEN")] if ENDPOINTS[name].needs_token else []) + list(example.items())
    return f"{API_PREFIX}{name}" + "".join(f"/{key}/{value}" for key, value in pairs)


def _unknown_operation() -> dict[str, Any]:
    names = [*ENDPOINTS, OPENAPI_PATH.rsplit("/", 1)[1], ".", ".."]
    return {"get": {
        "operationId": "unknown_endpoint",
        "tags": ["meta"],
        "summary": "Any other name: HTTP 404.",
        "description": "A name that is not an endpoint answers HTTP 404 with a JSON body.",
        "security": [],
        "parameters": [{
            "name": "name", "in": "path", "required": True, "description": "Not an endpoint.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 64, "not": {"enum": names}},
        }],
        "responses": {"404": {
            "description": "Unknown endpoint.",
            "content": {"application/json": {"schema": _ref("NotFound")}},
        }, **_URI_TOO_LONG},
    }}


def _openapi_operation() -> dict[str, Any]:
    return {"get": {
        "operationId": "openapi",
        "tags": ["meta"],
        "summary": "This document.",
        "security": [],
        "responses": {"200": {
            "description": "The OpenAPI 3.1 document of API v1.",
            "content": {"application/json": {"schema": {
                "type": "object", "required": ["openapi", "info", "paths"],
            }}},
        }, **_URI_TOO_LONG},
    }}


@cache
def _document() -> dict[str, Any]:
    missing = set(ENDPOINTS) ^ set(OPERATIONS)
    if missing:
        raise ValueError(f"endpoints and OPERATIONS differ: {sorted(missing)}")
    paths: dict[str, Any] = {f"{API_PREFIX}{name}": {"get": _operation(name)} for name in OPERATIONS}
    paths[OPENAPI_PATH] = _openapi_operation()
    paths[API_PREFIX + "{name}"] = _unknown_operation()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cloud monitor API v1 (云监控 API 接口)",
            "version": __version__,
            "description": overview(),
        },
        "tags": [{"name": tag} for tag in ("meta", "gatherers", "cameras", "records", "courses",
                                            "play")],
        "paths": paths,
        "components": _components(),
    }


def document(base_url: str = "") -> dict[str, Any]:
    """The OpenAPI document; ``servers`` names ``base_url`` when given."""
    doc = copy.deepcopy(_document())
    if base_url:
        doc["servers"] = [{"url": base_url.rstrip("/"), "description": "this relay"}]
    return doc


def _shape(param: Param) -> str:
    if param.shape:
        return param.shape
    schema = param.schema
    if "enum" in schema:
        return ", ".join(map(str, schema["enum"]))
    if schema.get("type") == "integer":
        high = schema["maximum"]
        return f"integer {schema['minimum']}–{'2^31-1' if high == MAX_ID else f'{high:,}'}"
    if schema.get("type") == "array":
        return "comma list of ids"
    return f"text ≤ {schema['maxLength']} chars" if "maxLength" in schema else "text"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _endpoint_markdown(name: str) -> str:
    op = OPERATIONS[name]
    lines = [f"### `{name}` (§{op.section} {op.title})", "", op.summary + (f" {op.notes}" if op.notes
                                                                          else ""), ""]
    forms = dict.fromkeys([_query_form(name, op.example), _path_form(name, op.example)])
    lines += ["```", *forms, "```", ""]
    keys = _ordered_keys(name)
    if keys:
        lines += ["| parameter | required | type | default | meaning |",
                  "| --- | --- | --- | --- | --- |"]
        for key in keys:
            param = parameter(name, key)
            required = "yes" if key == "token" or key in op.required else "no"
            meaning = "The access token." if key == "token" else param.meaning
            lines.append(f"| `{key}` | {required} | {_cell(_shape(param))} | {param.default or '–'} "
                         f"| {_cell(meaning)} |")
        lines.append("")
    fields = ", ".join(f"`{key}`" for key in op.answer) or "nothing more"
    lines.append(f"Answers, besides `err_code`/`err_msg`: {fields}.")
    codes = ", ".join(f"{code}" for code in error_codes(name))
    lines += ["", f"Refusals: {codes}.", ""]
    return "\n".join(lines)


def _object_markdown(title: str, schema: dict[str, Any]) -> str:
    lines = [f"### {title}", "", schema.get("description", ""), "", "| field | meaning |",
             "| --- | --- |"]
    for key, prop in schema["properties"].items():
        meaning = prop.get("description", "")
        if "$ref" in prop:
            meaning = _components()["schemas"][prop["$ref"].rsplit("/", 1)[1]]["description"]
        lines.append(f"| `{key}` | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """docs/API.md: the overview, every endpoint and every answered object."""
    schemas = _components()["schemas"]
    parts = [
        "# Cloud monitor API v1",
        "",
        f"<!-- Generated from relay/api/openapi.py by {REGENERATE}; tests/test_openapi.py checks "
        "that it is in step. -->",
        "",
        overview(),
        "## Endpoints",
        "",
        *(_endpoint_markdown(name) for name in OPERATIONS),
        "## Answered objects",
        "",
        *(_object_markdown(name, schemas[name]) for name in ("Gatherer", "Camera", "Record",
                                                              "Course")),
    ]
    return "\n".join(parts).rstrip("\n") + "\n"
