"""Opt-out keywords as US carriers require: STOP and its synonyms, START, HELP."""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_ignoring_conflicts
from app.errors import RecipientOptedOut
from app.models import OptOut

Keyword = Literal["stop", "start", "help"]

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT"}
)
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP", "INFO"})

# What surrounds a keyword and does not count: anything but letters and digits
# (whitespace, punctuation, quotes, emoji).
_EDGE = re.compile(r"[\W_]*")
# Between the words of a keyword ("OPT OUT"): any run of whitespace or dashes.
_BETWEEN = re.compile(r"[\s\-\u2010-\u2015]+")
# Longer than any keyword with generous inner spacing: not a keyword, not worth reading.
_MAX_CORE = 40


def _edge_length(text: str) -> int:
    found = _EDGE.match(text)
    return found.end() if found else 0


def keyword_text(text: str) -> str | None:
    """The text as a keyword would read, in upper case ("Opt - out!" -> "OPT OUT"), or
    None when it is too long to be one. Linear in the text, whatever it holds."""
    start = _edge_length(text)
    end = len(text) - _edge_length(text[::-1])
    if end - start > _MAX_CORE:
        return None
    core = unicodedata.normalize("NFKC", text[start:end]) if start < end else ""
    return " ".join(_BETWEEN.split(core)).upper()


def classify_keyword(text: str) -> Keyword | None:
    """The keyword an inbound text is, when it is one alone: any case, whitespace and
    punctuation around it ignored ("Stop.", " opt out "); "stop please" is none."""
    word = keyword_text(text)
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
                org_id=org_id, external_number=number, keyword=(keyword_text(text) or "")[:16]
            )
        )
    elif keyword == "start":
        await session.execute(
            delete(OptOut).where(OptOut.org_id == org_id, OptOut.external_number == number)
        )
