"""A fake Telnyx + Twilio over real HTTP, for end-to-end tests and local development.

It takes sends on the carriers' own endpoints, answers like them, and reports
delivery back with webhooks signed the way each carrier signs them (Ed25519 for
Telnyx, X-Twilio-Signature for Twilio), retrying on 5xx like they do. The carriers'
own SDKs work against it (their base URL pointed at it): Telnyx `messages.send` (from a
number, or with only `messaging_profile_id`; MMS with `media_urls`), `send_long_code`,
`send_number_pool`, `messages.retrieve`; Twilio `messages.create` (with `from_` or only
`messaging_service_sid`), `messages(sid).fetch()`, `messages.list()`/`stream()`. Anything
else under `/v2/` or `/2010-04-01/` is answered 404 or 405 in that carrier's JSON error
shape, as the real API would. A control
API under `/_sim/` injects failures, sends inbound SMS, and lists what was sent.

    python -m devtools.simulator_server --port 8099 --webhook-base http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import httpx
import nacl.signing
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from app.carriers import telnyx as telnyx_wire
from app.carriers import twilio as twilio_wire

logger = logging.getLogger(__name__)

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_TWILIO_MAX_BODY = 1600
# The GSM-7 default alphabet and its extension table (extension chars cost two septets).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

FailMode = Literal["5xx", "429", "timeout", "4xx"]
Outcome = Literal["delivered", "undelivered", "failed", "none"]
_OUTCOMES: tuple[Outcome, ...] = ("delivered", "undelivered", "failed", "none")

# The receipts each outcome produces: Telnyx (event type, recipient status) and
# Twilio (MessageStatus, ErrorCode). A send that fails outright is never "sent".
_TELNYX_STEPS: dict[Outcome, list[tuple[str, str]]] = {
    "delivered": [("message.sent", "sent"), ("message.finalized", "delivered")],
    "undelivered": [("message.sent", "sent"), ("message.finalized", "delivery_failed")],
    "failed": [("message.finalized", "sending_failed")],
    "none": [],
}
_TWILIO_STEPS: dict[Outcome, list[tuple[str, str | None]]] = {
    "delivered": [("sent", None), ("delivered", None)],
    "undelivered": [("sent", None), ("undelivered", "30003")],
    "failed": [("failed", "30008")],
    "none": [],
}


@dataclass
class SimulatorConfig:
    """How the simulator behaves; every field has a development default."""

    # Where inbound webhooks and Telnyx receipts without a per-message URL go
    # (the service's PUBLIC_BASE_URL).
    webhook_base: str = "http://127.0.0.1:8000"
    telnyx_signing_key: nacl.signing.SigningKey = field(
        default_factory=nacl.signing.SigningKey.generate
    )
    # None: any non-empty bearer token is accepted.
    telnyx_api_key: str | None = None
    twilio_account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    twilio_auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    # Pause before each delivery receipt (sent, then final).
    status_delay: float = 0.05
    webhook_attempts: int = 5
    webhook_backoff: float = 0.2
    webhook_timeout: float = 5.0
    max_messages: int = 10_000

    @property
    def telnyx_public_key(self) -> str:
        """Base64 public key for the service's TELNYX_PUBLIC_KEY."""
        return telnyx_wire.public_key_b64(self.telnyx_signing_key)

    @staticmethod
    def signing_key_from_b64(seed_b64: str) -> nacl.signing.SigningKey:
        """A Telnyx signing key from a base64 32-byte seed."""
        try:
            seed = base64.b64decode(seed_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("the Telnyx private key is not valid base64") from exc
        if len(seed) != 32:
            raise ValueError("the Telnyx private key must be a 32-byte seed")
        return nacl.signing.SigningKey(seed)


@dataclass
class _Failure:
    mode: FailMode
    seconds: float
    retry_after: float
    accept: bool
    code: str | None
    message: str | None


@dataclass
class _Accepted:
    carrier: Literal["telnyx", "twilio"]
    id: str
    from_number: str
    to_number: str
    text: str
    accepted_at: float
    callback_url: str | None
    failover_url: str | None
    outcome: Outcome
    media_urls: list[str] = field(default_factory=list)
    # Telnyx: the messaging profile sent with; Twilio: the messaging service.
    messaging_profile_id: str | None = None
    messaging_service_sid: str | None = None
    # The sender the carrier picked from the profile's or the service's pool.
    from_pool: bool = False
    # Where its receipts have brought it (each carrier's own word).
    status: str = "queued"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "carrier": self.carrier,
            "from": self.from_number,
            "to": self.to_number,
            "text": self.text,
            "accepted_at": _iso(self.accepted_at),
            "callback_url": self.callback_url,
            "outcome": self.outcome,
        }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def _segments(text: str) -> tuple[str, int]:
    """Encoding and segment count, as a carrier bills them."""
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENDED for c in text):
        septets = sum(2 if c in _GSM7_EXTENDED else 1 for c in text)
        return "GSM-7", 1 if septets <= 160 else -(-septets // 153)
    units = len(text.encode("utf-16-le")) // 2
    return "UCS-2", 1 if units <= 70 else -(-units // 67)


class SimulatorState:
    """Everything the simulator remembers; one per app."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.messages: deque[_Accepted] = deque(maxlen=config.max_messages)
        self.failures: deque[_Failure] = deque()
        self.outcomes: deque[Outcome] = deque()
        self.webhook_log: deque[dict[str, Any]] = deque(maxlen=config.max_messages)
        self.tasks: set[asyncio.Task[None]] = set()
        self.client: httpx.AsyncClient | None = None
        # Set by reset/shutdown to cut short sends stuck in a simulated timeout.
        self.release = asyncio.Event()
        # Sends stuck in a simulated timeout now (accepted or not).
        self.held = 0

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, tracked so reset and shutdown can cancel it."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def cancel_tasks(self) -> None:
        """Stop pending webhook deliveries."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def next_outcome(self) -> Outcome:
        return self.outcomes.popleft() if self.outcomes else "delivered"

    def find(self, carrier: str, message_id: str) -> _Accepted | None:
        """An accepted send of `carrier` by its id."""
        for msg in reversed(self.messages):
            if msg.id == message_id and msg.carrier == carrier:
                return msg
        return None

    # --- webhook delivery ---------------------------------------------------------

    async def deliver(
        self,
        *,
        carrier: str,
        event: str,
        message_id: str,
        urls: Sequence[str],
        build: Callable[[int, str], tuple[bytes, dict[str, str]]],
        retry: bool = True,
    ) -> int | None:
        """POST a webhook built per attempt (fresh signature), retrying on 5xx or no answer.

        Tries each of `urls` in turn (Telnyx's failover URL); returns the last HTTP status.
        """
        if self.client is None:
            # Served without lifespan events (e.g. httpx.ASGITransport): make one now.
            self.client = httpx.AsyncClient()
        attempts = max(1, self.config.webhook_attempts) if retry else 1
        status: int | None = None
        for url in urls:
            delay = self.config.webhook_backoff
            for attempt in range(1, attempts + 1):
                content, headers = build(attempt, url)
                error: str | None = None
                try:
                    response = await self.client.post(
                        url, content=content, headers=headers, timeout=self.config.webhook_timeout
                    )
                    status = response.status_code
                except httpx.HTTPError as exc:
                    status, error = None, type(exc).__name__
                self.webhook_log.append(
                    {
                        "carrier": carrier,
                        "event": event,
                        "message_id": message_id,
                        "url": url,
                        "attempt": attempt,
                        "status": status,
                        "error": error,
                        "at": _iso(time.time()),
                    }
                )
                if status is not None and status < 500:
                    # 2xx is done; a 4xx will not get better by repeating it.
                    return status
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        return status

    # --- Telnyx events --------------------------------------------------------------

    def telnyx_event(
        self, event_type: str, payload: dict[str, Any], event_id: str
    ) -> Callable[[int, str], tuple[bytes, dict[str, str]]]:
        """A builder of the signed event body for each delivery attempt."""

        def build(attempt: int, url: str) -> tuple[bytes, dict[str, str]]:
            doc = {
                "data": {
                    "record_type": "event",
                    "id": event_id,
                    "event_type": event_type,
                    "occurred_at": _iso(time.time()),
                    "payload": payload,
                },
                "meta": {"attempt": attempt, "delivered_to": url},
            }
            body = json.dumps(doc, separators=(",", ":")).encode()
            headers = telnyx_wire.sign_telnyx_webhook(
                self.config.telnyx_signing_key, body, int(time.time())
            )
            headers["content-type"] = "application/json"
            return body, headers

        return build

    def telnyx_message_payload(
        self, msg: _Accepted, recipient_status: str, direction: str
    ) -> dict[str, Any]:
        encoding, parts = _segments(msg.text)
        now = _iso(time.time())
        return {
            "record_type": "message",
            "direction": direction,
            "id": msg.id,
            "type": "MMS" if msg.media_urls else "SMS",
            "messaging_profile_id": msg.messaging_profile_id or "simulator-profile",
            "from": {"phone_number": msg.from_number, "carrier": "Telnyx", "line_type": "VoIP"},
            "to": [
                {
                    "phone_number": msg.to_number,
                    "status": recipient_status,
                    "carrier": "SIMULATED WIRELESS",
                    "line_type": "Wireless",
                }
            ],
            "cc": [],
            "text": msg.text,
            "media": [
                {"url": url, "content_type": None, "size": None, "hash_sha256": None}
                for url in msg.media_urls
            ],
            "webhook_url": msg.callback_url,
            "webhook_failover_url": msg.failover_url,
            "encoding": encoding,
            "parts": parts,
            "tags": [],
            "cost": None,
            "received_at": _iso(msg.accepted_at),
            "sent_at": now if recipient_status != "queued" else None,
            "completed_at": now if recipient_status not in ("queued", "sent") else None,
            "valid_until": None,
            "errors": [],
        }

    async def telnyx_receipts(self, msg: _Accepted) -> None:
        """message.sent, then message.finalized with the outcome."""
        urls = [msg.callback_url or f"{self.config.webhook_base.rstrip('/')}/webhooks/telnyx"]
        if msg.failover_url:
            urls.append(msg.failover_url)
        for event_type, recipient_status in _TELNYX_STEPS[msg.outcome]:
            await asyncio.sleep(self.config.status_delay)
            msg.status = recipient_status
            payload = self.telnyx_message_payload(msg, recipient_status, "outbound")
            if recipient_status == "delivery_failed":
                payload["errors"] = [
                    {
                        "code": "40001",
                        "title": "Not routable",
                        "detail": "The destination cannot receive SMS (simulated).",
                    }
                ]
            elif recipient_status == "sending_failed":
                payload["errors"] = [
                    {
                        "code": "40008",
                        "title": "Undeliverable",
                        "detail": "The carrier did not accept the message (simulated).",
                    }
                ]
            await self.deliver(
                carrier="telnyx",
                event=event_type,
                message_id=msg.id,
                urls=urls,
                build=self.telnyx_event(event_type, payload, str(uuid.uuid4())),
            )

    # --- Twilio callbacks -------------------------------------------------------------

    def twilio_form(
        self, fields: list[tuple[str, str]]
    ) -> Callable[[int, str], tuple[bytes, dict[str, str]]]:
        """A builder of the signed form post (signed over the exact target URL)."""

        # Twilio's header for spotting redeliveries: the same on every attempt.
        idempotency_token = uuid.uuid4().hex

        def build(attempt: int, url: str) -> tuple[bytes, dict[str, str]]:
            signature = twilio_wire.twilio_signature(self.config.twilio_auth_token, url, fields)
            return urlencode(fields).encode(), {
                "content-type": "application/x-www-form-urlencoded",
                twilio_wire.SIGNATURE_HEADER: signature,
                "I-Twilio-Idempotency-Token": idempotency_token,
            }

        return build

    async def twilio_receipts(self, msg: _Accepted) -> None:
        """Status callbacks `sent`, then the outcome, when a StatusCallback was given
        (without one, the message still moves on, as `fetch` shows)."""
        if msg.callback_url is None:
            for status, _ in _TWILIO_STEPS[msg.outcome]:
                await asyncio.sleep(self.config.status_delay)
                msg.status = status
            return
        for status, error_code in _TWILIO_STEPS[msg.outcome]:
            await asyncio.sleep(self.config.status_delay)
            msg.status = status
            fields = [
                ("MessageSid", msg.id),
                ("SmsSid", msg.id),
                ("AccountSid", self.config.twilio_account_sid),
                ("From", msg.from_number),
                ("To", msg.to_number),
                ("MessageStatus", status),
                ("SmsStatus", status),
                ("ApiVersion", "2010-04-01"),
            ]
            if error_code is not None:
                fields.append(("ErrorCode", error_code))
            await self.deliver(
                carrier="twilio",
                event=status,
                message_id=msg.id,
                urls=[msg.callback_url],
                build=self.twilio_form(fields),
            )


# --- carrier-shaped errors -----------------------------------------------------------


def _telnyx_error(
    status: int, code: str, title: str, detail: str, pointer: str | None = None
) -> JSONResponse:
    err: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer:
        err["source"] = {"pointer": pointer}
    return JSONResponse({"errors": [err]}, status_code=status)


def _twilio_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )


def _failure_response(carrier: str, failure: _Failure) -> Response:
    """The error response a failing carrier would give for `failure`."""
    telnyx = carrier == "telnyx"
    if failure.mode == "429":
        response: Response = (
            _telnyx_error(429, "10011", "Too many requests", "Slow down (simulated).")
            if telnyx
            else _twilio_error(429, 20429, "Too Many Requests")
        )
        response.headers["Retry-After"] = f"{failure.retry_after:g}"
        return response
    if failure.mode == "4xx":
        if telnyx:
            return _telnyx_error(
                422,
                failure.code or "40001",
                "Not routable",
                failure.message or "The destination number is not routable (simulated).",
                "/to",
            )
        return _twilio_error(
            400,
            int(failure.code or 21211),
            failure.message or "Invalid 'To' Phone Number (simulated).",
        )
    # 5xx, and what a gateway answers after a timeout.
    status = 504 if failure.mode == "timeout" else 503
    if telnyx:
        return _telnyx_error(status, "10007", "Unexpected error", "Simulated outage.")
    return _twilio_error(status, 20500 if status == 503 else 20504, "Simulated outage.")


async def _apply_failure(
    state: SimulatorState, carrier: str, accept: Callable[[], Awaitable[Response]]
) -> Response:
    """Consume one queued failure for this send, or accept it."""
    if not state.failures:
        return await accept()
    failure = state.failures.popleft()
    if failure.mode != "timeout":
        return _failure_response(carrier, failure)
    response = await accept() if failure.accept else None
    # Stall past the client's timeout; reset/shutdown cut this short.
    state.held += 1
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.release.wait(), failure.seconds)
    finally:
        state.held -= 1
    return response if response is not None else _failure_response(carrier, failure)


