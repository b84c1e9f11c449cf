"""Carrier webhooks: verified as each carrier signs them, then handed to the messaging rules.

The busiest routes of the service, so they take only the request: no dependencies to
solve, the headers read as the signature check needs them (and described in the docs
by hand).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response

from app.carriers import telnyx, twilio
from app.carriers.base import InboundSms, InvalidSignature, MalformedWebhook, StatusUpdate
from app.context import AppContext
from app.deps import get_context
from app.errors import AppError, Unauthorized
from app.responses import FastJSONResponse
from app.schemas.common import ERROR_RESPONSES
from app.services import delivery_status, inbound

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


async def _handle(ctx: AppContext, event: InboundSms | StatusUpdate | None) -> str:
    if isinstance(event, InboundSms):
        return (await inbound.receive_inbound(ctx, event)).outcome
    if isinstance(event, StatusUpdate):
        found = await delivery_status.receive_status(ctx, event)
        return "status_applied" if found else "status_unmatched"
    return "ignored"


def _headers(*described: tuple[str, str]) -> dict[str, Any]:
    return {
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": text,
            }
            for name, text in described
        ]
    }


@router.post(
    "/telnyx",
    responses={401: {"description": "Bad or stale signature"}},
    openapi_extra=_headers(
        (telnyx.SIGNATURE_HEADER, "Base64 Ed25519 signature of `{timestamp}|{body}`"),
        (telnyx.TIMESTAMP_HEADER, "Unix time the event was signed"),
    ),
)
async def telnyx_webhook(request: Request) -> FastJSONResponse:
    """Telnyx v2 events: `message.received`, `message.sent`, `message.finalized`."""
    ctx = await get_context(request)
    raw = await request.body()
    if not ctx.settings.telnyx_public_key:
        raise AppError(
            "Telnyx webhooks are not configured (TELNYX_PUBLIC_KEY).",
            code="carrier_not_configured",
            status=503,
        )
    try:
        telnyx.verify_telnyx_request(
            ctx.settings.telnyx_public_key,
            request.headers,
            raw,
            ctx.settings.webhook_tolerance_seconds,
        )
    except InvalidSignature as exc:
        raise Unauthorized(str(exc), code="invalid_signature") from None
    try:
        event = telnyx.parse_telnyx_webhook(raw)
    except MalformedWebhook as exc:
        raise AppError(str(exc), code="malformed_webhook") from None
    return FastJSONResponse({"status": await _handle(ctx, event)})


def _path_in_app(request: Request) -> str:
    """The path the carrier called, relative to the app: without the prefix we are served
    under (uvicorn's `--root-path`, which it also puts in front of the path), since
    PUBLIC_BASE_URL already ends with it."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


async def _twilio_form(ctx: AppContext, request: Request) -> dict[str, str]:
    if not ctx.settings.twilio_auth_token:
        raise AppError(
            "Twilio webhooks are not configured (TWILIO_AUTH_TOKEN).",
            code="carrier_not_configured",
            status=503,
        )
    try:
        pairs = twilio.decode_twilio_form(await request.body())
    except MalformedWebhook as exc:
        raise AppError(str(exc), code="malformed_webhook") from None
    try:
        twilio.verify_twilio_request(
            ctx.settings.twilio_auth_token,
            ctx.settings.public_base_url,
            _path_in_app(request),
            request.url.query,
            pairs,
            request.headers,
        )
    except InvalidSignature as exc:
        raise Unauthorized(str(exc), code="invalid_signature") from None
    return dict(pairs)


def _twilio_post(path: str) -> Callable[[Endpoint], Endpoint]:
    """A Twilio webhook route: signed with X-Twilio-Signature, 401 when it does not verify."""
    return router.post(
        path,
        responses={401: {"description": "Bad signature"}},
        openapi_extra=_headers(("X-Twilio-Signature", "Twilio's HMAC-SHA1")),
    )


@_twilio_post("/twilio/messages")
async def twilio_inbound(request: Request) -> Response:
    """Twilio inbound SMS; answers an empty TwiML response."""
    ctx = await get_context(request)
    form = await _twilio_form(ctx, request)
    try:
        event = twilio.parse_twilio_inbound(form)
    except MalformedWebhook as exc:
        raise AppError(str(exc), code="malformed_webhook") from None
    await _handle(ctx, event)
    return Response(twilio.EMPTY_TWIML, media_type="application/xml")


@_twilio_post("/twilio/status")
async def twilio_status(request: Request) -> FastJSONResponse:
    """Twilio status callbacks (`MessageStatus`)."""
    ctx = await get_context(request)
    form = await _twilio_form(ctx, request)
    try:
        event = twilio.parse_twilio_status(form, request.query_params.get("ref"))
    except MalformedWebhook as exc:
        raise AppError(str(exc), code="malformed_webhook") from None
    return FastJSONResponse({"status": await _handle(ctx, event)})
