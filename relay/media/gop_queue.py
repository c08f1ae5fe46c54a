"""A bounded queue of a stream's frames for one consumer that may fall behind, dropping whole GOPs."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class WholeGopQueue(Generic[T]):
    """Frames (any item) waiting for one consumer, at most ``max_items`` and ``max_bytes``.

    A frame that does not fit starts a drop that lasts until the next keyframe, so the consumer never
    gets a GOP with a hole in it; a keyframe that does not fit replaces what waits. The queue starts
    by waiting for a keyframe. An item bigger than ``max_item_bytes`` is never queued (it starts a
    drop too). With ``catch_up`` an overflow also throws away what waits, so a slow consumer comes
    back to the live edge at the next keyframe (a viewer) instead of first taking the head of the
    GOP it had (a push, which sends what it can).
    """

    def __init__(self, max_items: int, max_bytes: int | None = None, *,
                 max_item_bytes: int | None = None, catch_up: bool = False) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self.max_item_bytes = max_item_bytes
        self.catch_up = catch_up
        self.dropped = 0
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._dropping = True

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T, keyframe: bool, size: int = 0) -> bool:
        """Queue ``item`` (``size`` bytes); False when it was dropped."""
        if self.max_item_bytes is not None and size > self.max_item_bytes:
            self._dropping = True
        elif keyframe:
            if not self._fits(size):
                self._drop_waiting()
            self._dropping = not self._fits(size)
        elif not self._fits(size):
            if self.catch_up:
                self._drop_waiting()
            self._dropping = True
        if self._dropping:
            self.dropped += 1
            return False
        self._items.append((item, size))
        self._bytes += size
        return True

    def pop(self) -> T | None:
        """The oldest item, or None when the queue is empty."""
        if not self._items:
            return None
        item, size = self._items.popleft()
        self._bytes -= size
        return item

    def newest(self) -> T | None:
        """The item queued last, or None when the queue is empty."""
        return self._items[-1][0] if self._items else None

    def skip_to_keyframe(self) -> None:
        """Drop what is offered until the next keyframe (a consumer that joins mid-GOP)."""
        self._dropping = True

    def _drop_waiting(self) -> None:
        self.dropped += len(self._items)
        self._items.clear()
        self._bytes = 0

    def _fits(self, size: int) -> bool:
        return len(self._items) < self.max_items and (
            self.max_bytes is None or self._bytes + size <= self.max_bytes)
