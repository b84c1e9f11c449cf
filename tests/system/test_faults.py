"""Faults against the real services: nothing lost, nothing duplicated, replies fail closed."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import nacl.signing
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.servers import TcpProxy, app_process, free_port, private_redis
from tests.support import Tenant, eventually, new_number
from tests.system.carrier_kit import (
    all_final,
    assert_exactly_once,
    carrier_env,
    hang_next_calls,
    held_calls,
    send_batch,
    sim_sends,
    simulator,
)
from tests.system.conftest import post_telnyx_inbound, sse

pytestmark = pytest.mark.slow

REPLY = "Thanks, we will get back to you."


async def stored(db: AsyncEngine, carrier_id: str) -> int:
    async with db.connect() as conn:
        n = await conn.scalar(
            text("SELECT count(*) FROM messages WHERE carrier_message_id = :c"), {"c": carrier_id}
        )
    return int(n or 0)


async def decisions(db: AsyncEngine, patient: str) -> list[str]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT auto_reply_decision FROM messages WHERE from_number = :p "
                "AND direction = 'inbound' ORDER BY id"
            ),
            {"p": patient},
        )
        return [r[0]["reason"] for r in rows]


async def _database_proxy(system_env: dict[str, str]) -> tuple[TcpProxy, str]:
    """A started proxy in front of the system tests' PostgreSQL, and a URL through it."""
    url = urlsplit(system_env["DATABASE_URL"])
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    return proxy, urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))


async def test_postgres_down_during_webhooks_gets_5xx_and_the_retry_stores_once(
    system_env: dict[str, str], system_db: AsyncEngine, telnyx_key: nacl.signing.SigningKey
) -> None:
    proxy, via_proxy = await _database_proxy(system_env)
    try:
        with app_process({**system_env, "DATABASE_URL": via_proxy}) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
                tenant = await Tenant.create(client)
                bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
                await tenant.set_auto_responder(bob, REPLY)
                patient, mid = new_number(), str(uuid.uuid4())

                await proxy.cut()
                r = await post_telnyx_inbound(
                    client, telnyx_key, patient, bob.outbound_sms_number or "", "are you open?", mid
                )
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["error"]["details"]["database"] == "unreachable"
                assert await stored(system_db, mid) == 0

                proxy.restore()
                # The carrier delivers the same webhook again, twice: stored once.
                for _ in range(2):

                    async def delivered() -> bool:
                        r = await post_telnyx_inbound(
                            client,
                            telnyx_key,
                            patient,
                            bob.outbound_sms_number or "",
                            "are you open?",
                            mid,
                        )
                        return r.status_code == 200

                    await eventually(delivered, timeout=30, interval=0.2)
                assert await stored(system_db, mid) == 1
                # The failed attempt took no reply window: the stored one got its reply.
                assert await decisions(system_db, patient) == ["sent"]
    finally:
        await proxy.stop()


async def test_redis_stopped_and_restarted(
    system_env: dict[str, str], system_db: AsyncEngine, telnyx_key: nacl.signing.SigningKey
) -> None:
    with (
        private_redis() as (redis_url, redis_proc),
        app_process({**system_env, "REDIS_URL": redis_url}) as app,
    ):
        async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
            tenant = await Tenant.create(client)
            bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
            await tenant.set_auto_responder(bob, REPLY)
            line = bob.outbound_sms_number or ""
            async with sse(app.url, bob.token) as events:
                before = new_number()
                await post_telnyx_inbound(client, telnyx_key, before, line, "before")
                assert (await events.next()).data["body"] == "before"

                redis_proc.kill()
                during = new_number()
                r = await post_telnyx_inbound(client, telnyx_key, during, line, "during")
                assert r.status_code == 200
                assert await decisions(system_db, during) == ["limiter_unavailable"]
                # Sends still flow: the worker paces per number on its own meanwhile.
                r = await tenant.call(
                    "POST",
                    "/v1/messages",
                    as_=bob,
                    expect=201,
                    json={"to": [{"phone_number": new_number()}], "body": "while redis is down"},
                )
                mid = r.json()["messages"][0]["id"]

                async def delivered() -> bool:
                    m = await tenant.call("GET", f"/v1/messages/{mid}", as_=bob, expect=200)
                    return bool(m.json()["status"] == "delivered")

                await eventually(delivered, timeout=60)

                redis_proc.restart()  # type: ignore[attr-defined]
                # The restarted Redis kept no history: the open stream is told to
                # resync (from the REST API) and ends, as a browser expects.
                while (resync := await events.next(timeout=60)).event != "resync":
                    pass
            async with sse(app.url, bob.token, last_event_id=resync.id) as events:
                after = new_number()

                async def replied() -> bool:
                    await post_telnyx_inbound(client, telnyx_key, after, line, "after")
                    return "sent" in await decisions(system_db, after)

                await eventually(replied, timeout=60, interval=0.5)
                # Events flow again on the reconnected stream.
                while True:
                    event = await events.next(timeout=60)
                    if event.event == "message.created" and event.data["body"] == "after":
                        break
            assert (await client.get("/readyz")).status_code == 200


