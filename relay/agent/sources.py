"""Camera sources: where each camera's video comes from, and a thread that keeps it open.

Mode 1 reads an MP4 file on this machine (an absolute path, inside the config's ``media_dirs`` when
it names any; never a URL, so the relay's API cannot make the agent fetch one), looped and paced in
real time; mode 2 an rtsp:// or rtmp:// URL; mode 0 an IP camera's RTSP URL built from its address,
user, password and its vendor's template. PyAV calls block, so each open source runs in its own
thread and reports to the agent's event loop through ``report(source, status, err_msg)``.

While a camera is pushed live, its source hands every video frame (made by a pipeline of
:mod:`relay.media.pipelines`) to the push's tap, in its own thread. It keeps the current GOP (from
the last IDR) so a new push starts with it. Stream taps (a recorder, a snapshot taker: see
docs/RECORDING.md) get the demuxed packets themselves, video and AAC audio, starting with the raw
GOP the source keeps for them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
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
#: A stream tap's cached GOP (raw packets since the last video keyframe) is kept up to this size.
MAX_RAW_GOP_PACKETS = 2000
MAX_RAW_GOP_BYTES = 32 * 1024 * 1024


class StreamTap(Protocol):
    """A consumer of the demuxed packets themselves (a recorder, a snapshot taker): stream copy,
    any profile, audio too. Called from the source's thread, one call at a time (docs/RECORDING.md)."""

    def open(self, streams: Sequence[av.stream.Stream]) -> None: ...

    def packet(self, packet: av.Packet) -> None: ...

    def close(self, reason: str) -> None: ...


class SourceError(Exception):
    """The source cannot be used; the message is what the camera's status reports."""


