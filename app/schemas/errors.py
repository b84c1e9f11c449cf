"""Every error code the API answers with: its status, what it means, and the shape of its
`details` where it has one.

Operations name the codes their services raise (`errors(...)` in their decorators); the
codes every operation of a kind can answer (no token, an invalid body, a rate limit, a
database that does not answer) are added by `app.openapi` from what the route depends
on. The document then lists, per operation, each status with its codes as an enum, and
`details` typed per code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field


class FieldProblem(BaseModel):
    """One field of the request that is not acceptable."""

    field: str = Field(description="The field's dotted path in the request, e.g. `to.0`.")
    message: str | None = None
    type: str | None = Field(default=None, description="The kind of problem.")
    value: str | None = Field(default=None, description="The value refused, when it helps.")
    max_length: int | None = None


class RecipientProblem(BaseModel):
    """One recipient of a send that cannot be reached."""

    index: int = Field(description="The recipient's position in `to`.")
    code: str = Field(examples=["unknown_user"])
    message: str


class RateLimit(BaseModel):
    limited_by: Literal["token", "client_address"]
    limit: int = Field(description="Requests (or messages) allowed per window.")
    window_seconds: int
    retry_after: int = Field(description="Seconds until the request may be made again.")


class RequestSizeLimit(BaseModel):
    max_bytes: int


class StreamLimit(BaseModel):
    max_streams: int


class RecipientLimit(BaseModel):
    recipients: int
    max_recipients: int


class MediaRefused(BaseModel):
    media_count: int


class TakenUsername(BaseModel):
    username: str


class TakenExtension(BaseModel):
    extension: str


class TakenNumber(BaseModel):
    number: str


class ExistingContact(BaseModel):
    phone_number: str
    contact_id: str


class NumberInUse(BaseModel):
    users: list[str] = Field(description="Usernames that send from the number.")
    groups: list[str] = Field(description="Groups that send from the number.")


class ReleasedNumber(BaseModel):
    from_number: str


class OptedOutNumber(BaseModel):
    phone_number: str


class LastAdmin(BaseModel):
    user_id: str


@dataclass(frozen=True)
class ErrorCode:
    status: int
    description: str
    # The type of `details` (a model, or a list or map of them); None: always null.
    details: Any = None


_FIELDS = list[FieldProblem]

CODES: dict[str, ErrorCode] = {
    # 400
    "malformed_json": ErrorCode(400, "The request body is not valid JSON."),
    "bad_request": ErrorCode(400, "The request body cannot be read (not UTF-8 text, say)."),
    "invalid_cursor": ErrorCode(400, "The cursor is not one this API returned."),
    "token_in_url": ErrorCode(400, "A token was put in the URL: send it as a header."),
    "ambiguous_credentials": ErrorCode(400, "Both a ticket and a bearer token were sent."),
    "malformed_webhook": ErrorCode(400, "The webhook's body cannot be read."),
    # 401
    "missing_token": ErrorCode(401, "No `Authorization: Bearer <token>` header."),
    "invalid_token": ErrorCode(401, "The token is unknown, revoked, or its user deactivated."),
    "invalid_signature": ErrorCode(401, "The carrier's signature does not verify, or is stale."),
    "invalid_ticket": ErrorCode(401, "The stream ticket is unknown, used or expired."),
    # 403
    "admin_required": ErrorCode(403, "Only the organization's admins may do this."),
    "operator_disabled": ErrorCode(403, "The operator API is off (no OPERATOR_TOKEN)."),
    # 404
    "not_found": ErrorCode(404, "No such resource."),
    "user_not_found": ErrorCode(404, "No such user in the organization."),
    "token_not_found": ErrorCode(404, "No such token of this user."),
    "group_not_found": ErrorCode(404, "No such group in the organization."),
    "phone_number_not_found": ErrorCode(404, "No such phone number in the organization."),
    "organization_not_found": ErrorCode(404, "No such organization."),
    "contact_not_found": ErrorCode(404, "No such contact."),
    "conversation_not_found": ErrorCode(404, "No such conversation, or not one you can see."),
    "message_not_found": ErrorCode(404, "No such message, or not one you can see."),
    # 409
    "not_cancelable": ErrorCode(409, "Only a message still scheduled can be canceled."),
    "user_active": ErrorCode(409, "The user is active already."),
    "conflict": ErrorCode(409, "A concurrent change took the name or extension meanwhile."),
    "username_taken": ErrorCode(409, "The username is taken.", TakenUsername),
    "extension_taken": ErrorCode(409, "The extension is taken.", TakenExtension),
    "group_name_taken": ErrorCode(409, "A group of that name exists."),
    "phone_number_taken": ErrorCode(409, "The number is registered already.", TakenNumber),
    "phone_number_in_use": ErrorCode(
        409, "Users or groups send from the number: change them first.", NumberInUse
    ),
    "contact_exists": ErrorCode(409, "There is a contact for that number.", ExistingContact),
    "last_admin": ErrorCode(409, "The organization would have no admin left.", LastAdmin),
    "recipient_opted_out": ErrorCode(
        409,
        "A recipient opted out of texts (STOP): the send names each one; a reply, the number.",
        list[RecipientProblem] | OptedOutNumber,
    ),
    "recipient_inactive": ErrorCode(409, "The conversation's other user is deactivated."),
    # 415
    "unsupported_media_type": ErrorCode(
        415, "The body was not sent as JSON (Content-Type: application/json)."
    ),
    # 413
    "payload_too_large": ErrorCode(413, "The request body is larger than allowed.", RequestSizeLimit),
    # 422
    "validation_error": ErrorCode(422, "A field is missing or not valid.", _FIELDS),
    "invalid_phone_number": ErrorCode(422, "Not a phone number.", _FIELDS),
    "invalid_search": ErrorCode(422, "The search has neither letters nor digits.", _FIELDS),
    "invalid_assignee": ErrorCode(
        422, "Not an active user who can read the conversation.", _FIELDS
    ),
    "unknown_members": ErrorCode(422, "Some members are not users here.", _FIELDS),
    "number_not_owned": ErrorCode(422, "Not a number of the organization.", _FIELDS),
    "invalid_recipients": ErrorCode(
        422, "Some recipients cannot be reached; nothing was sent.", list[RecipientProblem]
    ),
    "too_many_recipients": ErrorCode(
        422, "The send reaches more parties than one send may.", RecipientLimit
    ),
    "empty_body": ErrorCode(422, "The message body is empty.", _FIELDS),
    "invalid_send_at": ErrorCode(
        422, "`send_at` is not an instant from now to 35 days ahead.", _FIELDS
    ),
    "scheduling_not_supported": ErrorCode(
        422, "Only texts to phone numbers can be scheduled.", list[RecipientProblem]
    ),
    "body_too_long": ErrorCode(422, "The message body is too long.", _FIELDS),
    "mms_not_supported": ErrorCode(422, "Media cannot be sent.", MediaRefused),
    "no_outbound_number": ErrorCode(422, "There is no number to send the text from."),
    "sms_disabled": ErrorCode(422, "SMS is not enabled for the sender."),
    "from_number_released": ErrorCode(
        422, "The number to send from is no longer the organization's.", ReleasedNumber
    ),
    "idempotency_key_reused": ErrorCode(
        422, "The Idempotency-Key was used for a different request."
    ),
    # 429
    "too_many_requests": ErrorCode(
        429,
        "Too many requests with this token, or failed authentications from this address: "
        "wait `Retry-After` seconds.",
        RateLimit,
    ),
    "too_many_streams": ErrorCode(
        429, "The user has as many event streams open as allowed.", StreamLimit
    ),
    # 503
    "database_unavailable": ErrorCode(503, "The database does not answer; try again shortly."),
    "database_busy": ErrorCode(503, "The request collided with another; try again."),
    "carrier_not_configured": ErrorCode(503, "The carrier's webhook secret is not set."),
    "routing_changing": ErrorCode(503, "The number's routing is changing; try again shortly."),
    "tickets_unavailable": ErrorCode(503, "Stream tickets cannot be issued or read right now."),
    "not_alive": ErrorCode(
        503,
        "The process cannot serve: what stopped (the delivery worker, the event stream "
        "guard, a stuck database connection). Restart it.",
        dict[str, str],
    ),
    "not_ready": ErrorCode(
        503, "A dependency does not answer: each one's state (`ok` or why not).", dict[str, str]
    ),
}


def errors(*codes: str) -> dict[str, Any]:
    """What an operation's decorator passes as `openapi_extra`: the error codes its
    services raise (the common ones are added from its dependencies)."""
    unknown = [c for c in codes if c not in CODES]
    if unknown:
        raise KeyError(f"unknown error codes: {unknown}")
    return {"x-error-codes": list(codes)}
