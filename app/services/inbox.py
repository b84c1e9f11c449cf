"""The shared inbox: the caller's and the caller's groups' conversations, newest activity
first, filtered by status, assignee, unread and a search, paged by keyset cursors that
stay right while conversations move.

Activity moves rows: a conversation that gets a message while someone pages jumps to
the top, so ordering by the current activity would show it twice or never. The first
page fixes a snapshot instant S (carried in every cursor); each page orders by the
activity as of S. For almost every conversation that is its `last_message_at` (not
after S); for the few with activity since, it is found from their messages: the time
of the newest one stamped at or before S (a short walk back on the (conversation_id,
id) index). Every write of a message stamps the conversation and the message with the
same instant, so both answers agree exactly. A conversation first seen after S waits
for the next first page. Status, assignee and unread are as they are now.

A search by name checks each candidate's decrypted contact name (`contact_search`);
candidates it turns down are skipped and the page is filled from the next ones.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.errors import AppError, Invalid
from app.models import Contact, Conversation, Message, User, utcnow
from app.services import contacts, conversations
from app.services.auth import Principal
from app.services.contact_search import Search, parse_search
from app.services.conversation_views import ConversationView, build_views, views_query


@dataclass(frozen=True)
class InboxFilter:
    """What `GET /v1/conversations` narrows the list to (None: no filter)."""

    status: str | None = None
    assignee: str | None = None  # "me", "none" or a username
    unread: bool | None = None
    q: str | None = None


@dataclass(frozen=True)
class _Position:
    """Where a page ended: the snapshot, and the last conversation's place in it."""

    snapshot: datetime
    sort_at: datetime
    conversation_id: uuid.UUID


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime) -> int:
    # Exact: a float timestamp could round a microsecond away, and the keyset compares
    # for equality.
    return (at - _EPOCH) // _MICROSECOND


def _encode_cursor(p: _Position) -> str:
    raw = (
        _micros(p.snapshot).to_bytes(8, "big", signed=True)
        + _micros(p.sort_at).to_bytes(8, "big", signed=True)
        + p.conversation_id.bytes
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> _Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if len(raw) != 32:
            raise ValueError
        snapshot, sort_at = (
            _EPOCH + int.from_bytes(raw[i : i + 8], "big", signed=True) * _MICROSECOND
            for i in (0, 8)
        )
        return _Position(snapshot, sort_at, uuid.UUID(bytes=raw[16:]))
    except (binascii.Error, ValueError, OverflowError, OSError):
        raise AppError("The cursor is not one this API returned.", code="invalid_cursor") from None


def _activity_as_of(snapshot: datetime) -> ColumnElement[datetime]:
    """A conversation's last activity as it was at `snapshot`: NULL for one that had no
    message yet."""
    before = (
        select(Message.created_at)
        .where(Message.conversation_id == Conversation.id, Message.created_at <= snapshot)
        .order_by(Message.conversation_id.desc(), Message.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return case(
        (Conversation.last_message_at <= snapshot, Conversation.last_message_at), else_=before
    )


async def _assignee_condition(
    session: AsyncSession, principal: Principal, assignee: str
) -> ColumnElement[bool]:
    if assignee == "me":
        return Conversation.assignee_user_id == principal.user_id
    if assignee == "none":
        return Conversation.assignee_user_id.is_(None)
    user_id = await session.scalar(
        select(User.id).where(User.org_id == principal.org_id, User.username == assignee)
    )
    if user_id is None:
        raise Invalid(
            f"There is no user '{assignee}' in this organization.",
            code="invalid_assignee",
            details=[{"field": "assignee", "value": assignee}],
        )
    return Conversation.assignee_user_id == user_id


def _search_condition(search: Search, keyring: Keyring, org_id: uuid.UUID) -> ColumnElement[bool]:
    if search.digits:
        return Conversation.external_number.contains(search.digits, autoescape=True)
    return exists(
        select(Contact.id).where(
            Contact.org_id == Conversation.org_id,
            Contact.phone_number == Conversation.external_number,
            contacts.matching(search, keyring, org_id),
        )
    )


async def list_inbox(
    keyring: Keyring,
    session: AsyncSession,
    principal: Principal,
    filters: InboxFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[ConversationView], str | None]:
    """One page of the caller's inbox, and the cursor of the next."""
    position = _decode_cursor(cursor) if cursor else None
    conditions: list[ColumnElement[bool]] = [conversations.visible_to(principal)]
    if filters.status is not None:
        conditions.append(Conversation.status == filters.status)
    if filters.assignee is not None:
        conditions.append(await _assignee_condition(session, principal, filters.assignee))
    if filters.unread is not None:
        unread = exists().where(*conversations.unread_messages(Conversation.id, principal.user_id))
        conditions.append(unread if filters.unread else not_(unread))
    search = parse_search(filters.q) if filters.q else None
    if search is not None:
        conditions.append(_search_condition(search, keyring, principal.org_id))

    snapshot = position.snapshot if position else None
    sort_at = _activity_as_of(snapshot) if snapshot else Conversation.last_message_at
    stmt = (
        views_query(principal.user_id)
        .add_columns(sort_at.label("sort_at"))
        .where(*conditions)
        .order_by(sort_at.desc(), Conversation.id.desc())
    )
    started = utcnow()
    found: list[tuple[ConversationView, Any]] = []
    after = (position.sort_at, position.conversation_id) if position else None
    batch = limit + 1
    # A name search's candidates are checked on their decrypted names; a page left short
    # by candidates turned down is filled from the next ones.
    while len(found) <= limit:
        page = stmt
        if after is not None:
            page = page.where(
                or_(sort_at < after[0], and_(sort_at == after[0], Conversation.id < after[1]))
            )
        rows = (await session.execute(page.limit(batch))).all()
        views = await build_views(keyring, session, rows)
        for row, view in zip(rows, views, strict=True):
            after = (row.sort_at, row.id)
            if search is None or search.matches(view.contact_name, view.external_number):
                found.append((view, row.sort_at))
                if len(found) > limit:
                    break
        if len(rows) < batch:
            break
    page_views = [view for view, _ in found[:limit]]
    if len(found) <= limit or not page_views:
        return page_views, None
    if snapshot is None:
        # The first page: the snapshot is its moment, or its newest activity if that is
        # later (a clock ahead), so that everything it showed keeps its place.
        snapshot = max(started, found[0][1])
    last_view, last_at = found[limit - 1]
    return page_views, _encode_cursor(_Position(snapshot, last_at, last_view.id))
