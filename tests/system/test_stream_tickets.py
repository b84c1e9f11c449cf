"""Event stream tickets through real processes sharing Redis: what a browser's EventSource
opens its stream with, since it cannot send an Authorization header."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.servers import app_process
from tests.support import Member, Tenant, eventually

pytestmark = pytest.mark.slow


@dataclass
class Stream:
    """An event stream read in the background."""

    status: int | None = None
    error: dict[str, Any] | None = None
    bodies: list[str] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def stream(
    base_url: str, *, params: dict[str, str], headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    """`GET /v1/events` as an EventSource would make it: the ticket in the query."""
    watched = Stream()

    async def read() -> None:
        try:
            async with (
                httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as http,
                http.stream("GET", "/v1/events", params=params, headers=headers or {}) as r,
            ):
                watched.status = r.status_code
                if r.status_code != 200:
                    watched.error = json.loads(await r.aread())["error"]
                watched.opened.set()
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        data = json.loads(line.partition(":")[2])
                        if isinstance(data, dict) and "body" in data:
                            watched.bodies.append(data["body"])
        finally:
            watched.opened.set()
            watched.ended.set()

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(watched.opened.wait(), 20)
        yield watched
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task


async def _ticket(client: httpx.AsyncClient, member: Member) -> str:
    r = await client.post("/v1/events/tickets", headers=member.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["expires_in"] == 60 and body["ticket"].startswith("mst_"), body
    ticket: str = body["ticket"]
    return ticket


async def _message_to(tenant: Tenant, member: Member, body: str) -> None:
    await tenant.call(
        "POST",
        "/v1/messages",
        expect=201,
        json={"to": [{"username": member.username}], "body": body},
    )


async def test_a_ticket_opens_one_stream_once_across_processes(
    system_env: dict[str, str],
) -> None:
    """Issued on one process, used on either: the first use opens the caller's stream,
    any other use (on any process, at the same moment or later) is 401, as is an
    unknown or expired ticket; Redis holds the ticket's hash, never the ticket."""
    with app_process(system_env) as one, app_process(system_env) as two:
        async with (
            httpx.AsyncClient(base_url=one.url, timeout=30) as c1,
            httpx.AsyncClient(base_url=two.url, timeout=30) as c2,
        ):
            tenant = await Tenant.create(c1)
            bob = await tenant.add_user()
            ticket = await _ticket(c1, bob)
            async with (
                stream(one.url, params={"ticket": ticket}) as a,
                stream(two.url, params={"ticket": ticket}) as b,
            ):
                opened = sorted([a, b], key=lambda s: s.status or 0)
                assert [s.status for s in opened] == [200, 401]
                live, refused = opened
                assert refused.error is not None and refused.error["code"] == "invalid_ticket"
                await asyncio.sleep(0.3)  # subscribed once its first bytes are out
                await _message_to(tenant, bob, "for bob's browser")
                await eventually(lambda: _async(live.bodies == ["for bob's browser"]))

            async with stream(two.url, params={"ticket": ticket}) as again:
                assert again.status == 401 and _error(again)["code"] == "invalid_ticket"
            async with stream(one.url, params={"ticket": "mst_never-issued"}) as unknown:
                assert unknown.status == 401 and _error(unknown)["code"] == "invalid_ticket"

            # Expired: its key ends in Redis (as it does after 60 seconds).
            expiring = await _ticket(c2, bob)
            redis = aioredis.Redis.from_url(system_env["REDIS_URL"])
            try:
                key = (
                    f"{system_env['REDIS_KEY_PREFIX']}stream-ticket:"
                    + hashlib.sha256(expiring.encode()).hexdigest()
                )
                assert await redis.get(key) is not None
                ttl = await redis.ttl(key)
                assert 0 < ttl <= 60
                assert await redis.pexpire(key, 1)
                await eventually(lambda: _gone(redis, key))
                stored = [k async for k in redis.scan_iter(match="*stream-ticket*")]
                held = [await redis.get(k) for k in stored]
                assert all(expiring.encode() not in k + (v or b"") for k, v in zip(stored, held))
            finally:
                await redis.aclose()
            async with stream(two.url, params={"ticket": expiring}) as expired:
                assert expired.status == 401 and _error(expired)["code"] == "invalid_ticket"


async def test_tokens_are_never_taken_from_a_url(system_env: dict[str, str]) -> None:
    with app_process(system_env) as one:
        async with httpx.AsyncClient(base_url=one.url, timeout=30) as c1:
            tenant = await Tenant.create(c1)
            bob = await tenant.add_user()
            for name in ("token", "access_token"):
                async with stream(one.url, params={name: bob.token}) as s:
                    assert s.status == 400 and _error(s)["code"] == "token_in_url"
                # Not even beside a valid header.
                async with stream(one.url, params={name: bob.token}, headers=bob.headers) as s:
                    assert s.status == 400 and _error(s)["code"] == "token_in_url"
            async with stream(one.url, params={}) as s:
                assert s.status == 401 and _error(s)["code"] == "missing_token"


async def test_a_ticket_stream_is_its_tokens_stream(system_env: dict[str, str]) -> None:
    """It counts in the user's streams, is charged to the token's rate limit, and ends
    within seconds when the token that bought the ticket is revoked."""
    env = {**system_env, "EVENTS_MAX_STREAMS_PER_USER": "1", "API_RATE_LIMIT_PER_MINUTE": "6"}
    with app_process(env) as one, app_process(system_env) as two:
        async with (
            httpx.AsyncClient(base_url=one.url, timeout=30) as c1,
            httpx.AsyncClient(base_url=two.url, timeout=30) as c2,
        ):
            tenant = await Tenant.create(c2)
            bob = await tenant.add_user()
            token_id = await _token_id(tenant, bob)
            async with stream(one.url, params={"ticket": await _ticket(c1, bob)}) as s:  # 1, 2
                assert s.status == 200
                async with stream(one.url, params={}, headers=bob.headers) as second:  # 3
                    assert second.status == 429 and _error(second)["code"] == "too_many_streams"
                refused = await c1.post("/v1/events/tickets", headers=bob.headers)  # 4
                assert refused.status_code == 201
                async with stream(one.url, params={"ticket": refused.json()["ticket"]}) as third:
                    assert third.status == 429  # 5, past the cap
                assert (await c1.get("/v1/me", headers=bob.headers)).status_code == 200  # 6
                over = await c1.post("/v1/events/tickets", headers=bob.headers)  # 7
                assert over.status_code == 429 and over.headers["retry-after"]
                assert over.json()["error"]["code"] == "too_many_requests"

                await tenant.call("DELETE", f"/v1/users/{bob.id}/tokens/{token_id}", expect=204)
                revoked_at = time.monotonic()
                await asyncio.wait_for(s.ended.wait(), 10)
                assert time.monotonic() - revoked_at <= 5.0


async def _token_id(tenant: Tenant, member: Member) -> str:
    """Replace the member's token by one whose id we know."""
    r = await tenant.call("POST", f"/v1/users/{member.id}/tokens", expect=201, json={})
    member.token = r.json()["token"]
    token_id: str = r.json()["id"]
    return token_id


def _error(s: Stream) -> dict[str, Any]:
    assert s.error is not None, s
    return s.error


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return await redis.get(key) is None


async def _async(value: bool) -> bool:
    return value
