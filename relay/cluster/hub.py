"""The hub of a cluster node: links held here, the others reached through the node that holds them.

Who holds which gatherer lives in Redis (``ownership.py``), each claim tagged with its link's
epoch. A command for a gatherer linked elsewhere goes to the holder over this node's one command
link to it (``peers.py``, a WebSocket authenticated with the cluster secret; the holder's end is in
``routes.py``) and comes back as that agent's own
``transmit``: 10002 when no living node holds it, 10003 when the agent (or the holder) did not
answer within the one command timeout, 10004 when the link or the holder went mid-command. A
command is delivered at most once: it is sent again only when the holder answers that it did not
have the link (it moved just then).

Three chores, every third of ``node_lease``:

* the lease: this node renews its Redis key. If the key had expired (this node was taken for dead,
  or Redis restarted empty), it claims its links again; a claim refused (a newer link elsewhere)
  closes that link;
* reconciling: each link still being the holder in Redis, else closed (the pub/sub notice of a
  move is a hint only; this is the check that cannot be missed). A gatherer some node could not
  send a command to while Redis was gone is named in ``{prefix}:stale`` once Redis is back, and its
  holder closes its link: the agent links again at once and gets its whole desired state, so no
  change written meanwhile stays unknown to it;
* the sweep, by one node at a time: a gatherer the catalogue shows online that no living node holds,
  on two sweeps in a row with the same epoch, goes offline (epoch-conditional, so a relink since
  is never undone). A node killed without a word is so noticed within its lease and two sweeps.

Nothing of this runs while Redis is unreachable: links held here keep working, commands for other
nodes' gatherers answer 10002 (unless this node sent that gatherer one within the last third of
the lease: the holder it found then is remembered that long), ``/readyz`` says not ready, and the
chores resume when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from typing import Any

import aiohttp
from redis.exceptions import RedisError

from .. import tasks
from ..catalogue import Catalogue
from ..catalogue.errors import DATABASE_DOWN
from ..hub import FAILED, OFFLINE, TIMEOUT, AgentLink, LinkFacts, LocalHub, transmit
from ..metrics import Metrics
from ..throttle import FAILURE_WINDOW, MAX_FAILURES
from .ownership import Ownership
from .peers import LinkLost, Peers, Unreachable
from .redis_link import RedisLink
from .throttle import SharedFailedSignIns

log = logging.getLogger(__name__)

FACTS_PATH = "/cluster/v1/facts"
#: Seconds another node has to tell its links' facts (the console waits for them).
FACTS_TIMEOUT = 2.0
_MOVED = object()


class ClusterHub(LocalHub):
    def __init__(self, timeout: float, catalogue: Catalogue, metrics: Metrics, *, redis_url: str,
                 prefix: str, own_url: str, secret: str, lease: float) -> None:
        super().__init__(timeout, catalogue, metrics)
        self.node = secrets.token_hex(6)  # a new one each start: the old run is a dead node
        self.own_url = own_url
        self.secret = secret
        self.lease = lease
        self._redis = RedisLink(redis_url, probe=min(1.0, lease / 6))
        self.ownership = Ownership(self._redis.client, prefix)
        self._moved_channel = f"{prefix}:moved:{self.node}"
        self._prefix = prefix
        self._http: aiohttp.ClientSession | None = None
        self._peers: Peers | None = None
        self._holders: dict[int, tuple[str, str, float]] = {}  # gatherer → node, URL, until
        self._tasks: list[asyncio.Task[None]] = []
        self._suspects: dict[int, int] = {}  # gatherer → epoch seen unheld on the last sweep
        self._missed: set[int] = set()  # gatherers a command could not reach, Redis being gone
        self._started = time.time()
        self._had_lease = False

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster. The catalogue's presence is not reset: other nodes hold links."""
        self._redis.subscribe(self._moved_channel, self._on_moved)
        self._redis.on_return(self._renew)
        await self._redis.start()
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            headers={"Authorization": f"Bearer {self.secret}"})
        self._peers = Peers(self._http)
        with contextlib.suppress(RedisError, OSError):
            await self._renew()
        self._tasks = [asyncio.create_task(self._chores(), name="cluster chores")]
        log.info("cluster node %s joined at %s (lease %.1f s)", self.node, self.own_url,
                 self.lease)

    async def stop(self) -> None:
        await tasks.stop(*self._tasks)
        with contextlib.suppress(RedisError, OSError):
            await self.ownership.retire(self.node)
        if self._peers is not None:
            await self._peers.close()
        if self._http is not None:
            await self._http.close()
        await self._redis.stop()

    def sign_ins(self) -> SharedFailedSignIns:
        """The cluster's one count of failed sign-ins."""
        return SharedFailedSignIns(self._redis.client, self._prefix, MAX_FAILURES, FAILURE_WINDOW)

    def unready(self) -> str | None:
        return None if self._redis.ready else "Redis unreachable"

    def describe(self) -> dict[str, Any]:
        return {"url": self.own_url, "name": f"{socket.gethostname()} {self.own_url}",
                "started": int(self._started), "agents": len(self._links),
                "viewers": self._count("relay_live_viewers"),
                "pushes": self._count("relay_live_pushes")}

    def _count(self, name: str) -> int:
        return int(self._metrics.registry.get_sample_value(name) or 0)

    # -- links ---------------------------------------------------------------------------------

    async def attach(self, link: AgentLink) -> AgentLink | None:
        previous = self.attach_here(link)
        try:
            claimed, other = await self.ownership.claim(link.gather_id, self.node, link.epoch)
        except (RedisError, OSError) as exc:  # claimed again when Redis answers (``_renew``)
            log.warning("gatherer %d: cannot record its link in Redis (%s)", link.gather_id,
                        exc.__class__.__name__)
            return previous
        if not claimed:
            self.detach_here(link)
            if previous is not None:
                self.attach_here(previous)  # (closed by the reconciling, being older still)
            log.warning("gatherer %d: a newer link is on node %s; closing this one",
                        link.gather_id, other)
            await link.close("a newer connection for this gatherer is on another node")
            return None
        if other and other != self.node:
            log.info("gatherer %d moved here from node %s", link.gather_id, other)
            with contextlib.suppress(RedisError, OSError):
                await self._redis.client.publish(
                    f"{self._prefix}:moved:{other}",
                    json.dumps({"gather_id": link.gather_id, "epoch": link.epoch}))
        return previous

    async def detach(self, link: AgentLink) -> bool:
        if not self.detach_here(link):
            return False
        try:
            await self.ownership.release(link.gather_id, self.node, link.epoch)
        except (RedisError, OSError) as exc:  # the sweep ends the claim once it finds it unheld
            log.warning("gatherer %d: cannot release its claim in Redis (%s)", link.gather_id,
                        exc.__class__.__name__)
        return True

    async def _on_moved(self, data: str) -> None:
        try:
            notice = json.loads(data)
            gather_id, epoch = int(notice["gather_id"]), int(notice["epoch"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed cluster notice")
            return
        await self._close_if_older(gather_id, epoch, "replaced by a newer connection on another node")

    async def _close_if_older(self, gather_id: int, epoch: int, reason: str) -> None:
        link = self._links.get(gather_id)
        if link is not None and link.epoch < epoch:
            self.detach_here(link)  # not offline: the newer link holds it
            log.info("gatherer %d: %s", gather_id, reason)
            await link.close(reason)

    # -- presence ------------------------------------------------------------------------------

    async def online(self, gather_id: int) -> bool:
        if gather_id in self._links:
            return True
        try:
            held = await self.ownership.holder(gather_id)
        except (RedisError, OSError):
            return False
        return held is not None and held[1] is not None

    async def holder_url(self, gather_id: int) -> str | None:
        if gather_id in self._links:
            return None
        try:
            held = await self.ownership.holder(gather_id)
        except (RedisError, OSError):
            return None
        if held is None or held[0].node == self.node or held[1] is None:
            return None
        return str(held[1]["url"])

    async def facts(self, gather_ids: list[int]) -> dict[int, LinkFacts]:
        facts = await super().facts(gather_ids)
        elsewhere = [gather_id for gather_id in gather_ids if gather_id not in facts]
        if not elsewhere:
            return facts
        try:
            owners = await self.ownership.owners(elsewhere)
            nodes = {node: about for node, (alive, about) in (await self.ownership.nodes()).items()
                     if alive and node != self.node}
        except (RedisError, OSError):
            return facts
        by_node: dict[str, list[int]] = {}
        for gather_id, owner in owners.items():
            if owner.node in nodes:
                by_node.setdefault(owner.node, []).append(gather_id)
        answers = await asyncio.gather(*(self._facts_from(str(nodes[node]["url"]), ids)
                                         for node, ids in by_node.items()))
        for answer in answers:
            facts.update(answer)
        return facts

    async def _facts_from(self, url: str, gather_ids: list[int]) -> dict[int, LinkFacts]:
        assert self._http is not None
        try:
            async with self._http.post(url + FACTS_PATH, json={"gather_ids": gather_ids},
                                       timeout=aiohttp.ClientTimeout(total=FACTS_TIMEOUT)
                                       ) as response:
                body = await response.json() if response.status == 200 else {}
            return {int(gather_id): LinkFacts.from_json(value)
                    for gather_id, value in body.get("facts", {}).items()}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            log.warning("could not ask node %s about its links (%s)", url, exc.__class__.__name__)
            return {}

    def node_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    # -- commands ------------------------------------------------------------------------------

    async def send(self, gather_id: int, action: str, data: dict[str, Any]) -> dict[str, Any]:
        if gather_id in self._links:
            return await self.send_here(gather_id, action, data, self.timeout)
        deadline = time.monotonic() + self.timeout
        # Again only when the holder had not got it (it moved just then): a remembered holder,
        # then twice from Redis.
        for _ in range(3):
            holder = await self._holder_of(gather_id, action)
            if holder is None:
                return transmit(OFFLINE)
            answer = await self._forward(*holder, gather_id, action, data, deadline)
            if answer is not _MOVED:
                return answer  # type: ignore[return-value]
            self._holders.pop(gather_id, None)
            if gather_id in self._links:  # it moved here
                return await self.send_here(gather_id, action, data,
                                            max(0.0, deadline - time.monotonic()))
        return transmit(OFFLINE)

    async def _holder_of(self, gather_id: int, action: str) -> tuple[str, str] | None:
        """The node holding this gatherer and its URL: remembered for a third of the lease (a
        command sent to a node that no longer holds it answers ``moved`` and is sent again after
        a fresh lookup, so a stale entry costs one trip, never a lost or doubled command)."""
        remembered = self._holders.get(gather_id)
        if remembered is not None and remembered[2] > time.monotonic():
            return remembered[0], remembered[1]
        try:
            held = await self.ownership.holder(gather_id)  # one round trip
        except (RedisError, OSError) as exc:
            log.warning("gatherer %d: %s not sent, Redis unreachable (%s)", gather_id,
                        action, exc.__class__.__name__)
            self._missed.add(gather_id)
            return None
        owner, about = held if held is not None else (None, None)
        if owner is None or about is None or owner.node == self.node:
            self._holders.pop(gather_id, None)
            return None
        self._holders[gather_id] = (owner.node, str(about["url"]),
                                    time.monotonic() + self.lease / 3)
        return owner.node, str(about["url"])

    async def _forward(self, node: str, url: str, gather_id: int, action: str,
                       data: dict[str, Any], deadline: float) -> dict[str, Any] | object:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return transmit(TIMEOUT)
        body = {"gather_id": gather_id, "action": action, "data": data, "timeout": remaining}
        try:
            # The holder answers 10003 itself at ``remaining``; the margin is for the trip.
            assert self._peers is not None
            answer = await self._peers.call(node, url, body, remaining + 0.5)
        except Unreachable as exc:  # never reached it: nothing was delivered
            self._holders.pop(gather_id, None)
            log.warning("gatherer %d: %s not sent, its node %s is unreachable (%s)", gather_id,
                        action, node, exc)
            return transmit(OFFLINE)
        except TimeoutError:
            log.warning("gatherer %d: %s, no answer from node %s in time", gather_id, action, node)
            return transmit(TIMEOUT)
        except LinkLost as exc:
            self._holders.pop(gather_id, None)
            log.warning("gatherer %d: node %s went during %s (%s)", gather_id, node, action, exc)
            return transmit(FAILED)
        if answer.get("moved"):
            return _MOVED
        result = answer.get("transmit")
        if not isinstance(result, dict):
            log.warning("gatherer %d: node %s refused %s (%s)", gather_id, node, action,
                        answer.get("refused", "no transmit in its answer"))
            return transmit(FAILED)
        return result

    async def forwarded(self, gather_id: int, action: str, data: dict[str, Any],
                        timeout: float) -> dict[str, Any]:
        """A command another node passed on: sent over our link, or ``moved`` when we have none."""
        if gather_id not in self._links:
            return {"moved": True}
        return {"transmit": await self.send_here(gather_id, action, data,
                                                 min(timeout, self.timeout))}

    # -- chores --------------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew the lease; when it had lapsed, claim every link held here again."""
        alive = await self.ownership.renew(self.node, self.describe(), self.lease)
        if alive and self._had_lease:
            return
        if self._had_lease:
            log.warning("cluster node %s: its lease had lapsed (Redis restarted, or this node "
                        "was silent too long); claiming its %d links again", self.node,
                        len(self._links))
        lapsed, self._had_lease = self._had_lease, True
        for link in list(self._links.values()):
            claimed, other = await self.ownership.claim(link.gather_id, self.node, link.epoch)
            if not claimed and self.detach_here(link):
                log.info("gatherer %d: a newer connection is on node %s", link.gather_id, other)
                await link.close("a newer connection for this gatherer is on another node")
        if lapsed:
            await self._relink_swept()

    async def _relink_swept(self) -> None:
        """Links the sweep took for dead while this node's lease had lapsed (the catalogue shows
        them offline, their cameras too) are closed: each agent links again at once and its
        registration makes the catalogue right."""
        online = dict(await self._catalogue.gatherers.online_links())
        for link in list(self._links.values()):
            if online.get(link.gather_id) != link.epoch and self.detach_here(link):
                await self.ownership.release(link.gather_id, self.node, link.epoch)
                log.info("gatherer %d was taken offline while this node was silent; relinking it",
                         link.gather_id)
                await link.close("relink: this node was taken for dead", code=1012)

    async def _chores(self) -> None:
        period = self.lease / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._renew()
                if self._missed:  # their holders relink them, so they get the whole state
                    missed, self._missed = self._missed, set()
                    await self._redis.client.sadd(f"{self._prefix}:stale", *missed)
                await self._reconcile()
                if await self.ownership.take_turn("sweep", self.node, 2 * period):
                    await self._sweep()
            except (RedisError, OSError, *DATABASE_DOWN) as exc:
                log.debug("cluster chores wait for Redis or the catalogue (%s)",
                          exc.__class__.__name__)
            except Exception:
                log.exception("cluster chores")

    async def _reconcile(self) -> None:
        stale = {int(gid) for gid in await self._redis.client.smembers(f"{self._prefix}:stale")}
        for gather_id in stale & set(self._links):
            await self._redis.client.srem(f"{self._prefix}:stale", gather_id)
            link = self._links[gather_id]
            if self.detach_here(link):  # not offline: it links again at once
                await self.ownership.release(gather_id, self.node, link.epoch)
                log.info("gatherer %d: missed a command while Redis was gone; relinking it so "
                         "it gets its whole desired state", gather_id)
                await link.close("relink to get the whole desired state", code=1012)
        mine = list(self._links.values())
        owners = await self.ownership.owners([link.gather_id for link in mine])
        reclaimed = False
        for link in mine:
            owner = owners.get(link.gather_id)
            if owner is None or owner.epoch < link.epoch:  # a claim that never got through
                claimed, _ = await self.ownership.claim(link.gather_id, self.node, link.epoch)
                reclaimed |= claimed
            elif owner.node != self.node and owner.epoch > link.epoch:
                await self._close_if_older(link.gather_id, owner.epoch,
                                           f"replaced by a newer connection on node {owner.node}")
        if reclaimed:  # the sweep may have taken them for dead meanwhile
            await self._relink_swept()

    async def _sweep(self) -> None:
        online = await self._catalogue.gatherers.online_links()
        owners = await self.ownership.owners([gather_id for gather_id, _ in online])
        nodes = await self.ownership.nodes()
        living = {node for node, (alive, _) in nodes.items() if alive}
        unheld = {gather_id: epoch for gather_id, epoch in online
                  if (owner := owners.get(gather_id)) is None or owner.node not in living}
        confirmed = [(gather_id, epoch) for gather_id, epoch in unheld.items()
                     if self._suspects.get(gather_id) == epoch]
        self._suspects = unheld
        if confirmed:
            gone = await self._catalogue.gatherers.set_offline(confirmed)
            log.info("cluster sweep: %d gatherer(s) no living node holds went offline",
                     len(gone))
            for gather_id, _ in confirmed:
                owner = owners.get(gather_id)
                if owner is not None:
                    await self.ownership.release(gather_id, owner.node, owner.epoch)
        for node, (alive, about) in nodes.items():
            if not alive:
                log.info("cluster node %s (%s) is gone", node, about.get("url", "?"))
                await self.ownership.forget(node)
                if self._peers is not None:
                    await self._peers.forget(node)
