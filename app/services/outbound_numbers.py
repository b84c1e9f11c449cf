"""Which of the organization's numbers a message goes out from, and whether it still owns it.

The one place for the rule (routing rules 2 and 4 of the contract, and the carriers'
rule for keyword answers):

- a user's message (a send, a reply in their conversation, their auto-reply) goes from
  the user's `outbound_sms_number`, and only if the user has SMS enabled;
- a group's message goes from the group's `outbound_sms_number`, else from the number the
  conversation's last inbound message arrived on;
- an answer to a keyword (HELP) goes from the number the person texted.

A number chosen here may have been released since it was recorded (a conversation's last
inbound number is history, not a reference). A message is handed to a carrier only from
a number its organization owns at that moment: `ensure_owned` at the API, and the outbox
worker's own check (`owned_number`) when it sends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import FromNumberReleased, Invalid, NoOutboundNumber, SmsDisabled
from app.models import PhoneNumber
from app.services.phone import parse_number


class SmsSender(Protocol):
    """A user as far as sending SMS goes (a `User`, or a cached route's user)."""

    @property
    def username(self) -> str: ...

    @property
    def sms_enabled(self) -> bool: ...

    @property
    def outbound_sms_number(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class GroupNumbers:
    """What a group's messages may go out from."""

    outbound_sms_number: str | None
    last_inbound_to_number: str | None


def outbound_number_for(
    *,
    sender: SmsSender | None = None,
    group: GroupNumbers | None = None,
    answering: str | None = None,
) -> str:
    """The carrier `from` of a message: the answer to a keyword from the number texted
    (`answering`), a group's message from the group's numbers, else the sender's own.

    Raises SmsDisabled or NoOutboundNumber when there is no number to send from."""
    if answering is not None:
        return answering
    if group is not None:
        number = group.outbound_sms_number or group.last_inbound_to_number
        if not number:
            raise NoOutboundNumber("This group has no number to reply from.")
        return number
    if sender is None:
        raise NoOutboundNumber("There is no number to send this message from.")
    if not sender.sms_enabled:
        raise SmsDisabled(f"SMS is not enabled for {sender.username}.")
    if not sender.outbound_sms_number:
        raise NoOutboundNumber(
            f"{sender.username} has no outbound SMS number; an admin must set one."
        )
    return sender.outbound_sms_number


def owned_number(org_id: Any, number: Any) -> ColumnElement[bool]:
    """SQL: the organization owns the number now (values or columns of another query)."""
    return exists().where(PhoneNumber.org_id == org_id, PhoneNumber.number == number)


async def ensure_owned(session: AsyncSession, org_id: uuid.UUID, number: str) -> None:
    """Refuse a message from a number the organization no longer owns (released, and
    perhaps another organization's now)."""
    if not await session.scalar(select(owned_number(org_id, number))):
        raise FromNumberReleased(
            f"{number} is no longer a number of this organization, so nothing can be sent "
            "from it; reply from a number the organization owns.",
            details={"from_number": number},
        )


async def require_own_number(
    session: AsyncSession, org_id: uuid.UUID, raw: str, field: str
) -> str:
    """An outbound number (of a user or a group) must be one of the organization's own
    numbers: the number in E.164, or 422 `number_not_owned` naming the field."""
    number = parse_number(raw, field)
    if not await session.scalar(select(owned_number(org_id, number))):
        raise Invalid(
            f"{number} is not a phone number of this organization; add it first.",
            code="number_not_owned",
            details=[{"field": field, "value": number}],
        )
    return number
