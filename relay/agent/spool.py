"""The agent's spool: recordings and snapshots kept on disk until the relay holds them.

One directory, flat. A slice being written is ``<name>.part.mp4`` (fragmented MP4, see
:mod:`.recorder`); :meth:`Spool.finish` remuxes it once to ``<name>.mp4`` (``+faststart``), decodes its
first keyframe to ``<name>.poster.jpg`` and writes ``<name>.json`` last, atomically: a manifest is the
mark of an entry ready to upload, so a crash at any step leaves either a part (finished again at the
next start) or files no manifest names (removed at the next start). ``<name>`` is
``<camera_id>-<UTC yyyymmddTHHMMSS>-<6 hex>``, picked here.

Past ``max_bytes`` the oldest entries not yet sent are dropped, so a relay that is away for days
costs the newest recordings nothing. Files may vanish underneath (an operator, a full disk): every
step tolerates a missing file.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from .snapshots import MAX_JPEG, VideoParams, keyframe_jpeg

log = logging.getLogger(__name__)

PART = ".part.mp4"
_NAME = re.compile(r"^(\d+)-(\d{8}T\d{6})-[0-9a-f]{6}$")
_FIELDS = ("upload_id", "kind", "camera_id", "file", "poster", "size", "sha256", "start_time",
           "end_time", "duration", "width", "height")


@dataclass(frozen=True)
class SpoolEntry:
    """One manifest: a finished recording or a snapshot, ready to upload."""

    manifest: Path
    upload_id: str
    kind: str  # "record" or "snapshot"
    camera_id: int
    file: Path
    poster: Path | None
    size: int
    sha256: str
    start_time: float
    end_time: float
    duration: float
    width: int
    height: int

    def fields(self) -> dict[str, Any]:
        """The manifest's JSON object (file names, not paths)."""
        return {"upload_id": self.upload_id, "kind": self.kind, "camera_id": self.camera_id,
                "file": self.file.name, "poster": self.poster.name if self.poster else "",
                "size": self.size, "sha256": self.sha256, "start_time": self.start_time,
                "end_time": self.end_time, "duration": self.duration, "width": self.width,
                "height": self.height}


def _ignore(entry: SpoolEntry, reason: str = "") -> None:
    return None


