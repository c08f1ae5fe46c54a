"""A camera's recording: the source's packets, stream-copied into slices in the spool.

A :class:`Recorder` is a stream tap (see docs/RECORDING.md). It writes fragmented MP4 (one fragment
per GOP, flushed per packet, so a killed agent loses at most the GOP being written) to
``spool.new_part(...)``, cuts at the first video keyframe at or after each ``slice_seconds`` of media,
and hands each finished part to :meth:`Spool.finish` on a worker thread (the remux and checksum take
far longer than a packet may).

Timestamps: every packet is placed on the recorder's own timeline, one per stream, which only moves
forward: a looping file or a reopened source starts a new epoch that continues where every stream
ended, so audio and video stay together. Each file then starts at 0 (its first video packet's dts).

Overlap (the gatherer's ``inter_val``): the last N whole GOPs (video and the audio demuxed between
them) are kept, bounded, so a new slice can start with them and a seam loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av

from .snapshots import Worker
from .spool import Spool

log = logging.getLogger(__name__)

FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
#: The overlap kept in memory, at most (a longer GOP is not kept: that seam has no overlap).
MAX_OVERLAP_BYTES = 48 * 1024 * 1024
#: A forward jump of a stream's timestamps longer than this is a discontinuity, not a pause.
MAX_GAP = 10.0
#: The same write error is logged again after this many seconds.
LOG_EVERY = 60.0


@dataclass(frozen=True)
class SlicePolicy:
    """``slice_seconds``: media seconds per slice, 0 = never cut; ``overlap_gops`` (0..3): GOPs of the
    previous slice each new slice starts with. A slice's length is measured from its first keyframe,
    the overlap's when it has one, so every file is about ``slice_seconds`` long (each has at least
    one GOP of its own)."""

    slice_seconds: float = 0.0
    overlap_gops: int = 0

    def __post_init__(self) -> None:
        if not self.slice_seconds >= 0:
            raise ValueError("slice_seconds must be 0 or more")
        if not 0 <= self.overlap_gops <= 3:
            raise ValueError("overlap_gops must be 0..3")


class _Rec(NamedTuple):
    """A packet copied out of the source, on the recorder's timeline (ticks of its track's base)."""

    kind: str  # "v" or "a"
    data: bytes
    dts: int
    pts: int
    duration: int
    key: bool
    arrived: float  # time.time() when it came


@dataclass
class _Track:
    """One input stream on the recorder's timeline: output = input (in ``tb``) + ``offset``."""

    stream: Any
    tb: Fraction
    offset: int = 0
    last_in: int | None = None
    last_out: int | None = None
    step: int = 0  # the last dts step, for packets without a duration
    end: float = 0.0  # seconds: where this stream's last packet ends


@dataclass
class _Slice:
    part: Path
    out: Any
    streams: dict[str, Any]
    origin: dict[str, int]  # timeline ticks that are 0 in this file, per track
    key_at: float  # timeline seconds of the slice's first keyframe (the overlap's, if any)
    start_wall: float
    end_wall: float = 0.0
    packets: int = 0
    errors: int = 0  # the recorder's error count when the slice started
    last: dict[str, int] = field(default_factory=dict)  # the last dts written, per track


