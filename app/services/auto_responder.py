"""The auto-responder's rules: which inbound SMS get an automatic reply, and why not.

The rule itself (`auto_reply_block`) is pure; the rate window is asked last, so that
a message that fails another criterion never takes the window.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.services.limits import AutoReplyWindow, LimiterUnavailable

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
    reason: str
    # Whether deciding took the rate window anew (not already held by this message):
    # such a window must be given back if the reply is then not stored.
    took_window: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "reason": self.reason}


def auto_reply_block(facts: AutoReplyFacts) -> str | None:
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