# --- endpoints ---------------------------------------------------------------------


def _state(request: Request) -> SimulatorState:
    state: SimulatorState = request.app.state.sim
    return state


def _telnyx_unauthorized(state: SimulatorState, request: Request) -> Response | None:
    """Telnyx's 401 unless the request carries the API key (any key when none is set)."""
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    expected = state.config.telnyx_api_key
    if token and (expected is None or hmac.compare_digest(token.encode(), expected.encode())):
        return None
    return _telnyx_error(
        401,
        "10009",
        "Authentication failed",
        "The required authentication headers were either invalid or not included in the request.",
    )


def _telnyx_not_found(detail: str) -> JSONResponse:
    return _telnyx_error(404, "10005", "Resource not found", detail)


def _pool_number(pool: str) -> str:
    """The number a carrier picks from a messaging profile's or service's pool: the same
    one for the same pool."""
    digits = int.from_bytes(hashlib.sha256(pool.encode()).digest()[:4], "big") % 10_000_000
    return f"+1555{digits:07d}"


_PROFILE_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")


async def telnyx_send(request: Request) -> Response:
    """Telnyx `POST /v2/messages` (and `/v2/messages/long_code`, `/number_pool`): from a
    number, or with only `messaging_profile_id` from the profile's pool; SMS, or MMS
    with `media_urls`."""
    state = _state(request)
    refused = _telnyx_unauthorized(state, request)
    if refused is not None:
        return refused
    try:
        doc = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict):
        return _telnyx_error(400, "10015", "Bad Request", "The body must be a JSON object.")
    endpoint = request.url.path.rsplit("/", 1)[-1]
    profile = doc.get("messaging_profile_id")
    if profile is not None and (not isinstance(profile, str) or not _PROFILE_ID.match(profile)):
        return _telnyx_error(
            422,
            "10016",
            "Invalid messaging profile",
            "'messaging_profile_id' must be a messaging profile's id.",
            "/messaging_profile_id",
        )
    from_pool = endpoint == "number_pool" or (endpoint == "messages" and not doc.get("from"))
    if from_pool and profile is None:
        # Telnyx needs a sender: a number of ours, or a profile whose pool sends.
        return _telnyx_missing("from" if endpoint == "messages" else "messaging_profile_id")
    required = ("to",) if from_pool else ("from", "to")
    for name in required:
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            return _telnyx_missing(name)
        if not _E164.match(value):
            return _telnyx_error(
                422,
                "10016",
                "Phone number must be in +E.164 format",
                f"The '{name}' parameter must be a phone number in +E.164 format.",
                f"/{name}",
            )
    text = doc.get("text")
    media_urls = doc.get("media_urls") or []
    if not isinstance(media_urls, list) or not all(
        isinstance(m, str) and m.startswith("http") for m in media_urls
    ):
        return _telnyx_error(
            422, "10003", "Invalid URL", "'media_urls' must be http(s) URLs.", "/media_urls"
        )
    if (not isinstance(text, str) or not text) and not media_urls:
        return _telnyx_error(
            422,
            "10004",
            "Missing required parameter",
            "The 'text' parameter is required for SMS.",
            "/text",
        )
    callback_url, failover_url = doc.get("webhook_url"), doc.get("webhook_failover_url")
    for name, url in (("webhook_url", callback_url), ("webhook_failover_url", failover_url)):
        if url is not None and (not isinstance(url, str) or not url.startswith("http")):
            return _telnyx_error(
                422, "10003", "Invalid URL", f"'{name}' must be an http(s) URL.", f"/{name}"
            )

    async def accept() -> Response:
        msg = _Accepted(
            carrier="telnyx",
            id=str(uuid.uuid4()),
            from_number=_pool_number(str(profile)) if from_pool else doc["from"],
            to_number=doc["to"],
            text=text if isinstance(text, str) else "",
            accepted_at=time.time(),
            callback_url=callback_url,
            failover_url=failover_url,
            outcome=state.next_outcome(),
            media_urls=list(media_urls),
            messaging_profile_id=profile,
            from_pool=from_pool,
        )
        state.messages.append(msg)
        state.spawn(state.telnyx_receipts(msg))
        return JSONResponse({"data": state.telnyx_message_payload(msg, "queued", "outbound")})

    return await _apply_failure(state, "telnyx", accept)


