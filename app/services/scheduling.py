"""When an SMS goes: at the `send_at` its sender asked for (API.md, "Scheduled
messages"). Pure: no database, no clock (callers pass `now`).

- `send_at` is an RFC 3339 instant with its offset, from now to `MAX_SCHEDULE_DAYS`
  ahead. A client whose clock runs a little behind ours (up to `SEND_AT_SKEW`) is taken
  to mean now: the message is stored scheduled and goes at once.
- Only sends to phone numbers are scheduled; an internal recipient cannot be.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from app.errors import Invalid
from app.services.routing import Address
from app.vocabulary import MAX_SCHEDULE_DAYS

SEND_AT_SKEW = timedelta(seconds=60)
_MAX_AHEAD = timedelta(days=MAX_SCHEDULE_DAYS)


def _invalid_send_at(raw: str, why: str) -> Invalid:
    return Invalid(
        f"send_at {why}",
        code="invalid_send_at",
        details=[{"field": "send_at", "value": raw}],
    )


def parse_send_at(raw: str, now: datetime) -> datetime:
    """The instant `send_at` names (UTC), or a 422 `invalid_send_at`."""
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _invalid_send_at(
            raw, "is an RFC 3339 instant, e.g. 2026-12-24T09:00:00-05:00."
        ) from None
    if moment.tzinfo is None:
        raise _invalid_send_at(raw, "names its offset from UTC (Z or ±HH:MM).")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise _invalid_send_at(
            raw, f"is an instant from now to {MAX_SCHEDULE_DAYS} days ahead."
        ) from None
    if moment < now - SEND_AT_SKEW:
        raise _invalid_send_at(raw, "is in the past; leave it out to send now.")
    if moment > now + _MAX_AHEAD:
        raise _invalid_send_at(raw, f"is at most {MAX_SCHEDULE_DAYS} days ahead.")
    return moment


def ensure_schedulable(addresses: Sequence[Address]) -> None:
    """A scheduled send reaches phone numbers only (422 `scheduling_not_supported`)."""
    internal = [i for i, a in enumerate(addresses) if not a.phone_number]
    if internal:
        raise Invalid(
            "Only messages to phone numbers can be scheduled; send to colleagues now.",
            code="scheduling_not_supported",
            details=[{"index": i, "code": "internal_recipient"} for i in internal],
        )
