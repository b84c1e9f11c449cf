"""Storing an inbound SMS and what it makes, after checking what its decision assumed.

On PostgreSQL this is one statement, one round trip, atomic on its own: a CTE reads
the facts (the organization's directory version, whether the sender is one of our
numbers or has opted out, whether the carrier id is already stored) and, only when
they are what the caller assumed, upserts the conversation (reopening it if closed)
and inserts the message, the reply or HELP answer and its delivery job. On SQLite (the
embedded default, one process) the same steps run one by one in a transaction.

Either way the answer is the facts as found, so a caller whose assumption was wrong
decides again from the truth.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.context import AppContext
from app.db import DriverColumns, fetch_batch
from app.models import (
    Conversation,
    DeliveryJob,
    Message,
    OptOut,
    Organization,
    PhoneNumber,
)
from app.models.rows import ConversationRow, DeliveryJobRow, MessageRow
from app.services import conversations
from app.services.routing import SenderFacts


class StoreOutcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # the carrier id is already stored: nothing written
    STALE = "stale"  # an assumption was wrong: nothing written


@dataclass
class InboundRows:
    """What one inbound message writes, and what deciding it assumed."""

    route_version: int
    expected: SenderFacts
    # Keywords are decided whatever the opt-out was: then it is not checked.
    check_opted_out: bool
    # Plain rows, not ORM objects: PostgreSQL writes them with one driver statement.
    conversation: ConversationRow  # inserted if new, else touched
    inbound: MessageRow
    extra: MessageRow | None  # the auto-reply or the HELP answer
    job: DeliveryJobRow | None  # the extra message's delivery job
    bodies: tuple[str, ...]  # the plain bodies of `inbound` and `extra`, for the events


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    conversation_id: uuid.UUID | None
    version: int | None  # None: the organization is gone
    sender: SenderFacts
    # The message reopened its closed conversation (a new inbound message does).
    reopened: bool = False


async def store_inbound(ctx: AppContext, rows: InboundRows) -> StoreResult:
    if ctx.engine.dialect.name == "postgresql":
        return await _store_in_one_statement(ctx, rows)
    return await _store_in_steps(ctx, rows)


def _outcome(
    rows: InboundRows, version: int | None, sender: SenderFacts, seen: bool
) -> StoreOutcome:
    if seen:
        return StoreOutcome.DUPLICATE
    expected = rows.expected
    if (
        version != rows.route_version
        or sender.internal != expected.internal
        or (rows.check_opted_out and sender.opted_out != expected.opted_out)
    ):
        return StoreOutcome.STALE
    return StoreOutcome.STORED


def is_repeated_carrier_id(exc: Any) -> bool:
    """Whether an insert failed only because this carrier message id is already stored."""
    text_ = str(getattr(exc, "orig", exc))
    return "carrier_message_id" in text_ or "uq_messages_carrier" in text_


# --------------------------------------------------------------------------- PostgreSQL


# $1 from, $2 org, $3 carrier, $4 carrier id, $5 version, $6 internal, $7 opted out
# (NULL: not checked), $8 whether there is an extra message; then the rows' columns.
_CONV = DriverColumns(Conversation.__table__, 9)  # type: ignore[arg-type]
_MSG = DriverColumns(Message.__table__, _CONV.next, skip=("conversation_id",))  # type: ignore[arg-type]
_EXTRA = DriverColumns(Message.__table__, _MSG.next, skip=("conversation_id",))  # type: ignore[arg-type]
_JOB = DriverColumns(DeliveryJob.__table__, _EXTRA.next)  # type: ignore[arg-type]

_STATEMENT = f"""
WITH facts AS (
  SELECT o.directory_version AS version,
         EXISTS (SELECT 1 FROM phone_numbers WHERE number = $1::varchar) AS internal,
         EXISTS (SELECT 1 FROM opt_outs
                  WHERE org_id = $2::uuid AND external_number = $1::varchar) AS opted_out,
         EXISTS (SELECT 1 FROM messages
                  WHERE carrier = $3::varchar AND carrier_message_id = $4::varchar) AS seen
    FROM organizations o WHERE o.id = $2::uuid
), go AS (
  SELECT 1 FROM facts
   WHERE version = $5::bigint AND internal = $6::boolean
     AND ($7::boolean IS NULL OR opted_out = $7::boolean) AND NOT seen
), conv AS (
  INSERT INTO conversations ({_CONV.names})
  SELECT {_CONV.placeholders} FROM go
  ON CONFLICT (org_id, key) DO UPDATE
     SET last_message_at = EXCLUDED.last_message_at,
         last_inbound_to_number = EXCLUDED.last_inbound_to_number,
         status = 'open'
  -- The subquery reads the statement's snapshot: the conversation as it was before.
  RETURNING id, (SELECT c.status FROM conversations c WHERE c.id = conversations.id)
                  IS NOT DISTINCT FROM 'closed' AS reopened
), msg AS (
  INSERT INTO messages ({_MSG.names}, conversation_id)
  SELECT {_MSG.placeholders}, conv.id FROM conv
  ON CONFLICT (carrier, carrier_message_id) DO NOTHING
  RETURNING conversation_id
), extra AS (
  INSERT INTO messages ({_EXTRA.names}, conversation_id)
  SELECT {_EXTRA.placeholders}, msg.conversation_id FROM msg WHERE $8::boolean
  RETURNING id
), job AS (
  INSERT INTO delivery_jobs ({_JOB.names})
  SELECT {_JOB.placeholders} FROM extra
)
SELECT f.version, f.internal, f.opted_out, f.seen,
       (SELECT conversation_id FROM msg) AS conversation_id,
       (SELECT reopened FROM conv) AS reopened
  FROM (SELECT 1) AS one LEFT JOIN facts f ON true
