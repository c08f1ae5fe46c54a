"""What an API answer means, said to an operator: the refusal, and the agent's ``transmit``."""

from __future__ import annotations

from typing import Any

from ..hub import FAILED, OFFLINE, TIMEOUT

#: English beside the specification's own Chinese message, per refusal code.
REFUSALS = {
    1008: "a name is required",
    1009: "a value is not in the right format",
    1010: "no such id, or none given",
    1011: "the time or day is not valid",
    1012: "it overlaps a course this camera already has that day",
    1013: "a course cannot run past midnight",
}

#: Form fields as people know them (``err_param`` names the API's).
FIELDS = {
    "camera_name": "name", "start_time": "start", "elapse_sec": "duration", "week_id": "day",
    "stream_url": "stream URL", "stream_mp4": "file path", "device_ip": "device address",
    "gather_id": "gatherer", "camera_id": "camera", "course_id": "course",
}

_TRANSMITS = {
    OFFLINE: "采集端不在线：已保存，采集端连接后生效 · The gatherer is offline: the change is "
             "saved and reaches it when it connects.",
    TIMEOUT: "采集端没有及时回应：已保存，它下次连接时会收到 · The gatherer did not answer in "
             "time: the change is saved and reaches it when it next connects.",
    FAILED: "与采集端的连接中断：已保存，重连后生效 · The link to the gatherer broke: the change "
            "is saved and reaches it when it reconnects.",
}


def refusal(answer: dict[str, Any]) -> str:
    """The API's refusal in words, its own message first (1012 names the overlapped course)."""
    code = answer.get("err_code")
    english = REFUSALS.get(code, "refused") if isinstance(code, int) else "refused"
    field = answer.get("err_param")
    where = f" ({FIELDS.get(field, field)})" if field else ""
    return f"{answer.get('err_msg', '')} · {english.capitalize()}{where}. [{code}]"


def transmit(answer: dict[str, Any]) -> str:
    """What the gatherer said of a change (``transmit``), in words."""
    sent = answer.get("transmit")
    if not isinstance(sent, dict):
        return ""
    if "gathers" in sent:
        return " ".join(f"采集端 gatherer {each.get('gather_id')}: {_one(each)}"
                        for each in sent["gathers"])
    return _one(sent)


def _one(sent: dict[str, Any]) -> str:
    code = sent.get("err_code")
    if code == 0:
        return "采集端已执行 · The gatherer applied it."
    if code in _TRANSMITS:
        return _TRANSMITS[code]
    return (f"采集端报告错误 · The gatherer reported an error: {sent.get('err_msg', '')} "
            f"[{code}]")


def outcome(answer: dict[str, Any], did: str) -> tuple[bool, str]:
    """(ok, text) of an API answer for the flash: what was done and the gatherer's answer, or
    why it was refused."""
    if answer.get("err_code") != 0:
        return False, refusal(answer)
    said = transmit(answer)
    return True, f"{did} {said}".strip()
