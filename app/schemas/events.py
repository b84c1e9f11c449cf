"""The event stream's events (`GET /v1/events`, Server-Sent Events), as shapes.

Each event comes as SSE fields: `id` (send it back as `Last-Event-ID` to resume),
`event` (its name) and `data` (one line of JSON, shaped as below). Comments (`:`) are
heartbeats, and the first frame is a `retry:` hint.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.schemas.messaging import ConversationOut, MessageOut


class MessageCreatedEvent(BaseModel):
    """A message or note you can see was created (sent, received, or an auto-reply)."""

    id: str = Field(description="The event's id: `Last-Event-ID` on reconnect.")
    event: Literal["message.created"]
    data: MessageOut


class MessageUpdatedEvent(BaseModel):
    """A message's delivery status changed."""

    id: str
    event: Literal["message.updated"]
    data: MessageOut


class ConversationUpdatedEvent(BaseModel):
    """A conversation's status or assignee changed, or a new inbound message reopened
    it: the conversation as the API shows it to you (your unread count)."""

    id: str
    event: Literal["conversation.updated"]
    data: ConversationOut


class Resync(BaseModel):
    reason: Literal[
        "unknown_last_event_id", "last_event_id_expired", "too_far_behind", "events_lost"
    ]
    checkpoint: str | None = Field(
        description="Where the stream goes on from (the event id a reconnect resends)."
    )


class ResyncEvent(BaseModel):
    """Events were missed and cannot be replayed: reload what you show through the API."""

    id: str | None = Field(default=None, description="The checkpoint, when there is one.")
    event: Literal["resync"]
    data: Resync


StreamEvent = Annotated[
    MessageCreatedEvent | MessageUpdatedEvent | ConversationUpdatedEvent | ResyncEvent,
    Field(discriminator="event"),
]
