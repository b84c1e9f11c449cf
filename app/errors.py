"""Domain errors: raised by services, turned into the contract's error body in one place."""

from __future__ import annotations

import math
from typing import Any


class AppError(Exception):
    """An error a client can act on: a status, a snake_case code and a sentence."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        """Response headers this error calls for; none but for a few."""
        return {}


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class Invalid(AppError):
    status = 422
    code = "invalid"


def invalid_field(field: str, message: str) -> Invalid:
    """A 422 naming one field of the request, shaped like the framework's own validation
    errors (`validation_error`, details with the field's dotted path)."""
    return Invalid(
        f"The request is not valid ({field}): {message}",
        code="validation_error",
        details=[{"field": field, "message": message, "type": "value_error"}],
    )


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(AppError):
    """A rate limit refused the request; it may be made again after `retry_after` seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(
        self, message: str, *, retry_after: float, details: dict[str, Any] | None = None
    ) -> None:
        # Retry-After is whole seconds: rounded up, so a retry then is not refused again.
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(message, details={**(details or {}), "retry_after": self.retry_after})

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyStreams(AppError):
    """The user holds as many event streams as one user may."""

    status = 429
    code = "too_many_streams"


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"


class RecipientOptedOut(Conflict):
    code = "recipient_opted_out"


class NoOutboundNumber(Invalid):
    code = "no_outbound_number"


class SmsDisabled(Invalid):
    code = "sms_disabled"


class MmsNotSupported(Invalid):
    code = "mms_not_supported"


class FromNumberReleased(Invalid):
    code = "from_number_released"


class TooManyRecipients(Invalid):
    code = "too_many_recipients"
