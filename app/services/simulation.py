"""The simulator carrier's own doors, for trying the service without a carrier: a text
"arrives" from a patient, and what the simulator "sent" can be read. They exist only
while the service sends through the simulator (CARRIER=simulator: the router is not
mounted otherwise), and each organization reaches only its own numbers."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.carriers.base import InboundSms
from app.carriers.simulator import SimulatedSend, SimulatorCarrier
from app.context import AppContext
from app.errors import NotFound
from app.models import PhoneNumber
from app.services import inbound
from app.services.auth import Principal
from app.services.phone import parse_number


def _simulator(ctx: AppContext) -> SimulatorCarrier:
    if not isinstance(ctx.carrier, SimulatorCarrier):
        raise NotFound("The simulator carrier is not in use (CARRIER).", code="not_found")
    return ctx.carrier


async def _own_numbers(ctx: AppContext, org_id: uuid.UUID) -> set[str]:
    async with ctx.sessionmaker() as session:
        return set(
            (
                await session.scalars(
                    select(PhoneNumber.number).where(PhoneNumber.org_id == org_id)
                )
            ).all()
        )


async def receive_simulated_text(
    ctx: AppContext, principal: Principal, *, from_number: str, to_number: str, text: str
) -> inbound.InboundResult:
    """A text from `from_number` to one of the caller's organization's numbers, received
    exactly as a carrier's webhook would be: routed, stored, auto-replied, published."""
    simulator = _simulator(ctx)
    to = parse_number(to_number, "to_number")
    sender = parse_number(from_number, "from_number")
    if to not in await _own_numbers(ctx, principal.org_id):
        raise NotFound(
            f"{to} is not a number of your organization (POST /v1/phone-numbers adds one).",
            code="phone_number_not_found",
        )
    sms = InboundSms(
        carrier=simulator.name,
        carrier_message_id=f"sim-{uuid.uuid4()}",
        from_number=sender,
        to_number=to,
        text=text,
    )
    return await inbound.receive_inbound(ctx, sms)


async def simulated_sends(ctx: AppContext, principal: Principal) -> list[SimulatedSend]:
    """What the simulator carrier accepted from the caller's organization's numbers,
    oldest first (the most recent 1,000 of the process)."""
    simulator = _simulator(ctx)
    own = await _own_numbers(ctx, principal.org_id)
    return [s for s in simulator.sent if s.from_number in own]