def _telnyx_missing(name: str) -> JSONResponse:
    return _telnyx_error(
        422,
        "10004",
        "Missing required parameter",
        f"The '{name}' parameter is required.",
        f"/{name}",
    )


async def telnyx_retrieve(request: Request) -> Response:
    """Telnyx `GET /v2/messages/{id}`: the message as it stands now."""
    state = _state(request)
    refused = _telnyx_unauthorized(state, request)
    if refused is not None:
        return refused
    msg = state.find("telnyx", request.path_params["id"])
    if msg is None:
        return _telnyx_not_found("The requested message could not be found.")
    return JSONResponse({"data": state.telnyx_message_payload(msg, msg.status, "outbound")})


def _basic_auth(header: str) -> tuple[str, str] | None:
    if header[:6].lower() != "basic ":
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


def _twilio_refusal(request: Request) -> Response | None:
    """Twilio's 401 without the account's credentials, 404 for another account."""
    cfg = _state(request).config
    sid = request.path_params["sid"]
    creds = _basic_auth(request.headers.get("authorization", ""))
    if creds is None or not (
        hmac.compare_digest(creds[0].encode(), cfg.twilio_account_sid.encode())
        and hmac.compare_digest(creds[1].encode(), cfg.twilio_auth_token.encode())
    ):
        return _twilio_error(401, 20003, "Authenticate")
    if sid != cfg.twilio_account_sid:
        return _twilio_error(
            404, 20404, f"The requested resource /2010-04-01/Accounts/{sid} was not found"
        )
    return None


