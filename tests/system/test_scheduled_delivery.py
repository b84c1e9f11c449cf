"""Scheduled messages across worker processes: a worker killed at the due instant, with
the carrier holding its calls, leaves every message to the next worker, and each is sent
exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.servers import app_process, free_port, start_worker
from tests.support import Tenant, eventually, new_number
from tests.system.carrier_kit import (
    all_final,
    assert_exactly_once,
    handed_to_carrier,
    hang_next_calls,
    held_calls,
    sim_sends,
    simulator,
    worker_env,
)

pytestmark = pytest.mark.slow


async def test_scheduled_messages_are_sent_once_after_a_worker_is_killed_at_their_due_time(
    system_env: dict[str, str], system_db: AsyncEngine
) -> None:
    port = free_port()
    with simulator(port) as (sim, cfg):
        # When they come due the carrier holds every call.
        await hang_next_calls(sim)
        env = worker_env(
            system_env,
            sim,
            cfg,
            port,
            CARRIER_TIMEOUT_SECONDS="10",
            DELIVERY_IN_DOUBT_GRACE_SECONDS="2",
        )
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                alice = await tenant.add_user(sms=True, outbound=True)
                first = start_worker(env)
                try:
                    send_at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
                    ids = []
                    for i in range(4):
                        r = await tenant.call(
                            "POST",
                            "/v1/messages",
                            as_=alice,
                            expect=201,
                            json={
                                "to": [{"phone_number": new_number()}],
                                "body": f"scheduled #{i}",
                                "send_at": send_at,
                            },
                        )
                        assert r.json()["messages"][0]["status"] == "scheduled"
                        ids.append(r.json()["messages"][0]["id"])

                    # Killed at the due time, once it has handed every message to the
                    # carrier and each call still hangs. (The carrier's receipts for the
                    # two it accepted may already have made those `sent`.)
                    async def handed_over() -> bool:
                        return (
                            await handed_to_carrier(system_db, ids) == 4
                            and await held_calls(sim) == 4
                        )

                    await eventually(handed_over, timeout=60, interval=0.05)
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
        assert_exactly_once(await sim_sends(sim), "scheduled", 4)
