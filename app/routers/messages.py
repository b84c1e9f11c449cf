"""Sending messages (now or later), the caller's scheduled ones, reading and canceling
one."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import ValidationError

from app.context import AppContext
from app.deps import BearerToken, ContextDep, CurrentUser, SessionDep, get_context
from app.responses import FastJSONResponse
from app.schemas.errors import errors
from app.schemas.messaging import MessageOut, MessagePage, SendMessage, SentMessages
from app.security import bearer_token
from app.services import history, scheduled_messages, sending
from app.services.routing import Address

from ._lean import is_json_media
from ._params import PageParams

router = APIRouter(prefix="/v1/messages", tags=["messages"])

IDEMPOTENCY_KEY_MAX = 200
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=IDEMPOTENCY_KEY_MAX,
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
        "invalid_send_at",
        "scheduling_not_supported",
    ),
)
async def send_message(
    body: SendMessage,
    ctx: ContextDep,
    token: BearerToken,
    idempotency_key: IdempotencyKey = None,
) -> FastJSONResponse:
    """Send to users, extensions (a group's fans out to its members) and phone numbers:
    one message per party, all recipients checked before anything is stored. With
    `send_at`, texts to phone numbers go later (`scheduled` until then); a send to
    several recipients, or a scheduled one, waits where the organization's quiet hours
    hold in the recipient's time zone."""
    return await _send(ctx, token, body, idempotency_key)


async def _send(
    ctx: AppContext, token: str, body: SendMessage, idempotency_key: str | None
) -> FastJSONResponse:
    addresses = [Address(a.username, a.extension, a.phone_number) for a in body.to]
    status, payload = await sending.send(
        ctx, token, addresses, body.body, body.media, idempotency_key, body.send_at
    )
    return FastJSONResponse(payload, status_code=status)


async def send_message_fast(request: Request, raw: bytes) -> Response | None:
    """`send_message` for a request that needs none of FastAPI's answers: a JSON body
    that validates, a bearer token, an Idempotency-Key within its length, if any. None
    for anything else: the API route then reads it and says what is wrong."""
    headers = request.headers
    key = headers.get("idempotency-key")
    if not is_json_media(headers.get("content-type")) or (
        key is not None and len(key) > IDEMPOTENCY_KEY_MAX
    ):
        return None
    token = bearer_token(request.scope["headers"])
    if token is None:
        return None
    try:
        body = SendMessage.model_validate_json(raw)
    except ValidationError:
        return None
    return await _send(await get_context(request), token, body, key)


@router.get("", response_model=MessagePage, openapi_extra=errors("invalid_cursor"))
async def list_scheduled_messages(
    ctx: ContextDep,
    session: SessionDep,
    user: CurrentUser,
    page: PageParams,
    status: Annotated[
        Literal["scheduled"], Query(description="Which messages: `scheduled`, the only list.")
    ],
) -> FastJSONResponse:
    """The messages you scheduled that have not gone yet, soonest first."""
    items, cursor = await scheduled_messages.list_scheduled(
        ctx, session, user, page.limit, page.cursor
    )
    return FastJSONResponse({"items": items, "next_cursor": cursor})


@router.get("/{message_id}", response_model=MessageOut, openapi_extra=errors("message_not_found"))
async def get_message(
    message_id: uuid.UUID, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> FastJSONResponse:
    """One message from a conversation you can see."""
    return FastJSONResponse(await history.get_message(ctx, session, user, message_id))


@router.post(
    "/{message_id}/cancel",
    response_model=MessageOut,
    openapi_extra=errors("message_not_found", "not_cancelable"),
)
async def cancel_message(
    message_id: uuid.UUID, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> FastJSONResponse:
    """Cancel a scheduled message: it becomes `canceled` and is never sent. Any other
    status (already due and handed to the carrier, sent, canceled): 409 `not_cancelable`."""
    return FastJSONResponse(await scheduled_messages.cancel(ctx, session, user, message_id))
