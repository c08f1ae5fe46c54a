"""The agent's copy of its desired state, kept on disk so it keeps working across restarts.

Written atomically (temporary file, fsync, rename): a crash mid-write leaves the previous state.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DesiredState:
    """Gatherer settings, cameras by id and course lists by camera id, as the relay last said."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gather_id: int | None = None
        self.gather: dict[str, Any] = {}
        self.cameras: dict[int, dict[str, Any]] = {}
        self.courses: dict[int, list[dict[str, Any]]] = {}
        #: The zone the relay's course times are in: ``{"zone": name, "utc_offset": seconds}``.
        self.clock: dict[str, Any] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable state file %s: %s", self.path, exc)
            return
        self.adopt(raw.get("gather_id"), raw.get("state", {}), save=False)

    def adopt(self, gather_id: int | None, state: dict[str, Any], save: bool = True) -> None:
        """Replace everything with the relay's full desired state (a welcome)."""
        self.gather_id = gather_id
        self.gather = dict(state.get("gather", {}))
        self.cameras = {camera["camera_id"]: dict(camera) for camera in state.get("cameras", [])}
        self.courses = {entry["camera_id"]: list(entry["courses"])
                        for entry in state.get("courses", [])}
        self.clock = {key: state[key] for key in ("zone", "utc_offset") if key in state}
        if save:
            self.save()

    def as_message(self) -> dict[str, Any]:
        return {
            "gather": self.gather,
            "cameras": [self.cameras[camera_id] for camera_id in sorted(self.cameras)],
            "courses": [{"camera_id": camera_id, "courses": courses}
                        for camera_id, courses in sorted(self.courses.items())],
            **self.clock,
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "w", encoding="utf-8") as file:
            json.dump({"gather_id": self.gather_id, "state": self.as_message()}, file,
                      ensure_ascii=False, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, self.path)