async def test_app_process_killed_mid_send_is_finished_by_another(
    system_env: dict[str, str], system_db: AsyncEngine
) -> None:
    """The in-app worker dies with its process; a second process finishes the sends."""
    port = free_port()
    with simulator(port) as (sim, cfg):
        await hang_next_calls(sim)
        env = carrier_env(
            system_env,
            "telnyx",
            sim,
            cfg,
            CARRIER_TIMEOUT_SECONDS="10",
            DELIVERY_IN_DOUBT_GRACE_SECONDS="2",
        )
        with app_process(env, port=port) as first:
            async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                alice, ids = await send_batch(tenant, 10, "app-killed")

                async def handed_over() -> bool:
                    return len(await sim_sends(sim)) >= 8 and await held_calls(sim) == 4

                await eventually(handed_over, timeout=60, interval=0.1)
            first.kill()
        await asyncio.sleep(0.2)
        with app_process({**env, "CARRIER_TIMEOUT_SECONDS": "2"}, port=port) as second:
            async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
                tenant.client = client
                final = await all_final(tenant, alice, ids)
        assert {m["status"] for m in final} == {"delivered"}
        assert_exactly_once(await sim_sends(sim), "app-killed", 10)


async def test_a_silent_database_gets_fast_503s_and_recovers_at_once(
    system_env: dict[str, str], system_db: AsyncEngine, telnyx_key: nacl.signing.SigningKey
) -> None:
    """PostgreSQL goes silent (a failover, a firewall that dropped its state): connections
    stay open and nothing answers. The process answers 503 within its timeouts instead of
    hanging, at once while it knows the database is silent, stays alive (it serves), and
    stores again as soon as the database answers."""
    proxy, via_proxy = await _database_proxy(system_env)
    try:
        with app_process({**system_env, "DATABASE_URL": via_proxy}) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
                tenant = await Tenant.create(client)
                bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
                line = bob.outbound_sms_number or ""
                patient = new_number()

                proxy.silence()
                started = time.monotonic()
                r = await post_telnyx_inbound(client, telnyx_key, patient, line, "hello?")
                first = time.monotonic() - started
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
                # Bounded by the database timeouts (5 s by default), never minutes.
                assert first < 20, first
                # Known silent now: the next requests fail at once, the API's too.
                started = time.monotonic()
                r = await post_telnyx_inbound(client, telnyx_key, patient, line, "hello again?")
                assert r.status_code == 503
                r = await client.get("/v1/me", headers=bob.headers)
                assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
                assert time.monotonic() - started < 5
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["error"]["details"]["database"] == "unreachable"
                # Alive: it answers, and answers the truth.
                assert (await client.get("/healthz")).status_code == 200

                proxy.restore()
                mid = str(uuid.uuid4())

                async def stored_again() -> bool:
                    r = await post_telnyx_inbound(client, telnyx_key, patient, line, "ok", mid)
                    return r.status_code == 200

                await eventually(stored_again, timeout=30, interval=0.2)
                assert await stored(system_db, mid) == 1
                assert (await client.get("/readyz")).status_code == 200
    finally:
        await proxy.stop()


async def test_a_silent_redis_fails_closed_fast_and_recovers_at_once(
    system_env: dict[str, str], system_db: AsyncEngine, telnyx_key: nacl.signing.SigningKey
) -> None:
    """Redis goes silent: webhooks are still stored and answered quickly, with no
    auto-reply (fail closed); when Redis answers again, replies resume at once."""
    with private_redis() as (redis_url, _):
        url = urlsplit(redis_url)
        proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
        await proxy.start()
        via_proxy = urlunsplit(url._replace(netloc=f"127.0.0.1:{proxy.port}"))
        try:
            with app_process({**system_env, "REDIS_URL": via_proxy}) as app:
                async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
                    tenant = await Tenant.create(client)
                    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
                    await tenant.set_auto_responder(bob, REPLY)
                    line = bob.outbound_sms_number or ""

                    proxy.silence()
                    for _ in range(3):
                        patient = new_number()
                        started = time.monotonic()
                        r = await post_telnyx_inbound(client, telnyx_key, patient, line, "hi")
                        assert r.status_code == 200, r.text
                        assert time.monotonic() - started < 10
                        assert await decisions(system_db, patient) == ["limiter_unavailable"]
                    assert (await client.get("/healthz")).status_code == 200

                    proxy.restore()
                    after = new_number()

                    async def replied() -> bool:
                        await post_telnyx_inbound(client, telnyx_key, after, line, "after")
                        return "sent" in await decisions(system_db, after)

                    await eventually(replied, timeout=30, interval=0.5)
        finally:
            await proxy.stop()
