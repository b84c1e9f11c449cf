"""The auto-responder: which inbound SMS get an automatic reply, and why not; and each
user's responder settings.

The rule itself (`auto_reply_block`) is pure; the rate window is asked last, so that
a message that fails another criterion never takes the window. It also decides a
group's after-hours reply (`app.services.after_hours`): a group without one gets no
automatic reply (`group_recipient`), a group with one is answered under the same
exclusions, the same order and the same window, its replies going from the group's
numbers (so a user's own SMS settings are not asked).

When a user's auto-responder answers (`responder_active`): at all hours without a
schedule, else while the schedule is closed or an away period holds (a group's
after-hours reply: while its schedule is closed). Not answering for that reason is
`within_hours`, the last criterion before the window.

The rate window (the contract's: at most one auto-reply to an external number per
organization per `AUTO_REPLY_WINDOW_SECONDS`, across every process) is decided here:
`decide_auto_reply` takes it for one carrier message (`window_holder`: a carrier's retry
or a concurrent copy of the same message finds the window its own, and nobody else's),
and `give_back_window` returns one taken for a reply that was then not stored, so the
carrier's retry can still be answered. The storage behind it (one Redis `SET NX PX` per
pair, or a map in process) is `app.infra.limiters`; it fails closed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.infra.limiters import AutoReplyWindow, LimiterUnavailable
from app.models import Organization, utcnow
from app.services import audit, users
from app.services.schedules import (
    AwayPeriod,
    Schedule,
    away_at,
    is_open,
    parse_away,
    parse_schedule,
)
from app.services.sealing import open_auto_reply, seal_auto_reply
from app.vocabulary import AutoReplyReason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AutoReplyFacts:
    """What the rule looks at for one inbound SMS: the sender, and the responder (the
    user's auto-responder, or the group's after-hours reply)."""

    to_group: bool
    # The group has an after-hours reply (only asked when `to_group`).
    group_after_hours: bool
    from_internal_number: bool
    is_keyword: bool
    opted_out: bool
    # The user's own SMS settings (not asked of a group).
    sms_enabled: bool
    has_outbound_number: bool
    text: str
    enabled: bool
    # The responder answers now: its schedule is closed or an away period holds.
    active: bool
    # Someone set the responder up (a user's PUT, a group's after-hours reply); one never
    # set up is off, not a blank text anyone chose.
    set_up: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    sent: bool
    reason: AutoReplyReason
    # Whether deciding took the rate window anew (not already held by this message):
    # such a window must be given back if the reply is then not stored.
    took_window: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "reason": self.reason}


def auto_reply_block(facts: AutoReplyFacts) -> AutoReplyReason | None:
    """The first criterion that forbids a reply, or None when only the window remains."""
    if facts.to_group and not facts.group_after_hours:
        return "group_recipient"
    if facts.from_internal_number:
        return "internal_sender"
    if facts.is_keyword:
        return "keyword"
    if facts.opted_out:
        return "opted_out"
    if not facts.to_group:
        # A user's reply goes from their own number; a group's from the group's numbers.
        if not facts.sms_enabled:
            return "sms_disabled"
        if not facts.has_outbound_number:
            return "no_outbound_number"
    if not facts.set_up:
        return "disabled"
    if not facts.text.strip():
        return "empty_text"
    if not facts.enabled:
        return "disabled"
    if not facts.active:
        return "within_hours"
    return None


def responder_active(schedule: Schedule | None, away: Sequence[AwayPeriod], at: datetime) -> bool:
    """Whether a user's auto-responder answers at `at`: always without a schedule (away
    periods then change nothing); with one, while it is closed or an away period holds."""
    return schedule is None or not is_open(schedule, at) or away_at(away, at)


async def decide_auto_reply(
    facts: AutoReplyFacts,
    window: AutoReplyWindow,
    *,
    org_id: uuid.UUID,
    external_number: str,
    window_seconds: float,
    holder: str | None = None,
) -> Decision:
    """Apply every criterion, then take the rate window; fail closed if it cannot be asked."""
    blocked = auto_reply_block(facts)
    if blocked is not None:
        return Decision(False, blocked)
    try:
        hold = await window.try_acquire(str(org_id), external_number, window_seconds, holder)
    except LimiterUnavailable:
        log.warning("auto-reply limiter unavailable; no auto-reply sent")
        return Decision(False, "limiter_unavailable")
    if not hold:
        return Decision(False, "rate_limited")
    return Decision(True, "sent", took_window=hold.new)


def window_holder(carrier: str, carrier_message_id: str) -> str:
    """Who holds a window taken for an inbound message: the message itself, by its
    carrier id."""
    return f"{carrier}:{carrier_message_id}"


async def give_back_window(
    window: AutoReplyWindow, org_id: uuid.UUID, external_number: str, holder: str
) -> None:
    """Return a window taken for a reply that was not stored; best effort (the window
    then simply runs out: one missed reply at worst)."""
    try:
        await window.release(str(org_id), external_number, holder)
    except Exception:
        log.warning("could not release the auto-reply window", exc_info=True)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AutoResponderSettings:
    enabled: bool
    text: str
    schedule: Schedule | None
    away: tuple[AwayPeriod, ...]

    def as_dict(self) -> dict[str, Any]:
        """The settings as the API shows them."""
        return {
            "enabled": self.enabled,
            "text": self.text,
            "schedule": self.schedule.as_json() if self.schedule else None,
            "away": [p.as_json() for p in self.away],
        }


def stored_hours(
    schedule: dict[str, Any] | None, away: list[dict[str, Any]] | None
) -> tuple[Schedule | None, tuple[AwayPeriod, ...]]:
    """A user's auto-responder schedule and away periods, as stored."""
    return (None if schedule is None else parse_schedule(schedule)), parse_away(away)


async def get_auto_responder(
    keyring: Keyring, session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID
) -> AutoResponderSettings:
    """A user's auto-responder: enabled, its text, when it answers."""
    user = await users.get_user(session, org_id, user_id)
    schedule, away = stored_hours(user.auto_reply_schedule, user.auto_reply_away)
    return AutoResponderSettings(
        user.auto_reply_enabled,
        open_auto_reply(keyring, user.id, user.auto_reply_ciphertext),
        schedule,
        away,
    )


async def set_auto_responder(
    keyring: Keyring,
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    user_id: uuid.UUID,
    *,
    enabled: bool,
    text: str,
    schedule: dict[str, Any] | None = None,
    away: list[dict[str, Any]] | None = None,
) -> AutoResponderSettings:
    """Replace a user's auto-responder; a schedule without a time zone takes the
    organization's. A 422 names a bad field of the schedule or the away periods."""
    user = await users.get_user(session, org_id, user_id)
    parsed = None
    if schedule is not None:
        org = await session.get(Organization, org_id)
        assert org is not None
        parsed = parse_schedule(schedule, "schedule", default_timezone=org.timezone)
    periods = parse_away(away, "away")
    user.auto_reply_enabled = enabled
    user.auto_reply_ciphertext = seal_auto_reply(keyring, user.id, text)
    user.auto_reply_schedule = parsed.as_json() if parsed else None
    user.auto_reply_away = [p.as_json() for p in periods]
    user.updated_at = utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="auto_responder.set",
        target_type="user",
        target_id=user.id,
        changes={
            "enabled": enabled,
            "schedule": user.auto_reply_schedule,
            "away": user.auto_reply_away,
        },
    )
    await session.commit()
    return AutoResponderSettings(enabled, text, parsed, periods)
