"""Opt-out keywords as US carriers require: STOP and its synonyms, START, HELP."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_ignoring_conflicts
from app.errors import RecipientOptedOut
from app.models import OptOut

Keyword = Literal["stop", "start", "help"]

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP"})


def classify_keyword(text: str) -> Keyword | None:
    """The keyword an inbound text is, when it is one alone (any case, surrounding spaces)."""
    word = text.strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


async def is_opted_out(session: AsyncSession, org_id: uuid.UUID, number: str) -> bool:
    """Has this external number opted out of the organization's texts?"""
    found = await session.scalar(
        select(OptOut.org_id).where(OptOut.org_id == org_id, OptOut.external_number == number)
    )
    return found is not None


async def ensure_not_opted_out(session: AsyncSession, org_id: uuid.UUID, number: str) -> None:
    """Refuse a send to a number that texted STOP."""
    if await is_opted_out(session, org_id, number):
        raise RecipientOptedOut(
            f"{number} has opted out of texts from this organization (STOP); "
            "they can opt back in by texting START.",
            details={"phone_number": number},
        )


async def apply_keyword(
    session: AsyncSession, org_id: uuid.UUID, number: str, keyword: Keyword, text: str
) -> None:
    """Record a STOP or START in the caller's transaction (HELP changes nothing)."""
    if keyword == "stop":
        await session.execute(
            insert_ignoring_conflicts(session, OptOut).values(
                org_id=org_id, external_number=number, keyword=text.strip().upper()[:16]
            )
        )
    elif keyword == "start":
        await session.execute(
            delete(OptOut).where(OptOut.org_id == org_id, OptOut.external_number == number)
        )
