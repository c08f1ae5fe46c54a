"""Agents' uploads: declared once, committed once into a record or snapshot row.

An upload is named by the agent's ``upload_id`` within its agent key, so a repeat of a declaration
or a commit finds the same row: resuming or repeating never makes a second record. The stored names
are picked by the caller (storage) when the upload is declared and kept here, so a commit that was
interrupted after its file was renamed knows where the file went.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.exc import IntegrityError

from .database import Database
from .errors import CatalogueError, NotFound
from .schema import cameras, records, snapshots, uploads

#: What must match when an upload is declared again (anything else is another upload).
IDENTITY = ("kind", "camera_id", "size", "sha256")

#: The declared fields an upload row keeps.
DECLARED = ("kind", "camera_id", "size", "sha256", "start_time", "end_time", "duration", "width",
            "height", "file_fdfs", "image_fdfs")


class UploadConflict(CatalogueError):
    """This upload id was declared before with another kind, camera, size or checksum."""


@dataclass(frozen=True)
class Committed:
    """A committed upload: the row it became, and older snapshot files now unreferenced."""

    upload: dict[str, Any]
    removed_files: list[str]


def _one(key_id: int, upload_id: str):  # type: ignore[no-untyped-def]
    return and_(uploads.c.key_id == key_id, uploads.c.upload_id == upload_id)


class Uploads:
    def __init__(self, db: Database, clock) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._clock = clock

    async def get(self, key_id: int, upload_id: str) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(uploads).where(_one(key_id, upload_id)))).first()
        return dict(row._mapping) if row else None

    async def declare(self, key_id: int, upload_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The upload row: made from ``fields`` (``DECLARED``) if new, else the one there is.

        Raises ``UploadConflict`` when it exists with another kind, camera, size or checksum
        (its stored names are kept from the first declaration: ``fields``' are then unused).
        """
        existing = await self.get(key_id, upload_id)
        if existing is None:
            row = {name: fields[name] for name in DECLARED}
            row.update(key_id=key_id, upload_id=upload_id, state="open",
                       created=int(self._clock()))
            try:
                async with self._db.write() as conn:
                    await conn.execute(uploads.insert().values(**row))
                return row
            except IntegrityError:  # declared at the same moment by another request
                existing = await self.get(key_id, upload_id)
                if existing is None:
                    raise
        if any(existing[name] != fields[name] for name in IDENTITY):
            raise UploadConflict(f"upload declared before with another {', '.join(IDENTITY)}")
        return existing

    async def commit(self, key_id: int, upload_id: str, image_fdfs: str) -> Committed:
        """Insert the record (or the snapshot, made the camera's latest) and mark the upload
        committed, in one transaction. ``image_fdfs`` is the poster actually stored ("" none).

        A committed upload is answered as it is (a repeat). ``NotFound`` when the upload or its
        camera is gone (nothing written). A snapshot's commit drops the camera's older snapshot
        rows; their files are returned for the caller to unlink.
        """
        removed: list[str] = []
        async with self._db.write() as conn:
            row = (await conn.execute(select(uploads).where(_one(key_id, upload_id)))).first()
            if row is None:
                raise NotFound("no such upload", [])
            upload = dict(row._mapping)
            if upload["state"] == "committed":
                return Committed(upload, [])
            camera_id = upload["camera_id"]
            gather_id = (await conn.execute(select(cameras.c.gather_id)
                                            .where(cameras.c.camera_id == camera_id))).scalar()
            if gather_id is None:
                raise NotFound(f"no camera {camera_id}", [camera_id])
            if upload["kind"] == "record":
                result = await conn.execute(records.insert().values(
                    gather_id=gather_id, camera_id=camera_id, file_fdfs=upload["file_fdfs"],
                    image_fdfs=image_fdfs, file_size=upload["size"],
                    duration=upload["duration"], start_time=upload["start_time"],
                    end_time=upload["end_time"], created=upload["start_time"],
                    updated=int(self._clock())))
                done = {"record_id": result.inserted_primary_key[0], "image_fdfs": image_fdfs}
            else:
                result = await conn.execute(snapshots.insert().values(
                    camera_id=camera_id, image_fdfs=upload["file_fdfs"],
                    created=upload["start_time"]))
                image_id = result.inserted_primary_key[0]
                await conn.execute(update(cameras).where(cameras.c.camera_id == camera_id)
                                   .values(image_id=image_id))
                older = and_(snapshots.c.camera_id == camera_id, snapshots.c.image_id != image_id)
                removed = list(await conn.scalars(select(snapshots.c.image_fdfs).where(older)))
                await conn.execute(delete(snapshots).where(older))
                done = {"image_id": image_id}
            await conn.execute(update(uploads).where(_one(key_id, upload_id))
                               .values(state="committed", **done))
            upload.update(state="committed", **done)
        return Committed(upload, removed)

    async def drop(self, key_id: int, upload_id: str) -> None:
        """Forget an open upload (its camera is gone); a committed one stays."""
        async with self._db.write() as conn:
            await conn.execute(delete(uploads).where(
                and_(_one(key_id, upload_id), uploads.c.state == "open")))

    async def open_uploads(self) -> list[dict[str, Any]]:
        """Every upload not committed yet (for the relay's start: finish or undo them)."""
        async with self._db.read() as conn:
            return [dict(row._mapping) for row in
                    await conn.execute(select(uploads).where(uploads.c.state == "open"))]

    async def prune(self, open_before: int, committed_before: int) -> list[dict[str, Any]]:
        """Forget open uploads declared before ``open_before`` (returned: the caller removes their
        temporary files) and committed ones before ``committed_before`` (an agent repeats a
        commit within minutes, not months)."""
        async with self._db.write() as conn:
            stale = [dict(row._mapping) for row in await conn.execute(
                select(uploads).where(and_(uploads.c.state == "open",
                                           uploads.c.created < open_before)))]
            await conn.execute(delete(uploads).where(
                and_(uploads.c.state == "open", uploads.c.created < open_before)))
            await conn.execute(delete(uploads).where(
                and_(uploads.c.state == "committed", uploads.c.created < committed_before)))
        return stale
