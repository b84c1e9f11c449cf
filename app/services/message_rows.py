"""Messages as they are made and as they are shown: new message rows (the body sealed,
its segments counted), the outbox row of an outbound one, and the API's view of any
message (a model, a new row, or a row as the driver returns it)."""

from __future__ import annotations

import operator
import uuid
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from app.crypto import Keyring
from app.ids import new_id
from app.models import Message, utcnow
from app.models.rows import DeliveryJobRow, MessageRow
from app.services.sealing import open_body, seal_body
from app.services.segments import count_segments
from app.vocabulary import format_instant


class MessageView(Protocol):
    """What showing a message reads: a `Message`, a `MessageRow`, a driver row."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def org_id(self) -> uuid.UUID: ...
    @property
    def conversation_id(self) -> uuid.UUID: ...
    @property
    def direction(self) -> str: ...
    @property
    def sender_username(self) -> str | None: ...
    @property
    def recipient_username(self) -> str | None: ...
    @property
    def group_id(self) -> uuid.UUID | None: ...
    @property
    def from_number(self) -> str | None: ...
    @property
    def to_number(self) -> str | None: ...
    @property
    def body_ciphertext(self) -> bytes: ...
    @property
    def status(self) -> str: ...
    @property
    def auto_reply(self) -> bool: ...
    @property
    def auto_reply_decision(self) -> dict[str, Any] | None: ...
    @property
    def segments(self) -> int: ...
    @property
    def encoding(self) -> str: ...
    @property
    def media_dropped(self) -> int: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def send_at(self) -> datetime | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


# What `render_message` reads, as columns (for statements that return messages).
RENDERED_COLUMNS = (
    Message.id,
    Message.conversation_id,
    Message.org_id,
    Message.direction,
    Message.sender_username,
    Message.recipient_username,
    Message.group_id,
    Message.from_number,
    Message.to_number,
    Message.body_ciphertext,
    Message.status,
    Message.auto_reply,
    Message.auto_reply_decision,
    Message.segments,
    Message.encoding,
    Message.media_dropped,
    Message.error_code,
    Message.error_message,
    Message.send_at,
    Message.created_at,
    Message.updated_at,
)
# The same, as SQL select-list text for a table aliased `m`.
RENDERED_SQL = ", ".join(f"m.{c.key}" for c in RENDERED_COLUMNS)


class DriverMessageRow(asyncpg.Record):  # type: ignore[misc]
    """A driver row that reads as `render_message` reads a message: by attribute."""


for _column in RENDERED_COLUMNS:
    # Properties, not `__getattr__`: that runs only after a failed lookup, and raising
    # and catching that AttributeError for each field of 50 rows costs more than the rest.
    setattr(DriverMessageRow, _column.key, property(operator.itemgetter(_column.key)))


class Sender(Protocol):
    """Who sends an outbound message: a `User`, or a cached route's user."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def username(self) -> str: ...


def render_message(keyring: Keyring, m: MessageView, body: str | None = None) -> dict[str, Any]:
    """A message as the API and the event stream show it. `body`: its plain body, when
    the caller has it (nothing to decrypt then)."""
    return {
        "id": str(m.id),
        "conversation_id": str(m.conversation_id),
        "direction": m.direction,
        "sender_username": m.sender_username,
        "recipient_username": m.recipient_username,
        "group_id": str(m.group_id) if m.group_id else None,
        "from_number": m.from_number,
        "to_number": m.to_number,
        "body": open_body(keyring, m.id, m.org_id, m.body_ciphertext) if body is None else body,
        "status": m.status,
        "auto_reply": m.auto_reply,
        "auto_reply_decision": m.auto_reply_decision,
        "segments": m.segments,
        "encoding": m.encoding,
        "media_dropped": m.media_dropped,
        "error_code": m.error_code,
        "error_message": m.error_message,
        "send_at": format_instant(m.send_at) if m.send_at else None,
        "created_at": format_instant(m.created_at),
        "updated_at": format_instant(m.updated_at),
    }


def new_message(
    keyring: Keyring,
    *,
    org_id: uuid.UUID,
    conversation_id: uuid.UUID,
    direction: str,
    body: str,
    status: str,
    sender_user_id: uuid.UUID | None = None,
    sender_username: str | None = None,
    recipient_username: str | None = None,
    group_id: uuid.UUID | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    auto_reply: bool = False,
    auto_reply_decision: dict[str, Any] | None = None,
    media_dropped: int = 0,
    carrier: str | None = None,
    carrier_message_id: str | None = None,
    send_at: datetime | None = None,
    at: datetime | None = None,
) -> MessageRow:
    """A new message: its id, its body sealed to it, its segments, its timestamps (`at`:
    the instant its conversation's activity was moved to, when the caller has one)."""
    message_id = new_id()
    info = count_segments(body)
    now = at or utcnow()
    return MessageRow(
        id=message_id,
        org_id=org_id,
        conversation_id=conversation_id,
        direction=direction,
        body_ciphertext=seal_body(keyring, message_id, org_id, body),
        status=status,
        segments=info.segments,
        encoding=info.encoding,
        created_at=now,
        updated_at=now,
        sender_user_id=sender_user_id,
        sender_username=sender_username,
        recipient_username=recipient_username,
        group_id=group_id,
        from_number=from_number,
        to_number=to_number,
        auto_reply=auto_reply,
        auto_reply_decision=auto_reply_decision,
        media_dropped=media_dropped,
        carrier=carrier,
        carrier_message_id=carrier_message_id,
        send_at=send_at,
    )


def internal_message(
    keyring: Keyring,
    *,
    org_id: uuid.UUID,
    conversation_id: uuid.UUID,
    sender: Sender,
    recipient_username: str,
    body: str,
    at: datetime | None = None,
) -> MessageRow:
    """A message between two users of one organization: delivered as it is stored."""
    return new_message(
        keyring,
        org_id=org_id,
        conversation_id=conversation_id,
        direction="internal",
        body=body,
        status="delivered",
        sender_user_id=sender.id,
        sender_username=sender.username,
        recipient_username=recipient_username,
        at=at,
    )


def outbound_message(
    keyring: Keyring,
    *,
    org_id: uuid.UUID,
    conversation_id: uuid.UUID,
    body: str,
    from_number: str,
    to_number: str,
    sender: Sender | None,
    group_id: uuid.UUID | None = None,
    auto_reply: bool = False,
    send_at: datetime | None = None,
    at: datetime | None = None,
) -> MessageRow:
    """A new outbound SMS, queued for the carrier, or scheduled for `send_at` (`sender`
    None: the service's own answer, such as HELP)."""
    return new_message(
        keyring,
        org_id=org_id,
        conversation_id=conversation_id,
        direction="outbound",
        body=body,
        status="queued" if send_at is None else "scheduled",
        sender_user_id=sender.id if sender else None,
        sender_username=sender.username if sender else None,
        group_id=group_id,
        from_number=from_number,
        to_number=to_number,
        auto_reply=auto_reply,
        send_at=send_at,
        at=at,
    )


def delivery_job_for(message: MessageRow) -> DeliveryJobRow:
    """The outbox row of an outbound message, due at once, or at its `send_at`."""
    assert message.from_number is not None
    return DeliveryJobRow(
        id=new_id(),
        message_id=message.id,
        org_id=message.org_id,
        from_number=message.from_number,
        next_attempt_at=message.send_at or message.created_at,
        created_at=message.created_at,
        updated_at=message.created_at,
    )
