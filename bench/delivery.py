"""Delivery of queued messages: a backlog committed at once, drained by the app's workers
through the simulator carrier (send, then the simulator's "delivered" receipt)."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.crypto import Keyring
from app.ids import new_id
from app.services.sealing import seal_body
from app.services.segments import count_segments
from bench import dataset
from bench.loadgen import World
from bench.seed import MESSAGE_COLUMNS

JOB_COLUMNS = (
    "id",
    "message_id",
    "org_id",
    "from_number",
    "state",
    "attempts",
    "next_attempt_at",
    "lease_expires_at",
    "last_error",
    "created_at",
    "updated_at",
)


async def enqueue(dsn: str, world: World, keyring: Keyring, count: int) -> tuple[list[Any], float]:
    """`count` queued outbound messages with their delivery jobs, committed together.

    Senders take turns (user 0, 1, 2, ... then again), each round from the other of
    their two numbers, so that each outbound number has one message every second round:
    the per-number send pacing (1/s by default) then only bites if the workers deliver
    more than two rounds (2,000 messages) a second, which is what the scenario measures
    the worker without: the pacing's own cost is a held job's, not a sent one's.
    """
    rng = random.Random(11)
    now = datetime.now(UTC)
    messages, jobs, ids = [], [], []
    for n in range(count):
        owner = n % len(world.users)
        user = world.users[owner]
        line = user["numbers"][(n // len(world.users)) % len(user["numbers"])]
        conv_id, ext = rng.choice(world.by_owner[owner])
        text = dataset.pick_text(rng)
        info = count_segments(text)
        mid = new_id()
        org = user["org_uuid"]
        ids.append(mid)
        messages.append(
            (
                mid,
                org,
                conv_id,
                "outbound",
                user["uuid"],
                user["username"],
                None,
                None,
                line,
                ext,
                seal_body(keyring, mid, org, text),
                "queued",
                False,
                None,
                info.segments,
                info.encoding,
                0,
                None,
                None,
                None,
                None,
                now,
                now,
            )
        )
        jobs.append(
            (
                new_id(),
                mid,
                org,
                line,
                "pending",
                0,
                now + timedelta(microseconds=n),
                None,
                None,
                now,
                now,
            )
        )
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("messages", records=messages, columns=MESSAGE_COLUMNS)
            await conn.copy_records_to_table("delivery_jobs", records=jobs, columns=JOB_COLUMNS)
        committed = time.time()
        # Nudge nothing: the workers find the backlog on their next poll (<= 0.5 s).
    finally:
        await conn.close()
    return ids, committed


async def wait_delivered(
    dsn: str, ids: list[Any], committed: float, timeout: float
) -> dict[str, Any]:
    """Poll until every message is delivered or failed; or until every job is settled
    and no receipt has arrived for 5 s (messages left at `sent` are counted as stuck);
    or until the timeout."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        last_change, last = time.monotonic(), -1
        while True:
            row = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE m.status = 'delivered') AS delivered,
                          count(*) FILTER (WHERE m.status IN ('failed', 'undelivered')) AS failed,
                          count(*) FILTER (WHERE m.status = 'sent') AS sent,
                          count(*) FILTER (WHERE j.state IN ('pending', 'in_flight')) AS open
                   FROM messages m JOIN delivery_jobs j ON j.message_id = m.id
                   WHERE m.id = ANY($1::uuid[])""",
                ids,
            )
            assert row is not None
            now = time.monotonic()
            if row["delivered"] != last:
                last, last_change = row["delivered"], now
            settled = row["open"] == 0 and now - last_change > 5
            if row["delivered"] + row["failed"] >= len(ids) or settled or now > deadline:
                break
            await asyncio.sleep(1.0)  # each poll costs the database ~50 ms of 10,000 ids
        done_at = await conn.fetch(
            """SELECT extract(epoch FROM updated_at) AS at FROM messages
               WHERE id = ANY($1::uuid[]) AND status = 'delivered'""",
            ids,
        )
    finally:
        await conn.close()
    finished = sorted(float(r["at"]) - committed for r in done_at)
    delivered = len(finished)
    span = finished[-1] if finished else 0.0

    def pct(q: float) -> float:
        if not finished:
            return float("nan")
        return finished[min(len(finished) - 1, round(q / 100 * (len(finished) - 1)))]

    return {
        "rps": round(delivered / span, 1) if span else 0.0,
        "p50_ms": round(pct(50) * 1000, 1),
        "p99_ms": round(pct(99) * 1000, 1),
        "errors": len(ids) - delivered,
        "requests": len(ids),
        "seconds": round(span, 2),
        "failed": int(row["failed"]),
        "stuck_at_sent": int(row["sent"]),
        "jobs_open": int(row["open"]),
        "note": "p50/p99: time from the backlog's commit to each message's delivered receipt",
    }
