"""Internal notes: a colleague's remark in a conversation's history, seen only by the
users who see the conversation, never sent to a carrier (no delivery job), encrypted
at rest like every body, and not unread for its author."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.crypto import Keyring
from app.models import Conversation
from app.models.rows import MessageRow
from app.services import conversations
from app.services.auth import Principal
from app.services.message_rows import new_message, render_message
from app.services.publishing import publish
from app.services.sending import check_body


async def add_note(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    body: str,
) -> dict[str, Any]:
    """Add a note to a conversation the caller sees; returns it as a message."""
    conv = await conversations.get_visible(session, principal, conversation_id)
    check_body(body, None)
    note = write_note(ctx.keyring, session, conv, principal.user_id, principal.username, body)
    await session.commit()
    await publish(ctx, session, "message.created", [note], bodies=[body])
    return render_message(ctx.keyring, note, body)


def write_note(
    keyring: Keyring,
    session: AsyncSession,
    conv: Conversation,
    author_id: uuid.UUID,
    author: str,
    body: str,
) -> MessageRow:
    """A note in the caller's transaction, the conversation's activity moved to it."""
    note = new_message(
        keyring,
        org_id=conv.org_id,
        conversation_id=conv.id,
        direction="note",
        body=body,
        status="delivered",
        sender_user_id=author_id,
        sender_username=author,
        group_id=conv.owner_group_id,
    )
    conv.last_message_at = note.created_at
    session.add(note.orm())
    return note
