"""The Redis limiters: one decision across processes, expiry, failing closed, GCRA."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.asyncio import Redis

from app.errors import TooManyRequests
from app.infra.limiters import (
    InProcessSendRateLimiter,
    LimiterUnavailable,
    RedisAutoReplyWindow,
    RedisSendRateLimiter,
    create_api_limiter,
    create_limiter_client,
)

from .conftest import REDIS_URL
from .test_limits_in_process import NUMBERS, FakeClock

ORG = "org-1"
NUMBER = "+14155550100"


async def eventually(condition: Callable[[], Awaitable[bool]], deadline: float = 10.0) -> None:
    """Poll an async condition until it holds; a generous deadline, no timing asserts."""
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition did not hold before the deadline")


async def test_fifty_concurrent_acquires_from_many_processes_grant_one(
    redis_client: Redis, key_prefix: str
) -> None:
    # Five clients stand for five app processes, each with its own connection pool.
    clients = [Redis.from_url(REDIS_URL) for _ in range(5)]
    try:
        windows = [RedisAutoReplyWindow(client, key_prefix) for client in clients]
        results = await asyncio.gather(
            *(windows[i % 5].try_acquire(ORG, NUMBER, 30) for i in range(50))
        )
    finally:
        for client in clients:
            await client.aclose()
    assert sum(bool(r) for r in results) == 1


async def test_window_key_and_expiry_are_set_in_one_command(
    redis_client: Redis, key_prefix: str
) -> None:
    window = RedisAutoReplyWindow(redis_client, key_prefix)
    assert window.key(ORG, NUMBER) == f"{key_prefix}ar:{ORG}:{NUMBER}"
    assert await window.try_acquire(ORG, NUMBER, 30)
    ttl_ms = await redis_client.pttl(window.key(ORG, NUMBER))
    assert 0 < ttl_ms <= 30_000


async def test_window_expires(redis_client: Redis, key_prefix: str) -> None:
    window = RedisAutoReplyWindow(redis_client, key_prefix)
    assert await window.try_acquire(ORG, NUMBER, 0.3)
    await eventually(lambda: window.try_acquire(ORG, NUMBER, 0.3))


async def test_other_orgs_and_numbers_have_their_own_window(
    redis_client: Redis, key_prefix: str
) -> None:
    window = RedisAutoReplyWindow(redis_client, key_prefix)
    assert await window.try_acquire(ORG, NUMBER, 30)
    assert not await window.try_acquire(ORG, NUMBER, 30)
    assert await window.try_acquire("org-2", NUMBER, 30)
    assert await window.try_acquire(ORG, "+14155550101", 30)


async def test_release_gives_the_window_back(redis_client: Redis, key_prefix: str) -> None:
    window = RedisAutoReplyWindow(redis_client, key_prefix)
    assert await window.try_acquire(ORG, NUMBER, 30)
    await window.release(ORG, NUMBER)
    assert await window.try_acquire(ORG, NUMBER, 30)


async def test_release_never_frees_another_process_window(
    redis_client: Redis, key_prefix: str
) -> None:
    holder = RedisAutoReplyWindow(redis_client, key_prefix)
    other = RedisAutoReplyWindow(redis_client, key_prefix)
    assert await holder.try_acquire(ORG, NUMBER, 30)
    await other.release(ORG, NUMBER)
    assert not await other.try_acquire(ORG, NUMBER, 30)


async def test_late_release_does_not_free_the_next_window(
    redis_client: Redis, key_prefix: str
) -> None:
    first = RedisAutoReplyWindow(redis_client, key_prefix)
    second = RedisAutoReplyWindow(redis_client, key_prefix)
    assert await first.try_acquire(ORG, NUMBER, 0.2)
    await eventually(lambda: second.try_acquire(ORG, NUMBER, 30))
    # The first holder's window is long over; its release must not touch the second's.
    await first.release(ORG, NUMBER)
    assert not await RedisAutoReplyWindow(redis_client, key_prefix).try_acquire(ORG, NUMBER, 30)


@pytest.mark.parametrize("factory", ["default_client", "limiter_client"])
async def test_unreachable_redis_fails_closed_quickly(factory: str) -> None:
    # Port 1 is closed: connection refused. The default client retries with backoff
    # for seconds; the limiter's own deadline must cut that short.
    url = "redis://127.0.0.1:1/0"
    client = Redis.from_url(url) if factory == "default_client" else create_limiter_client(url)
    window = RedisAutoReplyWindow(client, "unused:")
    rate = RedisSendRateLimiter(client, "unused:")
    try:
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            await window.try_acquire(ORG, NUMBER, 30)
        with pytest.raises(LimiterUnavailable):
            await rate.acquire(NUMBER, 1)
        await window.release(ORG, NUMBER)  # best effort: never raises
        # Two calls with a 1 s deadline each; generous so a slow machine passes.
        assert time.monotonic() - started < 5
    finally:
        await client.aclose()


async def test_redis_that_never_answers_fails_closed() -> None:
    # A server that accepts connections and then says nothing: a hung Redis.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis(host="127.0.0.1", port=port)
    try:
        window = RedisAutoReplyWindow(client, "unused:", operation_timeout=0.3)
        rate = RedisSendRateLimiter(client, "unused:", operation_timeout=0.3)
        with pytest.raises(LimiterUnavailable):
            await window.try_acquire(ORG, NUMBER, 30)
        with pytest.raises(LimiterUnavailable):
            await rate.acquire(NUMBER, 1)
    finally:
        await client.aclose()
        server.close()


# ---------------------------------------------------------------------------- GCRA

gcra_events = st.lists(
    st.tuples(st.integers(0, 1_500), st.sampled_from(NUMBERS)),  # (ms gap, from number)
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from([0.25, 0.5, 1, 2]), st.integers(1, 3), gcra_events)
async def test_redis_and_in_process_rate_limiters_agree(
    redis_client: Redis,
    key_prefix: str,
    rate: float,
    burst: int,
    events: list[tuple[int, str]],
) -> None:
    # Both limiters read the same fake clock (the Redis script's test-only override),
    # so their answers must match exactly. Rates stay at or below 2/s: the Redis key's
    # expiry runs on real time, and a TTL of at least 0.5 s outlives one example.
    clock = FakeClock(start=time.time())
    prefix = f"{key_prefix}{uuid4().hex[:8]}:"
    shared = RedisSendRateLimiter(redis_client, prefix, burst=burst, clock=clock)
    local = InProcessSendRateLimiter(burst=burst, clock=clock)
    for gap_ms, number in events:
        clock.advance(gap_ms / 1000)
        assert await shared.acquire(number, rate) == await local.acquire(number, rate)


async def test_rate_uses_redis_time_and_spaces_sends(redis_client: Redis, key_prefix: str) -> None:
    limiter = RedisSendRateLimiter(redis_client, key_prefix)
    assert await limiter.acquire(NUMBER, 2) == 0
    wait = await limiter.acquire(NUMBER, 2)
    assert 0 < wait <= 0.5
    # Another number is not slowed down by the first.
    assert await limiter.acquire("+14155550101", 2) == 0
    ttl_ms = await redis_client.pttl(limiter.key(NUMBER))
    assert 0 < ttl_ms <= 500
    await asyncio.sleep(wait + 0.01)
    assert await limiter.acquire(NUMBER, 2) == 0


async def test_concurrent_acquires_at_one_instant_grant_one(
    redis_client: Redis, key_prefix: str
) -> None:
    clock = FakeClock(start=time.time())
    limiter = RedisSendRateLimiter(redis_client, key_prefix, clock=clock)
    waits = await asyncio.gather(*(limiter.acquire(NUMBER, 5) for _ in range(50)))
    assert waits.count(0) == 1
    # Every refusal names the same moment: nothing was consumed by being refused.
    assert {w for w in waits if w} == {0.2}


async def test_concurrent_senders_never_beat_the_rate(redis_client: Redis, key_prefix: str) -> None:
    rate = 5.0
    clients = [Redis.from_url(REDIS_URL) for _ in range(4)]
    limiters = [RedisSendRateLimiter(client, key_prefix) for client in clients]
    grants = 0
    refusals = 0

    async def sender(limiter: RedisSendRateLimiter, stop_at: float) -> None:
        nonlocal grants, refusals
        while time.monotonic() < stop_at:
            wait = await limiter.acquire(NUMBER, rate)
            if wait == 0:
                grants += 1
            else:
                refusals += 1
                assert 0 < wait <= 1 / rate
                await asyncio.sleep(wait)

    try:
        started = time.monotonic()
        await asyncio.gather(*(sender(limiters[i % 4], started + 1.2) for i in range(20)))
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            await client.aclose()
    # Grants at server times s1 < ... < sn are at least 1/rate apart, and all fall
    # inside the measured interval, so n - 1 <= rate * elapsed. A slow machine only
    # lowers n; it can never make this fail.
    assert grants >= 1
    assert grants <= rate * elapsed + 1
    assert refusals > 0


async def test_a_holder_finds_its_own_window_but_nobody_else_gets_it(
    redis_client: Redis, key_prefix: str
) -> None:
    # The holder is the inbound message's carrier id: a retry of the same webhook (or
    # a concurrent duplicate) must find the window its own, without taking it anew.
    window = RedisAutoReplyWindow(redis_client, key_prefix)
    other_process = RedisAutoReplyWindow(redis_client, key_prefix)
    first = await window.try_acquire(ORG, NUMBER, 30, holder="telnyx:m-1")
    assert first.acquired and first.new
    again = await other_process.try_acquire(ORG, NUMBER, 30, holder="telnyx:m-1")
    assert again.acquired and not again.new
    assert not await other_process.try_acquire(ORG, NUMBER, 30, holder="telnyx:m-2")
    assert not await other_process.try_acquire(ORG, NUMBER, 30)
    # Only the holder's release frees it, from any process.
    await other_process.release(ORG, NUMBER, holder="telnyx:m-2")
    assert not await window.try_acquire(ORG, NUMBER, 30, holder="telnyx:m-3")
    await other_process.release(ORG, NUMBER, holder="telnyx:m-1")
    taken = await window.try_acquire(ORG, NUMBER, 30, holder="telnyx:m-3")
    assert taken.acquired and taken.new


async def test_api_charges_made_together_land_on_the_librarys_own_window(
    key_prefix: str,
) -> None:
    """Charges in one loop turn go to Redis in one pipeline, each on the key the `limits`
    library reads: its own view of the window counts every one of them."""
    client = create_limiter_client(REDIS_URL)
    limiter = create_api_limiter(
        client, key_prefix, requests_per_minute=5, auth_failures_per_minute=5
    )
    token_hash = "ab" * 32
    try:
        await asyncio.gather(*(limiter.charge(token_hash) for _ in range(3)))
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{key_prefix}limits",
            connection_pool=client.connection_pool,  # type: ignore[arg-type]
        )
        item = RateLimitItemPerMinute(5)
        stats = await FixedWindowRateLimiter(storage).get_window_stats(item, "token", token_hash)
        assert stats.remaining == 2
        assert 0 < await client.ttl(f"{key_prefix}limits:{item.key_for('token', token_hash)}") <= 60
        await limiter.charge(token_hash, 2)
        with pytest.raises(TooManyRequests):
            await limiter.charge(token_hash)
    finally:
        await client.aclose()