def source_url(camera: dict[str, Any], config: AgentConfig, stream: str = "sub") -> str:
    """Where the camera's video is read: for an IP camera (mode 0) its sub stream for live
    (``stream="sub"``) or its main stream for recording (``"main"``); modes 1 and 2 have one."""
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
    vendor = config.vendors[device.vendor if device else "hikvision"]
    template = vendor.main if stream == "main" else vendor.sub
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
                 reconnect: Callable[[], bool], kbps: Callable[[], int] | None = None,
                 name: str = "") -> None:
        self.camera_id = camera_id
        self.url = url
        self.is_file = is_file
        self.state = "opening"
        self.error = ""
        self._report = report
        self._reconnect = reconnect
        self._kbps = kbps or (lambda: DEFAULT_KBPS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name or f"camera-{camera_id}",
                                        daemon=True)
        self._clock = Clock90()
        self._pipeline: Passthrough | Transcoder | None = None
        # Guarded by _lock: the taps, and the current GOP handed to a new tap.
        self._lock = threading.Lock()
        self._taps: list[Tap] = []
        self._gop: GopCache[MediaFrame] = GopCache()  # synced: a keyframe passed since the open
        # Also guarded by _lock: stream taps, those still to be opened, the open streams, and the
        # raw packets since the last video keyframe (what a new stream tap starts with).
        self._stream_taps: list[StreamTap] = []
        self._unopened: list[StreamTap] = []
        self._streams: list[av.stream.Stream] = []
        self._raw_gop: GopCache[av.Packet] = GopCache(MAX_RAW_GOP_PACKETS, MAX_RAW_GOP_BYTES)

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

    def add_stream_tap(self, tap: StreamTap) -> None:
        """Hand ``tap`` the demuxed packets: from the source's thread, ``open`` (now if the source
        is open, else once it opens), the cached GOP, then every packet."""
        with self._lock:
            if tap not in self._stream_taps:
                self._stream_taps.append(tap)
                self._unopened.append(tap)

    def remove_stream_tap(self, tap: StreamTap, reason: str = "stopped") -> None:
        """Stop handing ``tap`` packets; once its last call has returned, ``close`` it."""
        with self._lock:
            if tap not in self._stream_taps:
                return
            self._stream_taps.remove(tap)
            if tap in self._unopened:
                self._unopened.remove(tap)
        tap.close(reason)

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
            audio = [a for a in container.streams.audio if a.codec_context.name == "aac"][:1]
            codec = stream.codec_context
            pipeline: Passthrough | Transcoder = (
                Passthrough(stream, self._clock) if is_passthrough(codec)
                else Transcoder(stream, self._clock, self._kbps))
            with self._lock:
                self._gop.reset()
                self._streams = [stream, *audio]
                self._unopened = list(self._stream_taps)
                self._raw_gop.reset()
            self._clock.new_pass(source_rate(stream))
            self._pipeline = pipeline
            self.state, self.error = "open", ""
            self._report(self, 1, "")
            log.info("camera %d: source %s is open (%s %s %dx%d, %s)", self.camera_id,
                     describe(self.url), codec.name, codec.profile or "", stream.width,
                     stream.height, pipeline.label)
            closing = "stopped"
            try:
                while not self._stop.is_set():
                    self._pace(container, [stream, *audio], pipeline)
                    self._emit(pipeline.end_pass())
                    if self._stop.is_set():
                        break  # stopped on purpose: not a failure
                    if not self.is_file:
                        raise SourceError("the stream ended")
                    container.seek(0)
                    self._clock.new_pass()
            except (SourceError, av.FFmpegError, OSError) as exc:
                closing = f"the source failed: {describe(str(exc)) or exc.__class__.__name__}"
                raise
            finally:
                self._pipeline = None
                pipeline.close()
                self._close_stream_taps(closing)

    def _pace(self, container: av.container.InputContainer, streams: list[av.stream.Stream],
              pipeline: Passthrough | Transcoder) -> None:
        """Read packets, in real time for files, until the end or ``stop()``; video goes to the
        pipeline (push taps), every packet to the stream taps."""
        started = time.monotonic()
        first: float | None = None
        video = streams[0]
        for packet in container.demux(*streams):
            if self._stop.is_set():
                return
            if packet.pts is None or packet.time_base is None or not packet.size:
                continue
            self._to_stream_taps(packet, packet.stream is video)
            if packet.stream is not video:
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

    def _to_stream_taps(self, packet: av.Packet, is_video: bool) -> None:
        """Keep the raw GOP (it starts at a video keyframe), open new taps on it, feed them all."""
        with self._lock:
            keyframe = is_video and packet.is_keyframe
            before = len(self._raw_gop)
            self._raw_gop.add(packet, keyframe, packet.size)
            if not self._stream_taps:
                return
            # A new tap opens on a GOP kept whole up to this packet (else it waits for the next).
            ready = len(self._raw_gop) == (1 if keyframe else before + 1) and (keyframe or before > 0)
            for tap in self._stream_taps:
                if tap in self._unopened:
                    if not ready:
                        continue  # opened on the next cached GOP
                    self._unopened.remove(tap)
                    self._call(tap, "open", self._streams)
                    for cached in self._raw_gop.frames():
                        self._call(tap, "packet", cached)
                else:
                    self._call(tap, "packet", packet)

    def _call(self, tap: StreamTap, method: str, argument: Any) -> None:
        """One tap's failure is logged and ends only that tap's call, never the source."""
        try:
            getattr(tap, method)(argument)
        except Exception:
            log.exception("camera %d: a stream tap failed in %s", self.camera_id, method)

    def _close_stream_taps(self, reason: str) -> None:
        with self._lock:
            opened = [tap for tap in self._stream_taps if tap not in self._unopened]
            self._unopened = list(self._stream_taps)
            self._streams = []
            self._raw_gop.reset()
            for tap in opened:
                self._call(tap, "close", reason)

    def _emit(self, frames: list[MediaFrame]) -> None:
        """Keep the current GOP (bounded) and hand the frames to the taps."""
        if not frames:
            return
        with self._lock:
            for frame in frames:
                if self._gop.add(frame, frame.keyframe, len(frame.data)):
                    for tap in self._taps:
                        tap(frame)
