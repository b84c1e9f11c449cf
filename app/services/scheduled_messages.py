"""The caller's scheduled messages: the list of those still waiting, soonest first, and
canceling one (`delivery_status.cancel_scheduled` decides, against the worker's claim)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.errors import AppError, Conflict
from app.models import Message, utcnow
from app.services import delivery_status, history
from app.services.auth import Principal
from app.services.message_rows import render_message
from app.services.pagination import decode_cursor, split_page
from app.services.publishing import publish


def _waiting(principal: Principal) -> Any:
    # The partial index `ix_messages_scheduled` holds these rows (with the messages
    # once scheduled and gone since), in this order.
    return select(Message).where(
        Message.sender_user_id == principal.user_id,
        Message.org_id == principal.org_id,
        Message.send_at.is_not(None),
        Message.status == "scheduled",
    )


async def list_scheduled(
    ctx: AppContext, session: AsyncSession, principal: Principal, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The messages the caller scheduled that still wait, soonest first (by `send_at`,
    then id), and the cursor of the next page. A cursor names the last message shown:
    the page after it goes on from its place, even once it was sent or canceled."""
    query = _waiting(principal)
    if cursor:
        last_id = decode_cursor(cursor)
        last_at = await session.scalar(
            select(Message.send_at).where(
                Message.id == last_id,
                Message.sender_user_id == principal.user_id,
                Message.send_at.is_not(None),
            )
        )
        if last_at is None:
            raise AppError("The cursor is not one this API returned.", code="invalid_cursor")
        query = query.where(tuple_(Message.send_at, Message.id) > (last_at, last_id))
    rows = (
        await session.scalars(query.order_by(Message.send_at, Message.id).limit(limit + 1))
    ).all()
    page, next_cursor = split_page(rows, limit, lambda m: m.id)
    return [render_message(ctx.keyring, m) for m in page], next_cursor


async def cancel(
    ctx: AppContext, session: AsyncSession, principal: Principal, message_id: uuid.UUID
) -> dict[str, Any]:
    """Cancel a scheduled message of a conversation the caller sees: it becomes
    `canceled` and is never sent. 409 `not_cancelable` when it is not scheduled (any
    more: due and claimed by the worker, sent, canceled)."""
    await history.visible_message(session, principal, message_id)
    if not await delivery_status.cancel_scheduled(session, message_id, utcnow()):
        await session.rollback()
        raise Conflict(
            "Only a scheduled message can be canceled; this one is "
            f"{await _status_now(session, message_id)}.",
            code="not_cancelable",
        )
    await session.commit()
    canceled = await session.get(Message, message_id, populate_existing=True)
    assert canceled is not None
    await publish(ctx, session, "message.updated", [canceled])
    return render_message(ctx.keyring, canceled)


async def _status_now(session: AsyncSession, message_id: uuid.UUID) -> str:
    status = await session.scalar(select(Message.status).where(Message.id == message_id))
    return str(status)
