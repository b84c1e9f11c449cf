"""Fixtures: a fresh PostgreSQL database per run (migrated by Alembic), a Redis key
prefix per run, and the app served over HTTP to httpx clients.

Set TEST_POSTGRES_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432) and
TEST_REDIS_URL (default redis://127.0.0.1:6379/0) to point elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import nacl.signing
import orjson
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from app.carriers.telnyx import sign_telnyx_webhook
from app.context import AppContext
from app.crypto import generate_key_setting
from app.main import create_app
from app.migrate import upgrade_to_head
from app.settings import Settings
from tests.support import OPERATOR_TOKEN, Tenant, telnyx_inbound_event

PG_BASE = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]
TWILIO_AUTH_TOKEN = "twilio-test-auth-token"


@pytest.fixture(scope="session")
def telnyx_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


@pytest.fixture(scope="session")
def encryption_keys() -> str:
    return generate_key_setting("k1")


async def _admin_execute(sql: str) -> None:
    engine = create_async_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


@asynccontextmanager
async def fresh_database(suffix: str) -> AsyncIterator[str]:
    """A new PostgreSQL database, built by `alembic upgrade head`, dropped afterwards."""
    name = f"msg_test_{RUN_ID}_{suffix}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_BASE}/{name}"
    try:
        await upgrade_to_head(url)
        yield url
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """This run's database for in-process tests."""
    async with fresh_database("main") as url:
        yield url


@pytest.fixture(scope="session")
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"test:{RUN_ID}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def base_settings(
    database_url: str,
    redis_prefix: str,
    telnyx_key: nacl.signing.SigningKey,
    encryption_keys: str,
) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        operator_token=OPERATOR_TOKEN,
        carrier="simulator",
        telnyx_public_key=base64.b64encode(bytes(telnyx_key.verify_key)).decode(),
        twilio_auth_token=TWILIO_AUTH_TOKEN,
        public_base_url="http://testserver",
        encryption_keys=encryption_keys,
        log_json=True,
        worker_poll_seconds=0.1,
        database_pool_size=5,
        database_max_overflow=5,
        delivery_backoff_base_seconds=0.05,
        delivery_backoff_max_seconds=0.5,
        # The limits are on, far above what the suite asks of one token (the operator's
        # creates every test's organization) or of its one client address; the tests
        # of the limits run apps with small ones.
        api_rate_limit_per_minute=1_000_000,
        auth_failure_limit_per_minute=100_000,
    )


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan (engine, Redis, worker) and a client speaking HTTP to it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=30
        ) as client:
            yield app, client


@pytest.fixture(scope="session")
async def app_client(base_settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(base_settings) as pair:
        yield pair


@pytest.fixture
def client(app_client: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_client[1]


@pytest.fixture
def ctx(app_client: tuple[FastAPI, httpx.AsyncClient]) -> AppContext:
    context: AppContext = app_client[0].state.ctx
    return context


@pytest.fixture
async def tenant(client: httpx.AsyncClient) -> Tenant:
    return await Tenant.create(client)


@pytest.fixture
def make_app(base_settings: Settings) -> Callable[..., Any]:
    """Another app instance with some settings changed (same database and Redis)."""

    def factory(**overrides: Any) -> Any:
        return running_app(base_settings.model_copy(update=overrides))

    return factory


SendTelnyx = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def send_telnyx(client: httpx.AsyncClient, telnyx_key: nacl.signing.SigningKey) -> SendTelnyx:
    """POST a signed Telnyx inbound webhook, as Telnyx would."""

    async def send(
        from_number: str,
        to_number: str,
        text: str,
        *,
        message_id: str | None = None,
        media: int = 0,
        via: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        raw = orjson.dumps(telnyx_inbound_event(from_number, to_number, text, message_id, media))
        headers = sign_telnyx_webhook(telnyx_key, raw, int(time.time()))
        headers["content-type"] = "application/json"
        return await (via or client).post("/webhooks/telnyx", content=raw, headers=headers)

    return send


@pytest.fixture
def wait() -> Callable[[float], Awaitable[None]]:
    return asyncio.sleep
