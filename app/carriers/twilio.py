"""Twilio (2010-04-01 REST API): X-Twilio-Signature, webhook forms, and outbound sends.

Everything Twilio-specific lives here: the signature scheme, form field names,
TwiML, the Messages resource and its error bodies. Callers see only the types of
`base`: a `TwilioCarrier` sends, `TwilioWebhooks` reads Twilio's two endpoints
(inbound messages and status callbacks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import httpx

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
    public_url,
)

logger = logging.getLogger(__name__)

CARRIER_NAME = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_HEADERS = (SignatureHeader(SIGNATURE_HEADER, "Twilio's HMAC-SHA1"),)
# Request headers are looked up by lower-case name.
_SIGNATURE_KEY = SIGNATURE_HEADER.lower()
INBOUND_PATH = "/webhooks/twilio/messages"
STATUS_PATH = "/webhooks/twilio/status"

# What we answer to an inbound-message webhook: "do nothing". Auto-replies go
# through the outbox like every send, so they are retried and recorded.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
TWIML_MEDIA_TYPE = "application/xml"
_EMPTY_TWIML_ACK = WebhookAck(200, EMPTY_TWIML.encode(), TWIML_MEDIA_TYPE)

# Status callback values in our vocabulary. accepted/scheduled/queued/sending are
# not reported: we already record "sent" when Twilio accepts, and reporting them
# would move the message backwards.
_CALLBACK_STATUS: dict[str, OutboundStatus | None] = {
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
    # Inbound-side states that may reach a status URL; nothing to record.
    "receiving": None,
    "received": None,
}

_SEND_RESPONSE_STATUS: dict[str, OutboundStatus] = {
    "accepted": "sent",
    "scheduled": "sent",
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
}

# Status callbacks carry only ErrorCode; these are Twilio's titles for the common
# delivery errors, so an operator sees a sentence rather than a bare number.
_ERROR_TITLES = {
    "30001": "Queue overflow",
    "30002": "Account suspended",
    "30003": "Unreachable destination handset",
    "30004": "Message blocked",
    "30005": "Unknown destination handset",
    "30006": "Landline or unreachable carrier",
    "30007": "Message filtered by the carrier",
    "30008": "Unknown error",
    "30010": "Message price exceeds max price",
}


# --- signatures ------------------------------------------------------------------


@runtime_checkable
class _MultiItems(Protocol):
    def multi_items(self) -> Sequence[tuple[str, object]]: ...


# Mapping values are typed `object` so Starlette's FormData (str | UploadFile) fits;
# SMS webhooks carry no files, and every value is signed as its string form.
Params = Mapping[str, object] | Iterable[tuple[str, str]]


def _pairs(params: Params) -> list[tuple[str, str]]:
    # Starlette's FormData is a Mapping whose items() hide repeated keys.
    if isinstance(params, _MultiItems):
        return [(str(k), str(v)) for k, v in params.multi_items()]
    if isinstance(params, Mapping):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


def twilio_signature(auth_token: str, url: str, params: Params) -> str:
    """base64(HMAC-SHA1(auth_token, url + key+value of each param, sorted by key then value))."""
    message = url + "".join(k + v for k, v in sorted(_pairs(params)))
    digest = hmac.new(auth_token.encode(), message.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _url_variants(url: str) -> list[str]:
    """The URL as given, plus with the default port added or removed.

    Twilio has signed both forms over the years depending on how the URL was
    configured, so its own libraries accept either; so do we.
    """
    variants = [url]
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants


def verify_twilio_signature(
    auth_token: str, url: str, params: Params, signature: str | None
) -> None:
    """Raise InvalidSignature unless `signature` is Twilio's for this exact URL and form."""
    if not signature:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    pairs = _pairs(params)
    given = signature.strip().encode()
    ok = False
    for candidate in _url_variants(url):
        expected = twilio_signature(auth_token, candidate, pairs).encode()
        # Every variant is compared (no early exit) so timing says nothing either.
        ok = hmac.compare_digest(expected, given) or ok
    if not ok:
        raise InvalidSignature("X-Twilio-Signature does not match the URL and parameters")


def twilio_request_url(public_base_url: str, path: str, query: str = "") -> str:
    """The URL Twilio signed: our public base URL + the path within the app + raw query string."""
    return public_url(public_base_url, path, query)


def verify_twilio_request(
    auth_token: str,
    public_base_url: str,
    path: str,
    query: str,
    form: Params,
    headers: Mapping[str, str],
) -> None:
    """Verify a webhook from its parts (headers: a case-insensitive mapping, e.g. Starlette's)."""
    verify_twilio_signature(
        auth_token,
        twilio_request_url(public_base_url, path, query),
        form,
        headers.get(SIGNATURE_HEADER),
    )


# --- webhook forms -----------------------------------------------------------------


