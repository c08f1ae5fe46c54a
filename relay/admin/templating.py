"""The templates' filters: times in the relay's zone, sizes and durations for people."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..services import Services


def size(count: int | None) -> str:
    value = float(count or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def filters(services: Callable[[], Services]) -> dict[str, Callable[..., Any]]:
    def when(seconds: float) -> str:
        return services().presenter.time(int(seconds))

    def since(seconds: float) -> str:
        return ago(services().clock() - seconds)

    return {"when": when, "since": since, "size": size}
