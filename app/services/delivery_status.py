"""Delivery statuses of outbound messages: the one place that writes them.

An outbound message goes `queued` → `sending` → `sent` → `delivered` | `undelivered` |
`failed`, and never backwards, with one exception that is part of the rule: an attempt
that failed and will be retried puts a message that is still `sending` back to
`queued` (`requeue`), because it waits in the outbox again. Every write is a
conditional UPDATE, never read-modify-write, so a carrier's receipt and the worker
racing each other can never overwrite `delivered` with `sent`.

A message sent later starts `scheduled`, its job due at its `send_at`. The claim that
takes the due job makes it `queued` in the same statement, once the rules hold again
(its organization still owns the `from` number, the recipient has not opted out);
otherwise it ends `failed`. Until then it may be `canceled` (`cancel_scheduled`), which
is final. The claim and the cancel serialize on the job's row lock: the claim takes only
jobs no one holds (`FOR UPDATE SKIP LOCKED`) and still waiting, the cancel locks the job
and changes only a message whose job is still waiting; so a message is either canceled
and never handed to the carrier, or claimed and no longer cancelable, never both.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, get_args

from sqlalchemy import ColumnElement, and_, bindparam, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.carriers.base import OutboundStatus, StatusUpdate
from app.context import AppContext
from app.db import driver_connection, fetch_batch, fetch_retrying
from app.metrics import DELIVERY_RECEIPTS, Children
from app.models import DeliveryJob, Message, utcnow
from app.services import carrier_input, conversations, opt_out
from app.services.message_rows import RENDERED_SQL, DriverMessageRow
from app.services.outbound_numbers import owned_number
from app.services.publishing import publish

# Outbound statuses in the order they happen; a status never moves backwards.
STATUS_RANK = {
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
}
TERMINAL = frozenset({"delivered", "undelivered", "failed", "canceled"})


async def mark_sending(
    session: AsyncSession, message_ids: Sequence[uuid.UUID], now: datetime
) -> None:
    """Claimed by a worker: the messages still `queued` are `sending` now."""
    await session.execute(
        update(Message)
        .where(Message.id.in_(message_ids), Message.status == "queued")
        .values(status="sending", updated_at=now),
        execution_options=NO_SYNC,
    )


async def requeue(session: AsyncSession, message_id: uuid.UUID, now: datetime) -> None:
    """An attempt failed and will be retried: back to `queued`, but only from `sending`
    (a receipt may have settled the message meanwhile)."""
    await session.execute(
        update(Message)
        .where(Message.id == message_id, Message.status == "sending")
        .values(status="queued", updated_at=now),
        execution_options=NO_SYNC,
    )


async def cancel_scheduled(session: AsyncSession, message_id: uuid.UUID, now: datetime) -> bool:
    """A scheduled message becomes `canceled` and its job done, in the caller's
    transaction, while its job still waits; False when it no longer does (claimed when
    due) or the message is not scheduled. The job is locked first, as every path locks:
    a claim in progress is waited for, and after it the job no longer waits."""
    params = {"mid": message_id, "now": now}
    await session.execute(_LOCK_WAITING_JOB, params)
    result = await session.execute(_CANCEL, params, execution_options=NO_SYNC)
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(_CANCEL_JOB, params, execution_options=NO_SYNC)
    return True


async def advance_outbound(
    session: AsyncSession,
    message_id: uuid.UUID,
    status: OutboundStatus,
    *,
    carrier: str | None = None,
    carrier_message_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record what the carrier said about an outbound message, in the caller's transaction.

    Conditional UPDATEs, not read-modify-write: the carrier id is stored only where none
    is, and the status only moves forward, so a receipt and the worker racing each
    other can never overwrite `delivered` with `sent`. Returns whether anything changed.
    """
    now = utcnow()
    changed = False
    if carrier_message_id is not None:
        result = await session.execute(
            _SET_CARRIER_ID,
            {"mid": message_id, "carrier_name": carrier, "cid": carrier_message_id, "now": now},
            execution_options=NO_SYNC,
        )
        changed = bool(result.rowcount)  # type: ignore[attr-defined]
    params: dict[str, Any] = {"mid": message_id, "now": now}
    with_error = bool(error_code or error_message)
    if with_error:
        params.update(code=error_code, text=error_message)
    result = await session.execute(_ADVANCE[status, with_error], params, execution_options=NO_SYNC)
    return changed or bool(result.rowcount)  # type: ignore[attr-defined]


