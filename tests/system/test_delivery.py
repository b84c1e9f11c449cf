"""Outbound delivery through the HTTP carrier simulator, speaking Telnyx's and Twilio's APIs:
outages, rate limits and timeouts lose nothing and send nothing twice; a worker killed
mid-batch is finished by the next one."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.servers import app_process, free_port, start_worker
from tests.support import Tenant, eventually
from tests.system.carrier_kit import (
    all_final,
    assert_exactly_once,
    carrier_env,
    handed_to_carrier,
    hang_next_calls,
    held_calls,
    send_batch,
    sim_control,
    sim_sends,
    simulator,
    worker_env,
)

pytestmark = pytest.mark.slow


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
        # The worker is stuck in both kinds of held call when it is killed.
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
                tag = "killed"
                alice, ids = await send_batch(tenant, 10, tag)
                first = start_worker(env)
                try:
                    # Killed once it has handed every message to the carrier, four
                    # of those calls still hanging.
                    async def handed_over() -> bool:
                        return (
                            await handed_to_carrier(system_db, ids) == 10
                            and len(await sim_sends(sim)) >= 8
                            and await held_calls(sim) == 4
                        )

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


async def test_a_receipt_that_settles_a_hung_send_is_final_when_the_call_times_out(
    system_env: dict[str, str], system_db: AsyncEngine
) -> None:
    """The carrier accepts a message, its receipts arrive, but the call itself never
    answers. When the worker's call times out, the message stays delivered and its job
    closed: neither reopened for a retry nor claimed again."""
    port = free_port()
    with simulator(port) as (sim, cfg):
        await sim_control(
            sim, "/_sim/fail", {"mode": "timeout", "count": 1, "accept": True, "seconds": 60}
        )
        env = worker_env(
            system_env,
            sim,
            cfg,
            port,
            CARRIER_TIMEOUT_SECONDS="2",
            DELIVERY_IN_DOUBT_GRACE_SECONDS="1",
            DELIVERY_BACKOFF_BASE_SECONDS="0.1",
            # The worker's log says when it gave up on the call.
            LOG_LEVEL="INFO",
        )
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                alice, [mid] = await send_batch(tenant, 1, "hung")
                worker = start_worker(env)
                try:
                    [final] = await all_final(tenant, alice, [mid])
                    assert final["status"] == "delivered"
                    assert await held_calls(sim) == 1
                    # The worker gives up on the call (and has written what it decided).
                    async def gave_up() -> bool:
                        return "carrier send failed" in worker.output()

                    await eventually(gave_up, timeout=30)
                    # Past the retry it would have scheduled (grace 1 s, backoff 0.1 s).
                    await asyncio.sleep(1.5)
                    async with system_db.connect() as conn:
                        job = (
                            await conn.execute(
                                text(
                                    "SELECT state, attempts, last_error FROM delivery_jobs "
                                    "WHERE message_id = :mid"
                                ),
                                {"mid": mid},
                            )
                        ).one()
                    assert tuple(job) == ("done", 1, None)
                finally:
                    worker.stop()
                [after] = await all_final(tenant, alice, [mid])
                assert after["status"] == "delivered"
        assert_exactly_once(await sim_sends(sim), "hung", 1)


async def test_per_number_send_rate_holds_across_worker_processes(
    system_env: dict[str, str],
) -> None:
    """Two worker processes share one `from` number's pace (2 per second) through Redis."""
    port = free_port()
    with simulator(port) as (sim, cfg):
        env = worker_env(system_env, sim, cfg, port, CARRIER_SEND_RATE_PER_NUMBER="2")
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                workers = [start_worker(env), start_worker(env)]
                try:
                    alice, ids = await send_batch(tenant, 8, "paced")
                    final = await all_final(tenant, alice, ids)
                finally:
                    for w in workers:
                        w.stop()
        assert {m["status"] for m in final} == {"delivered"}
        sends = [s for s in await sim_sends(sim) if s["text"].startswith("paced")]
        assert_exactly_once(sends, "paced", 8)
        times = sorted(datetime.fromisoformat(s["accepted_at"]).timestamp() for s in sends)
        # 2 per second: each send has its own slot, 0.5 s after the one before. A send
        # goes at or after its slot (a busy machine may delay one, which brings it
        # closer to the next), so k sends apart are at least k / 2 s apart, less the
        # most one send may be late: half a second here, generous on a busy machine.
        for k in range(2, len(times)):
            spans = [b - a for a, b in zip(times, times[k:], strict=False)]
            assert min(spans) >= k * 0.5 - 0.5, (k, spans)
        assert times[-1] - times[0] >= 3.5 - 0.5, times


async def test_jobs_waiting_for_their_slot_do_not_hold_back_other_numbers(
    system_env: dict[str, str],
) -> None:
    """A job sleeping until its number's next send slot is not a carrier call: it takes no
    share of WORKER_CONCURRENCY, so another number's message goes meanwhile. (Before, a
    backlog on a few numbers filled the worker with sleepers: the send scenario's backlog
    drained at 300 messages a second where the worker can send 1,600.)"""
    port = free_port()
    with simulator(port) as (sim, cfg):
        env = worker_env(
            system_env,
            sim,
            cfg,
            port,
            WORKER_CONCURRENCY="1",
            # Slots 0.67 s apart: the second of a number's jobs sleeps until its slot
            # (under a second away), the third goes back to the outbox until its own.
            CARRIER_SEND_RATE_PER_NUMBER="1.5",
        )
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                alice, paced = await send_batch(tenant, 3, "slot")
                bob, other = await send_batch(tenant, 1, "other")
                worker = start_worker(env)
                try:
                    await all_final(tenant, alice, paced)
                    await all_final(tenant, bob, other)
                finally:
                    worker.stop()
        sends = {s["text"]: s for s in await sim_sends(sim)}
        accepted = {
            text: datetime.fromisoformat(s["accepted_at"]).timestamp()
            for text, s in sends.items()
            if text.startswith(("slot", "other"))
        }
        assert accepted["other #0"] < accepted["slot #1"] < accepted["slot #2"], accepted


