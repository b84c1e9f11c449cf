"""The contract's words that both the schemas and the services use: one definition each.

Limits, statuses, the auto-reply reasons and the words of schedules live here, below both
layers, so a schema never imports a service to learn them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, get_args

# The longest message body accepted: ten segments of UCS-2, a little over ten of GSM-7.
MAX_BODY_CHARS = 1600

# `note`: an internal note in a conversation's history, seen by its members only and
# never sent to a carrier.
Direction = Literal["internal", "outbound", "inbound", "note"]

# An outbound SMS goes `queued` → `sending` → `sent` → `delivered` | `undelivered` |
# `failed`; one sent later waits `scheduled` first, and may be `canceled` until it is due.
MessageStatus = Literal[
    "received",
    "delivered",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "undelivered",
    "failed",
    "canceled",
]

# How far ahead a send may be scheduled (`send_at`).
MAX_SCHEDULE_DAYS = 35

# A conversation is open until someone closes it; a new inbound message reopens it.
ConversationStatus = Literal["open", "closed"]
CONVERSATION_STATUSES: tuple[str, ...] = get_args(ConversationStatus)

# A contact's name, and the search text of a contact or conversation search (`q`).
MAX_CONTACT_NAME_CHARS = 200
MAX_SEARCH_CHARS = 100

# Why an inbound SMS got an automatic reply, or why not (in the order they are checked,
# the window last).
AutoReplyReason = Literal[
    "sent",
    "group_recipient",
    "internal_sender",
    "keyword",
    "opted_out",
    "sms_disabled",
    "no_outbound_number",
    "empty_text",
    "disabled",
    "within_hours",
    "rate_limited",
    "limiter_unavailable",
]
AUTO_REPLY_REASONS: tuple[str, ...] = get_args(AutoReplyReason)

# Schedules (API.md, "Schedules"): the days of `weekly`, in ISO order (Monday first, as
# `date.weekday()` counts them), and the wall-clock times of its intervals. "24:00" may
# only end an interval: the end of the day.
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = get_args(Weekday)
CLOCK_TIME_PATTERN = r"^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# How much one schedule or responder may hold.
MAX_INTERVALS_PER_DAY = 48
MAX_CLOSED_PERIODS = 500
MAX_LABEL_CHARS = 100
MAX_AWAY_PERIODS = 100
# An organization's time zone until its admin sets one; schedules given without a time
# zone take the organization's.
DEFAULT_TIMEZONE = "America/New_York"


# Remembered: a page of fifty conversations writes some two hundred instants, most of
# them written before (the same rows are read again and again). Equal instants are equal
# keys whatever their zone, and write the same.
@lru_cache(maxsize=32_768)
def format_instant(moment: datetime) -> str:
    """An instant as the API writes every timestamp: RFC 3339 in UTC with `Z`, with
    microseconds when there are any; exactly as pydantic writes the models' datetimes,
    for the rows rendered by hand. A value without a zone is UTC (as stored)."""
    if moment.tzinfo is None:
        return moment.isoformat() + "Z"
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat()[:-6] + "Z"
