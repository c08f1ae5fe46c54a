"""Catalogue rows as the specification's JSON objects: field names, order and time formats."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo

from .catalogue import Page


class Presenter:
    """Formats times in the configured zone (the server's local zone when none is set)."""

    def __init__(self, timezone: str = "") -> None:
        self._zone = ZoneInfo(timezone) if timezone else None

    def time(self, seconds: int) -> str:
        moment = dt.datetime.fromtimestamp(seconds, self._zone or dt.UTC)
        if self._zone is None:
            moment = moment.astimezone()
        return moment.strftime("%Y-%m-%d %H:%M:%S")

    def day(self, text: str) -> tuple[int, int] | None:
        """[midnight, next midnight) of ``YYYY-MM-DD`` in this zone, unix seconds; None when it
        is no date, or one whose midnights a datetime cannot hold (0001-01-01, 9999-12-31)."""
        try:
            start = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), self._zone)
            if self._zone is None:
                start = start.astimezone()  # the server's local zone
            return int(start.timestamp()), int((start + dt.timedelta(days=1)).timestamp())
        except (OverflowError, ValueError):
            return None

    def _stamps(self, row: dict[str, Any]) -> dict[str, str]:
        return {"created": self.time(row["created"]), "updated": self.time(row["updated"])}

    def gather(self, row: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "gather_id", "mac_addr", "ip_addr", "name_pc", "name_set", "os_name", "main_rate",
            "sub_rate", "auto_dvr", "auto_fds", "slice_val", "inter_val", "snap_val", "status",
        )  # fmt: skip
        return {**{key: row[key] for key in keys}, **self._stamps(row)}

    def camera(self, row: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "camera_id", "camera_name", "image_id", "image_fdfs", "gather_id", "name_set",
            "stream_prop", "stream_url", "stream_mp4", "device_ip", "device_user", "device_pass",
            "device_cmd_port", "device_mirror", "device_osd", "device_twice", "device_show",
            "status", "clicks",
        )  # fmt: skip
        answer = {key: row[key] for key in keys}
        answer["image_fdfs"] = answer["image_fdfs"] or ""
        return {**answer, **self._stamps(row)}

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "record_id", "gather_id", "camera_id", "camera_name", "file_fdfs", "image_fdfs",
            "file_size", "duration",
        )  # fmt: skip
        start = row.get("start_time") or row["created"]
        end = row.get("end_time") or start + row["duration"]
        return {
            **{key: row[key] for key in keys},
            "disptime": disptime(row["duration"]),
            "clicks": row["clicks"],
            "created": self.time(start),  # the recording's start, as the specification means it
            "updated": self.time(row["updated"]),
            "start_time": self.time(start),
            "end_time": self.time(end),
        }

    def course(self, row: dict[str, Any]) -> dict[str, Any]:
        """A course's times carry the date of its last change; only the time of day matters."""
        day = dt.datetime.fromtimestamp(row["updated"], self._zone or dt.UTC)
        if self._zone is None:
            day = day.astimezone()
        midnight = day.replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight + dt.timedelta(seconds=row["start_sec"])
        end = start + dt.timedelta(seconds=row["elapse_sec"])
        return {
            "course_id": row["course_id"],
            "camera_id": row["camera_id"],
            "repeat_id": row["repeat_id"],
            "week_id": row["week_id"],
            "elapse_sec": row["elapse_sec"],
            "start_time": start.strftime("%Y-%m-%d %H:%M:%S"),
            "end_time": end.strftime("%Y-%m-%d %H:%M:%S"),
            **self._stamps(row),
        }


def disptime(seconds: int) -> str:
    """``MM:SS`` under an hour (as the spec's example ``01:00``), ``HH:MM:SS`` from an hour on."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def clock_time(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def page_fields(page: Page, cur: int, per: int) -> dict[str, Any]:
    return {
        "total_num": page.total,
        "max_page": math.ceil(page.total / per),
        "cur_page": cur,
        "per_page": per,
    }
