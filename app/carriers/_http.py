"""Helpers shared by the HTTP carriers: transport errors, Retry-After, status mapping."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import TypeGuard
from urllib.parse import quote

import httpx

from app.carriers.base import CarrierError, OutboundStatus

# Errors raised before any byte of the request can have reached the carrier: a resend
# cannot duplicate the message.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def json_object(response: httpx.Response) -> dict[str, object] | None:
    """The response body when it is a JSON object, else None."""
    try:
        doc = response.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def non_empty_str(value: object) -> TypeGuard[str]:
    """True for a string with something in it."""
    return isinstance(value, str) and value != ""


def carrier_error_from_transport(exc: httpx.HTTPError, carrier: str) -> CarrierError:
    """Map a network failure to a retryable CarrierError.

    `extra["maybe_accepted"] == "true"` marks failures after the request may have
    reached the carrier (read timeout, dropped connection): the carrier may have
    accepted the message even though we got no answer.
    """
    if isinstance(exc, _NOT_SENT):
        return CarrierError(
            code="carrier_unreachable",
            message=f"Could not connect to {carrier}: {type(exc).__name__}.",
            retryable=True,
        )
    if isinstance(exc, httpx.TimeoutException):
        return CarrierError(
            code="carrier_timeout",
            message=f"{carrier} did not answer in time.",
            retryable=True,
            extra={"maybe_accepted": "true"},
        )
    return CarrierError(
        code="carrier_unreachable",
        message=f"The connection to {carrier} failed: {type(exc).__name__}.",
        retryable=True,
        extra={"maybe_accepted": "true"},
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def outbound_status(raw: object, table: Mapping[str, OutboundStatus]) -> OutboundStatus:
    """The carrier's status in a send response, in our vocabulary; "sent" when unknown.

    The carrier answered 2xx, so the message is accepted whatever it calls that state.
    """
    if isinstance(raw, str):
        return table.get(raw, "sent")
    return "sent"


def send_refused(
    carrier: str, response: httpx.Response, code: str | None, detail: str | None
) -> CarrierError:
    """The CarrierError for a non-2xx send response: 429 and 5xx are retried, other
    4xx fail the message at once with the carrier's own code and reason."""
    status = response.status_code
    extra = {"carrier_code": code} if code else {}
    if status == 429:
        return CarrierError(
            code="carrier_rate_limited",
            message=detail or f"{carrier} is rate limiting our sends.",
            retryable=True,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            http_status=status,
            extra=extra,
        )
    if status >= 500:
        return CarrierError(
            code="carrier_unavailable",
            message=detail or f"{carrier} answered HTTP {status}.",
            retryable=True,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            http_status=status,
            extra=extra,
        )
    return CarrierError(
        code=code or f"http_{status}",
        message=detail or f"{carrier} refused the message (HTTP {status}).",
        retryable=False,
        http_status=status,
    )


class HttpCarrier:
    """What the HTTP carriers share: our public URL and an HTTP client they may own."""

    def __init__(
        self, public_base_url: str, timeout: float, client: httpx.AsyncClient | None
    ) -> None:
        self._public_base_url = public_base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=self._timeout)

    def callback_url(self, path: str, reference: str) -> str:
        """Our webhook URL for one message's receipts, carrying our message id as `ref`."""
        return f"{self._public_base_url}{path}?ref={quote(reference, safe='')}"

    async def aclose(self) -> None:
        """Close the HTTP client if we created it."""
        if self._owns_client:
            await self._client.aclose()
