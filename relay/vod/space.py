"""How many bytes an upload may still put on disk: the room for stored files, and what must stay free.

The room is the disk's free space under the files directory or, with ``storage_quota``, the quota
less what the files and upload directories hold, whichever is smaller (the same rule as
retention.py's). ``storage_min_free`` (default the smaller of 5 % of the disk, or of the quota, and
2 GiB) must stay free after an upload. Walking the directories costs, so their size is measured at
most every ``MEASURE_EVERY`` seconds, and bytes written since are added as they come.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from ..config import Settings

GIB = 1 << 30
MEASURE_EVERY = 5.0


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (a file that goes meanwhile counts 0)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class Room:
    def __init__(self, settings: Settings, files: Path, uploads: Path) -> None:
        self._settings = settings
        self._dirs = (files, uploads)
        self._used = 0
        self._measured = -MEASURE_EVERY  # (monotonic time of the last walk)

    def wrote(self, count: int) -> None:
        """Bytes an upload just put on disk (counted until the next walk)."""
        self._used += count

    async def check(self) -> tuple[int, int]:
        """(bytes stored files may still take, bytes that must stay free)."""
        settings = self._settings
        usage = await asyncio.to_thread(shutil.disk_usage, self._dirs[0])
        room = usage.free
        if settings.storage_quota:
            if time.monotonic() - self._measured >= MEASURE_EVERY:
                self._used = sum([await asyncio.to_thread(tree_bytes, d) for d in self._dirs])
                self._measured = time.monotonic()
            room = min(room, settings.storage_quota - self._used)
        minimum = settings.storage_min_free
        if minimum is None:
            minimum = min((settings.storage_quota or usage.total) * 5 // 100, 2 * GIB)
        return max(room, 0), minimum