# Built once (these run several times per delivered message). No ORM synchronization:
# the callers read the message afresh after committing. (Parameters of an UPDATE may not
# be named after its columns.)
NO_SYNC = {"synchronize_session": False}
_SET_CARRIER_ID = (
    update(Message)
    .where(Message.id == bindparam("mid"), Message.carrier_message_id.is_(None))
    .values(
        carrier=bindparam("carrier_name"),
        carrier_message_id=bindparam("cid"),
        updated_at=bindparam("now"),
    )
)


def _advance_statement(status: str, with_error: bool) -> Any:
    earlier = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
    values: dict[str, Any] = {"status": status, "updated_at": bindparam("now")}
    if with_error:
        values.update(error_code=bindparam("code"), error_message=bindparam("text"))
    return (
        update(Message)
        .where(Message.id == bindparam("mid"), Message.status.in_(earlier))
        .values(values)
    )


_ADVANCE = {
    (status, with_error): _advance_statement(status, with_error)
    for status in get_args(OutboundStatus)
    for with_error in (False, True)
}


_RECEIPTS = Children(DELIVERY_RECEIPTS)


async def receive_status(ctx: AppContext, update_: StatusUpdate) -> bool:
    """A carrier's receipt: move its message forward (never backwards), settle its job,
    tell who sees it. On PostgreSQL the receipts arriving together are applied in one
    round trip (`apply_receipts`), one statement each; on SQLite in a session
    (`apply_status`). Returns False when no message of ours matches."""
    _RECEIPTS(update_.carrier, update_.status).inc()
    storable = carrier_input.storable_status(update_)
    if storable is None:
        return False
    if ctx.engine.dialect.name != "postgresql":
        async with ctx.sessionmaker() as session:
            return await apply_status(ctx, session, storable)
    found = await ctx.receipt_batches.submit(_receipt_args(storable))
    if found["audience_present"]:
        await publish(
            ctx,
            None,
            "message.updated",
            [found],
            audiences=[tuple(found["audience"] or ())],
        )
    return found["target_id"] is not None


def _receipt_args(update_: StatusUpdate) -> list[Any]:
    earlier = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[update_.status]]
    with_error = bool(update_.error_code or update_.error_message)
    return [
        update_.carrier,
        update_.carrier_message_id,
        _as_uuid(update_.reference),
        update_.status,
        update_.error_code,
        update_.error_message,
        utcnow(),
        with_error,
        earlier,
    ]