_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")


def _twilio_resource(msg: _Accepted, sid: str) -> dict[str, Any]:
    """A Message resource as Twilio's API shows it."""
    _, segments = _segments(msg.text)
    created = format_datetime(dt.datetime.fromtimestamp(msg.accepted_at, dt.UTC))
    uri = f"/2010-04-01/Accounts/{sid}/Messages/{msg.id}"
    # A message sent through a service shows its sender once Twilio picked it.
    picked = not msg.from_pool or msg.status not in ("accepted", "queued")
    return {
        "account_sid": sid,
        "api_version": "2010-04-01",
        "body": msg.text,
        "date_created": created,
        "date_sent": created if msg.status in ("sent", "delivered", "undelivered") else None,
        "date_updated": created,
        "direction": "outbound-api",
        "error_code": {"undelivered": 30003, "failed": 30008}.get(msg.status),
        "error_message": None,
        "from": msg.from_number if picked else None,
        "messaging_service_sid": msg.messaging_service_sid,
        "num_media": str(len(msg.media_urls)),
        "num_segments": str(segments),
        "price": None,
        "price_unit": "USD",
        "sid": msg.id,
        "status": msg.status,
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": msg.to_number,
        "uri": f"{uri}.json",
    }


async def twilio_send(request: Request) -> Response:
    """Twilio `POST /2010-04-01/Accounts/{sid}/Messages.json`: from a number, or with only
    `MessagingServiceSid` from the service's pool."""
    state = _state(request)
    refused = _twilio_refusal(request)
    if refused is not None:
        return refused
    sid = request.path_params["sid"]
    try:
        pairs = parse_qsl((await request.body()).decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return _twilio_error(400, 21601, "The request body could not be read.")
    form = dict(pairs)
    media = [value for name, value in pairs if name == "MediaUrl" and value]
    to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body")
    service = form.get("MessagingServiceSid") or None
    if not to:
        return _twilio_error(400, 21604, "A 'To' phone number is required.")
    if service is not None and not _SERVICE_SID.match(service):
        return _twilio_error(400, 21705, f"The Messaging Service Sid {service} is invalid.")
    if not from_ and service is None:
        return _twilio_error(400, 21603, "A 'From' phone number is required.")
    if not _E164.match(to):
        return _twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
    if from_ and not _E164.match(from_):
        return _twilio_error(400, 21212, f"Invalid From Number (caller ID): {from_}")
    if not body and not media:
        return _twilio_error(400, 21602, "Message body is required.")
    if body and len(body) > _TWILIO_MAX_BODY:
        return _twilio_error(
            400, 21617, "The concatenated message body exceeds the 1600 character limit."
        )
    callback = form.get("StatusCallback") or None

    async def accept() -> Response:
        msg = _Accepted(
            carrier="twilio",
            id="SM" + secrets.token_hex(16),
            from_number=from_ or _pool_number(str(service)),
            to_number=to,
            text=body or "",
            accepted_at=time.time(),
            callback_url=callback,
            failover_url=None,
            outcome=state.next_outcome(),
            media_urls=media,
            messaging_service_sid=service,
            from_pool=not from_,
            status="queued" if from_ else "accepted",
        )
        state.messages.append(msg)
        resource = _twilio_resource(msg, sid)
        state.spawn(state.twilio_receipts(msg))
        return JSONResponse(resource, status_code=201)

    return await _apply_failure(state, "twilio", accept)


async def twilio_fetch(request: Request) -> Response:
    """Twilio `GET /2010-04-01/Accounts/{sid}/Messages/{message_sid}.json`."""
    refused = _twilio_refusal(request)
    if refused is not None:
        return refused
    sid, message_sid = request.path_params["sid"], request.path_params["message_sid"]
    msg = _state(request).find("twilio", message_sid)
    if msg is None:
        return _twilio_error(
            404,
            20404,
            f"The requested resource /2010-04-01/Accounts/{sid}/Messages/{message_sid}.json "
            "was not found",
        )
    return JSONResponse(_twilio_resource(msg, sid))


async def twilio_list(request: Request) -> Response:
    """Twilio `GET /2010-04-01/Accounts/{sid}/Messages.json`: newest first, filtered by
    `To` and `From`, in pages (`PageSize`, `Page`) linked by `next_page_uri`."""
    refused = _twilio_refusal(request)
    if refused is not None:
        return refused
    sid = request.path_params["sid"]
    query = request.query_params
    try:
        size = min(1000, max(1, int(query.get("PageSize", "50"))))
        page = max(0, int(query.get("Page", "0")))
    except ValueError:
        return _twilio_error(400, 20001, "PageSize and Page must be numbers.")
    found = [
        m
        for m in reversed(_state(request).messages)
        if m.carrier == "twilio"
        and query.get("To") in (None, m.to_number)
        and query.get("From") in (None, m.from_number)
    ]
    items = found[page * size : (page + 1) * size]
    base = f"/2010-04-01/Accounts/{sid}/Messages.json"
    filters = {k: v for k, v in query.items() if k in ("To", "From")}

    def page_uri(number: int) -> str:
        return f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': number})}"

    more = (page + 1) * size < len(found)
    return JSONResponse(
        {
            "messages": [_twilio_resource(m, sid) for m in items],
            "end": page * size + max(0, len(items) - 1),
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": page * size,
            "uri": page_uri(page),
        }
    )


async def _carrier_http_error(request: Request, exc: Exception) -> Response:
    """A path or method the simulator does not serve, answered as the carrier whose API
    it is under would: JSON in its error shape, never plain text."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    path = request.url.path
    if path.startswith("/v2/"):
        if status == 405:
            return _telnyx_error(405, "10015", "Method not allowed", f"{request.method} {path}")
        return _telnyx_not_found(f"The requested resource {path} was not found.")
    if path.startswith("/2010-04-01/"):
        if status == 405:
            return _twilio_error(405, 20004, "Method not allowed")
        return _twilio_error(404, 20404, f"The requested resource {path} was not found")
    return JSONResponse(
        {"error": {"code": "not_found" if status == 404 else "bad_request", "message": path}},
        status,
    )


# --- control API -------------------------------------------------------------------


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "invalid_request", "message": message}}, 400)


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        doc = json.loads(await request.body() or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _count(doc: dict[str, Any], default: int = 1, limit: int = 10_000) -> int | None:
    value = doc.get("count", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        return None
    return value


def _number(doc: dict[str, Any], key: str, default: float) -> float | None:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


async def sim_fail(request: Request) -> Response:
    """Queue failures for the next sends: {"mode": "5xx"|"429"|"timeout"|"4xx", "count": N}.

    Options: "seconds" (timeout stall, default 30), "accept" (timeout: the carrier
    keeps the message although the client gets no answer), "retry_after" (429,
    default 1), "code"/"message" (4xx).
    """
    doc = await _json_object(request)
    if doc is None:
        return _bad("The body must be a JSON object.")
    mode = doc.get("mode")
    if mode not in ("5xx", "429", "timeout", "4xx"):
        return _bad("mode must be one of 5xx, 429, timeout, 4xx.")
    count = _count(doc)
    seconds = _number(doc, "seconds", 30.0)
    retry_after = _number(doc, "retry_after", 1.0)
    if count is None or seconds is None or retry_after is None:
        return _bad("count, seconds and retry_after must be non-negative numbers.")
    code, message = doc.get("code"), doc.get("message")
    failure = _Failure(
        mode=mode,
        seconds=seconds,
        retry_after=retry_after,
        accept=bool(doc.get("accept", False)),
        code=str(code) if code is not None else None,
        message=str(message) if message is not None else None,
    )
    state = _state(request)
    state.failures.extend([failure] * count)
    return _failures_now(state)


async def sim_failures(request: Request) -> Response:
    """`GET /_sim/fail`: how many queued failures are left, and how many sends a
    simulated timeout holds now."""
    return _failures_now(_state(request))


def _failures_now(state: SimulatorState) -> JSONResponse:
    return JSONResponse({"pending_failures": len(state.failures), "held": state.held})


async def sim_outcome(request: Request) -> Response:
    """Set how the next accepted sends end: {"status": "delivered"|"undelivered"|"failed"|"none", "count": N}."""
    doc = await _json_object(request)
    if doc is None:
        return _bad("The body must be a JSON object.")
    status = doc.get("status")
    count = _count(doc)
    if status not in _OUTCOMES or count is None:
        return _bad("status must be delivered, undelivered, failed or none; count a number.")
    state = _state(request)
    state.outcomes.extend([status] * count)
    return JSONResponse({"pending_outcomes": len(state.outcomes)})


def _twilio_inbound_fields(
    cfg: SimulatorConfig, sid: str, from_: str, to: str, text: str, media: list[str]
) -> list[tuple[str, str]]:
    _, segments = _segments(text)
    fields = [
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", cfg.twilio_account_sid),
        ("From", from_),
        ("To", to),
        ("Body", text),
        ("NumMedia", str(len(media))),
        ("NumSegments", str(segments)),
        ("SmsStatus", "received"),
        ("ApiVersion", "2010-04-01"),
    ]
    for i, url in enumerate(media):
        fields += [(f"MediaUrl{i}", url), (f"MediaContentType{i}", "image/jpeg")]
    return fields


async def sim_inbound(request: Request) -> Response:
    """Send a signed inbound-SMS webhook to the service, `repeat` times.

    Body: {"carrier", "from", "to", "text", "media_urls"?, "id"?, "repeat"?,
    "concurrent"? (send the repeats at once), "retry"? (retry 5xx like the carrier)}.
    Answers with the service's HTTP status for each delivery (null: no answer).
    """
    state = _state(request)
    cfg = state.config
    doc = await _json_object(request)
    if doc is None:
        return _bad("The body must be a JSON object.")
    carrier = doc.get("carrier")
    from_, to, text = doc.get("from"), doc.get("to"), doc.get("text", "")
    media = doc.get("media_urls") or []
    repeat = doc.get("repeat", 1)
    if carrier not in ("telnyx", "twilio"):
        return _bad("carrier must be telnyx or twilio.")
    if not isinstance(from_, str) or not isinstance(to, str) or not from_ or not to:
        return _bad("from and to are required strings.")
    if not isinstance(text, str) or not isinstance(media, list):
        return _bad("text must be a string and media_urls a list.")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= 100:
        return _bad("repeat must be a number from 1 to 100.")
    media = [str(m) for m in media]
    base = cfg.webhook_base.rstrip("/")
    given_id = doc.get("id")
    build: Callable[[int, str], tuple[bytes, dict[str, str]]]
    if carrier == "telnyx":
        message_id = str(given_id) if given_id else str(uuid.uuid4())
        url = f"{base}{telnyx_wire.WEBHOOK_PATH}"
        msg = _Accepted("telnyx", message_id, from_, to, text, time.time(), None, None, "none")
        payload = state.telnyx_message_payload(msg, "delivered", "inbound")
        payload["type"] = "MMS" if media else "SMS"
        payload["media"] = [
            {"url": m, "content_type": "image/jpeg", "size": None, "hash_sha256": None}
            for m in media
        ]
        payload["completed_at"] = None
        # Telnyx redelivers the same event (same ids), so repeats share one builder.
        build = state.telnyx_event("message.received", payload, str(uuid.uuid4()))
    else:
        message_id = str(given_id) if given_id else "SM" + secrets.token_hex(16)
        url = f"{base}{twilio_wire.INBOUND_PATH}"
        build = state.twilio_form(_twilio_inbound_fields(cfg, message_id, from_, to, text, media))

    def one() -> Awaitable[int | None]:
        return state.deliver(
            carrier=carrier,
            event="inbound",
            message_id=message_id,
            urls=[url],
            build=build,
            retry=bool(doc.get("retry", False)),
        )

    if doc.get("concurrent"):
        statuses = list(await asyncio.gather(*(one() for _ in range(repeat))))
    else:
        statuses = [await one() for _ in range(repeat)]
    return JSONResponse({"carrier": carrier, "id": message_id, "url": url, "statuses": statuses})


async def sim_messages(request: Request) -> Response:
    """Every accepted send, oldest first (`?carrier=` filters)."""
    carrier = request.query_params.get("carrier")
    items = [m.public() for m in _state(request).messages if carrier in (None, m.carrier)]
    return JSONResponse({"items": items})


async def sim_webhooks(request: Request) -> Response:
    """Every webhook delivery attempt the simulator made, oldest first."""
    return JSONResponse({"items": list(_state(request).webhook_log)})


async def sim_reset(request: Request) -> Response:
    """Forget everything: sends, queued failures and outcomes, pending webhooks."""
    state = _state(request)
    state.release.set()
    await state.cancel_tasks()
    state.release = asyncio.Event()
    state.messages.clear()
    state.failures.clear()
    state.outcomes.clear()
    state.webhook_log.clear()
    return JSONResponse({"reset": True})


async def sim_public_key(request: Request) -> Response:
    """The Telnyx public key the webhooks verify with."""
    return JSONResponse({"public_key": _state(request).config.telnyx_public_key})


def create_simulator_app(config: SimulatorConfig) -> Starlette:
    """The simulator as an ASGI app (state on `app.state.sim`)."""
    state = SimulatorState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.release = asyncio.Event()
        state.client = httpx.AsyncClient()
        try:
            yield
        finally:
            state.release.set()
            await state.cancel_tasks()
            if state.client is not None:
                await state.client.aclose()
                state.client = None

    app = Starlette(
        routes=[
            Route("/v2/messages", telnyx_send, methods=["POST"]),
            Route("/v2/messages/long_code", telnyx_send, methods=["POST"]),
            Route("/v2/messages/number_pool", telnyx_send, methods=["POST"]),
            Route("/v2/messages/{id}", telnyx_retrieve, methods=["GET"]),
            Route("/2010-04-01/Accounts/{sid}/Messages.json", twilio_send, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages.json", twilio_list, methods=["GET"]),
            Route(
                "/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
                twilio_fetch,
                methods=["GET"],
            ),
            Route("/_sim/fail", sim_fail, methods=["POST"]),
            Route("/_sim/fail", sim_failures, methods=["GET"]),
            Route("/_sim/outcome", sim_outcome, methods=["POST"]),
            Route("/_sim/inbound", sim_inbound, methods=["POST"]),
            Route("/_sim/messages", sim_messages, methods=["GET"]),
            Route("/_sim/webhooks", sim_webhooks, methods=["GET"]),
            Route("/_sim/reset", sim_reset, methods=["POST"]),
            Route("/_sim/public-key", sim_public_key, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: _carrier_http_error, 405: _carrier_http_error},
    )
    app.state.sim = state
    return app


# --- running it --------------------------------------------------------------------


@dataclass
class RunningServer:
    """A uvicorn server on a background thread (see `serve_in_thread`)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0
) -> RunningServer:
    """Serve `app` with uvicorn on its own thread and event loop; port 0 picks a free one.

    For tests: the socket is bound before the thread starts, so the URL is known
    (and reserved) at once; returns after the server has started.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    return RunningServer(url=f"http://{host}:{bound_port}", server=server, thread=thread, sock=sock)


def settings_for_service(config: SimulatorConfig, base: str) -> str:
    """Every setting the service needs to send through the simulator and take its
    webhooks, for either carrier: lines to put in the service's environment."""
    telnyx = {
        "CARRIER": "telnyx",
        # Without --telnyx-api-key the simulator takes any key; the service needs one.
        "TELNYX_API_KEY": config.telnyx_api_key or "simulator-key",
        "TELNYX_API_BASE": base,
        "TELNYX_PUBLIC_KEY": config.telnyx_public_key,
        "PUBLIC_BASE_URL": config.webhook_base,
    }
    twilio = {
        "CARRIER": "twilio",
        "TWILIO_API_BASE": base,
        "TWILIO_ACCOUNT_SID": config.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": config.twilio_auth_token,
        "PUBLIC_BASE_URL": config.webhook_base,
    }
    lines = ["", "The service's settings to send through Telnyx's API here:"]
    lines += [f"{name}={value}" for name, value in telnyx.items()]
    lines += ["", "or through Twilio's:"]
    lines += [f"{name}={value}" for name, value in twilio.items()]
    lines += ["", "(PUBLIC_BASE_URL is where the simulator sends webhooks: --webhook-base.)"]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.simulator_server",
        description="A fake Telnyx and Twilio that send signed webhooks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--webhook-base",
        default="http://127.0.0.1:8000",
        help="the service's PUBLIC_BASE_URL, where webhooks go",
    )
    parser.add_argument("--telnyx-private-key", help="base64 32-byte Ed25519 seed (default: new)")
    parser.add_argument("--telnyx-api-key", help="required bearer token (default: any)")
    parser.add_argument("--twilio-account-sid", help="default: a random AC...")
    parser.add_argument("--twilio-auth-token", help="default: random")
    parser.add_argument("--status-delay", type=float, default=0.05)
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator until interrupted, printing the settings the service needs."""
    args = _parse_args(argv)
    config = SimulatorConfig(webhook_base=args.webhook_base, status_delay=args.status_delay)
    if args.telnyx_private_key:
        config.telnyx_signing_key = SimulatorConfig.signing_key_from_b64(args.telnyx_private_key)
    if args.telnyx_api_key:
        config.telnyx_api_key = args.telnyx_api_key
    if args.twilio_account_sid:
        config.twilio_account_sid = args.twilio_account_sid
    if args.twilio_auth_token:
        config.twilio_auth_token = args.twilio_auth_token
    logging.basicConfig(level=args.log_level.upper())
    base = f"http://{args.host}:{args.port}"
    print(f"carrier simulator on {base}, webhooks to {config.webhook_base}", flush=True)
    print(settings_for_service(config, base), flush=True)
    uvicorn.run(
        create_simulator_app(config), host=args.host, port=args.port, log_level=args.log_level
    )


if __name__ == "__main__":
    main()
