"""Camera sources: where each camera's video comes from, and a thread that keeps it open.

Mode 1 reads an MP4 file on this machine, looped and paced in real time; mode 2 an rtsp:// or
rtmp:// URL; mode 0 an IP camera's RTSP URL built from its address, user, password and its vendor's
template. PyAV calls block, so each open source runs in its own thread and reports to the agent's
event loop through ``report(source, status, err_msg)``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import av

from .config import AgentConfig

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
MAX_BACKOFF = 30.0

#: ``report(source, status, err_msg)``, called from the source's thread.
Report = Callable[["CameraSource", int, str], None]


class SourceError(Exception):
    """The source cannot be used; the message is what the camera's status reports."""


def source_url(camera: dict[str, Any], config: AgentConfig) -> str:
    mode = camera["stream_prop"]
    if mode == 1:
        if not camera["stream_mp4"]:
            raise SourceError("no MP4 file configured")
        return camera["stream_mp4"]
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


def describe(url: str) -> str:
    """``url`` without its credentials, for logs and status messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class CameraSource:
    """Keeps one camera's source open in a thread until ``stop()``; reopens it on failure when
    ``reconnect()`` says so (the gatherer's auto_dvr), with jittered exponential backoff."""

    def __init__(self, camera_id: int, url: str, is_file: bool, report: Report,
                 reconnect: Callable[[], bool]) -> None:
        self.camera_id = camera_id
        self.url = url
        self.is_file = is_file
        self._report = report
        self._reconnect = reconnect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

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
                self._report(self, 0, message)
                if not self._reconnect():
                    self._stop.wait()
                    break
                failures += 1
                delay = min(MAX_BACKOFF, 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                self._stop.wait(delay)

    def _read(self) -> None:
        options = {} if self.is_file else {"rtsp_transport": "tcp"}
        with av.open(self.url, options=options, timeout=(OPEN_TIMEOUT, READ_TIMEOUT)) as container:
            if not container.streams.video:
                raise SourceError("no video stream")
            stream = container.streams.video[0]
            self._report(self, 1, "")
            log.info("camera %d: source %s is open (%s %dx%d)", self.camera_id,
                     describe(self.url), stream.codec_context.name, stream.width, stream.height)
            while not self._stop.is_set():
                self._pace(container, stream)
                if not self.is_file:
                    raise SourceError("the stream ended")
                container.seek(0)

    def _pace(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
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
