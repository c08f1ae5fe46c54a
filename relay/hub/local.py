"""The hub of a single relay node: every agent links here, so "linked here" is "online".

At start no agent is linked yet, so the catalogue's presence columns are reset (this node is the
only one that ever writes them); a cluster node must not do that (``relay.cluster``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..catalogue import Catalogue
from ..metrics import Metrics
from . import FAILED, OFFLINE, TIMEOUT, AgentLink, Hub, transmit

log = logging.getLogger(__name__)


class LocalHub(Hub):
    def __init__(self, timeout: float, catalogue: Catalogue, metrics: Metrics | None = None
                 ) -> None:
        self.timeout = timeout
        self._catalogue = catalogue
        self._metrics = metrics or Metrics()
        self._links: dict[int, AgentLink] = {}
        self._histograms: dict[str, Any] = {}
        self._last_epoch = 0

    async def start(self) -> None:
        await self._catalogue.gatherers.all_offline()

    async def stop(self) -> None:
        """Nothing of its own to end: the link endpoint closes the links."""

    def new_epoch(self) -> int:
        """Wall-clock nanoseconds, kept increasing: a restarted node still hands out larger
        epochs than its previous run did (clocks that jump back excepted)."""
        self._last_epoch = max(time.time_ns(), self._last_epoch + 1)
        return self._last_epoch

    async def attach(self, link: AgentLink) -> AgentLink | None:
        return self.attach_here(link)

    async def detach(self, link: AgentLink) -> bool:
        return self.detach_here(link)

    def attach_here(self, link: AgentLink) -> AgentLink | None:
        previous = self._links.get(link.gather_id)
        self._links[link.gather_id] = link
        self._metrics.agents_connected.set(len(self._links))
        return previous

    def detach_here(self, link: AgentLink) -> bool:
        if self._links.get(link.gather_id) is link:
            del self._links[link.gather_id]
            self._metrics.agents_connected.set(len(self._links))
            return True
        return False

    def links(self) -> list[AgentLink]:
        return list(self._links.values())

    def link(self, gather_id: int) -> AgentLink | None:
        return self._links.get(gather_id)

    async def online(self, gather_id: int) -> bool:
        return gather_id in self._links

    async def send(self, gather_id: int, action: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self.send_here(gather_id, action, data, self.timeout)

    async def send_here(self, gather_id: int, action: str, data: dict[str, Any],
                        timeout: float) -> dict[str, Any]:
        """The command over this node's own link, waiting at most ``timeout`` seconds."""
        link = self._links.get(gather_id)
        if link is None:
            return transmit(OFFLINE)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                answer = await link.request(action, data)
        except TimeoutError:
            log.warning("gatherer %d: %s got no answer within %.1f s", gather_id, action, timeout)
            return transmit(TIMEOUT)
        except ConnectionError as exc:
            log.warning("gatherer %d: link lost during %s: %s", gather_id, action, exc)
            return transmit(FAILED)
        elapsed = time.monotonic() - started
        histogram = self._histograms.get(action)
        if histogram is None:  # one child per command, found once (labels() takes a lock)
            histogram = self._histograms[action] = self._metrics.command_seconds.labels(action)
        histogram.observe(elapsed)
        log.info("gatherer %d: %s answered %s in %.3f s", gather_id, action,
                 answer.get("err_code"), elapsed)
        return answer
