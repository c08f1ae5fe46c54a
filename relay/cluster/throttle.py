"""The failed sign-in count of a cluster, in Redis: the same rules as ``relay.throttle``'s
``FailedSignIns`` (per address and per account over a sliding window; a success clears only that
account's failures from that address), one count for every node.

Each failure is a member of two sorted sets scored by time (the address's, the account's), named by
digests so no address or account name appears in a key. Checking and counting are one Lua script,
so parallel attempts on several nodes cannot all slip under the limit. When Redis cannot be reached
the node counts in its own memory meanwhile (never unlimited) and says so in its log.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..throttle import FailedSignIns

log = logging.getLogger(__name__)

# KEYS: address set, account set. ARGV: now, horizon, limit, window ms, member id, address
# digest, account digest. Returns 1 when counted, 0 when over a limit.
_ATTEMPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
local limit = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= limit or redis.call('ZCARD', KEYS[2]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5] .. '|' .. ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[5] .. '|' .. ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: address set, account set. ARGV: horizon, limit. Returns 1 when either is at the limit.
_BLOCKED = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local limit = tonumber(ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= limit or redis.call('ZCARD', KEYS[2]) >= limit then
  return 1
end
return 0
"""

# KEYS: address set, account set. ARGV: address digest, account digest.
_SUCCEEDED = """
local function drop(key, other)
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(member, -string.len(other)) == other then
      redis.call('ZREM', key, member)
    end
  end
end
drop(KEYS[1], ARGV[2])
drop(KEYS[2], ARGV[1])
return 1
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SharedFailedSignIns:
    def __init__(self, client: Redis, prefix: str, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._prefix = prefix
        self._attempt = client.register_script(_ATTEMPT)
        self._blocked = client.register_script(_BLOCKED)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._meanwhile = FailedSignIns(limit, window)  # while Redis is unreachable

    def _keys(self, address: str, account: str) -> tuple[list[str], str, str]:
        by_address, by_account = _digest(address), _digest(account)
        return ([f"{self._prefix}:signin:address:{by_address}",
                 f"{self._prefix}:signin:account:{by_account}"], by_address, by_account)

    def _unreachable(self, exc: Exception) -> None:
        log.warning("sign-in count: Redis unreachable (%s); counting on this node meanwhile",
                    exc.__class__.__name__)

    async def blocked(self, address: str, account: str) -> bool:
        keys, _, _ = self._keys(address, account)
        try:
            return bool(await self._blocked(keys=keys,
                                            args=[time.time() - self.window, self.limit]))
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return await self._meanwhile.blocked(address, account)

    async def attempt(self, address: str, account: str) -> bool:
        keys, by_address, by_account = self._keys(address, account)
        now = time.time()
        try:
            return bool(await self._attempt(keys=keys, args=[
                now, now - self.window, self.limit, int(self.window * 1000) + 1000,
                secrets.token_hex(8), by_address, by_account]))
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return await self._meanwhile.attempt(address, account)

    async def succeeded(self, address: str, account: str) -> None:
        keys, by_address, by_account = self._keys(address, account)
        await self._meanwhile.succeeded(address, account)
        try:
            await self._succeeded(keys=keys, args=[by_address, by_account])
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
