"""Outbound delivery through the HTTP carrier simulator, speaking Telnyx's and Twilio's APIs:
outages, rate limits and timeouts lose nothing and send nothing twice; a worker killed
mid-batch is finished by the next one."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.carriers.simulator_server import (
    RunningServer,
    SimulatorConfig,
    create_simulator_app,
    serve_in_thread,
)
from tests.servers import app_process, free_port, start_worker
from tests.support import Tenant, eventually, new_number

pytestmark = pytest.mark.slow

TWILIO_SID = "AC" + "7" * 32
TWILIO_TOKEN = "sim-twilio-token"


@contextmanager
def simulator(app_port: int) -> Iterator[tuple[RunningServer, SimulatorConfig]]:
    cfg = SimulatorConfig(
        webhook_base=f"http://127.0.0.1:{app_port}",
        telnyx_api_key="KEY",
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
        status_delay=0.02,
        webhook_backoff=0.1,
    )
    sim = serve_in_thread(create_simulator_app(cfg))
    try:
        yield sim, cfg
    finally:
        sim.stop()


def carrier_env(
    system_env: dict[str, str], carrier: str, sim: RunningServer, cfg: SimulatorConfig, **extra: str
) -> dict[str, str]:
    return {
        **system_env,
        "CARRIER": carrier,
        "TELNYX_API_KEY": "KEY",
        "TELNYX_API_BASE": sim.url,
        "TELNYX_PUBLIC_KEY": cfg.telnyx_public_key,
        "TWILIO_API_BASE": sim.url,
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "CARRIER_SEND_RATE_PER_NUMBER": "1000",
        **extra,
    }


async def sim_sends(sim: RunningServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        items: list[dict[str, Any]] = (await http.get("/_sim/messages")).json()["items"]
        return items


async def sim_control(sim: RunningServer, path: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post(path, json=body)
        assert r.status_code == 200, r.text


async def send_batch(tenant: Tenant, count: int, tag: str) -> tuple[Any, list[str]]:
    alice = await tenant.add_user(sms=True, outbound=True)
    ids = []
    for i in range(count):
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"phone_number": new_number()}], "body": f"{tag} #{i}"},
        )
        ids.append(r.json()["messages"][0]["id"])
    return alice, ids


async def all_final(tenant: Tenant, member: Any, ids: list[str]) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        out = []
        for mid in ids:
            m = (await tenant.call("GET", f"/v1/messages/{mid}", as_=member, expect=200)).json()
            if m["status"] not in ("delivered", "failed", "undelivered"):
                return None
            out.append(m)
        return out

    result: list[dict[str, Any]] = await eventually(check, timeout=90, interval=0.2)
    return result


def assert_exactly_once(sends: list[dict[str, Any]], tag: str, count: int) -> None:
    texts = collections.Counter(s["text"] for s in sends if s["text"].startswith(tag))
    assert texts == {f"{tag} #{i}": 1 for i in range(count)}


@pytest.mark.parametrize("carrier", ["telnyx", "twilio"])
async def test_outage_then_recovery_delivers_every_message_exactly_once(
    system_env: dict[str, str], carrier: str
) -> None:
    port = free_port()
    with simulator(port) as (sim, cfg):
        # The carrier fails for a while: server errors, rate limits, a timeout.
        await sim_control(sim, "/_sim/fail", {"mode": "5xx", "count": 4})
        await sim_control(sim, "/_sim/fail", {"mode": "429", "count": 3, "retry_after": 0.2})
        await sim_control(sim, "/_sim/fail", {"mode": "timeout", "count": 1, "seconds": 5})
        env = carrier_env(
            system_env,
            carrier,
            sim,
            cfg,
            CARRIER_TIMEOUT_SECONDS="1",
            DELIVERY_IN_DOUBT_GRACE_SECONDS="2",
        )
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                tag = f"{carrier}-outage"
                alice, ids = await send_batch(tenant, 8, tag)
                final = await all_final(tenant, alice, ids)
        assert {m["status"] for m in final} == {"delivered"}
        sends = await sim_sends(sim)
        assert_exactly_once(sends, tag, 8)
        carrier_ids = {s["id"] for s in sends}
        assert all(m["id"] for m in final)
        assert len(carrier_ids) == len(sends)


async def test_carrier_refusal_fails_at_once_with_its_reason(system_env: dict[str, str]) -> None:
    port = free_port()
    with simulator(port) as (sim, cfg):
        await sim_control(
            sim,
            "/_sim/fail",
            {"mode": "4xx", "count": 1, "code": "40310", "message": "Invalid destination number"},
        )
        with app_process(carrier_env(system_env, "telnyx", sim, cfg), port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                alice, ids = await send_batch(tenant, 1, "refused")
                (m,) = await all_final(tenant, alice, ids)
        assert m["status"] == "failed"
        assert m["error_code"] == "40310"
        assert "Invalid destination" in m["error_message"]


async def test_worker_killed_mid_batch_is_finished_by_the_next_exactly_once(
    system_env: dict[str, str], system_db: AsyncEngine
) -> None:
    port = free_port()
    with simulator(port) as (sim, cfg):
        # Two sends the carrier accepts but never answers, two it never gets: the
        # worker is stuck in both kinds when it is killed.
        await sim_control(
            sim, "/_sim/fail", {"mode": "timeout", "count": 2, "accept": True, "seconds": 60}
        )
        await sim_control(sim, "/_sim/fail", {"mode": "timeout", "count": 2, "seconds": 60})
        # Workers must know the public URL too: it goes into each send's receipt URL.
        env = carrier_env(
            system_env,
            "telnyx",
            sim,
            cfg,
            RUN_WORKER="false",
            CARRIER_TIMEOUT_SECONDS="10",
            DELIVERY_IN_DOUBT_GRACE_SECONDS="2",
            PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        )
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                tag = "killed"
                alice, ids = await send_batch(tenant, 10, tag)
                first = start_worker(env)
                try:
                    # Killed once it has handed every message to the carrier, four
                    # of those calls still hanging.
                    async def handed_over() -> bool:
                        async with system_db.connect() as conn:
                            n = await conn.scalar(
                                text(
                                    "SELECT count(*) FROM messages WHERE id = ANY(:ids) "
                                    "AND status IN ('sending', 'sent', 'delivered')"
                                ),
                                {"ids": ids},
                            )
                        return n == 10 and len(await sim_sends(sim)) >= 8

                    await eventually(handed_over, timeout=60, interval=0.1)
                finally:
                    first.kill()
                await asyncio.sleep(0.2)
                second = start_worker({**env, "CARRIER_TIMEOUT_SECONDS": "2"})
                try:
                    final = await all_final(tenant, alice, ids)
                finally:
                    second.stop()
        assert {m["status"] for m in final} == {"delivered"}, [
            (m["body"], m["status"]) for m in final
        ]
        assert_exactly_once(await sim_sends(sim), tag, 10)
