"""What a carrier sends, checked against what we can store before it reaches a statement.

A carrier signs whatever its systems hand it. A value PostgreSQL cannot take (a NUL, an
id longer than its column, a media count beyond an integer) must not make a webhook
fail with a 5xx, which the carrier retries for hours: such a message is kept as an
unrouted one with the reason `invalid_payload`, its values made to fit, and a receipt
that names no message we could have stored matches none. The limits are the columns'.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

from app.carriers.base import StatusUpdate
from app.models import Message

INVALID_PAYLOAD = "invalid_payload"

CARRIER_ID_LENGTH: int = Message.__table__.c.carrier_message_id.type.length  # type: ignore[attr-defined]
NUMBER_LENGTH: int = Message.__table__.c.from_number.type.length  # type: ignore[attr-defined]
ERROR_CODE_LENGTH: int = Message.__table__.c.error_code.type.length  # type: ignore[attr-defined]
# An error text is for people: a carrier's is a sentence or two.
ERROR_MESSAGE_LENGTH = 1000
# Carriers deliver at most ten attachments with a message; far more is not a message.
MAX_MEDIA = 100
# The largest value an INTEGER column holds.
_INT_MAX = 2**31 - 1

# C0 and C1 control characters (NUL among them): never part of an id or a number.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# In free text, line breaks and tabs may stay.
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def has_control_characters(value: str) -> bool:
    """Whether `value` holds a control character (NUL, escape, ...)."""
    return _CONTROL.search(value) is not None


def storable(value: str, length: int) -> bool:
    """A non-empty value without control characters that fits a column of `length`."""
    return 0 < len(value) <= length and not has_control_characters(value)


def fitted(value: str, length: int) -> str:
    """`value` without its control characters, cut to `length`: for keeping what was sent."""
    return _CONTROL.sub("", value)[:length]


def carrier_id_key(carrier_message_id: str) -> str:
    """The carrier id to store: itself when it can be stored, else a digest of it, so
    that the carrier's retries of the same message are still recognized as one."""
    if storable(carrier_message_id, CARRIER_ID_LENGTH):
        return carrier_message_id
    raw = carrier_message_id.encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def media_count_ok(count: int) -> bool:
    """Whether a message can have come with this many attachments."""
    return 0 <= count <= MAX_MEDIA


def stored_media_count(count: int) -> int:
    """A media count as an INTEGER column can hold it."""
    return min(max(count, 0), _INT_MAX)


def storable_status(update: StatusUpdate) -> StatusUpdate | None:
    """The receipt with its error made to fit; None when its carrier id cannot be one we
    stored (too long, control characters): then it is about no message of ours."""
    if not storable(update.carrier_message_id, CARRIER_ID_LENGTH):
        return None
    code = fitted(update.error_code, ERROR_CODE_LENGTH) if update.error_code else None
    message = update.error_message
    if message:
        message = _CONTROL_IN_TEXT.sub("", message)[:ERROR_MESSAGE_LENGTH]
    if (code, message) == (update.error_code, update.error_message):
        return update
    return replace(update, error_code=code or None, error_message=message or None)
