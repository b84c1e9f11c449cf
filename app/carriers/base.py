"""The carrier interface: what the service needs from Telnyx, Twilio or the simulator.

Nothing outside `app/carriers/` knows a carrier's wire format: sends go through
`Carrier.send`, and a carrier's webhooks are read by its `WebhookReader`, from the
request as it came (`WebhookRequest`) into the events below and back into the
acknowledgement the carrier expects (`WebhookAck`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol

import orjson

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


class WebhooksNotConfigured(Exception):
    """We hold no secret to verify this carrier's webhooks with."""


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


# --- webhooks ----------------------------------------------------------------------


def public_url(public_base_url: str, path: str, query: str = "") -> str:
    """The URL a carrier called: our public base URL (PUBLIC_BASE_URL, which ends with
    any prefix a proxy serves us under) + the path within the app + the raw query."""
    url = public_base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url


# Not frozen: a frozen dataclass costs a microsecond more to build, on the busiest path.
@dataclass(slots=True)
class WebhookRequest:
    """A carrier's webhook as it reached us, nothing read from it yet (read only)."""

    # The path the carrier called, relative to the app: without the prefix a proxy
    # serves us under (uvicorn's --root-path).
    path: str
    # The raw query string, as sent.
    query: str
    # Looked up by lower-case name (Starlette's Headers, or a dict with lower-case keys).
    headers: Mapping[str, str]
    body: bytes
    # The URL the carrier called, and signs when its signature covers the URL.
    public_url: str

    @classmethod
    def received(
        cls,
        public_base_url: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> WebhookRequest:
        """The request with its public URL: `public_base_url` + `path` + `query`."""
        return cls(path, query, headers, body, public_url(public_base_url, path, query))


@dataclass(frozen=True, slots=True)
class WebhookAck:
    """The answer a carrier expects to a webhook it delivered."""

    status: int
    body: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """A request header a carrier signs its webhooks with (described in the API docs)."""

    name: str
    description: str


WebhookEvent = InboundSms | StatusUpdate | None


class WebhookReader(Protocol):
    """A carrier's webhooks, read as that carrier signs and shapes them."""

    @property
    def carrier(self) -> str:
        """The carrier's name, as in its events ("telnyx", "twilio")."""
        ...

    def read(self, request: WebhookRequest) -> WebhookEvent:
        """Verify the request and turn it into an event; None for one that is
        acknowledged and changes nothing.

        Raises InvalidSignature, MalformedWebhook, or WebhooksNotConfigured.
        """
        ...

    def acknowledge(self, request: WebhookRequest, outcome: str) -> WebhookAck:
        """The answer to `request` once its event was handled; `outcome` says how
        (`stored`, `duplicate`, `unrouted`, `status_applied`, `status_unmatched`, `ignored`)."""
        ...


@dataclass(frozen=True, slots=True)
class UnconfiguredWebhooks:
    """The reader of a carrier whose webhook secret is not set: it refuses everything."""

    carrier: str
    reason: str

    def read(self, request: WebhookRequest) -> WebhookEvent:
        """Refuse: without the secret, nothing the carrier sends can be verified."""
        raise WebhooksNotConfigured(self.reason)

    def acknowledge(self, request: WebhookRequest, outcome: str) -> WebhookAck:
        """Never reached: `read` refuses first."""
        raise WebhooksNotConfigured(self.reason)


@lru_cache(maxsize=32)
def json_ack(outcome: str) -> WebhookAck:
    """`{"status": outcome}` as JSON: how we acknowledge a webhook that asks for no more.

    Made once per outcome (there are a handful)."""
    return WebhookAck(200, orjson.dumps({"status": outcome}), "application/json")
