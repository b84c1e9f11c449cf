"""The rate rules, each shared through Redis or kept in process.

1. Auto-reply window: at most one auto-reply to an external number per organization
   per window. Redis makes the decision with one atomic `SET key holder NX PX window GET`,
   so any number of processes and hosts, and duplicated webhooks, get one reply.
2. Per-number send rate: carriers accept about one message per second per long code.
   A GCRA (generic cell rate algorithm) in one Lua script keeps one timestamp per
   number, using the Redis server's clock so app hosts with skewed clocks agree.

3. API rate limits: requests per token, and failed authentications per client
   address, per minute (`ApiRateLimiter`, on the `limits` library's fixed windows).

The in-process versions have the same semantics for the embedded default, which runs
one process and has no Redis.

For the first two, Redis errors and timeouts raise LimiterUnavailable, so callers fail
closed (no auto-reply; send later). The API limits fail open instead: the API must not
go down with Redis. Every Redis call has its own deadline (`operation_timeout`)
whatever the client's settings, because redis-py's default retries with backoff would
otherwise hold a webhook for seconds while Redis is down.

Redis Cluster: every operation touches exactly one key, so no hash tag is needed and
none is used; keys spread over all slots. (A tag such as `{org_id}` would only pile a
large organization onto one shard.) Do not put `{...}` in the key prefix for the same
reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.errors import TooManyRequests
from app.infra.coalesce import Coalescer
from app.infra.redis_packing import pack_with_hiredis

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
V = TypeVar("V")

# Socket timeouts for a limiter client: a healthy Redis answers in well under a
# millisecond, and a webhook should not wait long for a limiter that is down.
DEFAULT_SOCKET_TIMEOUT = 0.5
# Deadline for a whole limiter call (connect, one retry, the command itself).
DEFAULT_OPERATION_TIMEOUT = 1.0


# What "Redis is unavailable" looks like: redis-py errors (connection, timeout,
# script errors), raw socket errors, and our own deadline.
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


class LimiterUnavailable(Exception):
    """The shared limiter (Redis) could not be reached in time; the caller must fail closed."""


def create_limiter_client(
    url: str, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
) -> redis.asyncio.Redis:
    """A Redis client for the limiters: short timeouts, one immediate retry.

    Keep it separate from any pub/sub client, whose blocking reads need no socket timeout.
    """
    # One retry without backoff reconnects a pooled connection that Redis closed
    # (a restart, an idle timeout); more retries would only delay failing closed.
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return pack_with_hiredis(client)


def _to_micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _interval_micros(rate_per_second: float) -> int:
    if not rate_per_second > 0 or math.isinf(rate_per_second):
        raise ValueError("rate_per_second must be a positive, finite number.")
    return max(1, round(1_000_000 / rate_per_second))


def _window_micros(window_seconds: float) -> int:
    if not window_seconds > 0 or math.isinf(window_seconds):
        raise ValueError("window_seconds must be a positive, finite number.")
    return max(1, _to_micros(window_seconds))


class _ExpiringMap(Generic[V]):
    """Key -> (microsecond deadline, value); a key whose deadline is past counts as absent.

    Expired keys are swept whenever the map has doubled since the last sweep, so it
    holds at most about twice the keys that are live, and sweeping is amortized O(1).
    """

    _MIN_SWEEP_SIZE = 1024

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, V]] = {}
        self._sweep_at = self._MIN_SWEEP_SIZE

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: int) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def set(self, key: str, deadline: int, value: V, now: int) -> None:
        self._entries[key] = (deadline, value)
        if len(self._entries) >= self._sweep_at:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            self._sweep_at = max(self._MIN_SWEEP_SIZE, 2 * len(self._entries))

    def pop(self, key: str, now: int) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]


# --------------------------------------------------------------------------- auto-reply


@dataclass(frozen=True, slots=True)
class Hold:
    """The answer of `try_acquire`: true when the caller holds the window.

    `new`: taken by this call. A holder that already had the window (the same inbound
    message asking again: a carrier's retry, a concurrent duplicate) holds it without
    taking it anew, and must not give back what an earlier attempt may have used.
    """

    acquired: bool
    new: bool = False

    def __bool__(self) -> bool:
        return self.acquired


class AutoReplyWindow(Protocol):
    """At most one auto-reply to an external number per organization per window."""

    async def try_acquire(
        self, org_id: str, external_number: str, window_seconds: float, holder: str | None = None
    ) -> Hold:
        """Take the window for `holder` (a unique token when None), or learn who has it."""
        ...

    async def release(self, org_id: str, external_number: str, holder: str | None = None) -> None:
        """Best effort: give back a window `holder` (or, when None, this object) holds."""
        ...


class InProcessAutoReplyWindow:
    """The auto-reply window for one process (the embedded default), on a monotonic clock."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._holds: _ExpiringMap[str] = _ExpiringMap()
        # The token of every hold granted without a holder, forgotten when its window ends.
        self._tokens: _ExpiringMap[str] = _ExpiringMap()

    async def try_acquire(
        self, org_id: str, external_number: str, window_seconds: float, holder: str | None = None
    ) -> Hold:
        """Take the window for `holder`, or learn that it is held (by it, or another)."""
        window = _window_micros(window_seconds)
        now = _to_micros(self._clock())
        key = f"{org_id}:{external_number}"
        # No await between the check and the set: on one event loop this is atomic.
        current = self._holds.get(key, now)
        if current is not None:
            return Hold(holder is not None and current == holder)
        token = holder or uuid.uuid4().hex
        self._holds.set(key, now + window, token, now)
        if holder is None:
            self._tokens.set(key, now + window, token, now)
        return Hold(True, new=True)

    async def release(self, org_id: str, external_number: str, holder: str | None = None) -> None:
        """Give the window back so the next inbound message can get the reply."""
        key = f"{org_id}:{external_number}"
        now = _to_micros(self._clock())
        token = holder or self._tokens.pop(key, now)
        if token is not None and self._holds.get(key, now) == token:
            self._holds.pop(key, now)


# Delete the key only if it still holds our token: after the window expired another
# process may own the key, and deleting its hold would allow a second reply.
_RELEASE_SCRIPT = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"""


class RedisAutoReplyWindow:
    """The auto-reply window shared by every process through one Redis key per pair.

    `release` only deletes a hold this object granted (compare-and-delete on a random
    token), so it can never free another process's window. Within one process it
    cannot tell two holders of the same pair apart: call it soon after `try_acquire`.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key_prefix: str,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._timeout = operation_timeout
        self._release = client.register_script(_RELEASE_SCRIPT)
        # Windows asked for in the same loop turn go to Redis in one pipeline.
        self._sets: Coalescer[tuple[str, str, int], Any] = Coalescer(self._set_batch)
        # The token of every hold this object granted, forgotten when its window ends.
        self._tokens: _ExpiringMap[str] = _ExpiringMap()

    def key(self, org_id: str, external_number: str) -> str:
        """The Redis key holding the window of one (organization, external number) pair."""
        return f"{self._prefix}ar:{org_id}:{external_number}"

    async def try_acquire(
        self, org_id: str, external_number: str, window_seconds: float, holder: str | None = None
    ) -> Hold:
        """Take the window for `holder`, or learn that it is held (by it, or another):
        one `SET key holder NX PX window GET`.

        Raises LimiterUnavailable when Redis does not answer in time. If the SET went
        through but its answer was lost, the window stays taken with no reply sent:
        the failure costs a reply, never duplicates one (a retry with the same holder
        finds it its own).
        """
        window = _window_micros(window_seconds)
        key = self.key(org_id, external_number)
        token = holder or uuid.uuid4().hex
        # PX is whole milliseconds: round up, so the window is never shorter than asked.
        window_ms = max(1, math.ceil(window / 1000))
        try:
            previous = await self._sets.submit((key, token, window_ms))
        except _REDIS_FAILURES as exc:
            raise LimiterUnavailable(f"Auto-reply window unavailable: {exc!r}") from exc
        if previous is not None:
            held_by = previous.decode() if isinstance(previous, bytes) else str(previous)
            return Hold(holder is not None and held_by == holder)
        if holder is None:
            now = _to_micros(time.monotonic())
            self._tokens.set(key, now + window, token, now)
        return Hold(True, new=True)

    async def _set_batch(self, items: list[tuple[str, str, int]]) -> list[Any]:
        # One deadline for the batch: it bounds the wait of every caller in it.
        async with asyncio.timeout(self._timeout), self._client.pipeline(transaction=False) as pipe:
            for key, token, window_ms in items:
                pipe.set(key, token, nx=True, px=window_ms, get=True)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def release(self, org_id: str, external_number: str, holder: str | None = None) -> None:
        """Best effort: give back a window `holder` (or this object) holds; errors are
        logged, not raised."""
        key = self.key(org_id, external_number)
        token = holder or self._tokens.pop(key, _to_micros(time.monotonic()))
        if token is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._release(keys=[key], args=[token])
        except _REDIS_FAILURES as exc:
            # The window then simply runs out: one missed reply at worst.
            logger.warning("Could not release auto-reply window %s: %r", key, exc)


# ------------------------------------------------------------------------ send rate


class SendRateLimiter(Protocol):
    """Spaces sends from one `from` number to at most `rate_per_second`."""

    async def acquire(self, from_number: str, rate_per_second: float) -> float:
        """0: send now (the slot is taken). Otherwise: seconds to wait; nothing is taken."""
        ...

    async def reserve(self, from_number: str, rate_per_second: float, count: int) -> list[float]:
        """Take the number's next `count` send slots: for each, the seconds from now
        until it (0 for a slot that is now). A slot taken is the holder's to use."""
        ...


def _reserve(tat: int | None, now: int, interval: int, count: int) -> tuple[list[int], int]:
    """The next `count` slots from the theoretical arrival time (microseconds from now
    for each) and the new arrival time: one interval apart, the first no earlier than now."""
    base = now if tat is None or tat < now else tat
    return [base - now + i * interval for i in range(count)], base + count * interval


def _gcra(tat: int | None, now: int, interval: int, tolerance: int) -> tuple[int, int | None]:
    """One GCRA decision: (microseconds to wait, new theoretical arrival time or None).

    `tat` is the theoretical arrival time of the next send; a send is allowed when
    `now >= tat - tolerance`, and then pushes `tat` one interval further.
    """
    base = now if tat is None or tat < now else tat
    allow_at = base - tolerance
    if now < allow_at:
        return allow_at - now, None
    return 0, base + interval


class InProcessSendRateLimiter:
    """GCRA per `from` number for one process; the same maths as the Redis scripts."""

    def __init__(self, burst: int = 1, clock: Clock = time.monotonic) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1.")
        self._burst = burst
        self._clock = clock
        # Value and deadline are both the number's theoretical arrival time: once it
        # is past, the number is idle and its entry means nothing.
        self._tats: _ExpiringMap[int] = _ExpiringMap()

    async def acquire(self, from_number: str, rate_per_second: float) -> float:
        """0: send now (the slot is taken). Otherwise: seconds to wait; nothing is taken."""
        interval = _interval_micros(rate_per_second)
        now = _to_micros(self._clock())
        wait, new_tat = _gcra(
            self._tats.get(from_number, now), now, interval, (self._burst - 1) * interval
        )
        if new_tat is not None:
            self._tats.set(from_number, new_tat, new_tat, now)
        return wait / 1_000_000

    async def reserve(self, from_number: str, rate_per_second: float, count: int) -> list[float]:
        """Take the number's next `count` slots; seconds from now until each."""
        interval = _interval_micros(rate_per_second)
        now = _to_micros(self._clock())
        slots, new_tat = _reserve(self._tats.get(from_number, now), now, interval, count)
        self._tats.set(from_number, new_tat, new_tat, now)
        return [slot / 1_000_000 for slot in slots]


# The same decision as `_gcra`, in microseconds. Lua 5.1 numbers are doubles, exact
# for integers up to 2^53 (about 285 years of microseconds since 1970). TIME inside
# a writing script needs effect replication, the default since Redis 5. ARGV[3] is a
# clock override for tests only; production passes "" and uses the server clock.
# `%d` keeps the stored value an integer string (tostring would write 1.7e+15).
# Both scripts read the clock (ARGV[3], or the server's) and the number's arrival time.
_NOW_AND_TAT = """
local now
if ARGV[3] ~= "" then
  now = tonumber(ARGV[3])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call("GET", KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
"""
_GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
""" + _NOW_AND_TAT + """local allow_at = tat - tolerance
if now < allow_at then
  return allow_at - now
end
local new_tat = tat + interval
redis.call("SET", KEYS[1], string.format("%d", new_tat),
           "PX", math.ceil((new_tat - now) / 1000))
return 0
"""


# The same as `_reserve`, on the Redis server's clock. ARGV: interval, count, clock
# override ("" in production). Returns each slot's microseconds from now.
_RESERVE_SCRIPT = """
local interval = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
""" + _NOW_AND_TAT + """local slots = {}
for i = 1, count do
  slots[i] = tat - now
  tat = tat + interval
end
redis.call("SET", KEYS[1], string.format("%d", tat), "PX", math.ceil((tat - now) / 1000))
return slots
"""


class RedisSendRateLimiter:
    """GCRA per `from` number shared by every process, decided by one EVALSHA.

    `clock` is for tests only: it replaces the Redis server's TIME, which production
    must use so that hosts with skewed clocks agree.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key_prefix: str,
        burst: int = 1,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        clock: Clock | None = None,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1.")
        self._prefix = key_prefix
        self._burst = burst
        self._timeout = operation_timeout
        self._clock = clock
        # register_script sends EVALSHA and loads the script once on NOSCRIPT.
        self._script = client.register_script(_GCRA_SCRIPT)
        self._reserve = client.register_script(_RESERVE_SCRIPT)
        self._client = client

    def key(self, from_number: str) -> str:
        """The Redis key holding one number's theoretical arrival time."""
        return f"{self._prefix}rate:{from_number}"

    async def acquire(self, from_number: str, rate_per_second: float) -> float:
        """0: send now (the slot is taken). Otherwise: seconds to wait; nothing is taken.

        Raises LimiterUnavailable when Redis does not answer in time.
        """
        interval = _interval_micros(rate_per_second)
        now = "" if self._clock is None else str(_to_micros(self._clock()))
        args: list[str | int] = [interval, (self._burst - 1) * interval, now]
        try:
            async with asyncio.timeout(self._timeout):
                wait = await self._script(keys=[self.key(from_number)], args=args)
        except _REDIS_FAILURES as exc:
            raise LimiterUnavailable(f"Send rate limiter unavailable: {exc!r}") from exc
        return int(wait) / 1_000_000

    async def reserve(self, from_number: str, rate_per_second: float, count: int) -> list[float]:
        """Take the number's next `count` slots with one script call; seconds from now
        until each. Raises LimiterUnavailable when Redis does not answer in time."""
        return (await self.reserve_many([(from_number, count)], rate_per_second))[0]

    async def reserve_many(
        self, wanted: list[tuple[str, int]], rate_per_second: float
    ) -> list[list[float]]:
        """`reserve` for several numbers in one pipelined round trip."""
        interval = _interval_micros(rate_per_second)
        now = "" if self._clock is None else str(_to_micros(self._clock()))
        try:
            async with asyncio.timeout(self._timeout), self._client.pipeline(
                transaction=False
            ) as pipe:
                for number, count in wanted:
                    await self._reserve(
                        keys=[self.key(number)], args=[interval, count, now], client=pipe
                    )
                answers = await pipe.execute()
        except _REDIS_FAILURES as exc:
            raise LimiterUnavailable(f"Send rate limiter unavailable: {exc!r}") from exc
        return [[int(slot) / 1_000_000 for slot in slots] for slots in answers]


# ------------------------------------------------------------------ API rate limits


API_WINDOW_SECONDS = 60
# After the shared storage failed, requests are served without limits for this long
# before it is tried again: a Redis that hangs costs one request a timeout, not each.
FAIL_OPEN_SECONDS = 5.0


class ApiRateLimiter:
    """The API's budgets: requests per token, failed authentications per client address.

    Fixed one-minute windows of the `limits` library, in Redis (every process shares
    them) or in this process's memory (the embedded default). Why fixed windows: a
    request costs one INCRBY script, where the moving window stores an entry per request
    and the sliding-window counter reads two counters; and a window's count only grows
    until the window ends, so a refusal stands exactly until then: this object
    remembers it and refuses again without a round trip. The price: around the end of
    a window a client can fit up to twice its limit. What is refused still counts.

    Keys hold the SHA-256 of a token (as the database does), never the token.

    In Redis, the charges made in the same turn of the event loop go in one pipeline
    (`RedisWindowCounts`): each is the library's own step (INCRBY, and EXPIRE on a
    window's first unit) on the library's own key, so its reads of a window (`test`,
    the window's end) see every charge.

    Fails open: when the storage cannot be reached in time, a warning is logged and
    requests are served without limits for `FAIL_OPEN_SECONDS`, then it is tried again.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        requests_per_minute: int,
        auth_failures_per_minute: int,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        clock: Clock = time.monotonic,
        counts: RedisWindowCounts | None = None,
    ) -> None:
        self._windows = FixedWindowRateLimiter(storage)
        # Window key, its expiry (s) and the units to add -> the window's new count.
        self._counts: Coalescer[tuple[str, int, int], int] | None = (
            None if counts is None else Coalescer(counts.add)
        )
        self._per_token = RateLimitItemPerMinute(requests_per_minute)
        self._auth_failures = RateLimitItemPerMinute(auth_failures_per_minute)
        self._timeout = operation_timeout
        self._clock = clock
        # Window key -> the moment its refusal ends (microseconds on `clock`).
        self._refused: _ExpiringMap[int] = _ExpiringMap()
        self._open_until = 0

    async def charge(self, token_hash: str, units: int = 1) -> None:
        """Take `units` from the token's budget (one per request, one per message a send
        creates), or raise TooManyRequests: refused until the token's window ends."""
        item, ids = self._per_token, ("token", token_hash)
        refusal = self._refused_for(item, ids)
        if refusal is None:
            refusal = await self._guarded(lambda: self._take(item, ids, units))
        if refusal is not None:
            raise TooManyRequests(
                f"Too many requests with this token: at most {item.amount} a minute, a send "
                "counting one per message it creates. Try again after Retry-After seconds.",
                retry_after=refusal,
                details=self._details("token", item),
            )

    def check_address(self, address: str) -> None:
        """Raise TooManyRequests while `address` is refused for its failed
        authentications; no I/O, so it runs before any token is looked at."""
        refusal = self._refused_for(self._auth_failures, ("auth-failures", address))
        if refusal is not None:
            raise self._address_refusal(refusal)

    async def count_auth_failure(self, address: str) -> TooManyRequests | None:
        """Count a failed authentication from `address`. The one that reaches the limit
        makes this process refuse the address until the window ends (`check_address`).

        Returns the refusal to answer with instead of the 401 when this failure was
        past the limit already (another process counted the ones before it).
        """
        item, ids = self._auth_failures, ("auth-failures", address)
        refusal = self._refused_for(item, ids)
        if refusal is None:
            refusal = await self._guarded(lambda: self._count_failure(item, ids))
        return None if refusal is None else self._address_refusal(refusal)

    async def _take(self, item: RateLimitItem, ids: tuple[str, ...], cost: int) -> float | None:
        """None when `cost` fits the window; otherwise the seconds until it ends."""
        if self._counts is None:
            fits = await self._windows.hit(item, *ids, cost=cost)
        else:
            # What `FixedWindowRateLimiter.hit` does, in a batch.
            added = (item.key_for(*ids), item.get_expiry(), cost)
            fits = await self._counts.submit(added) <= item.amount
        if fits:
            return None
        return await self._remember_refusal(item, ids)

    async def _count_failure(self, item: RateLimitItem, ids: tuple[str, ...]) -> float | None:
        """Like `_take`, and when this failure spends the window's last unit, the refusal
        of what follows is remembered at once."""
        refusal = await self._take(item, ids, 1)
        if refusal is None and not await self._windows.test(item, *ids):
            await self._remember_refusal(item, ids)
        return refusal

    async def _remember_refusal(self, item: RateLimitItem, ids: tuple[str, ...]) -> float:
        """The seconds until the window ends, remembered so that the requests until then
        are refused without a round trip (a fixed window's count never drops)."""
        stats = await self._windows.get_window_stats(item, *ids)
        # At least a second: the window may have just ended in storage but not here.
        seconds = max(1.0, stats.reset_time - time.time())
        now = self._now()
        until = now + _to_micros(seconds)
        self._refused.set(item.key_for(*ids), until, until, now)
        return seconds

    def _refused_for(self, item: RateLimitItem, ids: tuple[str, ...]) -> float | None:
        now = self._now()
        until = self._refused.get(item.key_for(*ids), now)
        return None if until is None else (until - now) / 1_000_000

    async def _guarded(self, ask: Callable[[], Awaitable[float | None]]) -> float | None:
        """`ask` the storage within the deadline; None (serve the request) while it
        cannot be reached."""
        if self._now() < self._open_until:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                return await ask()
        except _REDIS_FAILURES as exc:
            self._open_until = self._now() + _to_micros(FAIL_OPEN_SECONDS)
            logger.warning(
                "API rate limits unavailable, requests served without them for %.0f s: %r",
                FAIL_OPEN_SECONDS,
                exc,
            )
            return None

    def _address_refusal(self, refusal: float) -> TooManyRequests:
        return TooManyRequests(
            f"Too many failed authentications from this address: at most "
            f"{self._auth_failures.amount} a minute. Try again after Retry-After seconds.",
            retry_after=refusal,
            details=self._details("client_address", self._auth_failures),
        )

    @staticmethod
    def _details(limited_by: str, item: RateLimitItem) -> dict[str, Any]:
        return {
            "limited_by": limited_by,
            "limit": item.amount,
            "window_seconds": API_WINDOW_SECONDS,
        }

    def _now(self) -> int:
        return _to_micros(self._clock())


