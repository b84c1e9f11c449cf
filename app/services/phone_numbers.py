"""The organization's phone numbers and where their inbound SMS route."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import commit_or_conflict
from app.errors import Conflict, NotFound
from app.models import (
    Group,
    PhoneNumber,
    User,
    utcnow,
)
from app.services import audit
from app.services.pagination import fetch_page
from app.services.phone import parse_number


async def get_phone_number(
    session: AsyncSession, org_id: uuid.UUID, number_id: uuid.UUID
) -> PhoneNumber:
    """A phone number of this organization; 404 for anything else."""
    row = await session.scalar(
        select(PhoneNumber).where(PhoneNumber.id == number_id, PhoneNumber.org_id == org_id)
    )
    if row is None:
        raise NotFound("No such phone number in this organization.", code="phone_number_not_found")
    return row


async def list_phone_numbers(
    session: AsyncSession, org_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[PhoneNumber], str | None]:
    """The organization's numbers, oldest first."""
    return await fetch_page(
        session,
        select(PhoneNumber).where(PhoneNumber.org_id == org_id),
        PhoneNumber.id,
        limit,
        cursor,
    )


async def add_phone_number(
    session: AsyncSession, org_id: uuid.UUID, actor: str, *, number: str, sms_extension: str | None
) -> PhoneNumber:
    """Add a number to the organization; a number belongs to one organization only."""
    e164 = parse_number(number, "number")
    if await session.scalar(select(PhoneNumber.id).where(PhoneNumber.number == e164)):
        raise Conflict(
            f"{e164} is already registered with this service.",
            code="phone_number_taken",
            details={"number": e164},
        )
    row = PhoneNumber(org_id=org_id, number=e164, sms_extension=sms_extension)
    session.add(row)
    await session.flush()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="phone_number.create",
        target_type="phone_number",
        target_id=row.id,
        changes={"number": e164, "sms_extension": sms_extension},
    )
    await commit_or_conflict(session, f"{e164} was registered meanwhile.", "phone_number_taken")
    return row


async def update_phone_number(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    number_id: uuid.UUID,
    sms_extension: str | None,
) -> PhoneNumber:
    """Route a number's inbound SMS to another extension (or to no one)."""
    row = await get_phone_number(session, org_id, number_id)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="phone_number.route",
        target_type="phone_number",
        target_id=row.id,
        changes={
            "number": row.number,
            "sms_extension": {"from": row.sms_extension, "to": sms_extension},
        },
    )
    row.sms_extension = sms_extension
    row.updated_at = utcnow()
    await session.commit()
    return row


async def delete_phone_number(
    session: AsyncSession, org_id: uuid.UUID, actor: str, number_id: uuid.UUID
) -> None:
    """Release a number; refused while a user or group sends from it."""
    row = await get_phone_number(session, org_id, number_id)
    users = (
        await session.scalars(
            select(User.username).where(
                User.org_id == org_id, User.outbound_sms_number == row.number
            )
        )
    ).all()
    groups = (
        await session.scalars(
            select(Group.name).where(
                Group.org_id == org_id, Group.outbound_sms_number == row.number
            )
        )
    ).all()
    if users or groups:
        raise Conflict(
            f"{row.number} is the outbound number of "
            + ", ".join([*users, *groups])
            + "; give them another number first.",
            code="phone_number_in_use",
            details={"users": list(users), "groups": list(groups)},
        )
    await session.delete(row)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="phone_number.delete",
        target_type="phone_number",
        target_id=row.id,
        changes={"number": row.number},
    )
    await session.commit()
