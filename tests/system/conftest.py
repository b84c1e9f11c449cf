"""System tests: the service as real processes, configured only through its environment."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import nacl.signing
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.carriers.telnyx import sign_telnyx_webhook
from app.settings import Settings
from tests.conftest import TWILIO_AUTH_TOKEN, fresh_database
from tests.support import OPERATOR_TOKEN, telnyx_inbound_event


@pytest.fixture(scope="session")
async def system_database_url() -> AsyncIterator[str]:
    """A database for server processes only: no in-process app (and its worker) touches it."""
    async with fresh_database("system") as url:
        yield url


@pytest.fixture(autouse=True)
async def _outbox_of_this_test_only(system_database_url: str) -> None:
    """Each test starts with an empty outbox. The tests share one database, and a worker
    takes every due job in it: a job an earlier test's process left in flight (a process
    stopped or killed mid-send) came due minutes later, and the next test's worker sent
    it through that test's simulator, taking one of the failures the test had queued
    there for its own messages."""
    engine = create_async_engine(system_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE delivery_jobs SET state = 'failed', lease_expires_at = NULL, "
                    "last_error = 'left by an earlier test' "
                    "WHERE state IN ('pending', 'in_flight')"
                )
            )
    finally:
        await engine.dispose()


@pytest.fixture
async def system_db(system_database_url: str) -> AsyncIterator[AsyncEngine]:
    """Raw access to the system tests' database, to read what the processes stored."""
    engine = create_async_engine(system_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def system_env(base_settings: Settings, system_database_url: str) -> dict[str, str]:
    """The environment of an app process: its own database, this run's Redis prefix."""
    assert base_settings.redis_url and base_settings.telnyx_public_key
    assert base_settings.encryption_keys
    return {
        "DATABASE_URL": system_database_url,
        "REDIS_URL": base_settings.redis_url,
        "REDIS_KEY_PREFIX": base_settings.redis_key_prefix,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
        "ENCRYPTION_KEYS": base_settings.encryption_keys,
        "TELNYX_PUBLIC_KEY": base_settings.telnyx_public_key,
        "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
        "CARRIER": "simulator",
        "LOG_LEVEL": "WARNING",
        "WORKER_POLL_SECONDS": "0.1",
        "DELIVERY_BACKOFF_BASE_SECONDS": "0.1",
        "DELIVERY_BACKOFF_MAX_SECONDS": "1",
        "EVENTS_HEARTBEAT_SECONDS": "1",
        # Several processes at once stay well inside PostgreSQL's connection limit.
        "DATABASE_POOL_SIZE": "4",
        "DATABASE_MAX_OVERFLOW": "4",
        # The limits the in-process tests run with: on, and far above the suite's needs.
        "API_RATE_LIMIT_PER_MINUTE": str(base_settings.api_rate_limit_per_minute),
        "AUTH_FAILURE_LIMIT_PER_MINUTE": str(base_settings.auth_failure_limit_per_minute),
    }


async def post_telnyx_inbound(
    client: httpx.AsyncClient,
    key: nacl.signing.SigningKey,
    from_number: str,
    to_number: str,
    text: str,
    message_id: str | None = None,
) -> httpx.Response:
    raw = orjson.dumps(telnyx_inbound_event(from_number, to_number, text, message_id))
    return await client.post(
        "/webhooks/telnyx", content=raw, headers=sign_telnyx_webhook(key, raw, int(time.time()))
    )


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any


@dataclass
class SseClient:
    """Reads an event stream in the background, as a browser's EventSource does."""

    events: asyncio.Queue[SseEvent] = field(default_factory=asyncio.Queue)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, timeout: float = 20) -> SseEvent:
        return await asyncio.wait_for(self.events.get(), timeout)


@asynccontextmanager
async def sse(
    base_url: str, token: str, last_event_id: str | None = None
) -> AsyncIterator[SseClient]:
    client = SseClient()
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id

    async def read() -> None:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=None) as http,
            http.stream("GET", "/v1/events", headers=headers) as response,
        ):
            assert response.status_code == 200, await response.aread()
            client.connected.set()
            ev: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "event" in ev or "data" in ev:
                        data = ev.get("data")
                        await client.events.put(
                            SseEvent(
                                ev.get("id"),
                                ev.get("event", "message"),
                                json.loads(data) if data else None,
                            )
                        )
                    ev = {}
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    ev[name] = ev[name] + "\n" + value if name in ev else value

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(client.connected.wait(), 20)
        # The stream is registered once its first bytes are out; give it a beat to
        # finish subscribing before the test publishes anything.
        await asyncio.sleep(0.3)
        yield client
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task
