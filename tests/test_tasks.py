"""``relay.tasks.stop`` ends a task even when a cancellation is swallowed: by a loop of ours that
catches it, or by Python 3.11's ``asyncio.wait_for`` inside redis-py mid-command (this machine's
Redis, a loop like the cluster chores)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
import redis.asyncio as redis
from redis.exceptions import RedisError

from relay import tasks


async def test_a_task_that_swallows_the_first_cancel_is_stopped_all_the_same() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.stop(task, None), 2)
    assert swallowed == 1 and task.cancelled()


async def test_a_task_failing_as_it_stops_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup broke") from None

    task = asyncio.create_task(failing(), name="failing chore")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="relay.tasks"):
        await tasks.stop(task)
    assert "failing chore failed while stopping" in caplog.text


async def test_loops_around_redis_commands_stop_wherever_the_cancel_lands() -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1.0)
    pings = 0

    async def chores() -> None:  # the shape of ClusterHub._chores and RedisLink._watch
        nonlocal pings
        while True:
            await asyncio.sleep(0.001)
            try:
                await client.ping()
                pings += 1
            except (RedisError, OSError):
                pass

    try:
        for _ in range(100):  # one cancel alone leaves ~1 in 5 of them running (measured)
            task = asyncio.create_task(chores())
            await asyncio.sleep(random.uniform(0, 0.003))
            await asyncio.wait_for(tasks.stop(task), 5)
            assert task.done()
    finally:
        await client.aclose()
    assert pings > 50  # the cancels landed on running loops


async def test_a_slow_shutdown_names_the_tasks_it_waits_for_and_where(
        caplog: pytest.LogCaptureFixture) -> None:
    never = asyncio.Event()

    async def inner() -> None:
        await never.wait()

    async def outer() -> None:
        await inner()

    stuck = asyncio.create_task(outer(), name="stuck chore")
    with caplog.at_level(logging.WARNING, logger="relay.tasks"):
        await tasks.report_if_slow(0.05, "shutdown")
    await tasks.stop(stuck)
    [line] = [r.getMessage() for r in caplog.records if r.name == "relay.tasks"]
    assert line.startswith("shutdown still waiting after 0 s")
    assert f"stuck chore at {__file__}:" in line and "(inner)" in line, line