# One receipt: the message is found by the carrier's id, else by our own id (the
# reference) while it has no carrier id or this one. The job is locked first (the lock
# order of every path, and so that a worker storing the carrier id meanwhile has
# committed: the message's conditions are then checked on its latest version). The
# carrier id is stored where none is; the status only moves forward. Exactly one row per
# receipt, so a batch's rows line up with its receipts.
_RECEIPT_SQL = f"""
WITH target AS (
  SELECT id FROM (
    SELECT m.id, 0 AS pref FROM messages m
     WHERE m.carrier = $1 AND m.carrier_message_id = $2 AND m.direction = 'outbound'
    UNION ALL
    SELECT m.id, 1 FROM messages m
     WHERE m.id = $3::uuid AND m.direction = 'outbound'
       AND (m.carrier_message_id IS NULL OR (m.carrier = $1 AND m.carrier_message_id = $2))
  ) found ORDER BY pref LIMIT 1
), job AS (
  SELECT j.id FROM delivery_jobs j WHERE j.message_id = (SELECT id FROM target) FOR UPDATE
), m AS (
  UPDATE messages m
     SET carrier = CASE WHEN m.carrier_message_id IS NULL THEN $1 ELSE m.carrier END,
         carrier_message_id = COALESCE(m.carrier_message_id, $2),
         status = CASE WHEN m.status = ANY($9::text[]) THEN $4::varchar ELSE m.status END,
         error_code = CASE WHEN m.status = ANY($9::text[]) AND $8::boolean
                           THEN $5::varchar ELSE m.error_code END,
         error_message = CASE WHEN m.status = ANY($9::text[]) AND $8::boolean
                              THEN $6::text ELSE m.error_message END,
         updated_at = $7
   WHERE m.id = (SELECT id FROM target)
     AND (SELECT count(*) FROM job) >= 0
     AND (m.carrier_message_id IS NULL OR (m.carrier = $1 AND m.carrier_message_id = $2))
     AND (m.carrier_message_id IS NULL OR m.status = ANY($9::text[]))
  RETURNING m.*
), settle AS (
  UPDATE delivery_jobs j SET state = 'done', lease_expires_at = NULL, updated_at = $7
   WHERE j.id IN (SELECT id FROM job) AND j.state IN ('pending', 'in_flight')
     AND EXISTS (SELECT 1 FROM m)
)
SELECT (SELECT id FROM target) AS target_id, {RENDERED_SQL},
       {conversations.AUDIENCE_SQL} AS audience, c.id IS NOT NULL AS audience_present
  FROM (SELECT 1) AS one
  LEFT JOIN (m JOIN conversations c ON c.id = m.conversation_id) ON true
"""


async def apply_receipts(engine: AsyncEngine, batch: list[list[Any]]) -> list[Any]:
    """Receipts that came together, in one round trip and one transaction, in the order
    of the messages they name (`db.fetch_batch`)."""
    return await fetch_batch(
        engine, _RECEIPT_SQL, batch, _receipt_order, record_class=DriverMessageRow
    )


def _receipt_order(args: list[Any]) -> tuple[str, str, str]:
    # By the message it names (our id, where the carrier echoes it), as the worker locks
    # jobs; then by the carrier's id.
    return (str(args[2] or ""), args[0], args[1])


async def apply_status(ctx: AppContext, session: AsyncSession, update_: StatusUpdate) -> bool:
    """Move an outbound message forward to the carrier's status; never backwards.

    Returns False when no message matches (an unknown id is acknowledged all the same).
    """
    message_id = await session.scalar(
        _BY_CARRIER_ID, {"carrier": update_.carrier, "cid": update_.carrier_message_id}
    )
    # Lock order is job, then message, as the worker claims: never the reverse, which
    # deadlocks against a claim in progress.
    if message_id is not None:
        await session.execute(_LOCK_JOB, {"mid": message_id})
    else:
        ref = _as_uuid(update_.reference)
        if ref is None:
            return False
        # Matched by our own id only while the message has no carrier id or this one: a
        # receipt for another carrier message never speaks for it. Looked up once its job
        # is locked, so a worker (or receipt) storing the carrier id has committed.
        await session.execute(_LOCK_JOB, {"mid": ref})
        message_id = await session.scalar(
            _BY_REFERENCE,
            {"mid": ref, "carrier": update_.carrier, "cid": update_.carrier_message_id},
        )
        if message_id is None:
            return False
    # A receipt for a message whose worker died after the carrier accepted it also
    # supplies the carrier id we never stored.
    changed = await advance_outbound(
        session,
        message_id,
        update_.status,
        carrier=update_.carrier,
        carrier_message_id=update_.carrier_message_id,
        error_code=update_.error_code,
        error_message=update_.error_message,
    )
    if not changed:
        await session.rollback()
        return True
    await session.execute(
        _SETTLE_JOB, {"mid": message_id, "now": utcnow()}, execution_options=NO_SYNC
    )
    await session.commit()
    message = await session.get(Message, message_id, populate_existing=True)
    if message is not None:
        await publish(ctx, session, "message.updated", [message])
    return True


