"""Telnyx: Ed25519 webhook signatures and v2 event parsing."""

from __future__ import annotations

import base64
import copy
import inspect
import json
import time
from dataclasses import replace
from typing import Any

import nacl.signing
import pytest
from starlette.datastructures import Headers

from app.carriers.base import (
    InboundSms,
    InvalidSignature,
    MalformedWebhook,
    StatusUpdate,
    WebhookAck,
    WebhookRequest,
)
from app.carriers.telnyx import (
    WEBHOOK_PATH,
    TelnyxWebhooks,
    parse_telnyx_webhook,
    public_key_b64,
    sign_telnyx_webhook,
    verify_telnyx_request,
    verify_telnyx_signature,
)

NOW = 1_700_000_000
TOLERANCE = 300


@pytest.fixture(scope="module")
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _verify(key_b64: str, headers: dict[str, str], body: bytes, now: float = NOW) -> None:
    verify_telnyx_signature(
        key_b64,
        headers.get("telnyx-signature-ed25519"),
        headers.get("telnyx-timestamp"),
        body,
        TOLERANCE,
        now=now,
    )


BODY = b'{"data":{"event_type":"message.received","id":"e1","payload":{}}}'


class TestSignature:
    def test_round_trip(self, key: nacl.signing.SigningKey) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        assert set(headers) == {"telnyx-signature-ed25519", "telnyx-timestamp"}
        _verify(public_key_b64(key), headers, BODY)

    def test_signs_timestamp_pipe_body(self, key: nacl.signing.SigningKey) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        signature = base64.b64decode(headers["telnyx-signature-ed25519"])
        key.verify_key.verify(f"{NOW}|".encode() + BODY, signature)

    def test_request_headers_are_case_insensitive(self, key: nacl.signing.SigningKey) -> None:
        signed = sign_telnyx_webhook(key, BODY, NOW)
        headers = Headers({k.title(): v for k, v in signed.items()})
        verify_telnyx_request(public_key_b64(key), headers, BODY, TOLERANCE, now=NOW)

    def test_tampered_body(self, key: nacl.signing.SigningKey) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        with pytest.raises(InvalidSignature):
            _verify(public_key_b64(key), headers, BODY.replace(b"e1", b"e2"))

    def test_tampered_timestamp(self, key: nacl.signing.SigningKey) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        headers["telnyx-timestamp"] = str(NOW + 1)
        with pytest.raises(InvalidSignature):
            _verify(public_key_b64(key), headers, BODY)

    def test_wrong_key(self, key: nacl.signing.SigningKey) -> None:
        other = nacl.signing.SigningKey.generate()
        headers = sign_telnyx_webhook(other, BODY, NOW)
        with pytest.raises(InvalidSignature):
            _verify(public_key_b64(key), headers, BODY)

    def test_stale_timestamp(self, key: nacl.signing.SigningKey) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        _verify(public_key_b64(key), headers, BODY, now=NOW + TOLERANCE)  # at the edge: fine
        with pytest.raises(InvalidSignature, match="older"):
            _verify(public_key_b64(key), headers, BODY, now=NOW + TOLERANCE + 1)

    def test_future_timestamp(self, key: nacl.signing.SigningKey) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        _verify(public_key_b64(key), headers, BODY, now=NOW - TOLERANCE)
        with pytest.raises(InvalidSignature, match="future"):
            _verify(public_key_b64(key), headers, BODY, now=NOW - TOLERANCE - 1)

    @pytest.mark.parametrize("missing", ["telnyx-signature-ed25519", "telnyx-timestamp"])
    def test_missing_header(self, key: nacl.signing.SigningKey, missing: str) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        del headers[missing]
        with pytest.raises(InvalidSignature, match="missing"):
            _verify(public_key_b64(key), headers, BODY)

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("telnyx-signature-ed25519", "not base64!!"),
            ("telnyx-signature-ed25519", base64.b64encode(b"short").decode()),
            ("telnyx-signature-ed25519", ""),
            ("telnyx-timestamp", "yesterday"),
            ("telnyx-timestamp", "1.5e9"),
        ],
    )
    def test_garbled_header(self, key: nacl.signing.SigningKey, header: str, value: str) -> None:
        headers = sign_telnyx_webhook(key, BODY, NOW)
        headers[header] = value
        with pytest.raises(InvalidSignature):
            _verify(public_key_b64(key), headers, BODY)

    def test_spki_public_key_is_accepted(self, key: nacl.signing.SigningKey) -> None:
        der = bytes.fromhex("302a300506032b6570032100") + bytes(key.verify_key)
        headers = sign_telnyx_webhook(key, BODY, NOW)
        _verify(base64.b64encode(der).decode(), headers, BODY)

    @pytest.mark.parametrize("bad_key", ["%%%", base64.b64encode(b"x" * 31).decode()])
    def test_misconfigured_key_is_not_blamed_on_the_sender(
        self, key: nacl.signing.SigningKey, bad_key: str
    ) -> None:
        # Our configuration error: ValueError (-> 5xx, carrier retries), not a 401.
        headers = sign_telnyx_webhook(key, BODY, NOW)
        with pytest.raises(ValueError, match="TELNYX_PUBLIC_KEY"):
            _verify(bad_key, headers, BODY)


