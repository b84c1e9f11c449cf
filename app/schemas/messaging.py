"""Request and response shapes for messages and conversations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from app.schemas.common import Page, Request
from app.schemas.directory import Username
from app.vocabulary import (
    MAX_BODY_CHARS,
    MAX_SCHEDULE_DAYS,
    AutoReplyReason,
    ConversationStatus,
    Direction,
    MessageStatus,
)


class Address(Request):
    """Exactly one of `username`, `extension` (a user's or a group's) or `phone_number`."""

    username: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64),
        ]
        | None
    ) = None
    extension: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)] | None
    ) = None
    phone_number: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None
    ) = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Address:
        given = [k for k in ("username", "extension", "phone_number") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("an address has exactly one of username, extension, phone_number")
        return self


class SendMessage(Request):
    to: list[Address] = Field(min_length=1, max_length=100, examples=[[{"username": "bob"}]])
    body: str = Field(max_length=MAX_BODY_CHARS * 2, examples=["Your results are ready."])
    media: list[str] | None = Field(
        default=None, description="Media URLs: refused (`mms_not_supported`) when not empty."
    )
    send_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        examples=["2026-12-24T09:00:00-05:00"],
        description="Send later: an RFC 3339 instant with its offset, from now to "
        f"{MAX_SCHEDULE_DAYS} days ahead (else 422 `invalid_send_at`), for phone numbers "
        "only (else 422 `scheduling_not_supported`). The messages are stored `scheduled` "
        "and go when due; the organization's quiet hours may hold them longer.",
    )


class Reply(Request):
    body: str = Field(max_length=MAX_BODY_CHARS * 2, examples=["See you at 3pm."])
    media: list[str] | None = None


class AutoReplyDecision(BaseModel):
    sent: bool
    reason: AutoReplyReason


class MessageOut(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    direction: Direction
    sender_username: str | None
    recipient_username: str | None
    group_id: uuid.UUID | None = None
    from_number: str | None
    to_number: str | None
    body: str
    status: MessageStatus
    auto_reply: bool
    auto_reply_decision: AutoReplyDecision | None
    segments: int
    encoding: Literal["GSM-7", "UCS-2"]
    media_dropped: int
    error_code: str | None
    error_message: str | None
    send_at: datetime | None = Field(
        description="When a scheduled message goes, or went (as asked for, or held by "
        "quiet hours); null for a message sent at once."
    )
    created_at: datetime
    updated_at: datetime


class SentMessages(BaseModel):
    messages: list[MessageOut]


class ConversationOwner(BaseModel):
    type: Literal["user", "group"]
    id: uuid.UUID
    name: str = Field(description="The username or the group name.")


class ContactRef(BaseModel):
    id: uuid.UUID
    name: str


class ConversationOut(BaseModel):
    id: uuid.UUID
    kind: Literal["sms", "internal"]
    external_number: str | None
    owner: ConversationOwner | None = Field(description="SMS: the user or group it routes to.")
    participants: list[str] = Field(description="Internal: the two usernames.")
    status: ConversationStatus = Field(
        description="Open until someone closes it; a new inbound message reopens it."
    )
    assignee: str | None = Field(description="The username of who works it, if anyone.")
    contact: ContactRef | None = Field(
        description="SMS: the organization's contact for the external number, if any."
    )
    last_message: MessageOut | None = Field(description="The newest message, notes included.")
    last_message_at: datetime
    unread_count: int = Field(description="Messages you have not read (never your own).")
    created_at: datetime
    group_id: uuid.UUID | None = Field(
        default=None, description="The group whose shared conversation this is, if any."
    )


class ConversationUpdate(Request):
    status: ConversationStatus | None = None
    assignee: Username | None = Field(
        default=None,
        description="A username of someone who can read the conversation; null: nobody.",
    )


class NoteCreate(Request):
    body: str = Field(max_length=MAX_BODY_CHARS * 2, examples=["Called back, left a voicemail."])


class ReadMark(Request):
    message_id: uuid.UUID | None = Field(
        default=None, description="Read up to this message; the newest when omitted."
    )


class ReadState(BaseModel):
    conversation_id: uuid.UUID
    last_read_message_id: uuid.UUID | None
    unread_count: int


class UnroutedOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID | None
    carrier: str
    from_number: str
    to_number: str
    body: str
    media_dropped: int
    reason: str
    created_at: datetime


class MessagePage(Page[MessageOut]):
    """A page of messages: messages and notes, newest first."""


class ConversationPage(Page[ConversationOut]):
    """A page of conversations: conversations, newest activity first."""


class StreamTicketOut(BaseModel):
    """A single-use ticket for `GET /v1/events?ticket=...` (browsers' EventSource cannot
    send an Authorization header)."""

    ticket: str
    expires_in: int = Field(description="Seconds the ticket stays usable.")


class SimulatedText(Request):
    """A text as if a patient sent it (simulator carrier only)."""

    from_number: Annotated[str, StringConstraints(max_length=32)] = Field(
        description="The patient's number, e.g. +12125550123."
    )
    to_number: Annotated[str, StringConstraints(max_length=32)] = Field(
        description="One of your organization's numbers."
    )
    text: Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS)]


class SimulatedTextOut(BaseModel):
    outcome: Literal["stored", "duplicate", "unrouted"]
    message_id: uuid.UUID | None
    auto_reply_decision: AutoReplyDecision | None


class SimulatedSendOut(BaseModel):
    """A message the simulator carrier accepted."""

    carrier_message_id: str
    message_id: str = Field(description="Our message's id.")
    from_number: str
    to_number: str
    body: str
    sent_at: datetime


class SimulatedSendPage(Page[SimulatedSendOut]):
    """What the simulator carrier accepted, oldest first."""
