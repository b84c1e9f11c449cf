"""Conversations, messages and what travels with them: delivery jobs, opt-outs, keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.ids import new_id
from app.models.base import Base, utcnow


class Conversation(Base):
    """One per (owner, external number) for SMS; one per pair of users for internal."""

    __tablename__ = "conversations"
    __table_args__ = (
        # `key` names the parties ("u:<user>:<number>", "g:<group>:<number>",
        # "i:<user>:<user>"), so concurrent first messages find one conversation.
        UniqueConstraint("org_id", "key"),
        CheckConstraint("kind IN ('sms', 'internal')", name="kind"),
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        # Each party's conversations in the inbox's order (newest activity, then id):
        # a walk reads them sorted, with no sort of its own.
        Index("ix_conversations_owner_user", "owner_user_id", "last_message_at", "id"),
        Index("ix_conversations_owner_group", "owner_group_id", "last_message_at", "id"),
        Index("ix_conversations_user_a", "user_a_id", "last_message_at", "id"),
        Index("ix_conversations_user_b", "user_b_id", "last_message_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(120))
    owner_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    owner_group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("groups.id"))
    external_number: Mapped[str | None] = mapped_column(String(16))
    user_a_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    user_b_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    # The number the latest inbound SMS arrived on: a group without an outbound
    # number replies from it.
    last_inbound_to_number: Mapped[str | None] = mapped_column(String(16))
    # The time of its newest message: every write of a message sets both to the same
    # instant (the inbox's paging finds a conversation's earlier place from its messages).
    last_message_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The shared inbox: open until closed (a new inbound message reopens it), and the
    # user working it, if anyone.
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    assignee_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class ConversationRead(Base):
    """How far one user has read one conversation (group members read separately)."""

    __tablename__ = "conversation_reads"

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    last_read_message_id: Mapped[uuid.UUID] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Message(Base):
    """One message to or from one party; the body is stored encrypted only."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(
            "direction IN ('internal', 'outbound', 'inbound', 'note')", name="direction"
        ),
        # A carrier's id names one message: a repeated webhook stores nothing new.
        UniqueConstraint("carrier", "carrier_message_id"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # A sender's scheduled messages, soonest first: only messages given a time to go
        # are indexed. Not by status: an index whose predicate names `status` makes every
        # status change (queued, sending, sent, delivered) write a new entry in each of
        # the table's indexes, where otherwise most are heap-only (HOT) updates.
        Index(
            "ix_messages_scheduled",
            "sender_user_id",
            "send_at",
            "id",
            postgresql_where=text("send_at IS NOT NULL"),
            sqlite_where=text("send_at IS NOT NULL"),
        ),
        # Room in each page for heap-only updates of its rows (migration 0007_delivery_speed).
        {"postgresql_with": {"fillfactor": 90}},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    direction: Mapped[str] = mapped_column(String(16))
    sender_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    sender_username: Mapped[str | None] = mapped_column(String(64))
    recipient_username: Mapped[str | None] = mapped_column(String(64))
    group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("groups.id"))
    from_number: Mapped[str | None] = mapped_column(String(16))
    to_number: Mapped[str | None] = mapped_column(String(16))
    body_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    auto_reply: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_reply_decision: Mapped[dict[str, Any] | None] = mapped_column()
    segments: Mapped[int] = mapped_column(Integer, default=1)
    encoding: Mapped[str] = mapped_column(String(8), default="GSM-7")
    media_dropped: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    carrier: Mapped[str | None] = mapped_column(String(16))
    carrier_message_id: Mapped[str | None] = mapped_column(String(128))
    # When a scheduled (or held) outbound message goes to the carrier; null: at once.
    send_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeliveryJob(Base):
    """The outbox: written in the same transaction as the outbound message it delivers."""

    __tablename__ = "delivery_jobs"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'in_flight', 'done', 'failed')", name="state"),
        # The claim's: open jobs, soonest due first; finished ones leave it (0007).
        Index(
            "ix_delivery_jobs_due",
            "next_attempt_at",
            postgresql_where=text("state IN ('pending', 'in_flight')"),
            sqlite_where=text("state IN ('pending', 'in_flight')"),
        ),
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    from_number: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # While in flight: until when the claiming worker owns the job.
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    # The send slot of its number's schedule that the job waits for (per-number
    # pacing), once it was given one: it is then sent at that slot without asking again.
    paced_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Never loaded; it tells the unit of work to insert the message before its job.
    message: Mapped[Message] = relationship(lazy="raise")


class OptOut(Base):
    """An external number that texted STOP to one of an organization's numbers."""

    __tablename__ = "opt_outs"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    external_number: Mapped[str] = mapped_column(String(16), primary_key=True)
    keyword: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """The first response to a send made with an Idempotency-Key."""

    __tablename__ = "idempotency_keys"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(Integer)
    # The first response holds message bodies: encrypted like them.
    response_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UnroutedMessage(Base):
    """An inbound SMS for a number we do not own, or one routed to no one.

    Acknowledged to the carrier and kept (encrypted) where operators and the
    owning organization's admins can see it.
    """

    __tablename__ = "unrouted_messages"
    __table_args__ = (UniqueConstraint("carrier", "carrier_message_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    carrier: Mapped[str] = mapped_column(String(16))
    carrier_message_id: Mapped[str] = mapped_column(String(128))
    from_number: Mapped[str] = mapped_column(String(16))
    to_number: Mapped[str] = mapped_column(String(16))
    body_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    media_dropped: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