# Shaped like the examples in Telnyx's messaging webhook documentation.
RECEIVED: dict[str, Any] = {
    "data": {
        "record_type": "event",
        "id": "bf6307bd-884d-4c1f-b6ea-c62b8c495d3c",
        "event_type": "message.received",
        "occurred_at": "2019-01-23T18:10:02.574Z",
        "payload": {
            "record_type": "message",
            "direction": "inbound",
            "id": "7ee4241c-f127-47e5-9c34-3aac291f8058",
            "type": "MMS",
            "from": {
                "phone_number": "+18665550001",
                "carrier": "T-MOBILE",
                "line_type": "Wireless",
            },
            "to": [{"phone_number": "+18445550001", "status": "delivered"}],
            "cc": [],
            "text": "Hello, World!",
            "media": [{"url": "https://example.com/a.jpg", "content_type": "image/jpeg"}],
            "encoding": "GSM-7",
            "parts": 1,
            "errors": [],
        },
    },
    "meta": {"attempt": 1, "delivered_to": "https://example.com/webhooks/telnyx"},
}

OUTBOUND: dict[str, Any] = {
    "data": {
        "record_type": "event",
        "id": "4ee8c3a6-4995-4309-a3c6-38e3db9ea4be",
        "event_type": "message.finalized",
        "occurred_at": "2019-12-09T21:32:14.148+00:00",
        "payload": {
            "record_type": "message",
            "direction": "outbound",
            "id": "40385f64-5717-4562-b3fc-2c963f66afa6",
            "type": "SMS",
            "from": {"phone_number": "+18445550001"},
            "to": [{"phone_number": "+18665550001", "status": "delivered"}],
            "text": "Hello, World!",
            "webhook_url": "https://app.example.com/webhooks/telnyx?ref=msg_123",
            "errors": [],
        },
    }
}


