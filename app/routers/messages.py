"""Sending messages, and reading one."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header

from app.deps import BearerToken, ContextDep, CurrentUser, SessionDep
from app.responses import FastJSONResponse
from app.schemas.errors import errors
from app.schemas.messaging import MessageOut, SendMessage, SentMessages
from app.services import history, sending
from app.services.routing import Address

router = APIRouter(prefix="/v1/messages", tags=["messages"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="A repeat with the same key returns the first response "
        "and sends nothing again.",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=SentMessages,
    openapi_extra=errors(
        "user_not_found",
        "invalid_recipients",
        "recipient_opted_out",
        "too_many_recipients",
        "no_outbound_number",
        "sms_disabled",
        "from_number_released",
        "mms_not_supported",
        "empty_body",
        "body_too_long",
        "idempotency_key_reused",
    ),
)
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


@router.get("/{message_id}", response_model=MessageOut, openapi_extra=errors("message_not_found"))
async def get_message(
    message_id: uuid.UUID, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> FastJSONResponse:
    """One message from a conversation you can see."""
    return FastJSONResponse(await history.get_message(ctx, session, user, message_id))
