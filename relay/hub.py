"""The hub: the one way API commands reach gatherer agents, and how their answers come back.

The hub is also the one door for desired state: the API, the console and the demo tell it what
changed (``camera_added``, ``schedules_changed``, ...), and it alone turns that into protocol
messages; nothing above it builds one.

``send`` returns the ``transmit`` object of an API answer: the agent's own reply (meaning it applied
the command), 10002 when the gatherer has no live link, or 10003 when the agent did not answer within
the command timeout. It never raises and never waits longer than the timeout. The catalogue already
holds the change when ``send`` is called, so an offline agent receives it with its full desired
state when it next logs in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from .link import protocol
from .metrics import Metrics

log = logging.getLogger(__name__)

OFFLINE = 10002
TIMEOUT = 10003
FAILED = 10004

TRANSMIT_MESSAGES = {
    OFFLINE: "没有在线的采集端。",
    TIMEOUT: "采集端响应超时。",
    FAILED: "采集端连接中断。",
}


def transmit(code: int, **extra: Any) -> dict[str, Any]:
    return {"err_code": code, "err_msg": TRANSMIT_MESSAGES[code], **extra}


class AgentLink(Protocol):
    """A live connection to one agent (provided by the agent link module)."""

    #: The agent's last recording report per camera (recording, spool_bytes, upload_error).
    recordings: dict[int, dict[str, Any]]
    peer: str  # the address it connected from
    version: str  # what its hello said it runs
    since: float  # when it connected (unix seconds)

    async def request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send one command and return the agent's answer (``err_code``, ``err_msg``, data)."""
        ...

    async def close(self, reason: str, code: int = 4000) -> None:
        """End the link (a newer one replaced it, or the relay is stopping)."""
        ...


class Hub:
    def __init__(self, timeout: float, metrics: Metrics | None = None) -> None:
        self.timeout = timeout
        self._metrics = metrics or Metrics()
        self._links: dict[int, AgentLink] = {}
        self._histograms: dict[str, Any] = {}

    def attach(self, gather_id: int, link: AgentLink) -> AgentLink | None:
        """Make ``link`` the gatherer's live link; returns the one it replaces, if any."""
        previous = self._links.get(gather_id)
        self._links[gather_id] = link
        self._metrics.agents_connected.set(len(self._links))
        return previous

    def detach(self, gather_id: int, link: AgentLink) -> bool:
        """Forget ``link`` unless a newer link has replaced it; True when it was the live one."""
        if self._links.get(gather_id) is link:
            del self._links[gather_id]
            self._metrics.agents_connected.set(len(self._links))
            return True
        return False

    def links(self) -> list[AgentLink]:
        return list(self._links.values())

    def link(self, gather_id: int) -> AgentLink | None:
        """The gatherer's live link, if any (the console reads its peer, version, since)."""
        return self._links.get(gather_id)

    def online(self, gather_id: int) -> bool:
        return gather_id in self._links

    def recording(self, gather_id: int, camera_id: int) -> dict[str, Any] | None:
        """What the gatherer's agent last said of the camera's recording (None: offline, or it
        has said nothing yet)."""
        link = self._links.get(gather_id)
        return link.recordings.get(camera_id) if link is not None else None

    async def send(self, gather_id: int, action: str, data: dict[str, Any]) -> dict[str, Any]:
        link = self._links.get(gather_id)
        if link is None:
            return transmit(OFFLINE)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                answer = await link.request(action, data)
        except TimeoutError:
            log.warning("gatherer %d: %s got no answer within %.1f s", gather_id, action,
                        self.timeout)
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

    async def send_each(self, commands: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
        """Send several commands (possibly to several gatherers) at once; one ``transmit``.

        With one command it is that command's answer. With more, ``err_code`` is the first
        non-zero one (or 0) and ``gathers`` lists each answer with its ``gather_id``.
        """
        if not commands:
            return {"err_code": 0, "err_msg": "OK"}
        answers = await asyncio.gather(*(self.send(*command) for command in commands))
        if len(answers) == 1:
            return answers[0]
        failed = next((answer for answer in answers if answer.get("err_code")), None)
        return {
            "err_code": failed["err_code"] if failed else 0,
            "err_msg": failed["err_msg"] if failed else "OK",
            "gathers": [
                {"gather_id": command[0], **answer}
                for command, answer in zip(commands, answers, strict=True)
            ],
        }

    # -- desired state, told to the agents ----------------------------------------------------

    async def camera_added(self, row: dict[str, Any]) -> dict[str, Any]:
        return await self.send(row["gather_id"], protocol.CAMERA_ADD, protocol.camera_state(row))

    async def camera_changed(self, row: dict[str, Any]) -> dict[str, Any]:
        return await self.send(row["gather_id"], protocol.CAMERA_MOD, protocol.camera_state(row))

    async def cameras_deleted(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Deleted cameras (rows with ``gather_id`` and ``camera_id``): one command per gatherer."""
        by_gatherer: dict[int, list[int]] = {}
        for row in rows:
            by_gatherer.setdefault(row["gather_id"], []).append(row["camera_id"])
        return await self.send_each([(gather_id, protocol.CAMERA_DEL, {"camera_ids": ids})
                                     for gather_id, ids in sorted(by_gatherer.items())])

    async def camera_started(self, gather_id: int, camera_id: int, started: bool
                             ) -> dict[str, Any]:
        action = protocol.CAMERA_START if started else protocol.CAMERA_STOP
        return await self.send(gather_id, action, {"camera_id": camera_id})

    async def schedules_changed(self, schedules: list[tuple[int, int, list[dict[str, Any]]]]
                                ) -> dict[str, Any]:
        """Each camera's whole week, as (gather_id, camera_id, its courses)."""
        return await self.send_each([
            (gather_id, protocol.COURSES_SET, protocol.course_list(camera_id, courses))
            for gather_id, camera_id, courses in schedules])

    async def gatherer_changed(self, row: dict[str, Any]) -> dict[str, Any]:
        return await self.send(row["gather_id"], protocol.GATHER_MOD, protocol.gather_settings(row))
