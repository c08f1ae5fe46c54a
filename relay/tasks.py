"""Stopping a background task for sure.

One ``cancel()`` is not always enough. Python 3.11's ``asyncio.wait_for`` returns the awaited
result when a cancellation lands in the turn that result arrives, and drops the cancellation
(python/cpython#86296, gone in 3.12's rewrite); redis-py wraps every command's socket write in it,
so a loop around Redis commands carries on after its cancel. Measured here: a task pinging Redis
in a loop, cancelled at a random instant within 3 ms, went on running 118 times in 200. A cluster
node then never finished shutting down (``relay serve`` hung on SIGINT, waiting for its cluster
chores). ``stop`` cancels again until the task has ended: a later cancel lands on the loop's
``sleep`` or on a command that does not finish in that very turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: How long a cancelled task gets before it is cancelled again.
RECANCEL_AFTER = 0.1


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks (``None`` ones skipped) and return once every one has ended; one that
    failed rather than stopped has its error logged, never raised.

    For loops that run until cancelled: a task still running after ``RECANCEL_AFTER`` is
    cancelled again, so a task whose own cleanup takes longer (closing a peer connection,
    waiting for an agent's answer) is cancelled once and awaited instead."""
    pending = {task for task in tasks if task is not None}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
    for task in tasks:
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("task %s failed while stopping", task.get_name(), exc_info=task.exception())


def where(task: asyncio.Task[Any]) -> str:
    """The task's name and the innermost place outside asyncio where its coroutine waits: what
    a log line needs to say what a stuck shutdown is waiting for."""
    coroutine: object = task.get_coro()
    place = None
    while coroutine is not None:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if frame is not None and not frame.f_code.co_filename.startswith(_ASYNCIO):
            place = frame
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    if place is None:
        return task.get_name()
    return f"{task.get_name()} at {place.f_code.co_filename}:{place.f_lineno} " \
           f"({place.f_code.co_name})"


_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep


async def report_if_slow(after: float, what: str) -> None:
    """Sleep ``after`` seconds, then log every task still running but the current one: run
    beside a shutdown and cancelled when it is done, it names what the shutdown waits for."""
    await asyncio.sleep(after)
    me = asyncio.current_task()
    waiting = sorted(where(task) for task in asyncio.all_tasks() if task is not me)
    log.warning("%s still waiting after %.0f s, %d task(s): %s", what, after, len(waiting),
                "; ".join(waiting))
