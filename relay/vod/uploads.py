"""``/agent/uploads``: recordings and snapshots from agents, resumable, checksummed, idempotent.

docs/RECORDING.md ("The upload protocol") is the contract. An upload is declared (``POST``), its
bytes are appended at the offset the relay holds (``PUT ?offset=N``: the offset is the size of the
temporary file, so whatever reached the disk before a crash counts), and committed: size and sha256
checked, fsync, rename to the stored name picked at declaration, then the row, in one transaction.
Every step can be repeated: a commit interrupted after its rename finds the stored file and
finishes; a repeated commit answers what the first one did.

The sha256 is kept while the PUTs write (``RunningHash``, in memory, one per open upload): a commit
whose hasher covers exactly the bytes the file holds only fsyncs, instead of reading the whole file
again. Whatever casts a doubt (a relay restart, a PUT that failed or was cut short, a file whose
size is not what the hasher covered) drops the hasher, and the commit re-reads the file from disk.

Room is retention's rule (retention.py, ``app[RETENTION]``): an upload that does not fit asks it to
delete the oldest recordings first (``sweep(needed)``), and is refused with 507 only when it still
does not fit; what it writes is counted there (``wrote``), and a commit schedules a pass (``soon``).

The upload id is the agent's idempotency key and lets whoever holds it write: logs name an upload by
``upload_label`` only, and temporary files by a digest of key and id.

What a declaration may say is checked in ``declarations.py``; the running hash, the syncs and the
durable rename are in ``durable.py``; this module is the service and its three routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from ..catalogue import AgentKey, NotFound, UploadConflict
from ..link.endpoint import agent_key
from ..services import SERVICES, Services
from .declarations import (
    KINDS,
    MAX_DECLARATION,
    MIB,
    UPLOAD_ID,
    Refusal,
    parse_declaration,
    upload_label,
)
from .durable import (
    RunningHash,
    WriteBack,
    digest_and_sync,
    move_durably,
    size_and_sync,
    size_of,
)
from .retention import MEASURE_EVERY, Retention

log = logging.getLogger(__name__)

#: Forgotten at the relay's start: open uploads untouched this long (their agent gave up), and
#: committed ones (an agent repeats a commit within minutes).
STALE_OPEN = 7 * 86400
STALE_COMMITTED = 30 * 86400

#: A PUT's socket reads at most this much at a time (asyncio's default is 256 KiB): measured over
#: loopback, 1 MiB reads take a 200 MB upload from 0.79x to 0.89x of a bare handler's time
#: (bench/record.py --part upload), fewer wake-ups of the loop for the same bytes.
UPLOAD_READ = MIB

#: Open uploads whose running sha256 is kept; past it the least recently written is dropped (its
#: commit re-reads the file). A hasher is a few hundred bytes.
MAX_RUNNING = 4096


@dataclass
class _Upload:
    """One request's view of its upload: the row, and where its bytes are."""

    row: dict[str, Any]
    temp: Path
    poster_temp: Path


