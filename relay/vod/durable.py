"""The file work of an upload: a running sha256 of what was received, and the syncs and renames
that make a stored file survive a crash once its commit has answered."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1 << 20
#: The most hashed in one go on the event loop (a PUT's chunks are hashed as they are written).
HASH_SLICE = MIB
#: A PUT asks the disk to start writing what it wrote every this many bytes (one sync at a time,
#: off the event loop), so the commit's fdatasync has only the tail left to wait for.
WRITE_BACK_EVERY = 32 * MIB

_sync_data = getattr(os, "fdatasync", os.fsync)  # the data and the size; not the timestamps
#: Its own threads: an early write-back is optional and a slow disk must not hold the loop's
#: default executor (posters, renames, commits) behind it.
_write_backs = ThreadPoolExecutor(max_workers=2, thread_name_prefix="write-back")


@dataclass
class RunningHash:
    """The sha256 of bytes 0..``covered`` of a temporary file, updated as PUTs write them.

    On the event loop: hashing on a worker thread was measured (bench/record.py --part upload)
    and gained nothing on 2 cores while costing 40 % more CPU (the loop, the sender and the
    thread then share them)."""

    digest: Any = field(default_factory=hashlib.sha256)
    covered: int = 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        for start in range(0, len(view), HASH_SLICE):
            self.digest.update(view[start:start + HASH_SLICE])
        self.covered += len(chunk)


class WriteBack:
    """Starts the disk writing a file's dirty pages while more is still arriving: a fdatasync on
    a worker thread every ``WRITE_BACK_EVERY`` bytes, one at a time, never awaited by the PUT
    except before the file closes. Its errors are ignored: the commit's own sync is the one that
    counts."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._since = 0
        self._running: asyncio.Future[None] | None = None

    def wrote(self, count: int) -> None:
        self._since += count
        if self._since >= WRITE_BACK_EVERY and (self._running is None or self._running.done()):
            self._since = 0
            self._running = asyncio.get_running_loop().run_in_executor(_write_backs, self._sync)

    def _sync(self) -> None:
        with contextlib.suppress(OSError):
            _sync_data(self._fd)

    async def finished(self) -> None:
        if self._running is not None:
            await asyncio.shield(self._running)


def digest_and_sync(path: Path) -> tuple[int, str]:
    """Size and sha256 of the file as read back from it, after it reached the disk; off the
    event loop. For a commit without a hasher it can trust."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(MIB):
            digest.update(block)
            size += len(block)
        _sync_data(file.fileno())
    return size, digest.hexdigest()


def size_and_sync(path: Path, covered: int) -> int:
    """The file's size; when it is what the hasher ``covered``, after its data reached the disk
    (when it is not, the caller re-reads the file, which syncs it)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == covered:
            _sync_data(file.fileno())
    return size


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_durably(source: Path, target: Path) -> None:
    """Rename into place durably: the new name survives a crash once this returns."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    sync_dir(target.parent)


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