def _raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _outbound(event_type: str, status: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    doc = copy.deepcopy(OUTBOUND)
    doc["data"]["event_type"] = event_type
    doc["data"]["payload"]["to"][0]["status"] = status
    doc["data"]["payload"]["errors"] = errors or []
    return _raw(doc)


class TestParse:
    def test_message_received(self) -> None:
        event = parse_telnyx_webhook(_raw(RECEIVED))
        assert event == InboundSms(
            carrier="telnyx",
            carrier_message_id="7ee4241c-f127-47e5-9c34-3aac291f8058",
            from_number="+18665550001",
            to_number="+18445550001",
            text="Hello, World!",
            media_count=1,
        )

    def test_message_received_null_text_and_media(self) -> None:
        doc = copy.deepcopy(RECEIVED)
        doc["data"]["payload"]["text"] = None
        doc["data"]["payload"]["media"] = None
        event = parse_telnyx_webhook(_raw(doc))
        assert isinstance(event, InboundSms)
        assert (event.text, event.media_count) == ("", 0)

    def test_every_to_number_in_order(self) -> None:
        doc = copy.deepcopy(RECEIVED)
        doc["data"]["payload"]["to"] = [
            {"phone_number": "+18445550009", "status": "webhook_delivered"},
            {"agent_id": "not a number"},
            {"phone_number": "+18445550001", "status": "webhook_delivered"},
        ]
        event = parse_telnyx_webhook(_raw(doc))
        assert isinstance(event, InboundSms)
        assert event.to_number == "+18445550009"
        assert event.recipients() == ("+18445550009", "+18445550001")

    @pytest.mark.parametrize(
        ("autoresponse_type", "answered"),
        [("STOP", True), ("HELP", True), ("start", True), (None, False), ("", False)],
    )
    def test_the_carrier_says_whether_it_answered(
        self, autoresponse_type: str | None, answered: bool
    ) -> None:
        doc = copy.deepcopy(RECEIVED)
        doc["data"]["payload"]["autoresponse_type"] = autoresponse_type
        event = parse_telnyx_webhook(_raw(doc))
        assert isinstance(event, InboundSms) and event.carrier_answered is answered
        assert parse_telnyx_webhook(_raw(RECEIVED)) == replace(event, carrier_answered=False)

    @pytest.mark.parametrize("channel", ["RCS", "WHATSAPP", "whatsapp", "Viber"])
    def test_other_channels_are_ignored(self, channel: str) -> None:
        doc = copy.deepcopy(RECEIVED)
        payload = doc["data"]["payload"]
        payload["type"] = channel
        payload["to"] = [{"agent_id": "clinic"}]
        payload["body"] = {"text": "hi"}
        del payload["text"]
        assert parse_telnyx_webhook(_raw(doc)) is None

    @pytest.mark.parametrize("channel", ["SMS", "sms", "MMS", None])
    def test_sms_and_mms_are_read(self, channel: str | None) -> None:
        doc = copy.deepcopy(RECEIVED)
        doc["data"]["payload"]["type"] = channel
        assert isinstance(parse_telnyx_webhook(_raw(doc)), InboundSms)

    def test_message_sent(self) -> None:
        event = parse_telnyx_webhook(_outbound("message.sent", "sent"))
        assert event == StatusUpdate(
            carrier="telnyx",
            carrier_message_id="40385f64-5717-4562-b3fc-2c963f66afa6",
            status="sent",
            reference="msg_123",
        )

    @pytest.mark.parametrize(
        ("telnyx_status", "ours"),
        [
            ("delivered", "delivered"),
            ("delivery_failed", "undelivered"),
            ("sending_failed", "failed"),
            ("delivery_unconfirmed", "sent"),
        ],
    )
    def test_message_finalized(self, telnyx_status: str, ours: str) -> None:
        event = parse_telnyx_webhook(_outbound("message.finalized", telnyx_status))
        assert isinstance(event, StatusUpdate)
        assert event.status == ours
        assert event.reference == "msg_123"

    def test_finalized_failure_carries_the_first_error(self) -> None:
        errors = [
            {"code": "40001", "title": "Not routable", "detail": "Landline."},
            {"code": "40002", "title": "Other"},
        ]
        event = parse_telnyx_webhook(_outbound("message.finalized", "delivery_failed", errors))
        assert isinstance(event, StatusUpdate)
        assert (event.error_code, event.error_message) == ("40001", "Landline.")

    def test_error_title_when_no_detail_and_numeric_code(self) -> None:
        errors = [{"code": 40008, "title": "Undeliverable"}]
        event = parse_telnyx_webhook(_outbound("message.finalized", "sending_failed", errors))
        assert isinstance(event, StatusUpdate)
        assert (event.error_code, event.error_message) == ("40008", "Undeliverable")

    def test_unconfirmed_is_sent_without_an_error(self) -> None:
        errors = [{"code": "40300", "title": "No delivery receipt"}]
        raw = _outbound("message.finalized", "delivery_unconfirmed", errors)
        event = parse_telnyx_webhook(raw)
        assert isinstance(event, StatusUpdate)
        assert (event.status, event.error_code, event.error_message) == ("sent", None, None)

    def test_reference_is_only_what_the_signed_payload_says(self) -> None:
        # The query string of the request is not signed: the parser never sees it.
        assert list(inspect.signature(parse_telnyx_webhook).parameters) == ["raw_body"]
        doc = copy.deepcopy(OUTBOUND)
        del doc["data"]["payload"]["webhook_url"]
        event = parse_telnyx_webhook(_raw(doc))
        assert isinstance(event, StatusUpdate) and event.reference is None

    @pytest.mark.parametrize("event_type", ["message.queued", "number_order.complete", "x"])
    def test_other_events_are_ignored(self, event_type: str) -> None:
        doc = copy.deepcopy(OUTBOUND)
        doc["data"]["event_type"] = event_type
        doc["data"]["payload"] = {"anything": True}
        assert parse_telnyx_webhook(_raw(doc)) is None

    @pytest.mark.parametrize(
        "body",
        [
            b"not json",
            b"\xff\xfe",
            b"[]",
            b"{}",
            b'{"data": []}',
            b'{"data": {"id": "x"}}',
            b'{"data": {"event_type": 5}}',
            b'{"data": {"event_type": "message.received"}}',
            b'{"data": {"event_type": "message.received", "payload": {"id": ""}}}',
        ],
    )
    def test_malformed_envelope(self, body: bytes) -> None:
        with pytest.raises(MalformedWebhook):
            parse_telnyx_webhook(body)

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            (("from",), None),
            (("from",), {"carrier": "x"}),
            (("to",), []),
            (("to",), [{"status": "delivered"}]),
            (("to",), "+18445550001"),
            (("text",), 42),
            (("media",), "none"),
            (("type",), 7),
        ],
    )
    def test_malformed_received(self, path: tuple[str, ...], value: Any) -> None:
        doc = copy.deepcopy(RECEIVED)
        doc["data"]["payload"][path[0]] = value
        with pytest.raises(MalformedWebhook, match="Telnyx webhook"):
            parse_telnyx_webhook(_raw(doc))

    def test_finalized_with_unknown_status(self) -> None:
        with pytest.raises(MalformedWebhook, match="teleported"):
            parse_telnyx_webhook(_outbound("message.finalized", "teleported"))

    def test_finalized_without_recipients(self) -> None:
        doc = copy.deepcopy(OUTBOUND)
        doc["data"]["payload"]["to"] = []
        with pytest.raises(MalformedWebhook):
            parse_telnyx_webhook(_raw(doc))


