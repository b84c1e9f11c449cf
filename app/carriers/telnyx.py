"""Telnyx (API v2): Ed25519 webhook signatures, webhook events, and outbound sends.

Everything Telnyx-specific lives here: header names, the event JSON shape, the
send request and its error bodies. Callers see only the types of `base`: a
`TelnyxCarrier` sends, `TelnyxWebhooks` reads the one endpoint Telnyx calls for
every event.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

import httpx
import nacl.exceptions
import nacl.signing
import orjson

from app.carriers._http import (
    HttpCarrier,
    carrier_error_from_transport,
    json_object,
    non_empty_str,
    outbound_status,
    send_refused,
)
from app.carriers.base import (
    CarrierError,
    InboundSms,
    InvalidSignature,
    MalformedWebhook,
    OutboundStatus,
    SendResult,
    SignatureHeader,
    StatusUpdate,
    WebhookAck,
    WebhookEvent,
    WebhookRequest,
    json_ack,
)

logger = logging.getLogger(__name__)

CARRIER_NAME = "telnyx"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
WEBHOOK_PATH = "/webhooks/telnyx"
SIGNATURE_HEADERS = (
    SignatureHeader(SIGNATURE_HEADER, "Base64 Ed25519 signature of `{timestamp}|{body}`"),
    SignatureHeader(TIMESTAMP_HEADER, "Unix time the event was signed"),
)

# Some Telnyx tooling hands out the public key as a DER SubjectPublicKeyInfo
# rather than the raw 32 bytes; this is the fixed Ed25519 SPKI header.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

# Per-recipient statuses Telnyx reports in `message.finalized`, in our vocabulary.
# `delivery_unconfirmed` means the handset never acknowledged: it left Telnyx, so
# "sent" is the most we can claim.
_FINALIZED_STATUS: dict[str, OutboundStatus] = {
    "delivered": "delivered",
    "delivery_failed": "undelivered",
    "sending_failed": "failed",
    "delivery_unconfirmed": "sent",
    # Not expected in a final event, but harmless if Telnyx ever sends them there.
    "sent": "sent",
}

# Statuses in the send response: anything short of a verdict means "accepted".
_SEND_RESPONSE_STATUS: dict[str, OutboundStatus] = {
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "delivery_unconfirmed": "sent",
    "delivery_failed": "undelivered",
    "sending_failed": "failed",
}


# --- signatures ------------------------------------------------------------------


@lru_cache(maxsize=8)
def _verify_key(public_key_b64: str) -> nacl.signing.VerifyKey:
    """Decode the configured public key once; a bad key is a configuration error."""
    try:
        raw = base64.b64decode(public_key_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("TELNYX_PUBLIC_KEY is not valid base64") from exc
    if len(raw) == len(_ED25519_SPKI_PREFIX) + 32 and raw.startswith(_ED25519_SPKI_PREFIX):
        raw = raw[len(_ED25519_SPKI_PREFIX) :]
    if len(raw) != 32:
        raise ValueError("TELNYX_PUBLIC_KEY must decode to a 32-byte Ed25519 public key")
    return nacl.signing.VerifyKey(raw)


def verify_telnyx_signature(
    public_key_b64: str,
    signature_b64: str | None,
    timestamp: str | None,
    raw_body: bytes,
    tolerance_seconds: int,
    now: float | None = None,
) -> None:
    """Check a Telnyx webhook's Ed25519 signature over "{timestamp}|{body}" and its age.

    Raises InvalidSignature when it does not verify. A malformed *configured* key
    raises ValueError instead: that is our fault, and the carrier should retry.
    """
    if not signature_b64:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    if not timestamp:
        raise InvalidSignature(f"missing {TIMESTAMP_HEADER} header")
    key = _verify_key(public_key_b64)
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        raise InvalidSignature(f"{TIMESTAMP_HEADER} is not a Unix time in seconds") from None
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature(f"{SIGNATURE_HEADER} is not valid base64") from None
    signed = f"{timestamp.strip()}|".encode() + raw_body
    try:
        key.verify(signed, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        # ValueError/TypeError: a signature of the wrong length.
        raise InvalidSignature("signature does not match the body and timestamp") from None
    current = time.time() if now is None else now
    # Checked after the signature so a forged request learns nothing about our clock.
    if current - sent_at > tolerance_seconds:
        raise InvalidSignature("timestamp is older than the tolerance (replayed webhook?)")
    if sent_at - current > tolerance_seconds:
        raise InvalidSignature("timestamp is too far in the future")


def verify_telnyx_request(
    public_key_b64: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance_seconds: int,
    now: float | None = None,
) -> None:
    """Verify a webhook given its request headers (a case-insensitive mapping, e.g. Starlette's)."""
    verify_telnyx_signature(
        public_key_b64,
        headers.get(SIGNATURE_HEADER),
        headers.get(TIMESTAMP_HEADER),
        raw_body,
        tolerance_seconds,
        now=now,
    )


def sign_telnyx_webhook(
    signing_key: nacl.signing.SigningKey, raw_body: bytes, timestamp: int
) -> dict[str, str]:
    """The two headers Telnyx would attach to `raw_body` sent at `timestamp`."""
    signed = signing_key.sign(f"{timestamp}|".encode() + raw_body)
    return {
        SIGNATURE_HEADER: base64.b64encode(signed.signature).decode("ascii"),
        TIMESTAMP_HEADER: str(timestamp),
    }


def public_key_b64(signing_key: nacl.signing.SigningKey) -> str:
    """The base64 public key that verifies `signing_key`'s signatures (TELNYX_PUBLIC_KEY)."""
    return base64.b64encode(bytes(signing_key.verify_key)).decode("ascii")


# --- webhook events ----------------------------------------------------------------

# A JSON object of an event, its values not yet checked.
JsonObject = Mapping[str, object]


def _obj(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise MalformedWebhook(f"Telnyx webhook field {where} must be an object.")
    return value


def _to_numbers(payload: JsonObject) -> list[str]:
    """Every `to[].phone_number`, in order; entries that are not numbers are skipped."""
    parties = payload.get("to")
    if not isinstance(parties, list):
        raise MalformedWebhook("Telnyx webhook field data.payload.to must be a list.")
    numbers = [
        party["phone_number"]
        for party in parties
        if isinstance(party, dict) and non_empty_str(party.get("phone_number"))
    ]
    if not numbers:
        raise MalformedWebhook("Telnyx webhook field data.payload.to names no phone_number.")
    return numbers


def _is_sms(payload: JsonObject) -> bool:
    """SMS or MMS (or not said, as in older events), rather than RCS, WhatsApp and the like."""
    channel = payload.get("type")
    if channel is None or channel == "":
        return True
    if not isinstance(channel, str):
        raise MalformedWebhook("Telnyx webhook field data.payload.type must be a string.")
    return channel.upper() in ("SMS", "MMS")


def _first_party(payload: JsonObject, field: str) -> dict[str, object]:
    parties = payload.get(field)
    if not isinstance(parties, list) or not parties:
        raise MalformedWebhook(
            f"Telnyx webhook field data.payload.{field} must be a non-empty list."
        )
    return _obj(parties[0], f"data.payload.{field}[0]")


def _str_field(obj: JsonObject, key: str, where: str) -> str:
    value = obj.get(key)
    if not non_empty_str(value):
        raise MalformedWebhook(f"Telnyx webhook field {where} is missing or not a string.")
    return str(value)


def _reference_from_webhook_url(payload: JsonObject) -> str | None:
    """Our message id, from the `ref` we put in the per-message webhook URL."""
    url = payload.get("webhook_url")
    if not isinstance(url, str):
        return None
    values = parse_qs(urlsplit(url).query).get("ref")
    return values[0] if values else None


def _first_error(payload: JsonObject) -> tuple[str | None, str | None]:
    errors = payload.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, None
    err = errors[0]
    code = err.get("code")
    message = err.get("detail") or err.get("title")
    return (
        str(code) if code not in (None, "") else None,
        str(message) if message not in (None, "") else None,
    )


def parse_telnyx_webhook(raw_body: bytes) -> InboundSms | StatusUpdate | None:
    """Turn a verified Telnyx v2 event into an InboundSms or StatusUpdate.

    Only the body is read: the signature covers it and nothing else. A receipt's
    reference is the `ref` of the `webhook_url` we gave Telnyx, as the body repeats
    it; the request's own query string is not signed, so it is never looked at.

    Returns None for event types we acknowledge but ignore; raises MalformedWebhook
    when the body is not a Telnyx event we can read.
    """
    try:
        doc = orjson.loads(raw_body)
    except orjson.JSONDecodeError:  # also invalid UTF-8
        raise MalformedWebhook("Telnyx webhook body is not valid JSON.") from None
    data = _obj(_obj(doc, "(body)").get("data"), "data")
    event_type = _str_field(data, "event_type", "data.event_type")
    if event_type not in ("message.received", "message.sent", "message.finalized"):
        return None
    payload = _obj(data.get("payload"), "data.payload")
    if event_type == "message.received" and not _is_sms(payload):
        # Another channel on the same profile: not ours to store, and a refusal would
        # only have Telnyx retry it and then try the failover URL.
        return None
    message_id = _str_field(payload, "id", "data.payload.id")

    if event_type == "message.received":
        sender = _obj(payload.get("from"), "data.payload.from")
        to_numbers = _to_numbers(payload)
        text = payload.get("text")
        if text is not None and not isinstance(text, str):
            raise MalformedWebhook("Telnyx webhook field data.payload.text must be a string.")
        media = payload.get("media")
        if media is not None and not isinstance(media, list):
            raise MalformedWebhook("Telnyx webhook field data.payload.media must be a list.")
        return InboundSms(
            carrier=CARRIER_NAME,
            carrier_message_id=message_id,
            from_number=_str_field(sender, "phone_number", "data.payload.from.phone_number"),
            to_number=to_numbers[0],
            text=text or "",
            media_count=len(media or []),
            # Set (to "STOP", "START", "HELP"...) when the messaging profile's opt-in/out
            # rules matched and Telnyx sent its own reply; null otherwise.
            carrier_answered=payload.get("autoresponse_type") not in (None, ""),
            also_to=tuple(to_numbers[1:]),
        )

    ref = _reference_from_webhook_url(payload)
    if event_type == "message.sent":
        return StatusUpdate(
            carrier=CARRIER_NAME, carrier_message_id=message_id, status="sent", reference=ref
        )

    recipient = _first_party(payload, "to")
    raw_status = _str_field(recipient, "status", "data.payload.to[0].status")
    status = _FINALIZED_STATUS.get(raw_status)
    if status is None:
        raise MalformedWebhook(
            f"Telnyx message.finalized has an unknown recipient status {raw_status!r}."
        )
    # Only a failure carries its reason; an unconfirmed ("sent") message has no verdict.
    code, message = _first_error(payload) if status in ("undelivered", "failed") else (None, None)
    return StatusUpdate(
        carrier=CARRIER_NAME,
        carrier_message_id=message_id,
        status=status,
        error_code=code,
        error_message=message,
        reference=ref,
    )


class TelnyxWebhooks:
    """Reads Telnyx's webhooks: every event comes to one endpoint, signed over its body."""

    carrier = CARRIER_NAME

    def __init__(self, *, public_key: str, tolerance_seconds: int) -> None:
        """`public_key`: TELNYX_PUBLIC_KEY (base64); `tolerance_seconds`: the oldest
        timestamp accepted, against replays."""
        self._public_key = public_key
        self._tolerance_seconds = tolerance_seconds

    def read(self, request: WebhookRequest) -> WebhookEvent:
        """Verify the signature, then read the event from the body alone."""
        verify_telnyx_request(
            self._public_key, request.headers, request.body, self._tolerance_seconds
        )
        return parse_telnyx_webhook(request.body)

    def acknowledge(self, request: WebhookRequest, outcome: str) -> WebhookAck:
        """`{"status": outcome}`: Telnyx only needs a 2xx."""
        return json_ack(outcome)


# --- outbound ----------------------------------------------------------------------


def _telnyx_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """Telnyx's `errors[0]` code and detail (or title), when the body has them."""
    doc = json_object(response)
    return (None, None) if doc is None else _first_error(doc)


class TelnyxCarrier(HttpCarrier):
    """Sends SMS through Telnyx's `POST /v2/messages`."""

    name = CARRIER_NAME

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str,
        public_base_url: str,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`client` lets tests inject a transport; one we create ourselves is closed by aclose."""
        self._api_key = api_key
        self._url = f"{api_base.rstrip('/')}/v2/messages"
        super().__init__(public_base_url, timeout, client)

    def webhook_url(self, reference: str) -> str:
        """The per-message webhook URL: our endpoint with our message id as `ref`."""
        return self.callback_url(WEBHOOK_PATH, reference)

    async def send(
        self, *, from_number: str, to_number: str, body: str, reference: str
    ) -> SendResult:
        """Hand one SMS to Telnyx; raise CarrierError when it is not accepted."""
        request = {
            "from": from_number,
            "to": to_number,
            "text": body,
            "webhook_url": self.webhook_url(reference),
        }
        try:
            response = await self._client.post(
                self._url,
                json=request,
                headers={
                    "Authorization": f"Bearer {self._api_key}",
                    "Accept": "application/json",
                },
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise carrier_error_from_transport(exc, CARRIER_NAME) from exc
        return self._result(response)

    def _result(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            try:
                data = response.json()["data"]
                message_id = data["id"]
            except (ValueError, KeyError, TypeError):
                message_id = None
            if not non_empty_str(message_id):
                # Telnyx said yes but we cannot tell which message: it may well go out,
                # so the caller must treat it as in doubt, not as a clean failure.
                raise CarrierError(
                    code="carrier_bad_response",
                    message="Telnyx accepted the message but its response has no data.id.",
                    retryable=True,
                    http_status=status,
                    extra={"maybe_accepted": "true"},
                )
            to = data.get("to")
            first = to[0] if isinstance(to, list) and to and isinstance(to[0], dict) else {}
            return SendResult(
                carrier_message_id=str(message_id),
                status=outbound_status(first.get("status"), _SEND_RESPONSE_STATUS),
            )

        code, detail = _telnyx_error(response)
        if status != 429 and status < 500:
            logger.warning("telnyx refused a send: http=%s code=%s", status, code)
        raise send_refused("Telnyx", response, code, detail)
