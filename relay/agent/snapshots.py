"""A camera's keyframes as JPEG pictures: the spool's posters and the timed snapshots.

The picture is made from the stream's own packets (no second connection to the camera): one keyframe
is decoded by a fresh decoder made from the stream's codec parameters (an H.264 IDR needs nothing
else) and encoded with FFmpeg's ``mjpeg`` encoder (Pillow is not a dependency). Decoding takes a few
milliseconds per picture, so it runs off the source's thread, in a :class:`Worker`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

import av

if TYPE_CHECKING:
    from .spool import Spool

log = logging.getLogger(__name__)

#: A poster travels in the upload's first request, which takes at most 1 MiB of it.
MAX_JPEG = 1024 * 1024
#: mjpeg quantiser bounds, best first; a picture over ``max_bytes`` is made again coarser.
_QUALITIES = ((2, 5), (6, 12), (14, 31))


@dataclass(frozen=True)
class VideoParams:
    """What a decoder needs to know of a video stream, kept apart from the stream so a picture can be
    made after its container closed."""

    codec: str
    width: int
    height: int
    extradata: bytes | None

    @classmethod
    def of(cls, stream: Any) -> VideoParams:
        codec = stream.codec_context
        return cls(codec.name, codec.width, codec.height, bytes(codec.extradata or b"") or None)


class Jpeg(NamedTuple):
    data: bytes
    width: int
    height: int


def keyframe_jpeg(params: VideoParams, packets: Sequence[bytes], max_bytes: int = MAX_JPEG) -> Jpeg | None:
    """The first picture ``packets`` (a keyframe first) decode to, as a JPEG; None when they decode to
    nothing (not a keyframe, corrupt data, an unknown codec)."""
    try:
        decoder: Any = av.CodecContext.create(params.codec, "r")
        if params.extradata:
            decoder.extradata = params.extradata
        decoder.width, decoder.height = params.width, params.height
        decoder.thread_count = 1
        frames: list[Any] = []
        for data in packets:
            frames += decoder.decode(av.Packet(data))
            if frames:
                break
        if not frames:
            frames = decoder.decode(None)
        if not frames:
            return None
        picture = frames[0].reformat(format="yuvj420p")
        for qmin, qmax in _QUALITIES:
            data = _mjpeg(picture, qmin, qmax)
            if len(data) <= max_bytes:
                return Jpeg(data, picture.width, picture.height)
    except (av.FFmpegError, ValueError) as exc:
        log.debug("no picture from a %s keyframe: %s", params.codec, exc)
    return None


def _mjpeg(picture: Any, qmin: int, qmax: int) -> bytes:
    encoder: Any = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = picture.width, picture.height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qmin": str(qmin), "qmax": str(qmax)}
    return b"".join(bytes(p) for p in encoder.encode(picture) + encoder.encode(None))


class Worker:
    """Runs jobs one at a time, in order, in a daemon thread that exists only while there is work (so
    a recorder or snapshot taker that is dropped leaves no thread behind)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._running = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self.name, daemon=True).start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job ran; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._running = False
                    self._cond.notify_all()
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:
                log.exception("%s: a job failed", self.name)


class SnapshotTaker:
    """A stream tap that turns one video keyframe every ``interval`` seconds (the gatherer's
    ``snap_val`` × ``minute_length``) into a spool snapshot. The first keyframe after it is made is
    taken at once; a keyframe that makes no picture is retried at the next one."""

    def __init__(self, camera_id: int, spool: Spool, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.camera_id = camera_id
        self.spool = spool
        self.taken = 0
        self.last_error = ""
        self._clock = clock
        self._lock = threading.Lock()
        self._interval = float(interval)
        self._last: float | None = None  # clock() of the last snapshot made
        self._busy = False  # a picture is being made
        self._video: Any = None
        self._params: VideoParams | None = None
        self._worker = Worker(f"snapshots-{camera_id}")

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        """Seconds between snapshots; 0 or less takes none."""
        with self._lock:
            self._interval = float(seconds)

    def due(self) -> bool:
        with self._lock:
            return self._due()

    def _due(self) -> bool:
        return self._interval > 0 and (self._last is None or self._clock() - self._last >= self._interval)

    def open(self, streams: Sequence[Any]) -> None:
        with self._lock:
            self._video = streams[0] if streams else None
            self._params = VideoParams.of(self._video) if self._video is not None else None

    def packet(self, packet: av.Packet) -> None:
        with self._lock:
            if (packet.stream is not self._video or not packet.is_keyframe or self._busy
                    or self._params is None or not self._due()):
                return
            self._busy = True
            job = _Grab(self, self._params, bytes(packet), time.time(), self._clock())
        self._worker.submit(job)

    def close(self, reason: str) -> None:
        with self._lock:
            self._video = None

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the picture being made, if any."""
        return self._worker.join(timeout)

    def _done(self, at: float | None, error: str) -> None:
        with self._lock:
            self._busy = False
            if at is not None:
                self._last = at
                self.taken += 1
            self.last_error = error


@dataclass
class _Grab:
    taker: SnapshotTaker
    params: VideoParams
    data: bytes
    taken_at: float  # wall clock, for the manifest
    at: float  # the taker's clock, for the interval

    def __call__(self) -> None:
        picture = keyframe_jpeg(self.params, [self.data])
        if picture is None:
            self.taker._done(None, "a keyframe made no picture")
            return
        try:
            self.taker.spool.add_snapshot(self.taker.camera_id, picture.data, self.taken_at,
                                          picture.width, picture.height)
        except OSError as exc:
            log.warning("camera %d: cannot spool a snapshot: %s", self.taker.camera_id, exc)
            self.taker._done(self.at, f"cannot spool a snapshot: {exc.strerror or exc}")
            return
        self.taker._done(self.at, "")
