"""Camera sources: where each camera's video comes from, and a thread that keeps it open.

Mode 1 reads an MP4 file on this machine (an absolute path, inside the config's ``media_dirs`` when
it names any; never a URL, so the relay's API cannot make the agent fetch one), looped and paced in
real time; mode 2 an rtsp:// or rtmp:// URL; mode 0 an IP camera's RTSP URL built from its address,
user, password and its vendor's template. PyAV calls block, so each open source runs in its own
thread and reports to the agent's event loop through ``report(source, status, err_msg)``.

While a camera is pushed live, its source hands every video frame (see :mod:`.push`) to the push's
tap, in its own thread. It keeps the current GOP (from the last IDR) so a new push starts with it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av

from ..link.protocol import is_file_path
from ..media.frames import MediaFrame
from ..media.gop import GopCache
from ..media.pipelines import DEFAULT_KBPS, Passthrough, Transcoder, is_passthrough, source_rate
from ..media.timeline import Clock90
from .config import AgentConfig

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
MAX_BACKOFF = 30.0

#: ``report(source, status, err_msg)``, called from the source's thread.
Report = Callable[["CameraSource", int, str], None]
#: ``tap(frame)``, called from the source's thread for every frame while a push runs.
Tap = Callable[[MediaFrame], None]


class SourceError(Exception):
    """The source cannot be used; the message is what the camera's status reports."""


def source_url(camera: dict[str, Any], config: AgentConfig) -> str:
    mode = camera["stream_prop"]
    if mode == 1:
        return _media_file(camera["stream_mp4"], config)
    if mode == 2:
        url = camera["stream_url"]
        if not url.lower().startswith(("rtsp://", "rtmp://")):
            raise SourceError("stream_url is not rtsp:// or rtmp://")
        return url
    device = config.device(camera["device_ip"])
    try:
        password = base64.b64decode(camera["device_pass"] or "", validate=True).decode()
    except (binascii.Error, ValueError) as exc:
        raise SourceError("device_pass is not base64") from exc
    template = config.vendors[device.vendor if device else "hikvision"]
    return template.format(
        user=quote(camera["device_user"] or "", safe=""),
        password=quote(password, safe=""),
        ip=camera["device_ip"],
        rtsp_port=device.rtsp_port if device else 554,
        cmd_port=camera["device_cmd_port"],
    )


def _media_file(path: str, config: AgentConfig) -> str:
    """A mode-1 file as FFmpeg's ``file:`` URL (so no part of the name is read as a protocol)."""
    if not path:
        raise SourceError("no MP4 file configured")
    if not is_file_path(path):
        raise SourceError("stream_mp4 must be an absolute file path on this gatherer, not a URL")
    resolved = Path(path).resolve()
    if config.media_dirs and not any(resolved.is_relative_to(d) for d in config.media_dirs):
        raise SourceError("stream_mp4 is outside this gatherer's media folders")
    return "file:" + str(resolved)