_BY_CARRIER_ID = select(Message.id).where(
    Message.carrier == bindparam("carrier"),
    Message.carrier_message_id == bindparam("cid"),
    Message.direction == "outbound",
)
_BY_REFERENCE = select(Message.id).where(
    Message.id == bindparam("mid"),
    Message.direction == "outbound",
    or_(
        Message.carrier_message_id.is_(None),
        (Message.carrier == bindparam("carrier"))
        & (Message.carrier_message_id == bindparam("cid")),
    ),
)
_LOCK_JOB = (
    select(DeliveryJob.id).where(DeliveryJob.message_id == bindparam("mid")).with_for_update()
)
_SETTLE_JOB = (
    update(DeliveryJob)
    .where(
        DeliveryJob.message_id == bindparam("mid"),
        DeliveryJob.state.in_(("pending", "in_flight")),
    )
    .values(state="done", lease_expires_at=None, updated_at=bindparam("now"))
)


# A scheduled message's job still waiting for its due time (not claimed, or put back
# for its send slot after it was: then its message is `queued` and no longer cancelable).
_WAITING_JOB = and_(DeliveryJob.message_id == bindparam("mid"), DeliveryJob.state == "pending")
_LOCK_WAITING_JOB = select(DeliveryJob.id).where(_WAITING_JOB).with_for_update()
_CANCEL = (
    update(Message)
    .where(
        Message.id == bindparam("mid"),
        Message.status == "scheduled",
        exists().where(_WAITING_JOB),
    )
    .values(status="canceled", updated_at=bindparam("now"))
)
_CANCEL_JOB = (
    update(DeliveryJob)
    .where(_WAITING_JOB)
    .values(state="done", lease_expires_at=None, updated_at=bindparam("now"))
)


def _as_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- the outbox
#
# What the delivery worker writes, a batch of jobs at a time. On PostgreSQL each step is
# one statement and one round trip, whatever the batch's size (no ORM objects); on the
# embedded SQLite the same steps run in a session.


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job leased to this worker, with what sending its message needs."""

    job_id: uuid.UUID
    message_id: uuid.UUID
    org_id: uuid.UUID
    from_number: str
    attempts: int
    # The send slot the job waited for, if it was given one (then it goes at once).
    paced_at: datetime | None
    to_number: str
    body_ciphertext: bytes
    status: str
    carrier_message_id: str | None
    # Whether its organization still owns the `from` number (released numbers speak
    # for no one: `outbound_numbers`).
    owned: bool
    # Whether its recipient opted out while it waited for its `send_at`.
    opted_out: bool
    # It was `scheduled`, and this claim made it `queued`: due, the rules holding.
    came_due: bool

    @property
    def settled(self) -> bool:
        """Already settled by a receipt: it is never sent again."""
        return self.status in TERMINAL or self.carrier_message_id is not None

    @property
    def sendable(self) -> bool:
        """Whether it goes to the carrier: unsettled, and the rules still hold."""
        return self.owned and not self.opted_out and not self.settled


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job's lease: its worker sends it by `until`; if it has not settled by
    `retake_at` (its worker vanished), the job is claimed again."""

    job_id: uuid.UUID
    until: datetime
    retake_at: datetime


@dataclass(frozen=True, slots=True)
class Accepted:
    """A send the carrier accepted."""

    job: ClaimedJob
    carrier: str
    carrier_message_id: str
    body: str


