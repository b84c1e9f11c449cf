"""The auto-responder: which inbound SMS get an automatic reply, and why not; and each
user's responder settings.

The rule itself (`auto_reply_block`) is pure; the rate window is asked last, so that
a message that fails another criterion never takes the window.

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
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.infra.limiters import AutoReplyWindow, LimiterUnavailable
from app.models import utcnow
from app.services import audit, users
from app.services.sealing import open_auto_reply, seal_auto_reply
from app.vocabulary import AutoReplyReason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AutoReplyFacts:
    """What the rule looks at for one inbound SMS."""

    to_group: bool
    from_internal_number: bool
    is_keyword: bool
    opted_out: bool
    sms_enabled: bool
    has_outbound_number: bool
    text: str
    enabled: bool


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
    if facts.to_group:
        return "group_recipient"
    if facts.from_internal_number:
        return "internal_sender"
    if facts.is_keyword:
        return "keyword"
    if facts.opted_out:
        return "opted_out"
    if not facts.sms_enabled:
        return "sms_disabled"
    if not facts.has_outbound_number:
        return "no_outbound_number"
    if not facts.text.strip():
        return "empty_text"
    if not facts.enabled:
        return "disabled"
    return None


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


async def get_auto_responder(
    keyring: Keyring, session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[bool, str]:
    """A user's auto-responder: enabled, and its text."""
    user = await users.get_user(session, org_id, user_id)
    return user.auto_reply_enabled, open_auto_reply(keyring, user.id, user.auto_reply_ciphertext)


async def set_auto_responder(
    keyring: Keyring,
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    user_id: uuid.UUID,
    *,
    enabled: bool,
    text: str,
) -> tuple[bool, str]:
    """Replace a user's auto-responder."""
    user = await users.get_user(session, org_id, user_id)
    user.auto_reply_enabled = enabled
    user.auto_reply_ciphertext = seal_auto_reply(keyring, user.id, text)
    user.updated_at = utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="auto_responder.set",
        target_type="user",
        target_id=user.id,
        changes={"enabled": enabled},
    )
    await session.commit()
    return enabled, text
