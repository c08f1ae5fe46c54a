"""The current GOP of a stream, kept so that a consumer who joins late can start decoding at once."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

#: What a GOP cache keeps at most by default: this many frames, and this many bytes.
MAX_FRAMES = 300
MAX_BYTES = 8 * 1024 * 1024


class GopCache(Generic[T]):
    """The frames since the last keyframe (any item: frames, packets, MP4 fragments), bounded.

    It always starts at a keyframe. A GOP longer than ``max_frames`` or ``max_bytes`` is forgotten
    until the next keyframe: a late consumer then waits for that rather than getting half a GOP.
    ``synced`` says a keyframe has passed since ``reset()``: nothing before it is decodable.
    """

    def __init__(self, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES) -> None:
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.synced = False
        self._items: deque[T] = deque()
        self._bytes = 0
        self._keeping = False  # _items starts at a keyframe

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, keyframe: bool, size: int) -> bool:
        """Keep ``item`` (``size`` bytes) if it belongs to a GOP being kept; returns ``synced``."""
        if keyframe:
            self.forget()
            self._keeping = self.synced = True
        if self._keeping:
            if len(self._items) >= self.max_frames or self._bytes + size > self.max_bytes:
                self.forget()  # too long a GOP to keep: none until the next keyframe
            else:
                self._items.append(item)
                self._bytes += size
        return self.synced

    def frames(self) -> list[T]:
        """The current GOP from its keyframe, or ``[]`` when none is kept."""
        return list(self._items)

    def forget(self) -> None:
        """Drop the GOP kept; the next keyframe starts another."""
        self._items.clear()
        self._bytes = 0
        self._keeping = False

    def reset(self) -> None:
        """The stream starts again (a reopened source, a new push): wait for a keyframe."""
        self.forget()
        self.synced = False
