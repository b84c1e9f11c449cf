"""Conversations: the inbox list and its filters, one conversation, its status and
assignee, its messages and notes, replies, read markers."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.context import AppContext
from app.deps import BearerToken, ContextDep, CurrentUser, SessionDep, get_context
from app.responses import FastJSONResponse
from app.schemas.errors import errors
from app.schemas.messaging import (
    ConversationOut,
    ConversationPage,
    ConversationUpdate,
    MessageOut,
    MessagePage,
    NoteCreate,
    ReadMark,
    ReadState,
    Reply,
)
from app.security import bearer_token
from app.services import (
    conversation_state,
    conversation_views,
    conversations,
    history,
    inbox,
    notes,
    sending,
)
from app.vocabulary import CONVERSATION_STATUSES, MAX_SEARCH_CHARS, ConversationStatus

from ._params import (
    CURSOR_MAX_CHARS,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MIN_LIMIT,
    PageParams,
    SearchText,
)

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

ASSIGNEE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
AssigneeFilter = Annotated[
    str | None,
    Query(
        pattern=ASSIGNEE_PATTERN,
        description="`me`, `none` (nobody), or a username.",
        examples=["me"],
    ),
]


@router.get(
    "",
    response_model=ConversationPage,
    openapi_extra=errors("invalid_cursor", "invalid_assignee", "invalid_search"),
)
async def list_conversations(
    ctx: ContextDep,
    token: BearerToken,
    page: PageParams,
    status: Annotated[ConversationStatus | None, Query()] = None,
    assignee: AssigneeFilter = None,
    unread: Annotated[
        bool | None,
        Query(
            description="true: only those with messages you have not read; false: only "
            "those without."
        ),
    ] = None,
    q: SearchText = None,
) -> FastJSONResponse:
    """Your conversations and your groups', newest activity first, with unread counts;
    `next_cursor` pages on, stable while conversations get new messages."""
    filters = _inbox_filter(status, assignee, unread, q)
    return await _inbox_page(ctx, token, filters, page.limit, page.cursor)


def _inbox_filter(
    status: str | None, assignee: str | None, unread: bool | None, q: str | None
) -> inbox.InboxFilter:
    return inbox.InboxFilter(
        status=status, assignee=assignee.lower() if assignee else None, unread=unread, q=q
    )


async def _inbox_page(
    ctx: AppContext, token: str, filters: inbox.InboxFilter, limit: int, cursor: str | None
) -> FastJSONResponse:
    items, next_cursor = await inbox.list_inbox(ctx, token, filters, limit, cursor)
    return FastJSONResponse({"items": [v.render() for v in items], "next_cursor": next_cursor})


_ASSIGNEE = re.compile(ASSIGNEE_PATTERN)
_UNREAD = {"true": True, "false": False}
_INBOX_PARAMS = frozenset({"limit", "cursor", "status", "assignee", "unread", "q"})


async def list_conversations_fast(request: Request, _raw: bytes) -> Response | None:
    """`list_conversations` for a request that needs none of FastAPI's answers: a bearer
    token and each parameter once, within the route's declared bounds (`unread` spelled
    `true` or `false`). None for anything else: the API route then reads it and says what
    is wrong."""
    token = bearer_token(request.scope["headers"])
    if token is None:
        return None
    params = request.query_params
    if len(params.multi_items()) != len(params) or not params.keys() <= _INBOX_PARAMS:
        return None
    limit_text = params.get("limit")
    if limit_text is None:
        limit = DEFAULT_LIMIT
    elif limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 3:
        limit = int(limit_text)
        if not MIN_LIMIT <= limit <= MAX_LIMIT:
            return None
    else:
        return None
    cursor, status = params.get("cursor"), params.get("status")
    assignee, unread, q = params.get("assignee"), params.get("unread"), params.get("q")
    if (
        (cursor is not None and len(cursor) > CURSOR_MAX_CHARS)
        or (status is not None and status not in CONVERSATION_STATUSES)
        or (assignee is not None and not _ASSIGNEE.fullmatch(assignee))
        or (unread is not None and unread not in _UNREAD)
        or (q is not None and not 1 <= len(q) <= MAX_SEARCH_CHARS)
    ):
        return None
    filters = _inbox_filter(status, assignee, None if unread is None else _UNREAD[unread], q)
    return await _inbox_page(await get_context(request), token, filters, limit, cursor)


@router.get(
    "/{conversation_id}",
    response_model=ConversationOut,
    openapi_extra=errors("conversation_not_found"),
)
async def get_conversation(
    conversation_id: uuid.UUID, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> FastJSONResponse:
    """One conversation."""
    view = await conversation_views.view_of(
        ctx.keyring, session, conversation_id, user.user_id, conversations.visible_to(user)
    )
    if view is None:
        raise conversations.not_found()
    return FastJSONResponse(view.render())


@router.patch(
    "/{conversation_id}",
    response_model=ConversationOut,
    openapi_extra=errors("conversation_not_found", "invalid_assignee", "validation_error"),
)
async def update_conversation(
    conversation_id: uuid.UUID,
    body: ConversationUpdate,
    ctx: ContextDep,
    session: SessionDep,
    user: CurrentUser,
) -> FastJSONResponse:
    """Open or close it, assign it (to someone who can read it) or unassign it (null)."""
    view = await conversation_state.update_conversation(
        ctx, session, user, conversation_id, body.model_dump(exclude_unset=True)
    )
    return FastJSONResponse(view)


@router.get(
    "/{conversation_id}/messages",
    response_model=MessagePage,
    openapi_extra=errors("conversation_not_found", "invalid_cursor"),
)
async def list_messages(
    conversation_id: uuid.UUID,
    ctx: ContextDep,
    token: BearerToken,
    page: PageParams,
) -> FastJSONResponse:
    """Messages and notes, newest first; `next_cursor` pages back in time, stable while new
    ones arrive."""
    items, cursor = await history.list_messages(
        ctx, token, conversation_id, page.limit, page.cursor
    )
    return FastJSONResponse({"items": items, "next_cursor": cursor})


@router.post(
    "/{conversation_id}/messages",
    status_code=201,
    response_model=MessageOut,
    operation_id="reply_to_conversation",
    openapi_extra=errors(
        "conversation_not_found",
        "user_not_found",
        "recipient_inactive",
        "recipient_opted_out",
        "no_outbound_number",
        "sms_disabled",
        "from_number_released",
        "mms_not_supported",
        "empty_body",
        "body_too_long",
    ),
)
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


@router.post(
    "/{conversation_id}/notes",
    status_code=201,
    response_model=MessageOut,
    openapi_extra=errors("conversation_not_found", "empty_body", "body_too_long"),
)
async def add_note(
    conversation_id: uuid.UUID,
    body: NoteCreate,
    ctx: ContextDep,
    session: SessionDep,
    user: CurrentUser,
) -> FastJSONResponse:
    """An internal note (`direction: "note"`): seen only by those who see the conversation,
    never sent to the patient."""
    note = await notes.add_note(ctx, session, user, conversation_id, body.body)
    return FastJSONResponse(note, status_code=201)


@router.post(
    "/{conversation_id}/read",
    response_model=ReadState,
    openapi_extra=errors("conversation_not_found", "message_not_found"),
)
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
