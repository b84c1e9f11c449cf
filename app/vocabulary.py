"""The contract's words that both the schemas and the services use: one definition each.

Limits, statuses and the auto-reply reasons live here, below both layers, so a schema
never imports a service to learn them.
"""

from __future__ import annotations

from typing import Literal, get_args

# The longest message body accepted: ten segments of UCS-2, a little over ten of GSM-7.
MAX_BODY_CHARS = 1600

# `note`: an internal note in a conversation's history, seen by its members only and
# never sent to a carrier.
Direction = Literal["internal", "outbound", "inbound", "note"]

MessageStatus = Literal[
    "received", "delivered", "queued", "sending", "sent", "undelivered", "failed"
]

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
    "rate_limited",
    "limiter_unavailable",
]
AUTO_REPLY_REASONS: tuple[str, ...] = get_args(AutoReplyReason)
