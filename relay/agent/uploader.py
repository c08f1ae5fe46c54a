"""Sends the spool's entries to the relay (docs/RECORDING.md, "Uploader" and "The upload protocol").

Oldest first, one at a time: declare, PUT the bytes from the offset the relay holds, commit. An
entry leaves the spool only once the relay answered ``committed`` (or refused it in a way that
cannot get better: its camera is gone, it is another key's camera, the relay computed another
checksum twice). Everything else is retried with jittered backoff (1 s doubling to 60 s) for as long
as ``keep_trying()`` (the gatherer's ``auto_fds``) says; when it says no, a failed entry waits for
the agent's next start. A relay that is unreachable or full holds the whole queue back; a refusal
of one entry (malformed, too big, declared otherwise) holds back only that entry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .spool import Spool, SpoolEntry

log = logging.getLogger(__name__)

#: The rest of a file goes in one PUT, read from the spool in blocks of this size.
READ_BLOCK = 1 << 20
MAX_POSTER = 1 << 20
FIRST_DELAY, MAX_DELAY = 1.0, 60.0
#: How many times a commit may be answered with another checksum before the entry goes.
CHECKSUM_TRIES = 2
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


def uploads_url(server: str) -> str:
    """``ws(s)://host/agent`` or ``http(s)://host[/agent]`` → ``http(s)://host/agent/uploads``."""
    parts = urlsplit(server)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not a relay URL: {server!r}")
    path = parts.path.rstrip("/")
    path = path if path.endswith("/agent") else path + "/agent"
    return urlunsplit((scheme, parts.netloc, path + "/uploads", "", ""))


def label(upload_id: str) -> str:
    """How logs name an upload: the relay's digest of its id (the id lets its holder write)."""
    return hashlib.sha256(upload_id.encode()).hexdigest()[:8]


def backoff(failures: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(failures - 1, 0)) * random.uniform(0.5, 1.0)


class Done(Exception):
    """The entry leaves the spool: committed, or refused for good (``dropped``)."""

    def __init__(self, message: str, dropped: bool = False) -> None:
        super().__init__(message)
        self.dropped = dropped


class Failed(Exception):
    """Not this time. ``whole_queue``: the relay is unreachable, full or refuses our key, so the
    other entries would fail the same way."""

    def __init__(self, message: str, whole_queue: bool = False) -> None:
        super().__init__(message)
        self.whole_queue = whole_queue


async def _blocks(path: Path, offset: int, count: int) -> AsyncIterator[bytes]:
    """``count`` bytes of ``path`` from ``offset``, a block at a time, read off the event loop."""
    file = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(file.seek, offset)
        while count > 0:
            block = await asyncio.to_thread(file.read, min(READ_BLOCK, count))
            if not block:
                return  # the relay then holds less than it was told: the next PUT says how much
            count -= len(block)
            yield block
    finally:
        file.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _poster(entry: SpoolEntry) -> str:
    if entry.kind != "record" or entry.poster is None:
        return ""
    try:
        jpeg = entry.poster.read_bytes()
    except OSError:
        return ""
    return base64.b64encode(jpeg).decode() if 0 < len(jpeg) <= MAX_POSTER else ""