# The claimed rows are found by their ids (`= ANY`), not by joining `picked`: the
# statement runs on a generic plan, which takes `LIMIT $2` for a tenth of the due jobs
# and would then hash the whole table (100-200 ms a claim on a backlog of 50,000, the
# drain's bottleneck) rather than probe the primary key for each.
# The rules a scheduled message is checked against again when it comes due: its
# organization still owns its `from` number (every message), its recipient has not
# opted out meanwhile (a scheduled one); one that passes is `queued` by the same
# statement that claims its job (`came_due`), so no cancel can slip in between.
_CLAIM_SQL = """
WITH picked AS (
  SELECT id, paced_at FROM delivery_jobs
   WHERE state IN ('pending', 'in_flight') AND next_attempt_at <= $1
   ORDER BY next_attempt_at
   LIMIT $2
   FOR UPDATE SKIP LOCKED
), claimed AS (
  UPDATE delivery_jobs j
     SET state = 'in_flight', attempts = j.attempts + 1, lease_expires_at = $3,
         next_attempt_at = $4, paced_at = NULL, updated_at = $1
   WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
  RETURNING j.id, j.message_id, j.org_id, j.from_number, j.attempts
), found AS (
  SELECT c.id AS job_id, c.message_id, c.org_id, c.from_number, c.attempts, k.paced_at,
         m.to_number, m.body_ciphertext, m.status, m.carrier_message_id,
         EXISTS (SELECT 1 FROM phone_numbers p
                  WHERE p.org_id = c.org_id AND p.number = c.from_number) AS owned,
         m.status = 'scheduled'
           AND EXISTS (SELECT 1 FROM opt_outs o
                        WHERE o.org_id = c.org_id AND o.external_number = m.to_number)
           AS opted_out
    FROM claimed c JOIN picked k ON k.id = c.id JOIN messages m ON m.id = c.message_id
), due AS (
  UPDATE messages m SET status = 'queued', updated_at = $1
    FROM found f
   WHERE f.status = 'scheduled' AND f.owned AND NOT f.opted_out
     AND m.id = f.message_id AND m.status = 'scheduled'
  RETURNING m.id
)
SELECT f.job_id, f.message_id, f.org_id, f.from_number, f.attempts, f.paced_at,
       f.to_number, f.body_ciphertext, f.carrier_message_id, f.owned, f.opted_out,
       d.id IS NOT NULL AS came_due,
       CASE WHEN d.id IS NOT NULL THEN 'queued' ELSE f.status END AS status
  FROM found f LEFT JOIN due d ON d.id = f.message_id
 ORDER BY f.paced_at NULLS FIRST
"""

# Jobs that wait for their number's send slot go back to the outbox until that slot
# (holding it: `paced_at`); those that wait for it in their worker keep their lease
# until after it ($6, $7: lease, taken again); the messages about to be sent are
# `sending`. Returns the scheduled messages the claim made `queued` ($5), as they were
# then (the statement's snapshot), with who sees them.
_HOLD_SQL = f"""
WITH deferred AS (
  UPDATE delivery_jobs j
     SET state = 'pending', attempts = j.attempts - 1, lease_expires_at = NULL,
         next_attempt_at = d.slot, paced_at = d.slot, updated_at = $1
    FROM unnest($2::uuid[], $3::timestamptz[]) AS d(id, slot)
   WHERE j.id = d.id
  RETURNING 1
), kept AS (
  UPDATE delivery_jobs j
     SET lease_expires_at = k.lease, next_attempt_at = k.retake, updated_at = $1
    FROM unnest($6::uuid[], $7::timestamptz[], $8::timestamptz[]) AS k(id, lease, retake)
   WHERE j.id = k.id
  RETURNING 1
), sending AS (
  UPDATE messages SET status = 'sending', updated_at = $1
   WHERE id = ANY($4::uuid[]) AND status = 'queued'
  RETURNING 1
)
SELECT {RENDERED_SQL}, {conversations.AUDIENCE_SQL} AS audience
  FROM messages m JOIN conversations c ON c.id = m.conversation_id
 WHERE m.id = ANY($5::uuid[])
"""

