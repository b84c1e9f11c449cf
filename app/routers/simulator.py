"""The simulator carrier's doors (mounted only with CARRIER=simulator): make a patient's
text arrive, and see what the simulator "sent" (auto-replies, replies, HELP answers)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, status

from app.deps import ContextDep, CurrentUser
from app.schemas.errors import errors
from app.schemas.messaging import (
    SimulatedSendOut,
    SimulatedSendPage,
    SimulatedText,
    SimulatedTextOut,
)
from app.services import simulation

router = APIRouter(prefix="/v1/simulator", tags=["simulator"])


@router.post(
    "/inbound",
    status_code=status.HTTP_201_CREATED,
    response_model=SimulatedTextOut,
    openapi_extra=errors("not_found", "phone_number_not_found", "invalid_phone_number"),
)
async def simulate_inbound_text(
    body: SimulatedText, ctx: ContextDep, principal: CurrentUser
) -> SimulatedTextOut:
    """A patient's text to one of your organization's numbers, received as a carrier's
    webhook is: routed, stored, auto-replied and published on the event stream."""
    result = await simulation.receive_simulated_text(
        ctx, principal, from_number=body.from_number, to_number=body.to_number, text=body.text
    )
    return SimulatedTextOut.model_validate(
        {
            "outcome": result.outcome,
            "message_id": result.message_id,
            "auto_reply_decision": result.decision.as_dict() if result.decision else None,
        }
    )


@router.get("/sent", response_model=SimulatedSendPage, openapi_extra=errors("not_found"))
async def simulated_sends(ctx: ContextDep, principal: CurrentUser) -> SimulatedSendPage:
    """What the simulator carrier accepted from your organization's numbers, oldest first
    (the process's most recent 1,000; one page)."""
    items = [
        SimulatedSendOut(
            carrier_message_id=s.carrier_message_id,
            message_id=s.reference,
            from_number=s.from_number,
            to_number=s.to_number,
            body=s.body,
            sent_at=datetime.fromtimestamp(s.accepted_at, UTC),
        )
        for s in await simulation.simulated_sends(ctx, principal)
    ]
    return SimulatedSendPage(items=items, next_cursor=None)
