"""New rows as typed plain objects, before (or instead of) ORM objects.

The hot paths write with one driver statement, where building and instrumenting ORM
objects would cost more than the statement; a request that works through a session
turns a row into its model with `orm()`. Each row names every column of its table
(`tests/rules/test_rows.py` keeps them in step), so a statement built from the table's
columns reads every value from the row.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from app.models.messaging import Conversation, DeliveryJob, Message


@dataclass(slots=True)
class ConversationRow:
    """A conversation as first written (an upsert touches an existing one instead)."""

    id: uuid.UUID
    org_id: uuid.UUID
    kind: str
    key: str
    last_message_at: datetime
    created_at: datetime
    owner_user_id: uuid.UUID | None = None
    owner_group_id: uuid.UUID | None = None
    external_number: str | None = None
    user_a_id: uuid.UUID | None = None
    user_b_id: uuid.UUID | None = None
    last_inbound_to_number: str | None = None
    status: str = "open"
    assignee_user_id: uuid.UUID | None = None

    def orm(self) -> Conversation:
        return Conversation(**asdict(self))


@dataclass(slots=True)
class MessageRow:
    """A new message; its body already sealed."""

    id: uuid.UUID
    org_id: uuid.UUID
    conversation_id: uuid.UUID
    direction: str
    body_ciphertext: bytes
    status: str
    segments: int
    encoding: str
    created_at: datetime
    updated_at: datetime
    sender_user_id: uuid.UUID | None = None
    sender_username: str | None = None
    recipient_username: str | None = None
    group_id: uuid.UUID | None = None
    from_number: str | None = None
    to_number: str | None = None
    auto_reply: bool = False
    auto_reply_decision: dict[str, Any] | None = None
    media_dropped: int = 0
    error_code: str | None = None
    error_message: str | None = None
    carrier: str | None = None
    carrier_message_id: str | None = None
    send_at: datetime | None = None

    def orm(self) -> Message:
        return Message(**asdict(self))


@dataclass(slots=True)
class DeliveryJobRow:
    """An outbound message's outbox row, written in the same transaction as the message."""

    id: uuid.UUID
    message_id: uuid.UUID
    org_id: uuid.UUID
    from_number: str
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    state: str = "pending"
    attempts: int = 0
    lease_expires_at: datetime | None = None
    paced_at: datetime | None = None
    last_error: str | None = None

    def orm(self) -> DeliveryJob:
        return DeliveryJob(**asdict(self))
