"""Which node holds which gatherer's link, and which nodes are alive: Redis keys, changed atomically.

Keys (under the cluster's ``prefix``):

* ``{prefix}:node:{id}``: the node's lease, a JSON description (its URL, name, counts) that expires
  ``lease`` seconds after the node last renewed it. A node whose lease key is gone is dead.
* ``{prefix}:nodes``: a hash of every node ever seen (id → description), for ``relay status`` and
  for the sweep to find the dead ones' gatherers; a dead node's entry is removed by the sweep.
* ``{prefix}:gatherer:{gather_id}``: a hash ``node``, ``epoch``: the link that holds the gatherer.
* ``{prefix}:held:{node}``: the set of gatherer ids the node holds.

Claims are decided by epoch (``relay.hub``): a claim with a smaller epoch than the one stored is
refused, so a node that comes back after its lease expired cannot take back a gatherer whose agent
has linked elsewhere since, and two nodes racing for one gatherer end with one owner, the newer
link. A release only removes the claim it made (same node, same epoch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

# KEYS: gatherer hash, new node's held set. ARGV: node, epoch, gather_id, held-set prefix.
# Returns {"ok"|"newer", previous node or ""}.
_CLAIM = """
local node = redis.call('HGET', KEYS[1], 'node')
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if node and epoch > tonumber(ARGV[2]) then
  return {'newer', node}
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if node and node ~= ARGV[1] then
  redis.call('SREM', ARGV[4] .. node, ARGV[3])
end
return {'ok', node or ''}
"""

# KEYS: gatherer hash, held set. ARGV: node, epoch, gather_id. Returns 1 when it was that claim.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] and
   redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
  return 1
end
redis.call('SREM', KEYS[2], ARGV[3])
return 0
"""


# KEYS: gatherer hash. ARGV: lease key prefix. Returns {node, epoch, lease} or {} (no holder);
# lease is false when the holder's lease has expired.
_HOLDER = """
local node = redis.call('HGET', KEYS[1], 'node')
if not node then return {} end
return {node, redis.call('HGET', KEYS[1], 'epoch'), redis.call('GET', ARGV[1] .. node)}
"""


@dataclass(frozen=True)
class Owner:
    node: str
    epoch: int


class Ownership:
    def __init__(self, client: Redis, prefix: str) -> None:
        self._redis = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._holder = client.register_script(_HOLDER)

    def _gatherer(self, gather_id: int) -> str:
        return f"{self.prefix}:gatherer:{gather_id}"

    def _held(self, node: str) -> str:
        return f"{self.prefix}:held:{node}"

    def _lease(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    # -- nodes -------------------------------------------------------------------------------

    async def renew(self, node: str, about: dict[str, Any], lease: float) -> bool:
        """Write the node's lease for ``lease`` seconds; False when it had expired (or never
        existed): the node was taken for dead meanwhile."""
        described = json.dumps(about, sort_keys=True)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._lease(node), described, px=int(lease * 1000), get=True)
            pipe.hset(f"{self.prefix}:nodes", node, described)
            previous, _ = await pipe.execute()
        return previous is not None

    async def retire(self, node: str) -> None:
        """A node stopping cleanly: its lease and entry go at once (its links are closed)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._lease(node), self._held(node))
            pipe.hdel(f"{self.prefix}:nodes", node)
            await pipe.execute()

    async def nodes(self) -> dict[str, tuple[bool, dict[str, Any]]]:
        """Every known node: whether its lease is alive, and what it last said of itself."""
        known = await self._redis.hgetall(f"{self.prefix}:nodes")
        ids = sorted(known)
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in ids:
                pipe.exists(self._lease(node))
            alive = await pipe.execute() if ids else []
        return {node: (bool(live), json.loads(known[node]))
                for node, live in zip(ids, alive, strict=True)}

    async def alive(self, node: str) -> dict[str, Any] | None:
        """The node's description while its lease lives, else None."""
        value = await self._redis.get(self._lease(node))
        return json.loads(value) if value is not None else None

    async def forget(self, node: str) -> None:
        """A dead node's entry, once its gatherers are dealt with."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.prefix}:nodes", node)
            pipe.delete(self._held(node))
            await pipe.execute()

    # -- gatherers ---------------------------------------------------------------------------

    async def claim(self, gather_id: int, node: str, epoch: int) -> tuple[bool, str]:
        """Make ``node``'s link of ``epoch`` the gatherer's holder: (True, previous holder or "")
        or (False, the node holding a newer link)."""
        verdict, other = await self._claim(
            keys=[self._gatherer(gather_id), self._held(node)],
            args=[node, epoch, gather_id, f"{self.prefix}:held:"])
        return verdict == "ok", other

    async def release(self, gather_id: int, node: str, epoch: int) -> bool:
        return bool(await self._release(keys=[self._gatherer(gather_id), self._held(node)],
                                        args=[node, epoch, gather_id]))

    async def owner(self, gather_id: int) -> Owner | None:
        held = await self.holder(gather_id)
        return held[0] if held is not None else None

    async def holder(self, gather_id: int) -> tuple[Owner, dict[str, Any] | None] | None:
        """The gatherer's holder and its node's description while its lease lives (None: dead),
        in one round trip; None when no node holds it."""
        answer = await self._holder(keys=[self._gatherer(gather_id)],
                                    args=[f"{self.prefix}:node:"])
        if not answer:
            return None
        node, epoch, lease = [*answer, None, None][:3]
        return Owner(node, int(epoch)), json.loads(lease) if lease else None

    async def owners(self, gather_ids: list[int]) -> dict[int, Owner]:
        if not gather_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for gather_id in gather_ids:
                pipe.hmget(self._gatherer(gather_id), ["node", "epoch"])
            answers = await pipe.execute()
        return {gather_id: Owner(node, int(epoch))
                for gather_id, (node, epoch) in zip(gather_ids, answers, strict=True)
                if node and epoch}

    async def held(self, node: str) -> set[int]:
        return {int(gather_id) for gather_id in await self._redis.smembers(self._held(node))}

    async def take_turn(self, name: str, node: str, seconds: float) -> bool:
        """One node at a time does the chore ``name`` (the sweep): whoever took the turn keeps it
        while it comes back within ``seconds``; then anyone may take it."""
        key = f"{self.prefix}:turn:{name}"
        if await self._redis.set(key, node, nx=True, px=int(seconds * 1000)):
            return True
        if await self._redis.get(key) == node:
            await self._redis.pexpire(key, int(seconds * 1000))
            return True
        return False