def create_api_limiter(
    client: redis.asyncio.Redis | None,
    key_prefix: str,
    *,
    requests_per_minute: int,
    auth_failures_per_minute: int,
) -> ApiRateLimiter:
    """The API limiter on `client`'s connections (one Redis for every process), or in
    process memory when there is no Redis."""
    storage: Storage
    counts = None
    if client is None:
        storage = MemoryStorage()
    else:
        # The limiter client's pool: its short timeouts and single retry keep a Redis
        # outage from holding requests.
        storage = redis_storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{key_prefix}limits",
            # limits types its pass-through options as scalars; redis-py takes the pool.
            connection_pool=client.connection_pool,  # type: ignore[arg-type]
        )
        counts = RedisWindowCounts(client, redis_storage)
    return ApiRateLimiter(
        storage,
        requests_per_minute=requests_per_minute,
        auth_failures_per_minute=auth_failures_per_minute,
        counts=counts,
    )


class RedisWindowCounts:
    """Charges to the `limits` library's fixed windows in Redis, several in one pipeline:
    one write and one read on the socket for all the requests charged in the same loop
    turn (each a call of its own through the library). Each charge is the library's own
    script (INCRBY, EXPIRE on a window's first unit) on the library's own key for it."""

    def __init__(self, client: redis.asyncio.Redis, storage: RedisStorage) -> None:
        self._client = client
        self._key = storage.bridge.prefixed_key
        self._add = client.register_script(storage.bridge.SCRIPT_INCR_EXPIRE)

    async def add(self, items: list[tuple[str, int, int]]) -> list[Any]:
        """Each window's count after adding its units, or the error of its command. The
        caller's own deadline (`ApiRateLimiter._guarded`) bounds the wait."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, expiry, amount in items:
                await self._add(keys=[self._key(key)], args=[expiry, amount], client=pipe)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
