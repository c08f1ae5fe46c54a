"""The file work of an upload: a running sha256 of what was received, and the syncs and renames
that make a stored file survive a crash once its commit has answered."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1 << 20
#: The most hashed in one go on the event loop (a PUT's chunks are hashed as they are written).
HASH_SLICE = MIB

_sync_data = getattr(os, "fdatasync", os.fsync)  # the data and the size; not the timestamps


@dataclass
class RunningHash:
    """The sha256 of bytes 0..``covered`` of a temporary file, updated as PUTs write them."""

    digest: Any  # a hashlib sha256 object
    covered: int

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        for start in range(0, len(view), HASH_SLICE):
            self.digest.update(view[start:start + HASH_SLICE])
        self.covered += len(chunk)


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