async def _statuses(tenant: Tenant, member: Any, ids: list[str]) -> list[str]:
    return [
        (await tenant.call("GET", f"/v1/messages/{mid}", as_=member, expect=200)).json()["status"]
        for mid in ids
    ]


async def test_a_backlog_waits_in_its_worker_queued_and_never_goes_from_a_number_released_meanwhile(
    system_env: dict[str, str], system_db: AsyncEngine
) -> None:
    """A number's backlog waits for its slots in the worker that claimed it: `queued`, not
    put back in the outbox to be claimed again. A number released (and taken by another
    organization) while they wait sends none of them: each ends `failed` with
    `from_number_released`."""
    port = free_port()
    with simulator(port) as (sim, cfg):
        # Slots 4 s apart: the first goes at once, the others wait 4, 8 and 12 s.
        env = worker_env(system_env, sim, cfg, port, CARRIER_SEND_RATE_PER_NUMBER="0.25")
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                a, b = await Tenant.create(client), await Tenant.create(client)
                alice, ids = await send_batch(a, 4, "waits")
                number = alice.outbound_sms_number
                worker = start_worker(env)
                try:

                    async def first_sent() -> bool:
                        return any(s["text"] == "waits #0" for s in await sim_sends(sim))

                    await eventually(first_sent, timeout=60, interval=0.05)
                    waiting = (await _statuses(a, alice, ids))[1:]
                    async with system_db.connect() as conn:
                        jobs = (
                            await conn.execute(
                                text(
                                    "SELECT state, paced_at FROM delivery_jobs "
                                    "WHERE message_id = ANY(:ids) ORDER BY created_at"
                                ),
                                {"ids": ids[2:]},
                            )
                        ).all()
                    # Released: the sender moves to another number, another org takes it.
                    spare = await a.add_number(None)
                    await a.call(
                        "PATCH",
                        f"/v1/users/{alice.id}",
                        expect=200,
                        json={"outbound_sms_number": spare},
                    )
                    numbers = (await a.call("GET", "/v1/phone-numbers", expect=200)).json()
                    (number_id,) = [n["id"] for n in numbers["items"] if n["number"] == number]
                    await a.call("DELETE", f"/v1/phone-numbers/{number_id}", expect=204)
                    released_at = time.time()
                    await b.add_number(None, number)
                    final = await all_final(a, alice, ids)
                finally:
                    worker.stop()
        sends = {s["text"]: s for s in await sim_sends(sim) if s["text"].startswith("waits")}
    # Seen while they waited, before the release: the first sent, the last two `queued`
    # (8 and 12 s from their slots), each still held by the worker that claimed it.
    assert waiting[1:] == ["queued", "queued"], waiting
    assert all(state == "in_flight" and paced_at is None for state, paced_at in jobs), jobs
    by_body = {m["body"]: m for m in final}
    for i in range(4):
        body = f"waits #{i}"
        if body in sends:
            # Sent only while the number was still the organization's.
            assert datetime.fromisoformat(sends[body]["accepted_at"]).timestamp() < released_at
            assert by_body[body]["status"] == "delivered"
        else:
            assert by_body[body]["status"] == "failed", by_body[body]
            assert by_body[body]["error_code"] == "from_number_released"
    assert "waits #3" not in sends, "the last slot came 12 s after the first send"


async def test_a_worker_stopped_puts_back_what_waits_for_its_slot_and_the_next_sends_it_on_time(
    system_env: dict[str, str],
) -> None:
    """A worker asked to stop (SIGTERM, as a deploy does) while jobs wait in it for their
    slots puts them back in the outbox, each holding its slot: the next worker sends each
    once, at its slot, not after the lease (here 145 s) a vanished worker leaves."""
    port = free_port()
    with simulator(port) as (sim, cfg):
        env = worker_env(system_env, sim, cfg, port, CARRIER_SEND_RATE_PER_NUMBER="0.5")
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                alice, ids = await send_batch(tenant, 5, "handed")
                first = start_worker(env)
                try:

                    async def first_sent() -> bool:
                        return any(s["text"] == "handed #0" for s in await sim_sends(sim))

                    await eventually(first_sent, timeout=60, interval=0.05)
                finally:
                    first.stop()
                assert first.proc.returncode == 0, first.output()
                second = start_worker(env)
                try:
                    final = await all_final(tenant, alice, ids)
                finally:
                    second.stop()
        sends = [s for s in await sim_sends(sim) if s["text"].startswith("handed")]
    assert {m["status"] for m in final} == {"delivered"}
    assert_exactly_once(sends, "handed", 5)
    times = sorted(datetime.fromisoformat(s["accepted_at"]).timestamp() for s in sends)
    # Still paced (2 s apart, less what a busy machine may make one late).
    assert all(b - a >= 2 - 0.5 for a, b in itertools.pairwise(times)), times
