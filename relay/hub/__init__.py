"""The hub: the one way API commands reach gatherer agents, and how their answers come back.

The hub is also the one door for desired state: the API, the console and the demo tell it what
changed (``camera_added``, ``schedules_changed``, ...), and it alone turns that into protocol
messages; nothing above it builds one.

``send`` returns the ``transmit`` object of an API answer: the agent's own reply (meaning it applied
the command), 10002 when no node holds a live link to the gatherer, 10003 when the agent did not
answer within the command timeout, 10004 when the link was lost meanwhile. It never raises and never
waits longer than the timeout. The catalogue already holds the change when ``send`` is called, so an
offline agent receives it with its full desired state when it next logs in.

Two words for presence, kept apart: a gatherer is *linked here* when this node holds its agent's
WebSocket (only this node can then talk to it directly, push its live media here, read its link's
reports); it is *online* when some node of the cluster holds it. ``LocalHub`` (one node) and
``relay.cluster.ClusterHub`` (many, on Redis) implement it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from ..link import protocol

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

    gather_id: int
    #: When this link was made, in the cluster's order of links: a newer link for the same
    #: gatherer always has a larger epoch, whichever node holds it (``Hub.new_epoch``).
    epoch: int
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


@dataclass(frozen=True)
class LinkFacts:
    """What a gatherer's live link tells, wherever it is held (the console and the API show it)."""

    peer: str
    version: str
    since: float
    #: The agent's last recording report per camera (recording, spool_bytes, upload_error).
    recordings: dict[int, dict[str, Any]]

    @classmethod
    def of(cls, link: AgentLink) -> LinkFacts:
        return cls(link.peer, link.version, link.since, dict(link.recordings))

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "version": self.version, "since": self.since,
                "recordings": {str(camera): report for camera, report in self.recordings.items()}}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LinkFacts:
        return cls(str(value["peer"]), str(value["version"]), float(value["since"]),
                   {int(camera): dict(report) for camera, report in value["recordings"].items()})


class Hub(ABC):
    """Links of this node, presence across nodes, commands to any gatherer's agent."""

    timeout: float

    @abstractmethod
    async def start(self) -> None:
        """Before the first agent links (``relay serve`` calls it once)."""

    @abstractmethod
    async def stop(self) -> None:
        """After the last link closed."""

    def unready(self) -> str | None:
        """Why this node cannot serve everything now (``/readyz``), or None."""
        return None

    @abstractmethod
    def new_epoch(self) -> int:
        """The epoch for a link being made now: larger than any this node handed out before."""

    @abstractmethod
    async def attach(self, link: AgentLink) -> AgentLink | None:
        """Make ``link`` its gatherer's live link; returns the one it replaces on this node.

        In a cluster a newer link elsewhere may already hold the gatherer: then ``link`` is
        closed and None returned (the caller sees ``linked_here`` False)."""

    @abstractmethod
    async def detach(self, link: AgentLink) -> bool:
        """Forget ``link`` unless a newer link has replaced it; True when it was the live one."""

    @abstractmethod
    def links(self) -> list[AgentLink]:
        """The links this node holds."""

    @abstractmethod
    def link(self, gather_id: int) -> AgentLink | None:
        """The gatherer's link when this node holds it (the console reads its peer, version)."""

    def linked_here(self, gather_id: int) -> bool:
        return self.link(gather_id) is not None

    @abstractmethod
    async def online(self, gather_id: int) -> bool:
        """Whether any node holds a link to the gatherer."""

    async def holder_url(self, gather_id: int) -> str | None:
        """The URL of the other node holding the gatherer's link (a cluster), else None."""
        return None

    def node_headers(self) -> dict[str, str]:
        """What a request to another node carries to prove it comes from the cluster."""
        return {}

    async def facts(self, gather_ids: list[int]) -> dict[int, LinkFacts]:
        """What the live links of these gatherers tell, wherever they are held; a gatherer that
        no node holds (or whose node does not answer) is left out."""
        return {gather_id: LinkFacts.of(link) for gather_id in gather_ids
                if (link := self.link(gather_id)) is not None}

    async def recording(self, gather_id: int, camera_id: int) -> dict[str, Any] | None:
        """What the gatherer's agent last said of the camera's recording (None: offline, or it
        has said nothing yet)."""
        facts = (await self.facts([gather_id])).get(gather_id)
        return facts.recordings.get(camera_id) if facts is not None else None

    @abstractmethod
    async def send(self, gather_id: int, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """One command to the gatherer's agent, wherever it is linked: its ``transmit``."""

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


from .local import LocalHub  # noqa: E402  (it builds on the above)

__all__ = ["FAILED", "OFFLINE", "TIMEOUT", "TRANSMIT_MESSAGES", "AgentLink", "Hub", "LinkFacts",
           "LocalHub", "transmit"]