def decode_twilio_form(raw_body: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a form-encoded webhook body, repeats and blanks kept.

    Blank values matter: Twilio signs them too (an MMS with no text has `Body=`).
    """
    try:
        text = raw_body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise MalformedWebhook("Twilio webhook body is not a UTF-8 form.") from None


def _required(form: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = form.get(name)
        if non_empty_str(value):
            return value
    raise MalformedWebhook(f"Twilio webhook is missing the {names[0]} field.")


def parse_twilio_inbound(form: Mapping[str, str]) -> InboundSms:
    """An inbound-message webhook form (MessageSid, From, To, Body, NumMedia) as InboundSms."""
    num_media_raw = form.get("NumMedia") or "0"
    try:
        num_media = int(num_media_raw)
    except ValueError:
        raise MalformedWebhook("Twilio webhook field NumMedia is not a number.") from None
    if num_media < 0:
        raise MalformedWebhook("Twilio webhook field NumMedia is negative.")
    return InboundSms(
        carrier=CARRIER_NAME,
        # Older webhooks name the id SmsMessageSid/SmsSid; MessageSid is current.
        carrier_message_id=_required(form, "MessageSid", "SmsMessageSid", "SmsSid"),
        from_number=_required(form, "From"),
        to_number=_required(form, "To"),
        # An MMS without text has an empty (or, from some tools, absent) Body.
        text=form.get("Body") or "",
        media_count=num_media,
    )


def parse_twilio_status(form: Mapping[str, str], reference: str | None) -> StatusUpdate | None:
    """A status-callback form as StatusUpdate; None for states we do not record."""
    message_id = _required(form, "MessageSid", "SmsSid")
    raw_status = _required(form, "MessageStatus", "SmsStatus")
    if raw_status not in _CALLBACK_STATUS:
        # Twilio adds states from time to time; acknowledging beats a retry storm.
        logger.warning("ignoring unknown twilio status %r", raw_status)
        return None
    status = _CALLBACK_STATUS[raw_status]
    if status is None:
        return None
    code = form.get("ErrorCode") or None
    message = form.get("ErrorMessage") or None
    if status in ("delivered", "sent"):
        code = message = None
    elif message is None:
        if code is not None:
            message = _ERROR_TITLES.get(code)
        elif raw_status == "canceled":
            message = "The message was canceled before it was sent."
    return StatusUpdate(
        carrier=CARRIER_NAME,
        carrier_message_id=message_id,
        status=status,
        error_code=code,
        error_message=message,
        reference=reference,
    )


def _reference(query: str) -> str | None:
    """Our message id: the `ref` we put in the StatusCallback URL (the last one, if repeated)."""
    refs = [value for name, value in parse_qsl(query, keep_blank_values=True) if name == "ref"]
    return refs[-1] if refs else None


class TwilioWebhooks:
    """Reads Twilio's webhooks: inbound messages at INBOUND_PATH and status callbacks at
    STATUS_PATH, each a form signed over the URL Twilio called and every field."""

    carrier = CARRIER_NAME

    def __init__(self, *, auth_token: str) -> None:
        """`auth_token`: TWILIO_AUTH_TOKEN, the key of the signatures."""
        self._auth_token = auth_token

    def read(self, request: WebhookRequest) -> WebhookEvent:
        """Decode the form, verify its signature over `request.public_url`, then read it
        as the endpoint it came to expects."""
        pairs = decode_twilio_form(request.body)
        verify_twilio_signature(
            self._auth_token, request.public_url, pairs, request.headers.get(_SIGNATURE_KEY)
        )
        form = dict(pairs)
        if request.path == INBOUND_PATH:
            return parse_twilio_inbound(form)
        if request.path == STATUS_PATH:
            return parse_twilio_status(form, _reference(request.query))
        raise ValueError(f"Twilio has no webhook at {request.path}")

    def acknowledge(self, request: WebhookRequest, outcome: str) -> WebhookAck:
        """An inbound message gets the empty TwiML response (send no reply); a status
        callback `{"status": outcome}`."""
        return _EMPTY_TWIML_ACK if request.path == INBOUND_PATH else json_ack(outcome)


# --- outbound ----------------------------------------------------------------------


def _twilio_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """Twilio's error `code` and `message`, when the body has them."""
    doc = json_object(response)
    if doc is None:
        return None, None
    code, message = doc.get("code"), doc.get("message")
    return (
        str(code) if code not in (None, "") else None,
        str(message) if message not in (None, "") else None,
    )


class TwilioCarrier(HttpCarrier):
    """Sends SMS through Twilio's Messages resource."""

    name = CARRIER_NAME

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_base: str,
        public_base_url: str,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`client` lets tests inject a transport; one we create ourselves is closed by aclose."""
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self._url = (
            f"{api_base.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
            "/Messages.json"
        )
        super().__init__(public_base_url, timeout, client)

    def status_callback_url(self, reference: str) -> str:
        """The per-message StatusCallback: our endpoint with our message id as `ref`."""
        return self.callback_url(STATUS_PATH, reference)

    async def send(
        self, *, from_number: str, to_number: str, body: str, reference: str
    ) -> SendResult:
        """Hand one SMS to Twilio; raise CarrierError when it is not accepted."""
        form = {
            "From": from_number,
            "To": to_number,
            "Body": body,
            "StatusCallback": self.status_callback_url(reference),
        }
        try:
            response = await self._client.post(
                self._url,
                data=form,
                auth=self._auth,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise carrier_error_from_transport(exc, CARRIER_NAME) from exc
        return self._result(response)

    def _result(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            try:
                doc = response.json()
                sid = doc["sid"]
            except (ValueError, KeyError, TypeError):
                sid = None
            if not non_empty_str(sid):
                # Accepted but unidentifiable: it may go out, so this is "in doubt".
                raise CarrierError(
                    code="carrier_bad_response",
                    message="Twilio accepted the message but its response has no sid.",
                    retryable=True,
                    http_status=status,
                    extra={"maybe_accepted": "true"},
                )
            return SendResult(
                carrier_message_id=sid,
                status=outbound_status(doc.get("status"), _SEND_RESPONSE_STATUS),
            )

        code, message = _twilio_error(response)
        if status != 429 and status < 500:
            logger.warning("twilio refused a send: http=%s code=%s", status, code)
        raise send_refused("Twilio", response, code, message)
