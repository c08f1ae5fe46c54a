"""Stored files (recordings, snapshots) under ``<data>/files``, served at ``/files/``.

A stored file is named in the catalogue by its ``fdfs`` path, ``/files/<kind>/<...>``, so that
``storage_addr + fdfs`` is its URL. Serving answers range requests with the right content type and
refuses anything that would leave the files directory (``..``, encoded or not, and symlinks out).
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

PREFIX = "/files/"

for _type, _ext in (("video/mp4", ".mp4"), ("image/jpeg", ".jpg"), ("video/mp2t", ".ts"),
                    ("application/vnd.apple.mpegurl", ".m3u8")):
    mimetypes.add_type(_type, _ext)


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = root.resolve()

    def path_of(self, fdfs: str) -> Path | None:
        """The file an ``fdfs`` path names, or None when it names nothing inside the root."""
        if not fdfs.startswith(PREFIX) or "\0" in fdfs:
            return None
        candidate = (self._resolved_root / fdfs[len(PREFIX):]).resolve()
        if not candidate.is_relative_to(self._resolved_root) or candidate == self._resolved_root:
            return None
        return candidate

    def fdfs_of(self, path: Path) -> str:
        return PREFIX + path.resolve().relative_to(self._resolved_root).as_posix()

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
        path = self.path_of(PREFIX + request.match_info["path"])
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(
            path,
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX + "{path:.+}", self.serve)