class Uploader:
    def __init__(self, http: aiohttp.ClientSession, server_url: str, key: str, spool: Spool,
                 keep_trying: Callable[[], bool]) -> None:
        self.url = uploads_url(server_url)
        self._http = http
        self._headers = {"Authorization": f"Bearer {key}"}
        self._spool = spool
        self._keep_trying = keep_trying
        self._wake = asyncio.Event()
        #: The last failure per camera ("" once an upload of it went through), for its status.
        self.last_error: dict[int, str] = {}
        self._failures: dict[str, int] = {}  # by upload id
        self._not_before: dict[str, float] = {}  # by upload id: monotonic time, inf = next start
        self._checksum_refusals: dict[str, int] = {}
        self._queue_failures = 0
        self._queue_not_before = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """A new entry is ready (may be called from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def use(self, server_url: str) -> None:
        """Upload to another relay node from now on (the agent's link moved there). An upload begun
        on another node resumes here: its state is in the shared catalogue, its bytes in the shared
        storage folder."""
        self.url = uploads_url(server_url)

    def relay_is_back(self) -> None:
        """The agent's link is up again: what waits out a backoff is tried now (what waits for the
        next start, with auto_fds 0, still waits)."""
        self._not_before = {upload_id: when for upload_id, when in self._not_before.items()
                            if when == math.inf}
        if self._queue_not_before != math.inf:
            self._queue_not_before = 0.0
        self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._wake.clear()
            await self._round()
            await self._sleep(stop, self.next_try_in())

    async def _round(self) -> None:
        """Try every entry that is due, oldest first; stop at a failure of the whole queue."""
        for entry in await asyncio.to_thread(self._spool.pending):
            now = time.monotonic()
            if now < self._queue_not_before:
                return
            if now < self._not_before.get(entry.upload_id, 0.0):
                continue
            try:
                await self._send(entry)
            except Done as done:
                await asyncio.to_thread(self._spool.remove, entry)
                self._forget(entry.upload_id)
                self._queue_failures = 0
                if done.dropped:
                    log.warning("camera %d: dropped upload %s from the spool: %s",
                                entry.camera_id, label(entry.upload_id), done)
                    self.last_error[entry.camera_id] = str(done)
                else:
                    self.last_error[entry.camera_id] = ""
            except Failed as failed:
                self._failed(entry, failed)
                if failed.whole_queue:
                    return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # the relay is away
                self._failed(entry, Failed(f"{exc.__class__.__name__}: {exc}", whole_queue=True))
                return
            else:
                self._queue_failures = 0

    def _failed(self, entry: SpoolEntry, failed: Failed) -> None:
        count = self._failures[entry.upload_id] = self._failures.get(entry.upload_id, 0) + 1
        self.last_error[entry.camera_id] = str(failed)
        if not self._keep_trying():
            delay = math.inf
            log.warning("camera %d: upload %s failed (%s); auto_fds is 0: it waits for the next "
                        "start", entry.camera_id, label(entry.upload_id), failed)
        else:
            delay = backoff(count)
            log.warning("camera %d: upload %s failed (%s); again in %.1f s", entry.camera_id,
                        label(entry.upload_id), failed, delay)
        self._not_before[entry.upload_id] = time.monotonic() + delay
        if failed.whole_queue:
            self._queue_failures += 1
            self._queue_not_before = time.monotonic() + (
                delay if delay == math.inf else backoff(self._queue_failures))

    def _forget(self, upload_id: str) -> None:
        for table in (self._failures, self._not_before, self._checksum_refusals):
            table.pop(upload_id, None)

    def next_try_in(self) -> float:
        """Seconds until something may be tried again (inf: only a wake or a new entry)."""
        due = [when for when in self._not_before.values() if when != math.inf]
        if self._queue_not_before > time.monotonic():
            due.append(self._queue_not_before)
        if not due:
            return math.inf
        return max(min(due) - time.monotonic(), 0.05)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=None if seconds == math.inf else seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- one entry -----------------------------------------------------------------------------

    async def _send(self, entry: SpoolEntry) -> None:
        """Declare, PUT, commit; raises ``Done`` or ``Failed``."""
        for _attempt in range(3):  # a 422 or a relay that forgot the upload starts it again
            offset = await self._declare(entry)
            if await self._put_all(entry, offset):
                await self._commit(entry)
        raise Failed("the relay kept restarting this upload")

    async def _call(self, method: str, url: str, headers: dict[str, str] | None = None,
                    **kwargs: Any) -> tuple[int, dict[str, Any]]:
        async with self._http.request(method, url, headers={**self._headers, **(headers or {})},
                                      timeout=TIMEOUT, **kwargs) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status in (401, 507) or response.status >= 500:
            raise Failed(f"relay answered {response.status}: {body.get('err_msg', '')}",
                         whole_queue=True)
        return response.status, body

    async def _declare(self, entry: SpoolEntry) -> int:
        fields = entry.fields()
        fields.pop("file")
        fields["poster"] = await asyncio.to_thread(_poster, entry)
        status, body = await self._call("POST", self.url, json=fields)
        if status == 200 and body.get("state") == "committed":
            raise Done("committed before")
        if status == 200 and isinstance(body.get("offset"), int):
            return body["offset"]
        if status in (403, 404):
            raise Done(f"the relay refused it for good ({status}: {body.get('err_msg', '')})",
                       dropped=True)
        raise Failed(f"declaring: {status} {body.get('err_msg', '')}")

    async def _put_all(self, entry: SpoolEntry, offset: int) -> bool:
        """Send the rest; False when the relay does not know the upload (declare it again)."""
        moves = 0
        while offset < entry.size:
            if await asyncio.to_thread(_size, entry.file) < entry.size:
                raise Failed(f"the spool file is shorter than the {entry.size} bytes declared")
            rest = entry.size - offset
            status, body = await self._call(
                "PUT", f"{self.url}/{entry.upload_id}", params={"offset": str(offset)},
                data=_blocks(entry.file, offset, rest), headers={"Content-Length": str(rest)})
            if status in (200, 409) and isinstance(body.get("offset"), int):
                if status == 409:
                    moves += 1
                    if moves > 3:
                        raise Failed("the relay keeps moving the offset")
                offset = body["offset"]
                continue
            if status == 404:
                return False
            raise Failed(f"sending at {offset}: {status} {body.get('err_msg', '')}")
        return True

    async def _commit(self, entry: SpoolEntry) -> None:
        """Raises ``Done`` or ``Failed``; returns when the upload is to start again (the relay
        dropped its copy after a mismatch, or does not know the upload: if its camera is gone,
        declaring again says so)."""
        status, body = await self._call("POST", f"{self.url}/{entry.upload_id}/commit")
        if status == 200 and body.get("state") == "committed":
            log.info("camera %d: upload %s committed as %s (%d bytes, sha256 %s)", entry.camera_id,
                     label(entry.upload_id),
                     f"record {body.get('record_id')}" if entry.kind == "record"
                     else f"snapshot {body.get('image_id')}", entry.size, entry.sha256)
            raise Done("committed")
        if status == 422:
            count = self._checksum_refusals[entry.upload_id] = (
                self._checksum_refusals.get(entry.upload_id, 0) + 1)
            if count >= CHECKSUM_TRIES:
                raise Done(f"the relay computed another size or checksum {count} times "
                           f"({body.get('err_msg', '')})", dropped=True)
            return
        if status == 404:
            return
        if status == 403:
            raise Done(f"the relay refused it for good ({status}: {body.get('err_msg', '')})",
                       dropped=True)
        raise Failed(f"committing: {status} {body.get('err_msg', '')}")
