"""Conversations: who may see one, finding or creating one, unread counts, read markers.

How they are shown is `conversation_views`; the inbox list with its filters, `inbox`;
status and assignee, `conversation_state`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, Uuid, and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import upsert
from app.errors import NotFound
from app.ids import new_id
from app.models import (
    Conversation,
    ConversationRead,
    GroupMember,
    Message,
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
    reopen: bool = False,
) -> Conversation:
    """The one conversation for these parties, created if new, its activity moved to `at`
    (the instant its new messages are stamped with); `reopen`: opened if it was closed.

    One statement (an upsert), so concurrent first messages agree on one conversation.
    """
    a, b = sorted(users) if users else (None, None)
    changes: dict[str, Any] = {"last_message_at": at}
    if inbound_to_number is not None:
        changes["last_inbound_to_number"] = inbound_to_number
    if reopen:
        changes["status"] = "open"
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


def groups_of(user_id: Any) -> Select[Any]:
    """The ids of the groups a user (a value or a column of another query) is in."""
    # Correlated explicitly: nested deeper than one level (a conversation test inside a
    # query of users), auto-correlation would bring its own `users` and match any member.
    return (
        select(GroupMember.group_id)
        .where(GroupMember.user_id == user_id)
        .correlate_except(GroupMember)
    )


def _party_columns() -> tuple[Any, Any, Any]:
    return Conversation.owner_user_id, Conversation.user_a_id, Conversation.user_b_id


def visible_to_user(user_id: Any, org_id: Any) -> ColumnElement[bool]:
    """`visible_to` for a user named by values or by columns of another query: in the
    user's organization, and the user owns it, is one of its pair, or is in the group
    that owns it (`visible_parts` is the same rule cut into parts)."""
    return and_(
        Conversation.org_id == org_id,
        or_(
            *(column == user_id for column in _party_columns()),
            Conversation.owner_group_id.in_(groups_of(user_id)),
        ),
    )


def visible_parts(
    user_id: Any, org_id: Any, group_id: Any
) -> list[tuple[ColumnElement[bool], list[ColumnElement[bool]]]]:
    """`visible_to_user` cut into disjoint parts whose union it is, each as an equality on
    the leading column of one of the conversations' (party, last_message_at) indexes and
    the rest of its tests: the conversations the user owns, those where the user is the
    first of the pair (and not the owner), the second (and neither), and, for a group of
    the user's (`group_id`: a column of `groups_of(user_id)` joined in), that group's
    (where the user is none of those); all in the user's organization. Each part reads
    in activity order and can stop early; disjoint, a union of them shows a conversation
    once."""
    parts: list[tuple[ColumnElement[bool], list[ColumnElement[bool]]]] = []
    earlier: list[ColumnElement[bool]] = []
    for column in (*_party_columns(), Conversation.owner_group_id):
        mine = column == (group_id if column is Conversation.owner_group_id else user_id)
        parts.append((mine, [Conversation.org_id == org_id, *earlier]))
        earlier.append(column.is_distinct_from(user_id))
    return parts


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


# `audience_of` in SQL, for statements that return messages with who sees them: the
# user ids (text) of the conversation aliased `c`.
AUDIENCE_SQL = """CASE WHEN c.owner_group_id IS NOT NULL
  THEN ARRAY(SELECT gm.user_id::text FROM group_members gm WHERE gm.group_id = c.owner_group_id)
  ELSE array_remove(ARRAY[c.owner_user_id::text, c.user_a_id::text, c.user_b_id::text], NULL)
END"""


async def audience_of(session: AsyncSession, conv: Conversation) -> tuple[str, ...]:
    """The user ids that see a conversation: its owner, its group's members, or its pair
    (`AUDIENCE_SQL` is the same rule in SQL)."""
    if conv.owner_group_id is not None:
        members = await session.scalars(
            select(GroupMember.user_id).where(GroupMember.group_id == conv.owner_group_id)
        )
        return tuple(str(m) for m in members)
    ids = [conv.owner_user_id, conv.user_a_id, conv.user_b_id]
    return tuple(sorted({str(i) for i in ids if i is not None}))


# No message id is below this one: the read marker of a user who has read nothing.
_NO_MESSAGE = literal(uuid.UUID(int=0), Uuid())


def unread_messages(conversation_id: Any, user_id: Any) -> list[ColumnElement[bool]]:
    """The conditions for the messages of a conversation a user has not read: newer than
    their read marker and not their own (their notes included). Either argument is a
    value or a column of the enclosing query; the newer-than test walks the
    (conversation_id, id) index."""
    # Correlated explicitly: it sits two levels down (in a count or an EXISTS), where
    # auto-correlation would read the markers of every conversation.
    last_read = (
        select(ConversationRead.last_read_message_id)
        .where(
            ConversationRead.conversation_id == conversation_id,
            ConversationRead.user_id == user_id,
        )
        .correlate_except(ConversationRead)
        .scalar_subquery()
    )
    return [
        Message.conversation_id == conversation_id,
        Message.id > func.coalesce(last_read, _NO_MESSAGE),
        Message.sender_user_id.is_distinct_from(user_id),
    ]


def unread_count(conversation_id: Any, user_id: Any) -> ScalarSelect[int]:
    """How many messages of a conversation a user has not read, as a subquery."""
    return (
        select(func.count(Message.id))
        .where(*unread_messages(conversation_id, user_id))
        .scalar_subquery()
    )


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
    unread = await session.scalar(select(unread_count(conv.id, principal.user_id)))
    return (current.last_read_message_id if current else None), int(unread or 0)
