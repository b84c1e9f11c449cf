"""Storing a send to one phone number in one statement, on PostgreSQL.

The most frequent send (one text to one patient, from the sender's own number) needs
what its sender may do (SMS enabled, which number they send from) and the
recipient's opt-out. The sender comes from a per-process cache keyed by the token's
hash; it is never trusted blindly: it carries the organization's `directory_version`
from when it was read (triggers bump it on every change to a user's SMS settings or
numbers), and the one statement that stores the send checks, in the same snapshot, that
the token is still valid, that version, and that the recipient has not opted out, then
upserts the conversation and inserts the message and its delivery job. A fact that
moved stores nothing and says which: the caller reads the sender again, or leaves the
send to the general path, which answers with the exact error.

Sends that come together in a process go to PostgreSQL together (`db.fetch_batch`):
one round trip and one commit for the batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam

from app.context import AppContext
from app.db import DriverColumns, DriverStatement, driver_connection, fetch_batch
from app.models import Conversation, DeliveryJob, Message, Organization, User
from app.models.rows import ConversationRow, DeliveryJobRow, MessageRow
from app.services.auth import CachedSender, principal_of, token_owner

_SENDER = DriverStatement(
    token_owner(bindparam("digest"))
    .add_columns(User.sms_enabled, User.outbound_sms_number, Organization.directory_version)
    .join(Organization, Organization.id == User.org_id)
)


async def load_sender(ctx: AppContext, digest: str) -> CachedSender | None:
    """The sender a token names, as stored now (None: no valid token), and cached."""
    async with driver_connection(ctx.engine) as conn:
        row = await conn.fetchrow(_SENDER.sql, *_SENDER.args(digest=digest))
    if row is None:
        ctx.senders.pop(digest)
        return None
    sender = CachedSender(
        principal=principal_of(digest, row[:5]),
        sms_enabled=row["sms_enabled"],
        outbound_sms_number=row["outbound_sms_number"],
        version=row["directory_version"],
    )
    ctx.senders.put(digest, sender)
    return sender


# $1 token hash, $2 org, $3 recipient, $4 version; then the rows' columns.
_CONV = DriverColumns(Conversation.__table__, 5)  # type: ignore[arg-type]
_MSG = DriverColumns(Message.__table__, _CONV.next, skip=("conversation_id",))  # type: ignore[arg-type]
_JOB = DriverColumns(DeliveryJob.__table__, _MSG.next)  # type: ignore[arg-type]

_STATEMENT = f"""
WITH facts AS (
  SELECT EXISTS (SELECT 1 FROM api_tokens t JOIN users u ON u.id = t.user_id
                  WHERE t.token_hash = $1::varchar AND t.revoked_at IS NULL
                    AND u.deactivated_at IS NULL) AS token_ok,
         (SELECT directory_version FROM organizations WHERE id = $2::uuid) AS version,
         EXISTS (SELECT 1 FROM opt_outs
                  WHERE org_id = $2::uuid AND external_number = $3::varchar) AS opted_out
), go AS (
  SELECT 1 FROM facts WHERE token_ok AND version = $4::bigint AND NOT opted_out
), conv AS (
  INSERT INTO conversations ({_CONV.names})
  SELECT {_CONV.placeholders} FROM go
  ON CONFLICT (org_id, key) DO UPDATE SET last_message_at = EXCLUDED.last_message_at
  RETURNING id
), msg AS (
  INSERT INTO messages ({_MSG.names}, conversation_id)
  SELECT {_MSG.placeholders}, conv.id FROM conv
  RETURNING conversation_id
), job AS (
  INSERT INTO delivery_jobs ({_JOB.names})
  SELECT {_JOB.placeholders} FROM msg
)
SELECT f.token_ok, f.version, f.opted_out, (SELECT conversation_id FROM msg) AS conversation_id
  FROM facts f
"""
_ORG_ARG = 1
_KEY_ARG = _CONV.first - 1 + [c.name for c in _CONV.columns].index("key")


@dataclass(frozen=True, slots=True)
class SendStored:
    """What the statement found: the conversation when it stored the send."""

    conversation_id: uuid.UUID | None
    token_ok: bool
    version: int | None
    opted_out: bool


async def store_send(
    ctx: AppContext,
    sender: CachedSender,
    recipient: str,
    conversation: ConversationRow,
    message: MessageRow,
    job: DeliveryJobRow,
) -> SendStored:
    """Store the send if what it assumed holds; else nothing, and what was found."""
    args = [
        sender.principal.token_hash,
        sender.principal.org_id,
        recipient,
        sender.version,
        *_CONV.values(conversation),
        *_MSG.values(message),
        *_JOB.values(job),
    ]
    found = await ctx.send_batches.submit(args)
    return SendStored(
        conversation_id=found["conversation_id"],
        token_ok=found["token_ok"],
        version=found["version"],
        opted_out=found["opted_out"],
    )


async def store_batch(engine: Any, batch: list[list[Any]]) -> list[Any]:
    """Sends that came together, in one round trip and one transaction, in
    conversation-key order (`db.fetch_batch`)."""
    return await fetch_batch(engine, _STATEMENT, batch, lambda a: (a[_ORG_ARG], a[_KEY_ARG]))