class TestWebhooks:
    def _request(self, body: bytes, headers: dict[str, str]) -> WebhookRequest:
        return WebhookRequest.received(
            "https://example.org/sms", WEBHOOK_PATH, "", Headers(headers), body
        )

    def test_a_signed_event_is_read_from_its_body_and_answered_with_the_outcome(
        self, key: nacl.signing.SigningKey
    ) -> None:
        reader = TelnyxWebhooks(public_key=public_key_b64(key), tolerance_seconds=TOLERANCE)
        body = _raw(RECEIVED)
        # Signed now: the reader checks the timestamp against the clock.
        request = self._request(body, sign_telnyx_webhook(key, body, int(time.time())))
        assert reader.read(request) == parse_telnyx_webhook(body)
        ack = reader.acknowledge(request, "stored")
        assert ack == WebhookAck(200, b'{"status":"stored"}', "application/json")

    def test_a_bad_or_stale_signature_is_refused(self, key: nacl.signing.SigningKey) -> None:
        reader = TelnyxWebhooks(public_key=public_key_b64(key), tolerance_seconds=TOLERANCE)
        body = _raw(RECEIVED)
        with pytest.raises(InvalidSignature):
            reader.read(self._request(body, sign_telnyx_webhook(key, body, NOW)))
        other = nacl.signing.SigningKey.generate()
        with pytest.raises(InvalidSignature):
            reader.read(self._request(body, sign_telnyx_webhook(other, body, int(time.time()))))
