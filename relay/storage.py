"""Stored files (recordings, snapshots) under ``<data>/files``, served at ``/files/``.

A stored file is named in the catalogue by its ``fdfs`` path, ``/files/<kind>/<...>``, so that
``storage_addr + fdfs`` is its URL. Serving answers range requests with the right content type and
refuses anything that would leave the files directory (``..``, encoded or not, and symlinks out).

Only a file's own canonical path serves it: no empty, ``.`` or ``..`` segment and no trailing
slash (``/files/a/x.mp4/`` is 404). A name the file system refuses (too long, a loop...) is 404,
one it may not read 403; never a 500.

Ranges (RFC 9110 §14): one ``bytes=`` range is served as aiohttp serves it (206, or 416 for one
past the end or a first byte after the last); ``bytes=-0`` (an empty suffix) is unsatisfiable:
416, where aiohttp would send the whole file as a 206. A Range in another unit or with several
ranges is ignored (200, the whole file): the RFC lets a server ignore any Range, and multipart
answers buy nothing for recordings.
"""

from __future__ import annotations

import errno
import logging
import mimetypes
import re
import secrets
import stat
from pathlib import Path

from aiohttp import hdrs, web
from multidict import CIMultiDict

log = logging.getLogger(__name__)

PREFIX = "/files/"

for _type, _ext in (("video/mp4", ".mp4"), ("image/jpeg", ".jpg"), ("video/mp2t", ".ts"),
                    ("application/vnd.apple.mpegurl", ".m3u8")):
    mimetypes.add_type(_type, _ext)


_ONE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)
_QUIET_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EISDIR}
_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


class WholeFile(web.FileResponse):
    """A file served whole: the request's Range header is not looked at."""

    async def prepare(self, request: web.BaseRequest):  # type: ignore[no-untyped-def]
        headers = CIMultiDict(request.headers)
        headers.popall(hdrs.RANGE, None)
        return await super().prepare(request.clone(headers=headers))


def _refusal(exc: OSError, fdfs: str) -> web.HTTPException:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return web.HTTPForbidden()
    if exc.errno not in _QUIET_ERRNOS:
        log.warning("stored file %s: %s", fdfs[:200], exc.strerror or exc.__class__.__name__)
    return web.HTTPNotFound()


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = root.resolve()

    def path_of(self, fdfs: str) -> Path | None:
        """The file an ``fdfs`` path names, or None when it names nothing inside the root (or
        is not the canonical name: an empty, ``.`` or ``..`` segment, a trailing slash)."""
        if not fdfs.startswith(PREFIX) or "\0" in fdfs:
            return None
        segments = fdfs[len(PREFIX):].split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            return None
        try:
            candidate = (self._resolved_root / fdfs[len(PREFIX):]).resolve()
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop, on Python < 3.13
            return None
        if not candidate.is_relative_to(self._resolved_root) or candidate == self._resolved_root:
            return None
        return candidate

    def fdfs_of(self, path: Path) -> str:
        return PREFIX + path.resolve().relative_to(self._resolved_root).as_posix()

    @staticmethod
    def new_name(kind: str, camera_id: int, suffix: str, day: str = "") -> str:
        """A fresh, unguessable stored name: ``/files/<kind>/<camera_id>/[<day>/]<128 random
        bits>.<suffix>``; what an agent uploads is stored under it, whatever the agent called it."""
        folder = f"{kind}/{int(camera_id)}/" + (f"{day}/" if day else "")
        return f"{PREFIX}{folder}{secrets.token_hex(16)}.{suffix}"

    def remove(self, fdfs_paths: list[str]) -> int:
        """Unlink stored files (after their rows are gone); returns how many were removed."""
        removed = 0
        for fdfs in fdfs_paths:
            path = self.path_of(fdfs)
            if path is None:
                log.warning("not removing %r: outside the files directory", fdfs)
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                log.info("stored file %s was already gone", fdfs)
            except OSError as exc:
                log.error("could not remove stored file %s: %s", fdfs, exc)
        return removed

    async def serve(self, request: web.Request) -> web.StreamResponse:
        fdfs = PREFIX + request.match_info["path"]
        path = self.path_of(fdfs)
        if path is None:
            raise web.HTTPNotFound()
        try:
            status = path.stat()
        except OSError as exc:
            raise _refusal(exc, fdfs) from None
        if not stat.S_ISREG(status.st_mode):
            raise web.HTTPNotFound()
        wanted = request.headers.get(hdrs.RANGE)
        if wanted is None:
            return web.FileResponse(path, headers=_HEADERS)
        one = _ONE_RANGE.fullmatch(wanted.strip())
        if one is None:  # another unit, several ranges, or not a range at all
            if wanted.strip().lower().startswith("bytes=") and "," not in wanted:
                return web.FileResponse(path, headers=_HEADERS)  # malformed: aiohttp's 416
            return WholeFile(path, headers=_HEADERS)
        if_range = request.if_range
        applies = if_range is None or status.st_mtime <= if_range.timestamp()
        if applies and one.group(1) == "" and one.group(2).strip("0") == "" and one.group(2):
            return web.json_response(
                {"err_code": 416, "err_msg": "range not satisfiable"}, status=416,
                headers={**_HEADERS, "Content-Range": f"bytes */{status.st_size}"})
        return web.FileResponse(path, headers=_HEADERS)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX + "{path:.+}", self.serve)