def describe(url: str) -> str:
    """``url`` without its credentials, for logs and status messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class CameraSource:
    """Keeps one camera's source open in a thread until ``stop()``; reopens it on failure when
    ``reconnect()`` says so (the gatherer's auto_dvr), with jittered exponential backoff.

    ``state`` is ``"opening"`` until the first open, then ``"open"`` or ``"failed"`` (with
    ``error``), and ``"stopped"`` at the end. ``kbps()`` is the bit rate of a re-encoded push."""

    def __init__(self, camera_id: int, url: str, is_file: bool, report: Report,
                 reconnect: Callable[[], bool], kbps: Callable[[], int] | None = None) -> None:
        self.camera_id = camera_id
        self.url = url
        self.is_file = is_file
        self.state = "opening"
        self.error = ""
        self._report = report
        self._reconnect = reconnect
        self._kbps = kbps or (lambda: DEFAULT_KBPS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera_id}", daemon=True)
        self._clock = Clock90()
        self._pipeline: Passthrough | Transcoder | None = None
        # Guarded by _lock: the taps, and the current GOP handed to a new tap.
        self._lock = threading.Lock()
        self._taps: list[Tap] = []
        self._gop: GopCache[MediaFrame] = GopCache()  # synced: a keyframe passed since the open

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    # Taps (called from the event loop)

    def add_tap(self, tap: Tap) -> list[MediaFrame]:
        """Hand ``tap`` every frame from now on; returns the current GOP, which precedes them."""
        with self._lock:
            self._taps.append(tap)
            gop = self._gop.frames()
        if not gop:
            self.request_keyframe()
        return gop

    def remove_tap(self, tap: Tap) -> None:
        with self._lock:
            if tap in self._taps:
                self._taps.remove(tap)

    def request_keyframe(self) -> bool:
        """Ask for an IDR soon; False when the source is passed through (it cannot be asked)."""
        pipeline = self._pipeline
        return pipeline.request_keyframe() if pipeline is not None else False

    # The thread

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._read()
                failures = 0
            except (SourceError, av.FFmpegError, OSError) as exc:
                message = describe(str(exc)) or exc.__class__.__name__
                log.warning("camera %d: source %s failed: %s", self.camera_id, describe(self.url),
                            message)
                self.state, self.error = "failed", message
                self._report(self, 0, message)
                if not self._reconnect():
                    self._stop.wait()
                    break
                failures += 1
                delay = min(MAX_BACKOFF, 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                self._stop.wait(delay)
        self.state = "stopped"

    def _read(self) -> None:
        options = {} if self.is_file else {"rtsp_transport": "tcp"}
        # A file is read as MP4 only: another demuxer (HLS, concat) could fetch what it names.
        with av.open(self.url, format="mp4" if self.is_file else None, options=options,
                     timeout=(OPEN_TIMEOUT, READ_TIMEOUT)) as container:
            if not container.streams.video:
                raise SourceError("no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context
            pipeline: Passthrough | Transcoder = (
                Passthrough(stream, self._clock) if is_passthrough(codec)
                else Transcoder(stream, self._clock, self._kbps))
            with self._lock:
                self._gop.reset()
            self._clock.new_pass(source_rate(stream))
            self._pipeline = pipeline
            self.state, self.error = "open", ""
            self._report(self, 1, "")
            log.info("camera %d: source %s is open (%s %s %dx%d, %s)", self.camera_id,
                     describe(self.url), codec.name, codec.profile or "", stream.width,
                     stream.height, pipeline.label)
            try:
                while not self._stop.is_set():
                    self._pace(container, stream, pipeline)
                    self._emit(pipeline.end_pass())
                    if not self.is_file:
                        raise SourceError("the stream ended")
                    container.seek(0)
                    self._clock.new_pass()
            finally:
                self._pipeline = None
                pipeline.close()

    def _pace(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
              pipeline: Passthrough | Transcoder) -> None:
        """Read packets, in real time for files, until the end or ``stop()``."""
        started = time.monotonic()
        first: float | None = None
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if packet.pts is None or packet.time_base is None:
                continue
            at = float(packet.pts * packet.time_base)
            first = at if first is None else first
            while self.is_file and (ahead := (at - first) - (time.monotonic() - started)) > 0:
                if self._stop.wait(min(ahead, 1.0)):
                    return
            watched = bool(self._taps)
            try:
                frames = pipeline.feed(packet, watched)
            except av.FFmpegError as exc:
                log.debug("camera %d: skipping a packet: %s", self.camera_id, exc)
                continue
            if not watched and not pipeline.keeps_gop and self._gop:
                with self._lock:
                    self._gop.forget()
            self._emit(frames)

    def _emit(self, frames: list[MediaFrame]) -> None:
        """Keep the current GOP (bounded) and hand the frames to the taps."""
        if not frames:
            return
        with self._lock:
            for frame in frames:
                if self._gop.add(frame, frame.keyframe, len(frame.data)):
                    for tap in self._taps:
                        tap(frame)
