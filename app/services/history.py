"""Reading messages: a conversation's history (the API's most frequent request) and one
message by its id.

On PostgreSQL one statement, one round trip, outside any transaction, does it all: it
finds the token's user (`auth.token_owner`), checks the caller may see the conversation
(`conversations.visible_to_user`) and reads the page (newest first, keyset by id, on the
(conversation_id, id) index). The rows come back as the driver gives them, without ORM
objects. On SQLite (the embedded default) the same rules run one by one in a session.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import DriverStatement, driver_connection
from app.errors import NotFound
from app.models import Conversation, Message
from app.security import hash_token
from app.services import conversations
from app.services.auth import Principal, authenticate_user, principal_of, token_owner
from app.services.message_rows import RENDERED_COLUMNS, DriverMessageRow, render_message
from app.services.pagination import decode_cursor, fetch_page, split_page

_OWNER = ("token_hash", "user_id", "org_id", "username", "role")


def _page_statement(with_cursor: bool) -> DriverStatement:
    """Caller, visibility and page in one statement.

    No row: the token is not valid. One row without `visible_id`: the caller may not
    see the conversation (or there is none). Otherwise a row per message (one without
    a message when the page is empty)."""
    me = token_owner(bindparam("token_hash")).cte("me")
    visible = (
        select(Conversation.id)
        .where(
            Conversation.id == bindparam("conversation_id"),
            conversations.visible_to_user(me.c.user_id, me.c.org_id),
        )
        .cte("visible")
    )
    # The conversation by its parameter, not by `visible.id`: so the planner knows which
    # conversation it reads (a hot one: walk the index backwards, not sort its rows).
    page_query = select(*RENDERED_COLUMNS).where(
        Message.conversation_id == bindparam("conversation_id"), visible.c.id.is_not(None)
    )
    if with_cursor:
        page_query = page_query.where(Message.id < bindparam("cursor", type_=Message.id.type))
    page = (
        page_query.order_by(Message.conversation_id.desc(), Message.id.desc())
        .limit(bindparam("limit"))
        .lateral("page")
    )
    stmt = (
        select(
            *(me.c[name].label(f"me_{name}") for name in _OWNER),
            visible.c.id.label("visible_id"),
            page,
        )
        .select_from(me.outerjoin(visible, true()).outerjoin(page, true()))
        .order_by(page.c.id.desc())
    )
    return DriverStatement(stmt)


_FIRST_PAGE = _page_statement(with_cursor=False)
_NEXT_PAGE = _page_statement(with_cursor=True)


async def list_messages(
    ctx: AppContext,
    token: str,
    conversation_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The caller's view of a conversation's messages, newest first, and the next cursor."""
    if ctx.engine.dialect.name != "postgresql":
        return await _list_in_steps(ctx, token, conversation_id, limit, cursor)
    last = decode_cursor(cursor) if cursor else None
    digest = hash_token(token)
    statement = _NEXT_PAGE if last is not None else _FIRST_PAGE
    args = statement.args(
        token_hash=digest, conversation_id=conversation_id, cursor=last, limit=limit + 1
    )
    async with driver_connection(ctx.engine) as conn:
        rows = await conn.fetch(statement.sql, *args, record_class=DriverMessageRow)
    principal_of(digest, [rows[0][f"me_{n}"] for n in _OWNER] if rows else None)
    if rows[0]["visible_id"] is None:
        raise conversations.not_found()
    if rows[0]["id"] is None:
        return [], None
    page, next_cursor = split_page(rows, limit, lambda row: row["id"])
    return [render_message(ctx.keyring, row) for row in page], next_cursor


async def _list_in_steps(
    ctx: AppContext,
    token: str,
    conversation_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    async with ctx.sessionmaker() as session:
        principal = await authenticate_user(session, token)
        conv = await conversations.get_visible(session, principal, conversation_id)
        rows, next_cursor = await fetch_page(
            session,
            select(Message).where(Message.conversation_id == conv.id),
            Message.id,
            limit,
            cursor,
            newest_first=True,
            within=Message.conversation_id,
        )
        return [render_message(ctx.keyring, m) for m in rows], next_cursor


async def get_message(
    ctx: AppContext, session: AsyncSession, principal: Principal, message_id: uuid.UUID
) -> dict[str, Any]:
    """One message from a conversation the caller may see."""
    return render_message(ctx.keyring, await visible_message(session, principal, message_id))


async def visible_message(
    session: AsyncSession, principal: Principal, message_id: uuid.UUID
) -> Message:
    """A message of a conversation the caller may see; 404 `message_not_found` for any
    other (another organization's, a conversation the caller is not part of)."""
    message = await session.scalar(
        select(Message).where(Message.id == message_id, Message.org_id == principal.org_id)
    )
    if message is None:
        raise NotFound("No such message.", code="message_not_found")
    try:
        await conversations.get_visible(session, principal, message.conversation_id)
    except NotFound:
        raise NotFound("No such message.", code="message_not_found") from None
    return message