# Accepted by the carrier: each job done, each message `sent` (never backwards) with the
# carrier's id (only where none is stored: a receipt may have supplied it). Jobs first,
# in the order of their messages' ids, then messages: the lock order of every path
# (receipt batches go in the order of the messages they name). Returns the messages
# that changed, with who sees them.
_SENT_SQL = f"""
WITH v AS (
  SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS v(job_id, message_id, cid)
), locked AS (
  SELECT j.id FROM delivery_jobs j JOIN v ON j.id = v.job_id
   ORDER BY j.message_id
   FOR UPDATE OF j
), jobs AS (
  UPDATE delivery_jobs j
     SET state = 'done', lease_expires_at = NULL, last_error = NULL, updated_at = $1
    FROM locked WHERE j.id = locked.id
  RETURNING j.message_id
), m AS (
  UPDATE messages m
     SET carrier = CASE WHEN m.carrier_message_id IS NULL THEN $5 ELSE m.carrier END,
         carrier_message_id = COALESCE(m.carrier_message_id, v.cid),
         status = CASE WHEN m.status IN ('queued', 'sending') THEN 'sent' ELSE m.status END,
         updated_at = $1
    FROM v JOIN jobs ON jobs.message_id = v.message_id
   WHERE m.id = v.message_id
     AND (m.carrier_message_id IS NULL OR m.status IN ('queued', 'sending'))
  RETURNING m.*
)
SELECT {RENDERED_SQL}, {conversations.AUDIENCE_SQL} AS audience
  FROM m JOIN conversations c ON c.id = m.conversation_id
"""


async def claim_jobs(
    ctx: AppContext, limit: int, lease: timedelta, grace: timedelta
) -> list[ClaimedJob]:
    """Lease due jobs: pending ones, and in-flight ones whose worker vanished (`FOR
    UPDATE SKIP LOCKED`: several workers never take the same one). If this worker dies,
    a job becomes due again after its lease and the grace."""
    now = utcnow()
    if ctx.engine.dialect.name == "postgresql":
        async with driver_connection(ctx.engine) as conn:
            rows = await conn.fetch(_CLAIM_SQL, now, limit, now + lease, now + lease + grace)
        return [
            ClaimedJob(**{**dict(row), "to_number": row["to_number"] or ""}) for row in rows
        ]
    async with ctx.sessionmaker() as session:
        jobs = (
            await session.scalars(
                select(DeliveryJob)
                .where(
                    DeliveryJob.state.in_(("pending", "in_flight")),
                    DeliveryJob.next_attempt_at <= now,
                )
                .order_by(DeliveryJob.next_attempt_at)
                .limit(limit)
            )
        ).all()
        claimed = []
        for job in jobs:
            # Taken only while still claimable: a cancel may have closed it since it was
            # read. (SQLite has one writer: from this write on, the cancel waits.)
            taken = await session.execute(
                update(DeliveryJob)
                .where(DeliveryJob.id == job.id, DeliveryJob.state.in_(("pending", "in_flight")))
                .values(
                    state="in_flight",
                    attempts=DeliveryJob.attempts + 1,
                    lease_expires_at=now + lease,
                    next_attempt_at=now + lease + grace,
                    paced_at=None,
                    updated_at=now,
                ),
                execution_options=NO_SYNC,
            )
            message = await session.get(Message, job.message_id, populate_existing=True)
            if not taken.rowcount or message is None:  # type: ignore[attr-defined]
                continue
            owned = bool(await session.scalar(select(owned_number(job.org_id, job.from_number))))
            scheduled = message.status == "scheduled"
            opted_out = scheduled and await opt_out.is_opted_out(
                session, job.org_id, message.to_number or ""
            )
            came_due = scheduled and owned and not opted_out
            if came_due:
                await session.execute(
                    update(Message)
                    .where(Message.id == message.id, Message.status == "scheduled")
                    .values(status="queued", updated_at=now),
                    execution_options=NO_SYNC,
                )
            claimed.append(
                ClaimedJob(
                    job_id=job.id,
                    message_id=job.message_id,
                    org_id=job.org_id,
                    from_number=job.from_number,
                    attempts=job.attempts + 1,
                    paced_at=job.paced_at,
                    to_number=message.to_number or "",
                    body_ciphertext=message.body_ciphertext,
                    status="queued" if came_due else message.status,
                    carrier_message_id=message.carrier_message_id,
                    owned=owned,
                    opted_out=opted_out,
                    came_due=came_due,
                )
            )
        await session.commit()
    return claimed


