"""The carrier interface: what the service needs from Telnyx, Twilio or the simulator.

Nothing outside `app/carriers/` knows a carrier's wire format: webhooks are parsed
into the events below, and sends go through `Carrier.send`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

# Our status vocabulary for outbound messages (the contract's).
OutboundStatus = Literal["queued", "sending", "sent", "delivered", "undelivered", "failed"]


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS (or MMS, whose media we drop) that a carrier delivered to one of our numbers."""

    carrier: str
    carrier_message_id: str
    from_number: str
    to_number: str
    text: str
    media_count: int = 0
    # The carrier answered this text itself as a keyword (its own STOP or HELP reply
    # went out already), so we must not answer it again.
    carrier_answered: bool = False
    # The other numbers the carrier says the message was addressed to, after
    # `to_number` and in the carrier's order (a text to several numbers).
    also_to: tuple[str, ...] = ()

    def recipients(self) -> tuple[str, ...]:
        """Every number the message was addressed to, `to_number` first."""
        return (self.to_number, *self.also_to)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A delivery receipt for a message we sent.

    `reference` is our own message id when the carrier echoes it back (we put it in
    the per-message status callback URL), so a receipt can be matched even when the
    worker that sent the message died before it stored the carrier's id.
    """

    carrier: str
    carrier_message_id: str
    status: OutboundStatus
    error_code: str | None = None
    error_message: str | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """The carrier accepted the message."""

    carrier_message_id: str
    status: OutboundStatus = "sent"


@dataclass(slots=True)
class CarrierError(Exception):
    """The carrier refused or could not be reached.

    `retryable` is true for network errors, timeouts, 5xx and 429; false for other 4xx,
    which fail the message at once with the carrier's reason.
    """

    code: str
    message: str
    retryable: bool
    retry_after: float | None = None
    http_status: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidSignature(Exception):
    """A webhook whose signature or timestamp does not verify."""


class MalformedWebhook(Exception):
    """A webhook that verified but whose payload is not one we understand."""


StatusSink = Callable[[StatusUpdate], Awaitable[None]]
InboundSink = Callable[[InboundSms], Awaitable[None]]


class Carrier(Protocol):
    """An outbound SMS provider."""

    name: str

    async def send(
        self, *, from_number: str, to_number: str, body: str, reference: str
    ) -> SendResult:
        """Hand one message to the carrier; raise CarrierError when it is not accepted.

        `reference` is our message id; carriers that take a per-message status
        callback get it in that URL so receipts can be matched to it.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
