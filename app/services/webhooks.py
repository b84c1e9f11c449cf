"""Carrier webhooks: read by their carrier, handed to the messaging rules, acknowledged.

The rule for every carrier's webhook, whatever its wire format: the carrier's reader
verifies the request and reads it into an event; an inbound text goes to
`inbound.receive_inbound`, a delivery receipt to `delivery_status.receive_status`;
the carrier's own acknowledgement says what became of it. A request that does not
verify is 401 `invalid_signature` and one we cannot read 400 `malformed_webhook`, both
with nothing stored; a carrier whose secret is not set is 503 `carrier_not_configured`.
"""

from __future__ import annotations

from app.carriers.base import (
    InboundSms,
    InvalidSignature,
    MalformedWebhook,
    StatusUpdate,
    WebhookAck,
    WebhookEvent,
    WebhookRequest,
    WebhooksNotConfigured,
)
from app.context import AppContext
from app.errors import AppError, ServiceUnavailable, Unauthorized
from app.metrics import WEBHOOKS, Children
from app.services import delivery_status, inbound

_COUNTED = Children(WEBHOOKS)


async def receive_webhook(ctx: AppContext, carrier: str, request: WebhookRequest) -> WebhookAck:
    """Verify, read and act on one webhook from `carrier` ("telnyx", "twilio"); the
    answer the carrier expects."""
    reader = ctx.webhook_readers[carrier]
    outcome = "failed"
    try:
        try:
            event = reader.read(request)
        except WebhooksNotConfigured as exc:
            outcome = "not_configured"
            raise ServiceUnavailable(str(exc), code="carrier_not_configured") from None
        except InvalidSignature as exc:
            outcome = "invalid_signature"
            raise Unauthorized(str(exc), code="invalid_signature") from None
        except MalformedWebhook as exc:
            outcome = "malformed"
            raise AppError(str(exc), code="malformed_webhook") from None
        outcome = await _act_on(ctx, event)
        return reader.acknowledge(request, outcome)
    finally:
        _COUNTED(carrier, outcome).inc()


async def _act_on(ctx: AppContext, event: WebhookEvent) -> str:
    """Hand the event to its rule; what became of it."""
    if isinstance(event, InboundSms):
        return (await inbound.receive_inbound(ctx, event)).outcome
    if isinstance(event, StatusUpdate):
        found = await delivery_status.receive_status(ctx, event)
        return "status_applied" if found else "status_unmatched"
    return "ignored"