class Recorder:
    """Records one camera while it is a tap of the camera's source. Thread-safe."""

    def __init__(self, camera_id: int, spool: Spool, policy: SlicePolicy | None = None) -> None:
        self.camera_id = camera_id
        self.spool = spool
        self._lock = threading.RLock()
        self._policy = policy or SlicePolicy()
        self._worker = Worker(f"recorder-{camera_id}")
        self._slices = 0
        self._errors = 0
        self._last_error = ""
        self._logged: tuple[str, float] = ("", 0.0)
        self._said_audio = False  # that the source's audio is not recorded
        self._slice: _Slice | None = None
        self._signature: tuple[Any, ...] | None = None
        self._tracks: dict[str, _Track] = {}
        self._rebase: set[str] = set()  # tracks whose next packet starts a new epoch
        self._epoch: tuple[float, float] | None = None  # (timeline s, input s) the epoch starts at
        self._synced = False  # a video keyframe came since open()
        self._gops: deque[list[_Rec]] = deque()  # whole GOPs, newest last
        self._gop: list[_Rec] | None = None  # the GOP being demuxed; None: too big to keep
        self._kept = 0  # bytes in _gops and _gop
        self._stopped: tuple[float, str] | None = None  # when and why the last slice stopped

    # State

    @property
    def policy(self) -> SlicePolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: SlicePolicy) -> None:
        """Takes effect at the next keyframe (a shorter slice cuts there)."""
        with self._lock:
            self._policy = policy
            while len(self._gops) > policy.overlap_gops:
                self._kept -= _bytes(self._gops.popleft())

    @property
    def recording(self) -> bool:
        """A slice is being written."""
        return self._slice is not None

    @property
    def slices(self) -> int:
        """Slices handed to the spool so far."""
        return self._slices

    @property
    def last_error(self) -> str:
        """The last write error, "" again once a slice ends without one."""
        return self._last_error

    @property
    def errors(self) -> int:
        """Write errors so far."""
        return self._errors

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the spool finished every slice handed to it; False on timeout."""
        return self._worker.join(timeout)

    # The stream tap

    def open(self, streams: Sequence[Any]) -> None:
        with self._lock:
            video = streams[0] if streams else None
            audio = streams[1] if len(streams) > 1 and self._records_audio(streams[1]) else None
            signature = _signature(video, audio)
            if signature != self._signature:
                if self._slice is not None:
                    self._end_slice()
                self._drop_overlap()
                self._tracks = {}
                self._signature = signature
            tracks = {"v": video, "a": audio}
            for kind, stream in tracks.items():
                if stream is None:
                    continue
                track = self._tracks.get(kind)
                if track is None:
                    self._tracks[kind] = _Track(stream, stream.time_base or Fraction(1, 90000))
                else:
                    track.stream = stream
            self._rebase = set(self._tracks)
            self._epoch = None
            self._synced = False

    def packet(self, packet: av.Packet) -> None:
        with self._lock:
            kind = self._kind(packet)
            if kind is None or not packet.size or (packet.dts is None and packet.pts is None):
                return
            key = kind == "v" and packet.is_keyframe
            if not self._synced:
                if not key:
                    return
                self._synced = True
            rec = self._stamp(kind, packet, key)
            if key:
                self._keyframe(rec)
            if self._slice is not None:
                self._keep(rec)
                if not self._write(rec) and key:
                    self._start_slice(rec, [])  # a failed keyframe starts the next slice at once
                    if self._slice is not None:
                        self._keep(rec)
                        self._write(rec)

    def close(self, reason: str) -> None:
        with self._lock:
            if self._slice is not None:
                log.info("camera %d: recording stops (%s)", self.camera_id, reason)
                self._end_slice()
                self._stopped = (time.monotonic(), reason)
            self._drop_overlap()
            for track in self._tracks.values():
                track.stream = None
            self._synced = False

    # Inside (under the lock)

    def _records_audio(self, stream: Any) -> bool:
        codec = getattr(stream, "codec_context", None)
        if stream.type == "audio" and codec is not None and codec.name == "aac" and codec.extradata:
            return True
        if not self._said_audio:
            log.info("camera %d: its audio is not recorded (AAC with its configuration only)",
                     self.camera_id)
            self._said_audio = True
        return False

    def _kind(self, packet: av.Packet) -> str | None:
        stream = packet.stream
        for kind, track in self._tracks.items():
            if track.stream is not None and stream is track.stream:
                return kind
        return None

    def _stamp(self, kind: str, packet: av.Packet, key: bool) -> _Rec:
        """Place ``packet`` on the timeline: a step back (a loop, a restart) or a long jump forward
        starts a new epoch for every track, continuing from where the furthest one ended."""
        track = self._tracks[kind]
        source_tb = packet.time_base or track.tb

        def ticks(value: int) -> int:
            return value if source_tb == track.tb else round(value * source_tb / track.tb)

        dts_in = ticks(packet.dts if packet.dts is not None else packet.pts)
        pts_in = ticks(packet.pts) if packet.pts is not None else dts_in
        duration = ticks(packet.duration) if packet.duration else 0
        if kind not in self._rebase and track.last_in is not None and (
                dts_in < track.last_in or float((dts_in - track.last_in) * track.tb) > MAX_GAP):
            self._rebase = set(self._tracks)
            self._epoch = None
        if kind in self._rebase:
            if self._epoch is None:
                self._epoch = (max(t.end for t in self._tracks.values()), float(dts_in * track.tb))
            at, origin = self._epoch
            track.offset = round(Fraction(at - origin) / track.tb)
            self._rebase.discard(kind)
        dts = dts_in + track.offset
        if track.last_out is not None and dts <= track.last_out:
            bump = track.last_out + max(1, track.step) - dts
            track.offset += bump
            dts += bump
        pts = max(pts_in + track.offset, dts)
        track.step = dts - track.last_out if track.last_out is not None else duration
        duration = duration or track.step
        track.last_in, track.last_out = dts_in, dts
        track.end = float((dts + duration) * track.tb)
        return _Rec(kind, bytes(packet), dts, pts, duration, key, time.time())

    def _keyframe(self, rec: _Rec) -> None:
        """A GOP ends: cut here when the slice is long enough, start a slice when none is open."""
        policy = self._policy
        video = self._tracks["v"]
        at = float(rec.dts * video.tb)
        overlap: list[list[_Rec]] = []
        if (self._slice is not None and policy.slice_seconds > 0
                and at - self._slice.key_at >= policy.slice_seconds - 1e-6):
            gops = [*self._gops, *([self._gop] if self._gop is not None else [])]
            overlap = gops[-policy.overlap_gops:] if policy.overlap_gops and self._gop is not None else []
            self._end_slice()
        # the GOP that just ended is whole: keep it for a later seam
        if self._gop is not None and policy.overlap_gops and policy.slice_seconds > 0:
            self._gops.append(self._gop)
            while len(self._gops) > policy.overlap_gops:
                self._kept -= _bytes(self._gops.popleft())
        else:
            self._drop_overlap()
        self._gop = []
        self._kept = sum(_bytes(g) for g in self._gops)
        if self._slice is None:
            self._start_slice(rec, overlap)

    def _keep(self, rec: _Rec) -> None:
        if self._gop is None or not self._policy.overlap_gops or not self._policy.slice_seconds:
            return
        self._kept += len(rec.data)
        while self._kept > MAX_OVERLAP_BYTES and self._gops:
            self._kept -= _bytes(self._gops.popleft())
        if self._kept > MAX_OVERLAP_BYTES:
            self._drop_overlap()
            self._gop = None  # this GOP is too long to keep: the next seam has no overlap
        else:
            self._gop.append(rec)

    def _drop_overlap(self) -> None:
        self._gops.clear()
        self._gop = []
        self._kept = 0

    def _start_slice(self, rec: _Rec, overlap: list[list[_Rec]]) -> None:
        first = overlap[0][0] if overlap else rec
        video = self._tracks["v"]
        origin_s = first.dts * video.tb
        try:
            part = self.spool.new_part(self.camera_id, first.arrived)
            out = av.open(str(part), "w", format="mp4", options=dict(FRAGMENTED))
        except (av.FFmpegError, OSError) as exc:
            self._failed("cannot start a slice", exc)
            return
        try:
            streams = {kind: out.add_stream_from_template(track.stream)
                       for kind, track in self._tracks.items() if track.stream is not None}
        except (av.FFmpegError, OSError, ValueError) as exc:
            _close(out)
            _unlink(part)
            self._failed("cannot start a slice", exc)
            return
        origin = {kind: round(origin_s / track.tb) for kind, track in self._tracks.items()}
        origin["v"] = first.dts
        self._slice = _Slice(part, out, streams, origin, float(origin_s), first.arrived,
                             errors=self._errors)
        if self._stopped is not None:  # the source came back: say how much is missing
            since, reason = self._stopped
            log.warning("camera %d: recording again after a gap of %.1f s (%s)", self.camera_id,
                        time.monotonic() - since, reason)
            self._stopped = None
        for gop in overlap:
            for old in gop:
                if not self._write(old):
                    return

    def _write(self, rec: _Rec) -> bool:
        """Mux ``rec`` into the open slice; False when that failed (the slice is then ended)."""
        piece = self._slice
        assert piece is not None
        stream = piece.streams.get(rec.kind)
        if stream is None:
            return True
        dts = rec.dts - piece.origin[rec.kind]
        if dts < 0 or (rec.kind in piece.last and dts <= piece.last[rec.kind]):
            return True  # audio from before the slice's first keyframe
        packet = av.Packet(rec.data)
        packet.dts, packet.pts = dts, rec.pts - piece.origin[rec.kind]
        packet.duration = rec.duration
        packet.time_base = self._tracks[rec.kind].tb
        packet.is_keyframe = rec.key
        packet.stream = stream
        try:
            piece.out.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            self._failed("cannot write the recording", exc)
            self._end_slice()
            return False
        piece.last[rec.kind] = dts
        piece.end_wall = rec.arrived
        piece.packets += 1
        return True

    def _end_slice(self) -> None:
        """Hand the open slice to the worker, which closes it (writing its last fragment) and has
        the spool finish it: the source's thread never waits for either."""
        piece, self._slice = self._slice, None
        if piece is None:
            return
        if piece.packets:
            self._slices += 1
        self._worker.submit(lambda: self._finish(piece))

    def _finish(self, piece: _Slice) -> None:
        """In the worker."""
        error = _close(piece.out)
        with self._lock:
            if error is not None:
                self._note("cannot finish a slice", error)
            elif self._errors == piece.errors and self._last_error:
                log.info("camera %d: a slice was recorded without errors again", self.camera_id)
                self._last_error = ""
        if not piece.packets:
            _unlink(piece.part)
            return
        self.spool.finish(piece.part, self.camera_id, piece.start_wall,
                          max(piece.end_wall, piece.start_wall))

    def _failed(self, what: str, exc: BaseException) -> None:
        """A write failed: no overlap into the next slice, which starts at a keyframe."""
        self._note(what, exc)
        self._drop_overlap()

    def _note(self, what: str, exc: BaseException) -> None:
        message = f"{what}: {getattr(exc, 'strerror', None) or exc}"
        self._last_error = message
        self._errors += 1
        now = time.monotonic()
        if message != self._logged[0] or now - self._logged[1] >= LOG_EVERY:
            log.warning("camera %d: %s", self.camera_id, message)
            self._logged = (message, now)


def _signature(video: Any, audio: Any) -> tuple[Any, ...]:
    """What must stay the same for a reopened source to go on in the same file."""
    def of(stream: Any) -> tuple[Any, ...]:
        if stream is None:
            return ()
        codec = stream.codec_context
        size = (codec.width, codec.height) if stream.type == "video" else (codec.sample_rate,
                                                                           codec.layout.nb_channels)
        return (codec.name, *size, bytes(codec.extradata or b""))
    return (of(video), of(audio))


def _bytes(gop: list[_Rec]) -> int:
    return sum(len(rec.data) for rec in gop)


def _close(container: Any) -> BaseException | None:
    try:
        container.close()
    except (av.FFmpegError, OSError) as exc:
        return exc
    return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
