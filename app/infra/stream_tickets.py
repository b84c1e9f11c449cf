"""Single-use tickets for opening an event stream from a browser: a ticket's SHA-256 names
the token hash that made it, for a short time, and can be taken once, across the
processes that share Redis (`GETDEL`), or in this process on the embedded default."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from app.infra.limiters import _ExpiringMap

if TYPE_CHECKING:
    from redis.asyncio import Redis


class TicketStoreUnavailable(Exception):
    """The shared store (Redis) could not be asked in time."""


class TicketStore(Protocol):
    """Tickets by their hash, each naming the token hash it stands for."""

    async def put(self, ticket_hash: str, token_hash: str, ttl_seconds: int) -> None:
        """Keep a ticket for `ttl_seconds`."""
        ...

    async def take(self, ticket_hash: str) -> str | None:
        """The token hash a live ticket stands for, forgetting the ticket; None when it
        was never made, was taken already, or expired."""
        ...


class InProcessTicketStore:
    """The embedded default's tickets: one process serves every stream."""

    def __init__(self) -> None:
        self._tickets: _ExpiringMap[str] = _ExpiringMap()

    @staticmethod
    def _now() -> int:
        return time.monotonic_ns() // 1000

    async def put(self, ticket_hash: str, token_hash: str, ttl_seconds: int) -> None:
        """Keep the ticket until its deadline."""
        now = self._now()
        self._tickets.set(ticket_hash, now + ttl_seconds * 1_000_000, token_hash, now)

    async def take(self, ticket_hash: str) -> str | None:
        """Take the ticket if it is live."""
        return self._tickets.pop(ticket_hash, self._now())


class RedisTicketStore:
    """Tickets every process can take, once: one key per ticket, expiring on Redis's clock."""

    def __init__(self, client: Redis, prefix: str, timeout: float = 1.0) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout

    def key(self, ticket_hash: str) -> str:
        """The Redis key of one ticket (its hash: Redis never holds the ticket)."""
        return f"{self._prefix}stream-ticket:{ticket_hash}"

    async def put(self, ticket_hash: str, token_hash: str, ttl_seconds: int) -> None:
        """Keep the ticket for `ttl_seconds`."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(self.key(ticket_hash), token_hash, ex=ttl_seconds)
        except Exception as exc:
            raise TicketStoreUnavailable(repr(exc)) from exc

    async def take(self, ticket_hash: str) -> str | None:
        """GETDEL: of any number of processes asking at once, one gets the ticket."""
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._client.getdel(self.key(ticket_hash))
        except Exception as exc:
            raise TicketStoreUnavailable(repr(exc)) from exc
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
