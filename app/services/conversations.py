"""Conversations: who may see one, finding or creating one, listing, reading, unread counts."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import upsert
from app.errors import AppError, NotFound
from app.ids import new_id
from app.models import (
    Conversation,
    ConversationRead,
    Group,
    GroupMember,
    Message,
    User,
)
from app.services.auth import Principal


def user_conversation_key(user_id: uuid.UUID, number: str) -> str:
    return f"u:{user_id}:{number}"


def group_conversation_key(group_id: uuid.UUID, number: str) -> str:
    return f"g:{group_id}:{number}"


def internal_conversation_key(a: uuid.UUID, b: uuid.UUID) -> str:
    first, second = sorted((a, b))
    return f"i:{first}:{second}"


async def touch(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    key: str,
    kind: str,
    at: datetime,
    owner_user_id: uuid.UUID | None = None,
    owner_group_id: uuid.UUID | None = None,
    external_number: str | None = None,
    users: tuple[uuid.UUID, uuid.UUID] | None = None,
    inbound_to_number: str | None = None,
) -> Conversation:
    """The one conversation for these parties, created if new, its activity moved to `at`.

    One statement (an upsert), so concurrent first messages agree on one conversation.
    """
    a, b = sorted(users) if users else (None, None)
    changes: dict[str, Any] = {"last_message_at": at}
    if inbound_to_number is not None:
        changes["last_inbound_to_number"] = inbound_to_number
    stmt = upsert(
        session,
        Conversation,
        {
            "id": new_id(),
            "org_id": org_id,
            "key": key,
            "kind": kind,
            "owner_user_id": owner_user_id,
            "owner_group_id": owner_group_id,
            "external_number": external_number,
            "user_a_id": a,
            "user_b_id": b,
            "last_inbound_to_number": inbound_to_number,
            "last_message_at": at,
            "created_at": at,
        },
        ["org_id", "key"],
        changes,
    ).returning(Conversation)
    conv: Conversation | None = await session.scalar(
        select(Conversation).from_statement(stmt).execution_options(populate_existing=True)
    )
    assert conv is not None
    return conv


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """The SQL condition for conversations this user may see (groups in a subquery, so
    one statement both finds a conversation and checks the caller may see it)."""
    return visible_to_user(principal.user_id, principal.org_id)


def visible_to_user(user_id: Any, org_id: Any) -> ColumnElement[bool]:
    """`visible_to` for a user named by values or by columns of another query."""
    # Correlated explicitly: nested deeper than one level (a conversation test inside a
    # query of users), auto-correlation would bring its own `users` and match any member.
    my_groups = (
        select(GroupMember.group_id)
        .where(GroupMember.user_id == user_id)
        .correlate_except(GroupMember)
    )
    return and_(
        Conversation.org_id == org_id,
        or_(
            Conversation.owner_user_id == user_id,
            Conversation.user_a_id == user_id,
            Conversation.user_b_id == user_id,
            Conversation.owner_group_id.in_(my_groups),
        ),
    )


def not_found() -> NotFound:
    """What a caller hears of a conversation they may not see, or that does not exist."""
    return NotFound("No such conversation.", code="conversation_not_found")


async def get_visible(
    session: AsyncSession, principal: Principal, conversation_id: uuid.UUID
) -> Conversation:
    """A conversation the caller may see; 404 for anything else."""
    conv = await session.scalar(
        select(Conversation).where(Conversation.id == conversation_id, visible_to(principal))
    )
    if conv is None:
        raise not_found()
    return conv


async def audience_of(session: AsyncSession, conv: Conversation) -> tuple[str, ...]:
    """The user ids that see a conversation: its owner, its group's members, or its pair."""
    if conv.owner_group_id is not None:
        members = await session.scalars(
            select(GroupMember.user_id).where(GroupMember.group_id == conv.owner_group_id)
        )
        return tuple(str(m) for m in members)
    ids = [conv.owner_user_id, conv.user_a_id, conv.user_b_id]
    return tuple(sorted({str(i) for i in ids if i is not None}))


@dataclass(frozen=True)
class ConversationSummary:
    conversation: Conversation
    owner_type: str | None
    owner_name: str | None
    participants: list[str]
    unread_count: int


def _encode_cursor(at: datetime, conv_id: uuid.UUID) -> str:
    raw = int(at.timestamp() * 1_000_000).to_bytes(8, "big", signed=True) + conv_id.bytes
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if len(raw) != 24:
            raise ValueError
        micros = int.from_bytes(raw[:8], "big", signed=True)
        return datetime.fromtimestamp(micros / 1_000_000, UTC), uuid.UUID(bytes=raw[8:])
    except (binascii.Error, ValueError, OverflowError):
        raise AppError("The cursor is not one this API returned.", code="invalid_cursor") from None


