"""Carrier webhooks: the request as it came, handed to the carrier's reader and the rules
(`services.webhooks`); the carrier's own acknowledgement back.

The busiest routes of the service, so they take only the request: no dependencies to
solve, and the signature headers described in the docs by hand (named by the carriers).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.carriers import WEBHOOK_SIGNATURE_HEADERS
from app.carriers.base import WebhookRequest
from app.deps import get_context
from app.schemas.errors import errors
from app.services.webhooks import receive_webhook

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _signed_by(carrier: str) -> dict[str, Any]:
    """The OpenAPI parameters of the headers `carrier` signs its webhooks with, and the
    errors a webhook can answer (a carrier retries the 5xx ones)."""
    return {
        **errors(
            "invalid_signature", "malformed_webhook", "carrier_not_configured", "routing_changing"
        ),
        "parameters": [
            {
                "name": header.name,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": header.description,
            }
            for header in WEBHOOK_SIGNATURE_HEADERS[carrier]
        ],
    }


def _path_in_app(request: Request) -> str:
    """The path the carrier called, relative to the app: without the prefix we are served
    under (uvicorn's `--root-path`, which it also puts in front of the path), since
    PUBLIC_BASE_URL already ends with it."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


async def _receive(request: Request, carrier: str) -> Response:
    ctx = await get_context(request)
    webhook = WebhookRequest.received(
        ctx.settings.public_base_url,
        _path_in_app(request),
        request.scope["query_string"].decode("latin-1"),
        request.headers,
        await request.body(),
    )
    ack = await receive_webhook(ctx, carrier, webhook)
    return Response(ack.body, status_code=ack.status, media_type=ack.media_type)


@router.post(
    "/telnyx",
    responses={401: {"description": "Bad or stale signature"}},
    openapi_extra=_signed_by("telnyx"),
    operation_id="receive_telnyx_webhook",
)
async def telnyx_webhook(request: Request) -> Response:
    """Telnyx v2 events: `message.received`, `message.sent`, `message.finalized`."""
    return await _receive(request, "telnyx")


@router.post(
    "/twilio/messages",
    responses={401: {"description": "Bad signature"}},
    openapi_extra=_signed_by("twilio"),
    operation_id="receive_twilio_inbound",
)
async def twilio_inbound(request: Request) -> Response:
    """Twilio inbound SMS; answers an empty TwiML response."""
    return await _receive(request, "twilio")


@router.post(
    "/twilio/status",
    responses={401: {"description": "Bad signature"}},
    openapi_extra=_signed_by("twilio"),
    operation_id="receive_twilio_status",
)
async def twilio_status(request: Request) -> Response:
    """Twilio status callbacks (`MessageStatus`)."""
    return await _receive(request, "twilio")
