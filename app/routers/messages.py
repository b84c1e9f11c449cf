"""Sending messages, and reading one."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header

from app.deps import BearerToken, ContextDep, CurrentUser, SessionDep
from app.responses import FastJSONResponse
from app.schemas.common import ERROR_RESPONSES
from app.schemas.messaging import MessageOut, SendMessage, SentMessages
from app.services import history, sending
from app.services.routing import Address

router = APIRouter(prefix="/v1/messages", tags=["messages"], responses=ERROR_RESPONSES)

IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="A repeat with the same key returns the first response "
        "and sends nothing again.",
    ),
]


@router.post("", status_code=201, response_model=SentMessages)
async def send_message(
    body: SendMessage,
    ctx: ContextDep,
    token: BearerToken,
    idempotency_key: IdempotencyKey = None,
) -> FastJSONResponse:
    """Send to users, extensions (a group's fans out to its members) and phone numbers:
    one message per party, all recipients checked before anything is stored."""
    addresses = [Address(a.username, a.extension, a.phone_number) for a in body.to]
    status, payload = await sending.send(
        ctx, token, addresses, body.body, body.media, idempotency_key
    )
    return FastJSONResponse(payload, status_code=status)


@router.get("/{message_id}", response_model=MessageOut)
async def get_message(
    message_id: uuid.UUID, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> FastJSONResponse:
    """One message from a conversation you can see."""
    return FastJSONResponse(await history.get_message(ctx, session, user, message_id))