"""
# Exactly one row per store (all NULL when the organization is gone), so that the rows
# of a batch line up with its stores.

# A batch takes its conversations' row locks in (org, key) order, so two batches
# sharing conversations wait for each other instead of deadlocking.
_ORG_ARG = 1  # $2
_KEY_ARG = _CONV.first - 1 + [c.name for c in _CONV.columns].index("key")


async def _store_in_one_statement(ctx: AppContext, rows: InboundRows) -> StoreResult:
    m = rows.inbound
    expected = rows.expected
    args = [
        m.from_number,
        m.org_id,
        m.carrier,
        m.carrier_message_id,
        rows.route_version,
        expected.internal,
        expected.opted_out if rows.check_opted_out else None,
        rows.extra is not None,
        *_CONV.values(rows.conversation),
        *_MSG.values(m),
        *_EXTRA.values(rows.extra),
        *_JOB.values(rows.job),
    ]
    found = await ctx.inbound_batches.submit(args)
    if found["version"] is None:
        return StoreResult(StoreOutcome.STALE, None, None, SenderFacts())
    sender = SenderFacts(internal=found["internal"], opted_out=found["opted_out"])
    outcome = _outcome(rows, found["version"], sender, found["seen"])
    conversation_id = found["conversation_id"]
    if outcome is StoreOutcome.STORED and conversation_id is None:
        # A concurrent delivery of the same carrier id won the insert after our facts.
        outcome = StoreOutcome.DUPLICATE
    return StoreResult(
        outcome, conversation_id, found["version"], sender, reopened=bool(found["reopened"])
    )


async def store_batch(engine: AsyncEngine, batch: list[list[Any]]) -> list[Any]:
    """Stores that came together (while the previous batch ran), in one round trip and one
    transaction, in conversation-key order (a repeated carrier id in the same batch is a
    duplicate): `db.fetch_batch`."""
    return await fetch_batch(engine, _STATEMENT, batch, lambda a: (a[_ORG_ARG], a[_KEY_ARG]))


# --------------------------------------------------------------------------- SQLite


async def _store_in_steps(ctx: AppContext, rows: InboundRows) -> StoreResult:
    m = rows.inbound
    assert m.from_number is not None
    async with ctx.sessionmaker() as session:
        found = (
            await session.execute(
                select(
                    select(Organization.directory_version)
                    .where(Organization.id == m.org_id)
                    .scalar_subquery(),
                    exists().where(PhoneNumber.number == m.from_number),
                    exists().where(
                        OptOut.org_id == m.org_id, OptOut.external_number == m.from_number
                    ),
                    exists().where(
                        Message.carrier == m.carrier,
                        Message.carrier_message_id == m.carrier_message_id,
                    ),
                )
            )
        ).one()
        version = found[0]
        sender = SenderFacts(internal=bool(found[1]), opted_out=bool(found[2]))
        outcome = _outcome(rows, version, sender, bool(found[3]))
        if outcome is not StoreOutcome.STORED:
            return StoreResult(outcome, None, version, sender)
        c = rows.conversation
        before = await session.scalar(
            select(Conversation.status).where(
                Conversation.org_id == c.org_id, Conversation.key == c.key
            )
        )
        conv = await conversations.touch(
            session,
            org_id=c.org_id,
            kind=c.kind,
            key=c.key,
            at=c.last_message_at,
            owner_user_id=c.owner_user_id,
            owner_group_id=c.owner_group_id,
            external_number=c.external_number,
            inbound_to_number=c.last_inbound_to_number,
            reopen=True,
        )
        created = [m] if rows.extra is None else [m, rows.extra]
        for row in created:
            row.conversation_id = conv.id
            session.add(row.orm())
        if rows.job is not None:
            session.add(rows.job.orm())
        try:
            await session.commit()
        except IntegrityError as exc:
            await session.rollback()
            if not is_repeated_carrier_id(exc):
                raise
            return StoreResult(StoreOutcome.DUPLICATE, None, version, sender)
        return StoreResult(
            StoreOutcome.STORED, conv.id, version, sender, reopened=before == "closed"
        )