def _unread_count_expr(user_id: uuid.UUID) -> ColumnElement[int]:
    last_read = (
        select(ConversationRead.last_read_message_id)
        .where(
            ConversationRead.conversation_id == Conversation.id, ConversationRead.user_id == user_id
        )
        # Explicitly: two levels down (in the count), auto-correlation would read the
        # markers of every conversation (and fail once a user has read two of them).
        .correlate_except(ConversationRead)
        .scalar_subquery()
    )
    return (
        select(func.count(Message.id))
        .where(
            Message.conversation_id == Conversation.id,
            or_(Message.sender_user_id.is_(None), Message.sender_user_id != user_id),
            or_(last_read.is_(None), Message.id > last_read),
        )
        .scalar_subquery()
    )


async def list_for(
    session: AsyncSession, principal: Principal, limit: int, cursor: str | None
) -> tuple[list[ConversationSummary], str | None]:
    """The caller's and the caller's groups' conversations, most recent activity first."""
    stmt = select(Conversation, _unread_count_expr(principal.user_id)).where(visible_to(principal))
    if cursor:
        at, conv_id = _decode_cursor(cursor)
        stmt = stmt.where(
            or_(
                Conversation.last_message_at < at,
                and_(Conversation.last_message_at == at, Conversation.id < conv_id),
            )
        )
    stmt = stmt.order_by(Conversation.last_message_at.desc(), Conversation.id.desc()).limit(
        limit + 1
    )
    rows = (await session.execute(stmt)).all()
    page = rows[:limit]
    summaries = await _summaries(session, [(r[0], int(r[1])) for r in page])
    next_cursor = None
    if len(rows) > limit and page:
        last = page[-1][0]
        next_cursor = _encode_cursor(last.last_message_at, last.id)
    return summaries, next_cursor


async def summarize(
    session: AsyncSession, principal: Principal, conv: Conversation
) -> ConversationSummary:
    """One conversation with its owner's name and the caller's unread count."""
    unread = await session.scalar(
        select(_unread_count_expr(principal.user_id)).where(Conversation.id == conv.id)
    )
    return (await _summaries(session, [(conv, int(unread or 0))]))[0]


async def _summaries(
    session: AsyncSession, rows: list[tuple[Conversation, int]]
) -> list[ConversationSummary]:
    user_ids = {
        i
        for conv, _ in rows
        for i in (conv.owner_user_id, conv.user_a_id, conv.user_b_id)
        if i is not None
    }
    group_ids = {conv.owner_group_id for conv, _ in rows if conv.owner_group_id}
    usernames = (
        dict(
            (
                await session.execute(select(User.id, User.username).where(User.id.in_(user_ids)))
            ).all()
        )
        if user_ids
        else {}
    )
    group_names = (
        dict(
            (
                await session.execute(select(Group.id, Group.name).where(Group.id.in_(group_ids)))
            ).all()
        )
        if group_ids
        else {}
    )
    out = []
    for conv, unread in rows:
        if conv.owner_group_id:
            owner_type, owner_name = "group", group_names.get(conv.owner_group_id)
        elif conv.owner_user_id:
            owner_type, owner_name = "user", usernames.get(conv.owner_user_id)
        else:
            owner_type, owner_name = None, None
        participants = [
            usernames[i]
            for i in (conv.user_a_id, conv.user_b_id)
            if i is not None and i in usernames
        ]
        out.append(ConversationSummary(conv, owner_type, owner_name, participants, unread))
    return out


async def mark_read(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID | None,
) -> tuple[uuid.UUID | None, int]:
    """Move the caller's read marker (never backwards); returns it and the unread count."""
    conv = await get_visible(session, principal, conversation_id)
    if message_id is None:
        target = await session.scalar(
            select(Message.id)
            .where(Message.conversation_id == conv.id)
            .order_by(Message.id.desc())
            .limit(1)
        )
    else:
        target = await session.scalar(
            select(Message.id).where(Message.id == message_id, Message.conversation_id == conv.id)
        )
        if target is None:
            raise NotFound("No such message in this conversation.", code="message_not_found")
    current = await session.get(ConversationRead, (conv.id, principal.user_id))
    if target is not None:
        if current is None:
            current = ConversationRead(
                conversation_id=conv.id, user_id=principal.user_id, last_read_message_id=target
            )
            session.add(current)
        elif target > current.last_read_message_id:
            current.last_read_message_id = target
    await session.commit()
    unread = await session.scalar(
        select(_unread_count_expr(principal.user_id)).where(Conversation.id == conv.id)
    )
    return (current.last_read_message_id if current else None), int(unread or 0)