class UploadService:
    """The three requests of the protocol, and finishing interrupted commits at start."""

    def __init__(self, services: Services, retention: Retention) -> None:
        self._services = services
        self.root = services.settings.data / "uploads"
        self.root.mkdir(parents=True, exist_ok=True)
        self._retention = retention
        self._locks: weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock] = (
            weakref.WeakValueDictionary())
        #: Running sha256 per temporary file (only this process's writes; gone at a restart).
        self._running: dict[Path, RunningHash] = {}

    # -- places --------------------------------------------------------------------------------

    def _temp(self, key_id: int, upload_id: str) -> Path:
        name = hashlib.sha256(f"{key_id}:{upload_id}".encode()).hexdigest()[:40]
        return self.root / f"{name}.part"

    def _view(self, row: dict[str, Any]) -> _Upload:
        temp = self._temp(row["key_id"], row["upload_id"])
        return _Upload(row, temp, temp.with_suffix(".poster"))

    def _lock(self, key_id: int, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get((key_id, upload_id))
        if lock is None:
            lock = self._locks[(key_id, upload_id)] = asyncio.Lock()
        return lock

    def _stored(self, fdfs: str) -> Path:
        path = self._services.storage.path_of(fdfs)
        if path is None:  # our own names always resolve; a broken data dir does not
            raise RuntimeError("a stored name outside the files directory")
        return path

    def _names(self, fields: dict[str, Any]) -> tuple[str, str]:
        folder, suffix = KINDS[fields["kind"]]
        camera_id = fields["camera_id"]
        if fields["kind"] == "snapshot":
            return self._services.storage.new_name(folder, camera_id, suffix), ""
        zone = self._services.settings.timezone
        day = datetime.fromtimestamp(fields["start_time"], ZoneInfo(zone) if zone else None)
        day_name = day.strftime("%Y%m%d")
        return (self._services.storage.new_name(folder, camera_id, suffix, day_name),
                self._services.storage.new_name("posters", camera_id, "jpg", day_name))

    # -- checks --------------------------------------------------------------------------------

    async def _check_camera(self, key: AgentKey, camera_id: int) -> None:
        cameras = self._services.catalogue.cameras
        if await cameras.owner_key(camera_id) == key.key_id:
            return
        try:
            await cameras.get(camera_id)
        except NotFound:
            raise Refusal(404, f"no camera {camera_id}", "no_camera") from None
        log.warning("camera %d: refused an upload from key %r: not one of its gatherers' cameras",
                    camera_id, key.name)
        raise Refusal(403, "this camera does not belong to this agent key", "not_yours")

    async def _check_room(self, needed: int, held: int) -> None:
        """Room for ``needed`` more bytes, the oldest recordings deleted for it if need be;
        ``Refusal`` 507 when even that leaves too little (then nothing was deleted for it)."""
        retention = self._retention
        if needed <= 0 or await retention.free() - needed >= retention.min_free():
            return
        await retention.sweep(needed, within=MEASURE_EVERY)
        room, minimum = retention.free_bytes(), retention.min_free()
        if room - needed < minimum:
            log.warning("refused an upload of %d more bytes: %d bytes free for stored files, "
                        "%d must stay free, even with the oldest recordings deleted", needed,
                        room, minimum)
            raise Refusal(507, f"the relay's storage cannot hold {needed} more bytes, even with "
                               f"its oldest recordings deleted ({room} free, {minimum} kept "
                               "free); retry later", "disk_full", offset=held)

    @staticmethod
    def _check_id(upload_id: str) -> None:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise Refusal(400, "upload_id must be 32 lowercase hex characters", "malformed")

    async def _row(self, key: AgentKey, upload_id: str) -> dict[str, Any]:
        row = await self._services.catalogue.uploads.get(key.key_id, upload_id)
        if row is None:
            raise Refusal(404, "no such upload (declare it first)", "unknown_upload")
        return row

    # -- the protocol --------------------------------------------------------------------------

    async def declare(self, key: AgentKey, fields: dict[str, Any]) -> dict[str, Any]:
        settings = self._services.settings
        if fields["size"] > settings.upload_max_mb * MIB:
            raise Refusal(413, f"size over upload_max_mb ({settings.upload_max_mb} MiB)", "too_big")
        uploads = self._services.catalogue.uploads
        upload_id = fields["upload_id"]
        async with self._lock(key.key_id, upload_id):
            row = await uploads.get(key.key_id, upload_id)
            if row is not None and row["state"] == "committed":
                if any(row[name] != fields[name] for name in ("kind", "camera_id", "size",
                                                              "sha256")):
                    raise Refusal(409, "this upload_id was committed with another kind, camera, "
                                       "size or checksum", "conflict")
                return committed_body(row)
            await self._check_camera(key, fields["camera_id"])
            held = size_of(self._view(row).temp) if row is not None else 0
            await self._check_room(fields["size"] - held, held)
            file_fdfs, image_fdfs = self._names(fields)
            declared = {**fields, "start_time": int(fields["start_time"]),
                        "end_time": math.ceil(fields["end_time"]),
                        "duration": round(fields["duration"]),
                        "file_fdfs": file_fdfs, "image_fdfs": image_fdfs}
            try:
                row = await uploads.declare(key.key_id, upload_id, declared)
            except UploadConflict:
                raise Refusal(409, "this upload_id was declared with another kind, camera, size "
                                   "or checksum", "conflict") from None
            upload = self._view(row)
            if fields["poster"]:
                await asyncio.to_thread(self._write_poster, upload.poster_temp, fields["poster"])
            return {"state": "open", "offset": size_of(upload.temp)}

    @staticmethod
    def _write_poster(path: Path, jpeg: bytes) -> None:
        staging = path.with_suffix(".poster-new")
        staging.write_bytes(jpeg)
        os.replace(staging, path)

    async def put(self, key: AgentKey, upload_id: str, offset: int, request: web.Request
                  ) -> dict[str, Any]:
        self._check_id(upload_id)
        async with self._lock(key.key_id, upload_id):
            row = await self._row(key, upload_id)
            upload = self._view(row)
            if row["state"] == "committed":
                raise Refusal(409, "this upload is committed already", "committed",
                              offset=row["size"], state="committed")
            held = size_of(upload.temp)
            if offset != held:
                raise Refusal(409, f"the relay holds {held} bytes of this upload", "offset",
                              offset=held)
            room_left = row["size"] - held
            length = request.content_length
            if length is not None and length > room_left:
                raise Refusal(413, f"at most {room_left} bytes at offset {held} "
                                   f"(declared size {row['size']})",
                              "too_big", offset=held)
            await self._check_room(room_left, held)
            return await self._append(upload, held, room_left, request)

    def _hasher(self, temp: Path, held: int) -> RunningHash | None:
        """The running sha256 of ``temp``'s ``held`` bytes, taken out of the table (a PUT puts
        it back only when all it wrote is in it); None when there is none to trust."""
        running = self._running.pop(temp, None)
        if held == 0:  # an empty file: its hash is known
            return RunningHash()
        return running if running is not None and running.covered == held else None

    def _keep(self, temp: Path, running: RunningHash) -> None:
        self._running[temp] = running
        while len(self._running) > MAX_RUNNING:  # the least recently written goes first
            del self._running[next(iter(self._running))]

    async def _append(self, upload: _Upload, held: int, limit: int, request: web.Request
                      ) -> dict[str, Any]:
        """Stream the body onto the temporary file, hashing it as it goes; never more than
        ``limit`` bytes. The hasher is kept only if every chunk reached the file whole."""
        written = 0
        full = False
        running = self._hasher(upload.temp, held)
        whole = False  # every chunk written and hashed, and the file closed without an error
        file = open(upload.temp, "ab")  # noqa: SIM115 (closed in finally, around awaits)
        write_back = WriteBack(file.fileno())
        try:
            with large_reads(request.transport):
                async for chunk in request.content.iter_any():
                    if written + len(chunk) > limit:
                        file.truncate(held)  # the whole request is refused: nothing of it stays
                        written = 0
                        raise Refusal(413, "past the declared size",
                                      "too_big", offset=held)
                    try:
                        file.write(chunk)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        full = True
                        break
                    written += len(chunk)
                    write_back.wrote(len(chunk))
                    if running is not None:
                        running.update(chunk)
            whole = not full
        finally:
            await write_back.finished()
            try:
                file.close()
            except OSError:  # what reached the file stays: the next PUT resumes after it
                whole = False
            self._services.metrics.upload_bytes.inc(written)
            self._retention.wrote(written)
            if whole and running is not None and running.covered == held + written:
                self._keep(upload.temp, running)
        if full:  # the disk itself (not the quota): make room for the rest, then say so
            offset = size_of(upload.temp)
            await self._retention.sweep(upload.row["size"] - offset, within=MEASURE_EVERY)
            raise Refusal(507, "the relay's disk is full; retry later", "disk_full",
                          offset=offset)
        return {"offset": held + written}

    async def commit(self, key: AgentKey, upload_id: str) -> dict[str, Any]:
        self._check_id(upload_id)
        async with self._lock(key.key_id, upload_id):
            row = await self._row(key, upload_id)
            if row["state"] != "committed":
                await self._check_camera_or_drop(key, row)
            return await self._commit(self._view(row))

    async def _check_camera_or_drop(self, key: AgentKey, row: dict[str, Any]) -> None:
        try:
            await self._check_camera(key, row["camera_id"])
        except Refusal as refusal:
            if refusal.status == 404:  # the camera was deleted: nothing will ever store this
                await self._drop(self._view(row))
            raise

    async def _drop(self, upload: _Upload) -> None:
        row = upload.row
        await self._services.catalogue.uploads.drop(row["key_id"], row["upload_id"])
        self._running.pop(upload.temp, None)
        for path in (upload.temp, upload.poster_temp):
            path.unlink(missing_ok=True)
        for fdfs in (row["file_fdfs"], row["image_fdfs"]):
            if fdfs:
                self._stored(fdfs).unlink(missing_ok=True)

    async def _commit(self, upload: _Upload) -> dict[str, Any]:
        """Check, fsync, rename, then the row; each step safe to repeat after a crash."""
        row = upload.row
        if row["state"] == "committed":
            return committed_body(row)
        label = upload_label(row["upload_id"])
        stored = self._stored(row["file_fdfs"])
        source = upload.temp if upload.temp.exists() else stored  # renamed by a commit cut short
        size, sha256, how = await self._check_sum(upload, source)
        if (size, sha256) != (row["size"], row["sha256"]):
            source.unlink(missing_ok=True)
            reason = "size" if size != row["size"] else "checksum"
            log.warning("camera %d: upload %s refused at commit: %s", row["camera_id"], label,
                        f"{size} bytes, {row['size']} declared" if reason == "size"
                        else "the sha256 differs from the declared one")
            raise Refusal(422, f"{reason} mismatch: the relay holds {size} bytes"
                          + ("" if reason == "size" else " with another sha256")
                          + "; upload it again from offset 0", reason)
        if source == upload.temp:
            await asyncio.to_thread(move_durably, upload.temp, stored)
        image_fdfs = ""
        if row["image_fdfs"]:
            poster = self._stored(row["image_fdfs"])
            if upload.poster_temp.exists():
                await asyncio.to_thread(move_durably, upload.poster_temp, poster)
            image_fdfs = row["image_fdfs"] if poster.exists() else ""
        catalogue = self._services.catalogue
        try:
            done = await catalogue.uploads.commit(row["key_id"], row["upload_id"], image_fdfs)
        except NotFound:  # the camera went between the check and the transaction
            await self._drop(upload)
            raise Refusal(404, f"no camera {row['camera_id']}", "no_camera") from None
        if done.removed_files:
            self._services.storage.remove(done.removed_files)
        committed = done.upload
        self._retention.soon()
        if committed["kind"] == "record":
            self._services.metrics.recordings_uploaded.inc()
            log.info("camera %d: record %d stored (%d bytes, %d s) from upload %s; sha256 %s",
                     committed["camera_id"], committed["record_id"], committed["size"],
                     committed["duration"], label, how)
        else:
            log.info("camera %d: snapshot %d stored (%d bytes) from upload %s; sha256 %s",
                     committed["camera_id"], committed["image_id"], committed["size"], label, how)
        return committed_body(committed)

    async def _check_sum(self, upload: _Upload, source: Path) -> tuple[int, str, str]:
        """(size, sha256, how it was found) of ``source``, which has reached the disk: the running
        hasher's when it covers exactly the bytes the temporary file holds, else read back from
        the file (after a restart, a failed PUT, or a commit cut short after its rename)."""
        running = self._running.pop(upload.temp, None)  # used once, whatever the answer
        try:
            if running is not None and source == upload.temp:
                size = await asyncio.to_thread(size_and_sync, source, running.covered)
                if size == running.covered:
                    return size, running.digest.hexdigest(), "kept while receiving"
            size, sha256 = await asyncio.to_thread(digest_and_sync, source)
            return size, sha256, "read back from disk"
        except FileNotFoundError:
            return 0, "", "of no file"

    # -- the relay's start ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish commits cut short after their rename, forget stale uploads, and remove
        temporary files no open upload names (left by refused or finished ones)."""
        uploads = self._services.catalogue.uploads
        now = int(time.time())
        for row in await uploads.prune(now - STALE_OPEN, now - STALE_COMMITTED):
            log.info("forgot upload %s of camera %d: untouched for %d days",
                     upload_label(row["upload_id"]), row["camera_id"], STALE_OPEN // 86400)
            await self._drop(self._view(row))
        keep: set[Path] = set()
        for row in await uploads.open_uploads():
            upload = self._view(row)
            if not upload.temp.exists() and self._stored(row["file_fdfs"]).exists():
                try:
                    await self._commit(upload)
                    continue
                except Refusal as refusal:
                    log.warning("upload %s: not finished at start: %s",
                                upload_label(row["upload_id"]), refusal.message)
            keep.update((upload.temp, upload.poster_temp))
        for path in self.root.iterdir():
            if path not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()


def committed_body(row: dict[str, Any]) -> dict[str, Any]:
    made = {"record_id": row["record_id"]} if row["kind"] == "record" else {
        "image_id": row["image_id"]}
    return {"state": "committed", **made, "fdfs": row["file_fdfs"]}


# -- HTTP ---------------------------------------------------------------------------------------

UPLOADS = web.AppKey("uploads", UploadService)


def _answer(request: web.Request, refusal: Refusal) -> web.Response:
    request.app[SERVICES].metrics.upload_failures.labels(refusal.reason).inc()
    return web.json_response({"err_code": refusal.status, "err_msg": refusal.message,
                              **refusal.extra}, status=refusal.status)


@contextmanager
def large_reads(transport: asyncio.BaseTransport | None) -> Iterator[None]:
    """``UPLOAD_READ``-byte socket reads for one request body, then the transport's own size
    again (the connection may carry small requests next). Only where the transport has the
    attribute (asyncio's plain sockets; not TLS or other loops)."""
    before = getattr(transport, "max_size", None)
    if not isinstance(before, int) or before >= UPLOAD_READ:
        yield
        return
    transport.max_size = UPLOAD_READ  # type: ignore[union-attr]
    try:
        yield
    finally:
        transport.max_size = before  # type: ignore[union-attr]


async def _read_declaration(request: web.Request) -> Any:
    """The JSON body, read in pieces up to ``MAX_DECLARATION`` (past the app's 64 KB cap)."""
    if (request.content_length or 0) > MAX_DECLARATION:
        raise Refusal(413, f"declaration over {MAX_DECLARATION} bytes", "too_big")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_DECLARATION:
            raise Refusal(413, f"declaration over {MAX_DECLARATION} bytes", "too_big")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, "the body is not JSON", "malformed") from None


async def _authorised(request: web.Request) -> AgentKey:
    key = await agent_key(request)
    if key is None:
        raise Refusal(401, "unknown or revoked agent key", "bad_key")
    return key


async def declare_upload(request: web.Request) -> web.Response:
    try:
        key = await _authorised(request)
        fields = parse_declaration(await _read_declaration(request))
        return web.json_response(await request.app[UPLOADS].declare(key, fields))
    except Refusal as refusal:
        return _answer(request, refusal)


async def put_upload(request: web.Request) -> web.Response:
    try:
        key = await _authorised(request)
        raw = request.query.get("offset", "")
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 16:
            raise Refusal(400, "offset must be a whole number of bytes", "malformed")
        answer = await request.app[UPLOADS].put(key, request.match_info["upload_id"], int(raw),
                                                request)
        return web.json_response(answer)
    except Refusal as refusal:
        return _answer(request, refusal)


async def commit_upload(request: web.Request) -> web.Response:
    try:
        key = await _authorised(request)
        return web.json_response(
            await request.app[UPLOADS].commit(key, request.match_info["upload_id"]))
    except Refusal as refusal:
        return _answer(request, refusal)


def add_routes(app: web.Application, retention: Retention) -> UploadService:
    service = UploadService(app[SERVICES], retention)
    app[UPLOADS] = service
    app.router.add_post("/agent/uploads", declare_upload)
    app.router.add_put("/agent/uploads/{upload_id}", put_upload)
    app.router.add_post("/agent/uploads/{upload_id}/commit", commit_upload)

    async def recover(_app: web.Application) -> None:
        await service.recover()

    app.on_startup.append(recover)
    return service
