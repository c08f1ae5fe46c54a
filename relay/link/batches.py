"""Work that many agents ask for at once, done for all of them at once.

A relay that restarts meets thousands of agents in a few seconds, each wanting the same small
catalogue work (register, read its desired state, write a camera's status, mark it offline). One
transaction each is one trip to the database thread each, and they queue. A ``Batcher`` takes
every request that arrived while the previous batch was being done and does them together: the
cost of a batch hardly grows with its size, so the busier the relay, the cheaper each request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .. import tasks

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``submit(item)`` answers ``work(batch)[index of item]``; one ``work`` call at a time.

    ``work`` gets the items in the order they were submitted and must answer one result each. If
    it raises, every caller of that batch gets the exception. A caller that gives up (cancelled)
    before its batch starts is left out of it.
    """

    def __init__(self, name: str, work: Callable[[list[T]], Awaitable[list[R]]],
                 max_batch: int = 1000) -> None:
        self.name = name
        self._work = work
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name=f"batcher-{self.name}")
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [entry for entry in self._queue[:self._max_batch] if not entry[1].done()]
                del self._queue[:self._max_batch]
                if batch:
                    await self._do(batch)

    async def _do(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._work([item for item, _ in batch])
        except Exception as exc:
            log.warning("%s: a batch of %d failed: %s", self.name, len(batch),
                        exc.__class__.__name__)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop; callers still waiting get a ``ConnectionError``."""
        await tasks.stop(self._task)
        self._task = None
        for _, future in self._queue:
            if not future.done():
                future.set_exception(ConnectionError("the relay is shutting down"))
        self._queue.clear()
