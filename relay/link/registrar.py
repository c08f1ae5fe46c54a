"""Agents' registrations and their welcome states, read and written in batches (``batches.py``).

One batch is one catalogue transaction registering every agent in it (``registrations.py``) and
three reads for all their desired states, so a reconnect storm costs a few statements per batch
rather than a handful per agent.
"""

from __future__ import annotations

from typing import Any

from ..catalogue import Catalogue, GathererRefused
from ..catalogue.registrations import Registration
from . import protocol
from .batches import Batcher

Welcome = tuple[int, dict[str, Any]]  # gather_id, the desired state the welcome carries


class Registrar:
    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._batcher: Batcher[Registration, Welcome | GathererRefused] = Batcher(
            "registrations", self._register)

    async def register(self, key_id: int, hello: dict[str, Any]) -> Welcome:
        """The agent's gatherer id and desired state; ``GathererRefused`` when it may not be it."""
        result = await self._batcher.submit(Registration(
            hello["mac_addr"], key_id, hello["ip_addr"], hello["name_pc"], hello["os_name"],
            tuple(hello["devices"])))
        if isinstance(result, GathererRefused):
            raise result
        return result

    async def _register(self, arrivals: list[Registration]) -> list[Welcome | GathererRefused]:
        gatherers = self._catalogue.gatherers
        results = await gatherers.register_many(arrivals)
        states = await gatherers.desired_states([r for r in results if isinstance(r, int)])
        return [result if isinstance(result, GathererRefused)
                else (result, protocol.desired_state(states[result])) for result in results]

    async def close(self) -> None:
        await self._batcher.close()