async def hold_jobs(
    ctx: AppContext,
    deferred: list[tuple[uuid.UUID, datetime]],
    sending: list[uuid.UUID],
    came_due: list[uuid.UUID],
    kept: Sequence[Lease] = (),
) -> None:
    """Put jobs that wait for their send slot back until it (they hold it), lengthen the
    lease of those that wait for it in their worker (`kept`), mark the messages about to
    be sent `sending`, and tell who sees them that the scheduled messages of `came_due`
    are `queued`: one round trip."""
    if not deferred and not sending and not came_due and not kept:
        return
    now = utcnow()
    if ctx.engine.dialect.name == "postgresql":
        queued = await fetch_retrying(
            ctx.engine,
            _HOLD_SQL,
            now,
            [job_id for job_id, _ in deferred],
            [slot for _, slot in deferred],
            sending,
            came_due,
            [lease.job_id for lease in kept],
            [lease.until for lease in kept],
            [lease.retake_at for lease in kept],
            record_class=DriverMessageRow,
        )
        await publish(
            ctx,
            None,
            "message.updated",
            queued,
            audiences=[tuple(row["audience"] or ()) for row in queued],
        )
        return
    async with ctx.sessionmaker() as session:
        # Told before they move on: the claim committed them `queued`.
        queued_now = [await session.get(Message, message_id) for message_id in came_due]
        await publish(ctx, session, "message.updated", [m for m in queued_now if m])
        for job_id, slot in deferred:
            await session.execute(
                update(DeliveryJob)
                .where(DeliveryJob.id == job_id)
                .values(
                    state="pending",
                    attempts=DeliveryJob.attempts - 1,
                    lease_expires_at=None,
                    next_attempt_at=slot,
                    paced_at=slot,
                    updated_at=now,
                ),
                execution_options=NO_SYNC,
            )
        for lease in kept:
            await session.execute(
                update(DeliveryJob)
                .where(DeliveryJob.id == lease.job_id)
                .values(
                    lease_expires_at=lease.until, next_attempt_at=lease.retake_at, updated_at=now
                ),
                execution_options=NO_SYNC,
            )
        if sending:
            await mark_sending(session, sending, now)
        await session.commit()


# Claimed jobs whose send slot came after a wait in their worker: their messages are
# `sending` now, unless their organization released the `from` number meanwhile
# (returned: they must not go).
_WOKEN_SQL = """
WITH v AS (
  SELECT v.*, EXISTS (SELECT 1 FROM phone_numbers p
                       WHERE p.org_id = v.org_id AND p.number = v.from_number) AS owned
    FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[])
         AS v(job_id, message_id, org_id, from_number)
), sending AS (
  UPDATE messages m SET status = 'sending', updated_at = $1
    FROM v WHERE v.owned AND m.id = v.message_id AND m.status = 'queued'
  RETURNING 1
)
SELECT job_id FROM v WHERE NOT owned
"""


async def mark_woken(ctx: AppContext, jobs: Sequence[ClaimedJob]) -> set[uuid.UUID]:
    """Jobs that waited in their worker for their send slot go now: their messages are
    `sending`, where their organization still owns the `from` number. Returns the jobs
    whose number it no longer owns (released while they waited): one round trip."""
    now = utcnow()
    if ctx.engine.dialect.name == "postgresql":
        rows = await fetch_retrying(
            ctx.engine,
            _WOKEN_SQL,
            now,
            [job.job_id for job in jobs],
            [job.message_id for job in jobs],
            [job.org_id for job in jobs],
            [job.from_number for job in jobs],
        )
        return {row["job_id"] for row in rows}
    async with ctx.sessionmaker() as session:
        released = set()
        for job in jobs:
            if not await session.scalar(select(owned_number(job.org_id, job.from_number))):
                released.add(job.job_id)
        going = [job.message_id for job in jobs if job.job_id not in released]
        if going:
            await mark_sending(session, going, now)
        await session.commit()
    return released


