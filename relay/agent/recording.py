"""Which cameras record and take snapshots now, and the taps, sources and reports that follows.

A started camera records while the gatherer's timetable (its courses, in the relay's zone) has a
window open, whether or not anyone watches. The recorder is a stream tap on the camera's open
source: for an IP camera (mode 0) on its main stream, a source of its own opened only while it
records (live reads the sub stream); for modes 1 and 2 on the one source live uses too. A
snapshot taker is a tap on every open live source while the gatherer's ``snap_val`` is not 0.

``reconcile(now)`` makes the taps match the desired state and the clock; the agent calls it after
every change and ``run`` calls it at every window edge (and at least every second, so a stepped
clock is followed at once). Reports to the relay (``recording`` messages) go out when a camera's
recording, spool size or last upload error changes, at most every ``REPORT_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .config import AgentConfig
from .recorder import Recorder, SlicePolicy
from .schedule import current_course, seconds_to_change, starts_within, zone_of
from .snapshots import SnapshotTaker
from .sources import CameraSource, SourceError, source_url
from .spool import Spool
from .state import DesiredState

log = logging.getLogger(__name__)

REPORT_EVERY = 2.0
TICK = 1.0
#: An IP camera's main stream opens this long before its course, so that the recording starts
#: with the GOP the source caches (opening and probing an RTSP stream takes a second or more, and
#: a camera's first keyframe may be a GOP away).
MAIN_LEAD = 10.0
#: How long the agent waits, when it stops, for its last slices to be finished.
FINISH_WITHIN = 10.0

#: ``send(report)``: a ``recording`` message for the relay (dropped while no link is up).
Send = Callable[[dict[str, Any]], None]


class Recordings:
    def __init__(self, state: DesiredState, config: AgentConfig, spool: Spool,
                 live_sources: Callable[[], dict[int, CameraSource]],
                 upload_errors: Callable[[int], str]) -> None:
        self._state = state
        self._config = config
        self._spool = spool
        self._live_sources = live_sources
        self._upload_errors = upload_errors
        self.recorders: dict[int, Recorder] = {}
        self._recorder_sources: dict[int, CameraSource] = {}
        self._main_sources: dict[int, CameraSource] = {}  # mode 0 only
        self._main_errors: dict[int, str] = {}  # why a main stream failed, by camera
        self._snapshots: dict[int, tuple[SnapshotTaker, CameraSource]] = {}
        self._courses: dict[int, Any] = {}  # the course each recorder records
        self._reported: dict[int, dict[str, Any]] = {}
        self._last_report = 0.0
        self._wake = asyncio.Event()

    # Policy from the gatherer's settings

    def _setting(self, name: str, default: int, low: int, high: int) -> int:
        try:
            value = int(self._state.gather.get(name, default))
        except (TypeError, ValueError):
            return default
        return min(max(value, low), high)

    def policy(self) -> SlicePolicy:
        minutes = self._setting("slice_val", 0, 0, 30)
        return SlicePolicy(slice_seconds=minutes * self._config.minute_length,
                           overlap_gops=self._setting("inter_val", 0, 0, 3))

    def snapshot_interval(self) -> float:
        return self._setting("snap_val", 2, 0, 24 * 60) * self._config.minute_length

    # Reconciling

    def changed(self) -> None:
        """The desired state changed: reconcile at once (from the event loop)."""
        self.reconcile(time.time())
        self._wake.set()

    def reconcile(self, now: float) -> None:
        zone = zone_of(self._state.clock)
        policy = self.policy()
        for camera_id in list(self.recorders):
            if camera_id not in self._state.cameras:
                self._stop(camera_id, "camera deleted")
        for camera_id in list(self._main_sources):
            camera = self._state.cameras.get(camera_id)
            if camera is None or camera["stream_prop"] != 0:
                self._close_main(camera_id)
        for camera_id, camera in self._state.cameras.items():
            courses = self._state.courses.get(camera_id, [])
            course = current_course(courses, now, zone) if camera["started"] else None
            if course is None:
                if camera_id in self.recorders:
                    self._stop(camera_id, "camera stopped" if not camera["started"]
                               else "the course window ended")
                if camera["started"] and camera["stream_prop"] == 0 and starts_within(
                        courses, now, MAIN_LEAD, zone):
                    self._record_source(camera_id, camera)  # open it before the course starts
                else:
                    self._close_main(camera_id)
                continue
            source = self._record_source(camera_id, camera)
            recorder = self.recorders.get(camera_id)
            if recorder is not None and self._recorder_sources.get(camera_id) is not source:
                self._stop(camera_id, "the camera's source changed")
                recorder = None
            if recorder is not None and self._courses.get(camera_id) != course.get("course_id"):
                self._stop(camera_id, "the next course began")  # one file per window at least
                recorder = None
            if source is None:
                continue
            if recorder is None:
                recorder = Recorder(camera_id, self._spool, policy)
                self.recorders[camera_id] = recorder
                self._recorder_sources[camera_id] = source
                self._courses[camera_id] = course.get("course_id")
                source.add_stream_tap(recorder)
                slices = (f"{policy.slice_seconds:g}-second slices" if policy.slice_seconds
                          else "one slice for the course")
                log.info("camera %d: recording (course %s, %s, %d GOP overlap)", camera_id,
                         course.get("course_id"), slices, policy.overlap_gops)
            else:
                recorder.policy = policy
        self._reconcile_snapshots()

    def _record_source(self, camera_id: int, camera: dict[str, Any]) -> CameraSource | None:
        if camera["stream_prop"] != 0:
            return self._live_sources().get(camera_id)
        try:
            url = source_url(camera, self._config, "main")
        except SourceError as exc:
            error = f"main stream: {exc}"
            if self._main_errors.get(camera_id) != error:  # said once, not at every tick
                log.warning("camera %d: cannot record: %s", camera_id, exc)
                self._main_errors[camera_id] = error
            return None
        source = self._main_sources.get(camera_id)
        if source is not None and source.url != url:
            self._close_main(camera_id)
            source = None
        if source is None:
            source = CameraSource(camera_id, url, False, self._main_report, lambda: True,
                                  name=f"camera-{camera_id}-main")
            self._main_sources[camera_id] = source
            source.start()
        return source

    def _main_report(self, source: CameraSource, status: int, err_msg: str) -> None:
        """A main stream opened or failed (from its thread): the failure goes in the camera's
        recording report (the camera's status is its live stream's)."""
        if self._main_sources.get(source.camera_id) is source:
            if status:
                self._main_errors.pop(source.camera_id, None)
            else:
                self._main_errors[source.camera_id] = f"main stream: {err_msg}"

    def _close_main(self, camera_id: int) -> None:
        source = self._main_sources.pop(camera_id, None)
        self._main_errors.pop(camera_id, None)
        if source is not None:
            source.stop()

    def _stop(self, camera_id: int, reason: str) -> None:
        recorder = self.recorders.pop(camera_id)
        self._courses.pop(camera_id, None)
        source = self._recorder_sources.pop(camera_id, None)
        if source is not None:
            source.remove_stream_tap(recorder, reason)
        else:
            recorder.close(reason)
        log.info("camera %d: recording stopped (%s) after %d slice(s)", camera_id, reason,
                 recorder.slices)

    def _reconcile_snapshots(self) -> None:
        interval = self.snapshot_interval()
        sources = self._live_sources() if interval > 0 else {}
        for camera_id, (taker, source) in list(self._snapshots.items()):
            if sources.get(camera_id) is not source:
                del self._snapshots[camera_id]
                source.remove_stream_tap(taker, "snapshots off")
            else:
                taker.interval = interval
        for camera_id, source in sources.items():
            if camera_id not in self._snapshots:
                taker = SnapshotTaker(camera_id, self._spool, interval)
                self._snapshots[camera_id] = (taker, source)
                source.add_stream_tap(taker)

    # Running

    async def run(self, stop: asyncio.Event, send: Send) -> None:
        """Follow the timetable and report, until ``stop``; then finish every recording."""
        try:
            while not stop.is_set():
                now = time.time()
                self.reconcile(now)
                self._report(send)
                courses = [c for camera_id, courses in self._state.courses.items()
                           if camera_id in self._state.cameras for c in courses]
                delay = min(TICK, seconds_to_change(courses, now, zone_of(self._state.clock)))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            self.close("the agent is stopping")

    def _report(self, send: Send, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_EVERY:
            return
        self._last_report = now
        for camera_id in self._state.cameras:
            recorder = self.recorders.get(camera_id)
            record_error = self._main_errors.get(camera_id) or (
                recorder.last_error if recorder is not None else "")
            report = {"recording": int(recorder is not None and recorder.recording),
                      "spool_bytes": self._spool.bytes_used(camera_id),
                      "upload_error": self._upload_errors(camera_id),
                      "record_error": record_error}
            if self._reported.get(camera_id) != report:
                self._reported[camera_id] = report
                send({"type": "recording", "camera_id": camera_id, **report})

    def linked(self) -> None:
        """A new link: every camera's report goes out again."""
        self._reported.clear()
        self._last_report = 0.0
        self._wake.set()

    def close(self, reason: str, finish_within: float = FINISH_WITHIN) -> None:
        """Stop every tap; wait up to ``finish_within`` seconds for the last slices to be finished
        (remuxed, in the spool): one not finished by then is a part the next start finishes."""
        recorders = list(self.recorders.values())
        for camera_id in list(self.recorders):
            self._stop(camera_id, reason)
        deadline = time.monotonic() + finish_within
        for recorder in recorders:
            if not recorder.join(max(0.0, deadline - time.monotonic())):
                log.warning("camera %d: its last slice is finished at the next start",
                            recorder.camera_id)
        for taker, source in self._snapshots.values():
            source.remove_stream_tap(taker, reason)
        self._snapshots.clear()
        for camera_id in list(self._main_sources):
            self._close_main(camera_id)
