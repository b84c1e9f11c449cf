"""Fixtures for the event bus tests: both buses behind one `kit`, and a raw Redis client."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.infra.event_bus import (
    DEFAULT_MAX_QUEUE,
    Event,
    InProcessEventBus,
    RedisEventBus,
    Resync,
    Subscription,
)

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

Bus = InProcessEventBus | RedisEventBus


async def redis_reachable() -> bool:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
        return True
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


@dataclass
class Kit:
    """Makes started buses of one kind; every Redis bus of a kit shares one stream."""

    kind: str
    prefix: str = field(default_factory=lambda: f"test:events:{uuid.uuid4().hex}:")
    buses: list[Bus] = field(default_factory=list)
    clients: list[aioredis.Redis] = field(default_factory=list)

    def client(self, url: str = REDIS_URL, **options: Any) -> aioredis.Redis:
        client = aioredis.Redis.from_url(url, **options)
        self.clients.append(client)
        return client

    async def bus(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_retained: int = 10_000,
        retention_seconds: float = 600,
        client: aioredis.Redis | None = None,
        start: bool = True,
        **redis_options: Any,
    ) -> Bus:
        bus: Bus
        if self.kind == "memory":
            bus = InProcessEventBus(retention_seconds, max_retained, max_queue=max_queue)
        else:
            bus = RedisEventBus(
                client or self.client(),
                self.prefix,
                retention_seconds,
                max_retained,
                max_queue=max_queue,
                **redis_options,
            )
        self.buses.append(bus)
        if start:
            await bus.start()
        return bus

    async def enforce_retention(self, bus: Bus, max_retained: int) -> None:
        """Trim exactly as far as the bus allows (Redis trims approximately, in nodes)."""
        if isinstance(bus, RedisEventBus):
            await self.client().xtrim(bus.key, maxlen=max_retained, approximate=False)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.stop()
        if self.kind == "redis":
            client = aioredis.Redis.from_url(REDIS_URL)
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        for client in self.clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[Kit]:
    if request.param == "redis" and not await redis_reachable():
        pytest.skip(f"no Redis at {REDIS_URL}")
    k = Kit(request.param)
    try:
        yield k
    finally:
        await k.close()


@pytest.fixture
async def redis_kit() -> AsyncIterator[Kit]:
    if not await redis_reachable():
        pytest.skip(f"no Redis at {REDIS_URL}")
    k = Kit("redis")
    try:
        yield k
    finally:
        await k.close()


async def take(sub: Subscription, n: int, timeout: float = 5.0) -> list[Event | Resync]:
    """The next `n` items of a subscription, failing if any takes longer than `timeout`."""
    return [await asyncio.wait_for(anext(sub), timeout) for _ in range(n)]


async def take_until(
    sub: Subscription, last_id: str, timeout: float = 5.0, limit: int = 10_000
) -> list[Event | Resync]:
    """Items up to and including the event with id `last_id`."""
    items: list[Event | Resync] = []
    while len(items) < limit:
        item = await asyncio.wait_for(anext(sub), timeout)
        items.append(item)
        if isinstance(item, Event) and item.id == last_id:
            return items
    raise AssertionError(f"event {last_id} never came")


async def assert_idle(sub: Subscription, wait: float = 0.2) -> None:
    """Nothing more arrives within `wait` seconds."""
    try:
        item = await asyncio.wait_for(anext(sub), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected item {item!r}")


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until `predicate()` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)
