"""Slots for open event streams: how many each user holds, across the processes that
share Redis (one sorted set per user, scored by each slot's expiry on Redis's clock), or
in this process on the embedded default. A slot lives `SLOT_TTL_SECONDS` unless kept
alive, so the slots of a process that died free themselves."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

SLOT_TTL_SECONDS = 60.0


class StreamSlots(Protocol):
    """How many streams each user holds, across the processes that share it."""

    async def take(self, user_id: str, slot_id: str, cap: int) -> bool:
        """Take a slot for a new stream; False when the user holds `cap` already."""
        ...

    async def refresh(self, slots: list[tuple[str, str]]) -> None:
        """Keep the (user, slot) pairs of streams still open alive."""
        ...

    async def give_back(self, slots: list[tuple[str, str]]) -> None:
        """Free the slots of streams that ended."""
        ...


class InProcessStreamSlots:
    """The embedded default's slots: one process holds every stream."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}

    async def take(self, user_id: str, slot_id: str, cap: int) -> bool:
        """Take a slot unless the user holds `cap` streams already."""
        held = self._held.setdefault(user_id, set())
        if len(held) >= cap:
            return False
        held.add(slot_id)
        return True

    async def refresh(self, slots: list[tuple[str, str]]) -> None:
        """Nothing expires in process."""

    async def give_back(self, slots: list[tuple[str, str]]) -> None:
        """Free the slots."""
        for user_id, slot_id in slots:
            held = self._held.get(user_id)
            if held is not None:
                held.discard(slot_id)
                if not held:
                    del self._held[user_id]


# KEYS[1]: the user's slots (a sorted set scored by expiry, in ms of Redis's clock).
# ARGV: slot id, cap, ttl ms. Expired slots (of processes that died) are dropped first.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1]: the user's slots; ARGV: ttl ms, then the slot ids to keep alive.
_REFRESH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


class RedisStreamSlots:
    """Slots shared by every process: one sorted set per user, one key per call."""

    def __init__(self, client: Redis, prefix: str, timeout: float = 1.0) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._take = client.register_script(_TAKE_LUA)
        self._refresh = client.register_script(_REFRESH_LUA)

    def key(self, user_id: str) -> str:
        """The Redis key of one user's slots."""
        return f"{self._prefix}streams:{user_id}"

    async def take(self, user_id: str, slot_id: str, cap: int) -> bool:
        """Take a slot unless the user holds `cap` live ones. If Redis cannot be asked,
        the stream is let through: it needs Redis for its events anyway."""
        ttl_ms = int(SLOT_TTL_SECONDS * 1000)
        try:
            async with asyncio.timeout(self._timeout):
                taken = await self._take(keys=[self.key(user_id)], args=[slot_id, cap, ttl_ms])
        except Exception as exc:
            log.warning(
                "stream slots unavailable; stream allowed", extra={"fields": {"error": repr(exc)}}
            )
            return True
        return bool(taken)

    async def refresh(self, slots: list[tuple[str, str]]) -> None:
        """Keep the slots of open streams alive, one script call per user, pipelined."""
        by_user: dict[str, list[str]] = {}
        for user_id, slot_id in slots:
            by_user.setdefault(user_id, []).append(slot_id)
        ttl_ms = int(SLOT_TTL_SECONDS * 1000)
        async with asyncio.timeout(self._timeout), self._client.pipeline(transaction=False) as pipe:
            for user_id, ids in by_user.items():
                await self._refresh(keys=[self.key(user_id)], args=[ttl_ms, *ids], client=pipe)
            await pipe.execute()

    async def give_back(self, slots: list[tuple[str, str]]) -> None:
        """Free the slots of streams that ended."""
        async with asyncio.timeout(self._timeout), self._client.pipeline(transaction=False) as pipe:
            for user_id, slot_id in slots:
                pipe.zrem(self.key(user_id), slot_id)
            await pipe.execute()