async def record_sent(ctx: AppContext, accepted: list[Accepted]) -> None:
    """The carrier accepted these sends: jobs done, messages `sent`, events out."""
    if not accepted:
        return
    now = utcnow()
    carrier = accepted[0].carrier
    bodies = {a.job.message_id: a.body for a in accepted}
    if ctx.engine.dialect.name == "postgresql":
        rows = await fetch_retrying(
            ctx.engine,
            _SENT_SQL,
            now,
            [a.job.job_id for a in accepted],
            [a.job.message_id for a in accepted],
            [a.carrier_message_id for a in accepted],
            carrier,
            record_class=DriverMessageRow,
        )
        await publish(
            ctx,
            None,
            "message.updated",
            rows,
            bodies=[bodies[row["id"]] for row in rows],
            audiences=[tuple(row["audience"] or ()) for row in rows],
        )
        return
    async with ctx.sessionmaker() as session:
        changed = []
        for a in accepted:
            await session.execute(
                update(DeliveryJob)
                .where(DeliveryJob.id == a.job.job_id)
                .values(state="done", lease_expires_at=None, last_error=None, updated_at=now),
                execution_options=NO_SYNC,
            )
            if await advance_outbound(
                session,
                a.job.message_id,
                "sent",
                carrier=a.carrier,
                carrier_message_id=a.carrier_message_id,
            ):
                changed.append(a.job.message_id)
        await session.commit()
        messages = [m for m in [await session.get(Message, i) for i in changed] if m is not None]
        await publish(ctx, session, "message.updated", messages)


def _this_attempt(job: ClaimedJob) -> tuple[ColumnElement[bool], ...]:
    """The job as this attempt claimed it: still `in_flight`, with the attempts the claim
    gave it. A failed attempt's outcome is written only then: a job the carrier's receipt
    closed while the call hung stays closed, and one another worker took again after the
    lease (this one stalled past it) is that worker's to settle."""
    return (
        DeliveryJob.id == job.job_id,
        DeliveryJob.state == "in_flight",
        DeliveryJob.attempts == job.attempts,
    )


async def record_settled(ctx: AppContext, job: ClaimedJob) -> None:
    """A job whose message a receipt settled meanwhile: done, never sent again."""
    async with ctx.sessionmaker() as session:
        await session.execute(
            update(DeliveryJob)
            .where(DeliveryJob.id == job.job_id)
            .values(state="done", lease_expires_at=None, updated_at=utcnow()),
            execution_options=NO_SYNC,
        )
        await session.commit()


async def record_retry(
    ctx: AppContext, job: ClaimedJob, delay_seconds: float, error: str
) -> None:
    """An attempt failed and will be made again after `delay_seconds`: the job waits in
    the outbox, its message `queued` again. Unless the claim is no longer this attempt's
    (`_this_attempt`): then nothing changes."""
    now = utcnow()
    async with ctx.sessionmaker() as session:
        result = await session.execute(
            update(DeliveryJob)
            .where(*_this_attempt(job))
            .values(
                state="pending",
                lease_expires_at=None,
                last_error=error,
                next_attempt_at=now + timedelta(seconds=delay_seconds),
                updated_at=now,
            ),
            execution_options=NO_SYNC,
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await requeue(session, job.message_id, now)
        await session.commit()


async def record_failed(ctx: AppContext, job: ClaimedJob, code: str, message: str) -> None:
    """The message will not be sent: the job failed, the message `failed` with the reason.
    Unless the claim is no longer this attempt's (`_this_attempt`): then nothing changes."""
    async with ctx.sessionmaker() as session:
        result = await session.execute(
            update(DeliveryJob)
            .where(*_this_attempt(job))
            .values(state="failed", lease_expires_at=None, last_error=f"{code}: {message}"),
            execution_options=NO_SYNC,
        )
        ours = bool(result.rowcount)  # type: ignore[attr-defined]
        changed = ours and await advance_outbound(
            session, job.message_id, "failed", error_code=code, error_message=message
        )
        await session.commit()
        if changed:
            row = await session.get(Message, job.message_id)
            if row is not None:
                await publish(ctx, session, "message.updated", [row])
