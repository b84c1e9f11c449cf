"""The directory of an organization: users, groups, extensions, phone numbers, tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.ids import new_id
from app.models.base import Base, utcnow
from app.vocabulary import DEFAULT_TIMEZONE


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    help_text: Mapped[str | None] = mapped_column(Text)
    # An IANA name: the zone of schedules given without one, and of quiet hours.
    timezone: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_TIMEZONE, server_default=DEFAULT_TIMEZONE
    )
    # {"start": "HH:MM", "end": "HH:MM"}, or None.
    quiet_hours: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped by database triggers on every change to a route of this organization
    # (numbers, extensions, users, groups, members, help text, auto-responder hours,
    # after-hours replies); see migrations 0002 and 0004.
    directory_version: Mapped[int] = mapped_column(BigInteger, server_default="0")


class PhoneNumber(Base):
    """A number this service owns, for one organization; inbound SMS route by sms_extension."""

    __tablename__ = "phone_numbers"
    __table_args__ = (
        UniqueConstraint("number"),
        # Target of the composite foreign keys that keep outbound numbers in their org.
        UniqueConstraint("org_id", "number"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[str] = mapped_column(String(16))
    sms_extension: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("org_id", "username"),
        UniqueConstraint("org_id", "id"),
        CheckConstraint("role IN ('admin', 'member')", name="role"),
        # An outbound number must be a number of the user's own organization, and
        # cannot be deleted while it is in use.
        ForeignKeyConstraint(
            ["org_id", "outbound_sms_number"],
            ["phone_numbers.org_id", "phone_numbers.number"],
            ondelete="RESTRICT",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    username: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="member")
    sms_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    outbound_sms_number: Mapped[str | None] = mapped_column(String(16))
    auto_reply_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The reply text becomes a message body, so it is stored encrypted like one.
    auto_reply_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # When the auto-responder answers (app.services.schedules): a schedule, as its JSON,
    # and away periods; with no schedule it answers at all hours.
    auto_reply_schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    auto_reply_away: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # Users are deactivated, never deleted, so the history they wrote keeps its names.
    deactivated_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    extension_entry: Mapped[Extension | None] = relationship(
        lazy="selectin", uselist=False, viewonly=True
    )

    @property
    def extension(self) -> str | None:
        return self.extension_entry.extension if self.extension_entry else None


class Group(Base):
    __tablename__ = "groups"
    __table_args__ = (
        UniqueConstraint("org_id", "id"),
        Index(
            "uq_groups_org_id_name_active",
            "org_id",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        ForeignKeyConstraint(
            ["org_id", "outbound_sms_number"],
            ["phone_numbers.org_id", "phone_numbers.number"],
            ondelete="RESTRICT",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    outbound_sms_number: Mapped[str | None] = mapped_column(String(16))
    # The after-hours reply, sent while its schedule is closed; none is configured while
    # the schedule is None. Its text, encrypted like the auto-reply text.
    after_hours_enabled: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    after_hours_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    after_hours_schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    deleted_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    extension_entry: Mapped[Extension | None] = relationship(
        lazy="selectin", uselist=False, viewonly=True
    )
    memberships: Mapped[list[GroupMember]] = relationship(
        lazy="selectin", viewonly=True, order_by="GroupMember.username"
    )

    @property
    def extension(self) -> str | None:
        return self.extension_entry.extension if self.extension_entry else None

    @property
    def member_usernames(self) -> list[str]:
        return [m.username for m in self.memberships]


class GroupMember(Base):
    __tablename__ = "group_members"
    __table_args__ = (
        ForeignKeyConstraint(
            ["org_id", "group_id"], ["groups.org_id", "groups.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["org_id", "user_id"], ["users.org_id", "users.id"], ondelete="CASCADE"
        ),
    )

    group_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, index=True)
    org_id: Mapped[uuid.UUID] = mapped_column()
    # Denormalised so member lists need no join; usernames never change.
    username: Mapped[str] = mapped_column(String(64))


class Extension(Base):
    """One extension of an organization, naming exactly one user or one group.

    Keeping every extension in one table lets the database itself refuse an
    extension used by a user and a group at once.
    """

    __tablename__ = "extensions"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="names_one_user_or_group"),
        UniqueConstraint("user_id"),
        UniqueConstraint("group_id"),
        ForeignKeyConstraint(
            ["org_id", "user_id"], ["users.org_id", "users.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["org_id", "group_id"], ["groups.org_id", "groups.id"], ondelete="CASCADE"
        ),
    )

    org_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    extension: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    group_id: Mapped[uuid.UUID | None] = mapped_column()


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_hash"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """Who changed what in an organization's configuration, and when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_org_id_id", "org_id", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    changes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