class Spool:
    """The spool directory ``root``; ``max_bytes`` <= 0 means no cap. ``on_ready(entry)`` is called
    when an entry becomes ready (finish, add_snapshot; not for what :meth:`recover` returns),
    ``on_drop(entry, reason)`` when the cap drops one; both from any thread."""

    def __init__(self, root: Path, max_bytes: int,
                 on_ready: Callable[[SpoolEntry], None] = _ignore,
                 on_drop: Callable[[SpoolEntry, str], None] = _ignore) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.on_ready = on_ready
        self.on_drop = on_drop
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, SpoolEntry] = {}  # by manifest name
        self._bytes: dict[str, int] = {}  # by manifest name: manifest + file + poster
        for manifest in sorted(self.root.glob("*.json")):
            self._load(manifest)

    # Reading

    def pending(self) -> list[SpoolEntry]:
        """Ready entries, oldest start_time first (entries whose manifest vanished are forgotten)."""
        with self._lock:
            for name in [n for n in self._entries if not (self.root / n).exists()]:
                self._forget(name)
            return sorted(self._entries.values(), key=lambda e: (e.start_time, e.manifest.name))

    def bytes_used(self, camera_id: int | None = None) -> int:
        """Bytes of the ready entries and of the parts being written (of one camera, or all)."""
        with self._lock:
            used = sum(self._bytes[name] for name, entry in self._entries.items()
                       if camera_id is None or entry.camera_id == camera_id)
        for part in self.root.glob("*" + PART):
            if camera_id is None or _camera_of(part.name[:-len(PART)]) == camera_id:
                used += _size(part)
        return used

    # Changing

    def remove(self, entry: SpoolEntry) -> None:
        """The relay holds ``entry``: its manifest goes first (it stops being an entry), then files."""
        with self._lock:
            self._forget(entry.manifest.name)
        self._delete(entry)

    def _delete(self, entry: SpoolEntry) -> None:
        _unlink(entry.manifest)
        _fsync_dir(self.root)
        _unlink(entry.file)
        if entry.poster is not None:
            _unlink(entry.poster)

    def add_snapshot(self, camera_id: int, jpeg: bytes, taken_at: float, width: int,
                     height: int) -> SpoolEntry:
        name = self._new_name(camera_id, taken_at)
        file = self.root / f"{name}.jpg"
        _write_synced(file, jpeg)
        entry = SpoolEntry(self.root / f"{name}.json", secrets.token_hex(16), "snapshot", camera_id,
                           file, None, len(jpeg), hashlib.sha256(jpeg).hexdigest(), taken_at,
                           taken_at, 0.0, width, height)
        self._publish(entry)
        return entry

    def new_part(self, camera_id: int, start_time: float) -> Path:
        """A new, not yet existing ``<name>.part.mp4`` for a recorder to write."""
        return self.root / f"{self._new_name(camera_id, start_time)}{PART}"

    def finish(self, part: Path, camera_id: int, start_time: float,
               end_time: float) -> SpoolEntry | None:
        """Make the written ``part`` a ready entry: remux (+faststart), poster, checksum, manifest;
        then delete the part. None (the part deleted) when it holds no decodable video."""
        return self._finish(part, camera_id, start_time, end_time)

    def recover(self) -> list[SpoolEntry]:
        """At start, before any recorder runs: finish every part a stopped agent left, drop broken
        manifests and every file no manifest names; returns :meth:`pending`."""
        for part in sorted(self.root.glob("*" + PART)):
            name = part.name[:-len(PART)]
            if (self.root / f"{name}.json").exists():
                _unlink(part)  # finished, only not deleted
                continue
            camera_id, start = _camera_of(name), _start_of(name)
            if camera_id is None or start is None:
                log.warning("spool: dropping %s, not a name the spool gives", part.name)
                _unlink(part)
                continue
            log.info("spool: finishing %s, left by a stopped recorder", part.name)
            self._finish(part, camera_id, start, None, notify=False)
        with self._lock:
            self._entries.clear()
            self._bytes.clear()
        for manifest in sorted(self.root.glob("*.json")):
            if self._load(manifest) is None:
                log.warning("spool: dropping %s, not a whole entry", manifest.name)
                _unlink(manifest)
        with self._lock:
            named = {e.manifest.name for e in self._entries.values()}
            named |= {e.file.name for e in self._entries.values()}
            named |= {e.poster.name for e in self._entries.values() if e.poster is not None}
        for path in self.root.iterdir():
            if path.name not in named and not path.name.endswith(PART) and path.is_file():
                log.info("spool: removing %s, no manifest names it", path.name)
                _unlink(path)
        self._cap()
        return self.pending()

    # Inside

    def _finish(self, part: Path, camera_id: int, start_time: float, end_time: float | None,
                notify: bool = True) -> SpoolEntry | None:
        name = part.name[:-len(PART)] if part.name.endswith(PART) else part.stem
        file, poster = self.root / f"{name}.mp4", self.root / f"{name}.poster.jpg"
        remuxed = self.root / f"{name}.remux.mp4"
        try:
            return self._make(part, name, camera_id, start_time, end_time, notify)
        except (av.FFmpegError, OSError) as exc:
            for path in (remuxed, file, poster):
                _unlink(path)
            if not part.exists():
                log.warning("spool: %s vanished before it was finished", part.name)
            elif _is_disk_error(exc) or isinstance(exc, FileNotFoundError):
                log.warning("spool: cannot finish %s now (kept for the next start): %s", part.name,
                            getattr(exc, "strerror", None) or exc)
            else:
                log.warning("spool: dropping %s: %s", part.name, getattr(exc, "strerror", None) or exc)
                _unlink(part)
            return None

    def _make(self, part: Path, name: str, camera_id: int, start_time: float,
              end_time: float | None, notify: bool) -> SpoolEntry | None:
        file, poster = self.root / f"{name}.mp4", self.root / f"{name}.poster.jpg"
        remuxed = self.root / f"{name}.remux.mp4"
        media = _remux(part, remuxed)
        if media is None or media.keyframe is None:
            log.warning("spool: dropping %s: no video keyframe in it", part.name)
            _unlink(remuxed)
            _unlink(part)
            return None
        picture = keyframe_jpeg(media.params, [media.keyframe], MAX_JPEG)
        if picture is None:
            log.warning("spool: dropping %s: its first keyframe does not decode", part.name)
            _unlink(remuxed)
            _unlink(part)
            return None
        _write_synced(poster, picture.data)
        size, digest = _digest(remuxed)
        os.replace(remuxed, file)
        end = end_time if end_time is not None else start_time + media.duration
        entry = SpoolEntry(self.root / f"{name}.json", secrets.token_hex(16), "record", camera_id,
                           file, poster, size, digest, start_time, max(end, start_time),
                           media.duration, media.params.width, media.params.height)
        self._publish(entry, notify)
        _unlink(part)
        log.info("spool: %s ready (%.1f s, %d bytes)", file.name, entry.duration, entry.size)
        return entry

    def _publish(self, entry: SpoolEntry, notify: bool = True) -> None:
        """Write the manifest (temp, fsync, rename), index it, tell, then keep under the cap."""
        tmp = entry.manifest.with_suffix(".json.tmp")
        _write_synced(tmp, json.dumps(entry.fields()).encode())
        os.replace(tmp, entry.manifest)
        _fsync_dir(self.root)
        with self._lock:
            self._index(entry)
        if notify:
            self.on_ready(entry)
        self._cap()

    def _cap(self) -> None:
        if self.max_bytes <= 0:
            return
        while self.bytes_used() > self.max_bytes:
            with self._lock:
                oldest = min(self._entries.values(), key=lambda e: (e.start_time, e.manifest.name),
                             default=None)
                if oldest is None:
                    return
                self._forget(oldest.manifest.name)  # only one thread drops it
            log.warning("spool: over %d bytes, dropping the oldest unsent %s %s (%d bytes)",
                        self.max_bytes, oldest.kind, oldest.file.name, oldest.size)
            self._delete(oldest)
            self.on_drop(oldest, "spool full")

    def _load(self, manifest: Path) -> SpoolEntry | None:
        """Index one manifest file; None when it is not a whole entry."""
        try:
            fields = json.loads(manifest.read_bytes())
            entry = _entry(self.root, manifest, fields)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if entry is None or not entry.file.exists() or _size(entry.file) != entry.size:
            return None
        with self._lock:
            self._index(entry)
        return entry

    def _index(self, entry: SpoolEntry) -> None:
        used = _size(entry.manifest) + _size(entry.file)
        if entry.poster is not None:
            used += _size(entry.poster)
        self._entries[entry.manifest.name] = entry
        self._bytes[entry.manifest.name] = used

    def _forget(self, name: str) -> None:
        self._entries.pop(name, None)
        self._bytes.pop(name, None)

    def _new_name(self, camera_id: int, at: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
        while True:
            name = f"{int(camera_id)}-{stamp}-{secrets.token_hex(3)}"
            taken = (PART, ".json", ".mp4", ".jpg")
            if not any((self.root / f"{name}{suffix}").exists() for suffix in taken):
                return name


@dataclass
class _Media:
    params: VideoParams
    keyframe: bytes | None  # the first video keyframe's packet
    duration: float  # seconds of video


def _remux(part: Path, out: Path) -> _Media | None:
    """Stream-copy ``part``'s video (and audio) to ``out`` with the index in front; what a killed
    recorder left is read up to its last whole fragment. None when there is no video stream."""
    with av.open(str(part), format="mp4") as source:
        if not source.streams.video:
            return None
        video = source.streams.video[0]
        streams = [video] + [s for s in source.streams.audio[:1]]
        media = _Media(VideoParams.of(video), None, 0.0)
        first: float | None = None
        last = 0.0
        with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as target:
            copies = {s.index: target.add_stream_from_template(s) for s in streams}
            demuxed = source.demux(streams)
            while True:
                try:
                    packet = next(demuxed)
                except StopIteration:
                    break
                except av.FFmpegError as exc:  # a torn last fragment
                    log.info("spool: %s ends early: %s", part.name, exc)
                    break
                if packet.dts is None or packet.is_corrupt or not packet.size:
                    continue
                if packet.stream is video:
                    if media.keyframe is None:
                        if not packet.is_keyframe:
                            continue
                        media.keyframe = bytes(packet)
                    pts = packet.pts if packet.pts is not None else packet.dts
                    at = float(pts * packet.time_base)
                    first = at if first is None else min(first, at)
                    last = max(last, at + float((packet.duration or 0) * packet.time_base))
                elif media.keyframe is None:
                    continue
                packet.stream = copies[packet.stream.index]
                target.mux(packet)
        media.duration = round(max(0.0, last - first), 3) if first is not None else 0.0
        return media


def _entry(root: Path, manifest: Path, fields: dict[str, Any]) -> SpoolEntry | None:
    if not isinstance(fields, dict) or any(key not in fields for key in _FIELDS):
        return None
    kind, upload_id = fields["kind"], fields["upload_id"]
    if kind not in ("record", "snapshot") or not re.fullmatch(r"[0-9a-f]{32}", str(upload_id)):
        return None
    names = [fields["file"]] + ([fields["poster"]] if fields["poster"] else [])
    if any(not isinstance(n, str) or Path(n).name != n or n.startswith(".") for n in names):
        return None  # a manifest names files of this directory only
    return SpoolEntry(manifest, upload_id, kind, int(fields["camera_id"]), root / fields["file"],
                      root / fields["poster"] if fields["poster"] else None, int(fields["size"]),
                      str(fields["sha256"]), float(fields["start_time"]), float(fields["end_time"]),
                      float(fields["duration"]), int(fields["width"]), int(fields["height"]))


def _camera_of(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def _start_of(name: str) -> float | None:
    match = _NAME.match(name)
    if not match:
        return None
    return float(calendar.timegm(time.strptime(match.group(2), "%Y%m%dT%H%M%S")))


def _digest(path: Path) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
        os.fsync(file.fileno())
    return size, sha.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _is_disk_error(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
