"""When an SMS goes: at the `send_at` its sender asked for, and never inside the
organization's quiet hours on the recipient's wall clock (API.md, "Scheduled messages").
Pure: no database, no clock (callers pass `now`).

- `send_at` is an RFC 3339 instant with its offset, from now to `MAX_SCHEDULE_DAYS`
  ahead. A client whose clock runs a little behind ours (up to `SEND_AT_SKEW`) is taken
  to mean now: the message is stored scheduled and goes at once.
- Only sends to phone numbers are scheduled; an internal recipient cannot be.
- Quiet hours hold a send to several recipients (a fan-out), or a scheduled send,
  whose time falls inside them in a recipient's zone: that message waits until they end
  there. A single send to one number now, and a reply in a conversation, are never held:
  the contract names only those two kinds, and someone answering one patient is doing
  so on purpose.
- A recipient's zone is the number's own, by phonenumbers' geographic data; where the
  number spans several zones (an area code across a zone line, a toll-free range) or
  none is known, the organization's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache

from app.errors import Invalid
from app.services.phone import time_zone_of
from app.services.routing import Address
from app.services.schedules import (
    NotAnInstant,
    QuietHours,
    Schedule,
    is_open,
    next_change,
    read_instant,
)
from app.vocabulary import MAX_SCHEDULE_DAYS

SEND_AT_SKEW = timedelta(seconds=60)
_MAX_AHEAD = timedelta(days=MAX_SCHEDULE_DAYS)


def _invalid_send_at(raw: str, why: str) -> Invalid:
    return Invalid(
        f"send_at: {why}",
        code="invalid_send_at",
        details=[{"field": "send_at", "value": raw}],
    )


def parse_send_at(raw: str, now: datetime) -> datetime:
    """The instant `send_at` names (UTC), or a 422 `invalid_send_at`."""
    try:
        moment = read_instant(raw)
    except NotAnInstant as exc:
        raise _invalid_send_at(raw, str(exc)) from None
    if moment < now - SEND_AT_SKEW:
        raise _invalid_send_at(raw, "it is in the past; leave it out to send now.")
    if moment > now + _MAX_AHEAD:
        raise _invalid_send_at(raw, f"it is at most {MAX_SCHEDULE_DAYS} days ahead.")
    return moment


def ensure_schedulable(addresses: Sequence[Address]) -> None:
    """A scheduled send reaches phone numbers only (422 `scheduling_not_supported`)."""
    internal = [i for i, a in enumerate(addresses) if not a.phone_number]
    if internal:
        raise Invalid(
            "Only messages to phone numbers can be scheduled; send to colleagues now.",
            code="scheduling_not_supported",
            details=[
                {
                    "index": i,
                    "code": "internal_recipient",
                    "message": "A colleague's message cannot be scheduled.",
                }
                for i in internal
            ],
        )


def recipient_zone(number: str, organization_zone: str) -> str:
    """The time zone a number's quiet hours are read in: its own, else the organization's."""
    return time_zone_of(number) or organization_zone


@lru_cache(maxsize=4096)
def _quiet_schedule(quiet: QuietHours, zone: str) -> Schedule:
    return quiet.schedule(zone)


def quiet_until(quiet: QuietHours, zone: str, instant: datetime) -> datetime | None:
    """When the quiet hours holding `instant` in `zone` end (UTC); None when they do
    not hold then."""
    schedule = _quiet_schedule(quiet, zone)
    if not is_open(schedule, instant):
        return None
    return next_change(schedule, instant)


def send_time(
    number: str,
    requested: datetime | None,
    *,
    now: datetime,
    fan_out: bool,
    quiet: QuietHours | None,
    organization_zone: str,
) -> datetime | None:
    """When an SMS of a send to `number` goes: None for now, else the instant it is
    scheduled for (the one asked for, or the end of the recipient's quiet hours)."""
    if quiet is None or (requested is None and not fan_out):
        return requested
    held = quiet_until(quiet, recipient_zone(number, organization_zone), requested or now)
    return held or requested
