"""Working a shared inbox: a conversation is open until someone closes it, and may be
assigned to someone who can read it. Any member who sees it may change either; every
change is told to everyone who sees it (`conversation.updated`). A new inbound message
reopens a closed conversation (`inbound_store`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.errors import Invalid
from app.models import Conversation, User
from app.services import conversation_views, conversations
from app.services.auth import Principal
from app.services.publishing import publish_conversation


async def _assignee_id(session: AsyncSession, conv: Conversation, username: str) -> uuid.UUID:
    """The active user of this organization named `username` who can read `conv`; 422
    `invalid_assignee` for anyone else."""
    can_read = exists(
        select(Conversation.id).where(
            Conversation.id == conv.id, conversations.visible_to_user(User.id, conv.org_id)
        )
    )
    user_id = await session.scalar(
        select(User.id).where(
            User.org_id == conv.org_id,
            User.username == username,
            User.deactivated_at.is_(None),
            can_read,
        )
    )
    if user_id is None:
        raise Invalid(
            f"'{username}' cannot be assigned: only an active user who can read this "
            "conversation can.",
            code="invalid_assignee",
            details=[{"field": "assignee", "value": username}],
        )
    return user_id


async def update_conversation(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Apply a PATCH of `status` and `assignee` (null: nobody); returns the conversation
    as the caller sees it. Nothing changes unless every given field is valid."""
    conv = await conversations.get_visible(session, principal, conversation_id)
    if "status" in changes and changes["status"] is None:
        raise Invalid(
            "'status' cannot be null: use 'open' or 'closed'.",
            code="validation_error",
            details=[{"field": "status"}],
        )
    status = changes.get("status", conv.status)
    assignee = conv.assignee_user_id
    if "assignee" in changes:
        name = changes["assignee"]
        assignee = None if name is None else await _assignee_id(session, conv, name)
    changed = (status, assignee) != (conv.status, conv.assignee_user_id)
    if changed:
        conv.status = status
        conv.assignee_user_id = assignee
        await session.commit()
        await publish_conversation(ctx, conv.id, session)
    view = await conversation_views.view_of(ctx.keyring, session, conv.id, principal.user_id)
    assert view is not None
    return view.render()
