"""This node's connection to Redis: commands that never hang, and pub/sub that comes back by itself.

redis-py's asyncio pub/sub neither reconnects nor re-subscribes (redis-py #2089, #2417). Here one
task owns the subscription: it (re)subscribes to every channel asked for, reads messages, and when
the connection breaks it waits, connects again and subscribes again. A second task pings Redis once
a ``probe`` interval; ``ready`` says whether the last probe answered. When Redis comes back after
having been unreachable, the ``on_return`` callbacks run (a node re-asserts its lease and its claims:
Redis may have restarted empty, since it keeps nothing on disk here).

Every command has a socket timeout, so a Redis that is gone costs a caller at most ``TIMEOUT``
seconds and a ``RedisError``, never a hang. Pub/sub is at most once: callers use it for hints that a
periodic check would also find (a gatherer moved), never for anything that must arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from .. import tasks

log = logging.getLogger(__name__)

#: Seconds a command (or a connection attempt, or the wait for a free one) may take.
TIMEOUT = 1.0
#: Connections to Redis per node at most (the pub/sub one among them).
MAX_CONNECTIONS = 64

Handler = Callable[[str], Awaitable[None]]


class RedisLink:
    def __init__(self, url: str, probe: float = 1.0, name: str = "relay") -> None:
        # A bounded pool whose callers wait (up to TIMEOUT) for a free connection: redis-py's
        # default pool refuses at once past 100 (MaxConnectionsError), which a reconnect storm of
        # thousands of agents reached, losing their claims.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=TIMEOUT, socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT, decode_responses=True, health_check_interval=0,
            client_name=name, protocol=2)  # (RESP2: the classic pub/sub framing)
        self.client = redis.Redis.from_pool(pool)
        self._probe = probe
        self._handlers: dict[str, Handler] = {}
        self._on_return: list[Callable[[], Awaitable[None]]] = []
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(data)`` for each message on ``channel``, across reconnects."""
        self._handlers[channel] = handler

    def on_return(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` each time Redis answers again after being unreachable."""
        self._on_return.append(callback)

    async def start(self) -> None:
        """Connect (waiting up to a few seconds for a first answer) and start the two tasks."""
        for _ in range(5):
            try:
                await self.client.ping()
                self.ready = True
                break
            except (RedisError, OSError) as exc:
                log.warning("Redis unreachable (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(self._probe)
        self._tasks = [asyncio.create_task(self._watch(), name="redis probe"),
                       asyncio.create_task(self._listen(), name="redis pub/sub")]
        if self._handlers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), 2 * TIMEOUT)

    async def stop(self) -> None:
        await tasks.stop(*self._tasks)
        self._tasks = []
        await self.client.aclose()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe)
            try:
                await self.client.ping()
            except (RedisError, OSError) as exc:
                if self.ready:
                    log.warning("Redis unreachable: %s", exc.__class__.__name__)
                self.ready = False
                continue
            if not self.ready:
                log.info("Redis answers again")
                self.ready = True
                for callback in self._on_return:
                    try:
                        await callback()
                    except (RedisError, OSError) as exc:
                        log.warning("after Redis came back: %s", exc.__class__.__name__)
                        self.ready = False  # try the callbacks again on the next probe
                        break

    async def _listen(self) -> None:
        while True:
            if not self._handlers:
                await asyncio.sleep(self._probe)
                continue
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                self._subscribed.set()
                while True:
                    # The socket timeout applies to reads too: no message within it is no failure.
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=self._probe)
                    if message is None or message.get("type") != "message":
                        continue
                    handler = self._handlers.get(message["channel"])
                    if handler is not None:
                        try:
                            await handler(message["data"])
                        except Exception:
                            log.exception("handling a message on %s", message["channel"])
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("Redis subscription lost (%s); subscribing again",
                            exc.__class__.__name__)
                await asyncio.sleep(self._probe)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
