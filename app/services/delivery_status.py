"""Delivery statuses of outbound messages: the one place that writes them.

An outbound message goes `queued` → `sending` → `sent` → `delivered` | `undelivered` |
`failed`, and never backwards, with one exception that is part of the rule: an attempt
that failed and will be retried puts a message that is still `sending` back to
`queued` (`requeue`), because it waits in the outbox again. Every write is a
conditional UPDATE, never read-modify-write, so a carrier's receipt and the worker
racing each other can never overwrite `delivered` with `sent`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.carriers.base import OutboundStatus, StatusUpdate
from app.context import AppContext
from app.models import DeliveryJob, Message, utcnow
from app.services import carrier_input
from app.services.publishing import publish

# Outbound statuses in the order they happen; a status never moves backwards.
STATUS_RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}
TERMINAL = frozenset({"delivered", "undelivered", "failed"})


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
    for status in STATUS_RANK
    for with_error in (False, True)
}


async def receive_status(ctx: AppContext, update_: StatusUpdate) -> bool:
    """A carrier's receipt, applied in its own session (see `apply_status`)."""
    storable = carrier_input.storable_status(update_)
    if storable is None:
        return False
    async with ctx.sessionmaker() as session:
        return await apply_status(ctx, session, storable)


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


def _as_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
