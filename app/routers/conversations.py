"""Conversations: list, read, reply, mark read."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.deps import BearerToken, ContextDep, CurrentUser, SessionDep
from app.responses import FastJSONResponse
from app.schemas.common import ERROR_RESPONSES, Page
from app.schemas.messaging import (
    ConversationOut,
    ConversationOwner,
    MessageOut,
    ReadMark,
    ReadState,
    Reply,
)
from app.services import conversations, history, sending
from app.services.conversations import ConversationSummary

from ._params import PageParams

router = APIRouter(prefix="/v1/conversations", tags=["conversations"], responses=ERROR_RESPONSES)


def _out(s: ConversationSummary) -> ConversationOut:
    c = s.conversation
    owner_id = c.owner_group_id or c.owner_user_id
    owner = (
        ConversationOwner(type=s.owner_type, id=owner_id, name=s.owner_name or "")
        if s.owner_type and owner_id
        else None
    )
    return ConversationOut(
        id=c.id,
        kind=c.kind,
        external_number=c.external_number,
        owner=owner,
        participants=s.participants,
        last_message_at=c.last_message_at,
        unread_count=s.unread_count,
        created_at=c.created_at,
    )


@router.get("", response_model=Page[ConversationOut])
async def list_conversations(
    session: SessionDep, user: CurrentUser, page: PageParams
) -> Page[ConversationOut]:
    """Your conversations and your groups', most recent activity first, with unread counts."""
    items, cursor = await conversations.list_for(session, user, page.limit, page.cursor)
    return Page(items=[_out(s) for s in items], next_cursor=cursor)


@router.get("/{conversation_id}", response_model=ConversationOut)
async def get_conversation(
    conversation_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> ConversationOut:
    """One conversation."""
    conv = await conversations.get_visible(session, user, conversation_id)
    return _out(await conversations.summarize(session, user, conv))


@router.get("/{conversation_id}/messages", response_model=Page[MessageOut])
async def list_messages(
    conversation_id: uuid.UUID,
    ctx: ContextDep,
    token: BearerToken,
    page: PageParams,
) -> FastJSONResponse:
    """Messages, newest first; `next_cursor` pages back in time, stable while new ones arrive."""
    items, cursor = await history.list_messages(
        ctx, token, conversation_id, page.limit, page.cursor
    )
    return FastJSONResponse({"items": items, "next_cursor": cursor})


@router.post("/{conversation_id}/messages", status_code=201, response_model=MessageOut)
async def reply(
    conversation_id: uuid.UUID,
    body: Reply,
    ctx: ContextDep,
    session: SessionDep,
    user: CurrentUser,
) -> FastJSONResponse:
    """Reply: SMS goes from the owner's outbound number (a group's, or the number last texted)."""
    message = await sending.reply(ctx, session, user, conversation_id, body.body, body.media)
    return FastJSONResponse(message, status_code=201)


@router.post("/{conversation_id}/read", response_model=ReadState)
async def mark_read(
    conversation_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    body: ReadMark | None = None,
) -> ReadState:
    """Mark the conversation read up to a message (the newest by default)."""
    last, unread = await conversations.mark_read(
        session, user, conversation_id, body.message_id if body else None
    )
    return ReadState(
        conversation_id=conversation_id, last_read_message_id=last, unread_count=unread
    )
