"""Twilio: X-Twilio-Signature and webhook form parsing."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from starlette.datastructures import FormData, Headers

from app.carriers.base import (
    InboundSms,
    InvalidSignature,
    MalformedWebhook,
    StatusUpdate,
    WebhookAck,
    WebhookRequest,
)
from app.carriers.twilio import (
    EMPTY_TWIML,
    INBOUND_PATH,
    STATUS_PATH,
    TwilioWebhooks,
    decode_twilio_form,
    parse_twilio_inbound,
    parse_twilio_status,
    twilio_request_url,
    twilio_signature,
    verify_twilio_request,
    verify_twilio_signature,
)

# The worked example from Twilio's webhook security documentation.
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

TOKEN = "a-real-looking-token-0123456789ab"
URL = "https://app.example.com/webhooks/twilio/status?ref=msg_1"
FORM = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "To": "+15551230000"}


class TestSignature:
    def test_known_vector_from_twilio_docs(self) -> None:
        assert twilio_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
        verify_twilio_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS, DOC_SIGNATURE)

    def test_round_trip(self) -> None:
        verify_twilio_signature(TOKEN, URL, FORM, twilio_signature(TOKEN, URL, FORM))

    def test_param_order_does_not_matter(self) -> None:
        reordered = list(reversed(list(FORM.items())))
        assert twilio_signature(TOKEN, URL, reordered) == twilio_signature(TOKEN, URL, FORM)

    def test_repeated_keys_are_sorted_by_value(self) -> None:
        a = [("MediaUrl", "b"), ("MediaUrl", "a"), ("Body", "x")]
        b = [("Body", "x"), ("MediaUrl", "a"), ("MediaUrl", "b")]
        assert twilio_signature(TOKEN, URL, a) == twilio_signature(TOKEN, URL, b)

    def test_starlette_form_keeps_repeated_keys(self) -> None:
        pairs = [("MediaUrl", "a"), ("MediaUrl", "b")]
        form = FormData([("MediaUrl", "a"), ("MediaUrl", "b")])
        signature = twilio_signature(TOKEN, URL, pairs)
        verify_twilio_signature(TOKEN, URL, form, signature)
        with pytest.raises(InvalidSignature):
            verify_twilio_signature(TOKEN, URL, dict(form), signature)

    def test_blank_values_are_signed(self) -> None:
        signature = twilio_signature(TOKEN, URL, {**FORM, "Body": ""})
        with pytest.raises(InvalidSignature):
            verify_twilio_signature(TOKEN, URL, FORM, signature)

    def test_tampered_param(self) -> None:
        signature = twilio_signature(TOKEN, URL, FORM)
        with pytest.raises(InvalidSignature):
            verify_twilio_signature(TOKEN, URL, {**FORM, "MessageStatus": "failed"}, signature)

    def test_tampered_url(self) -> None:
        signature = twilio_signature(TOKEN, URL, FORM)
        with pytest.raises(InvalidSignature):
            verify_twilio_signature(TOKEN, URL.replace("msg_1", "msg_2"), FORM, signature)

    def test_wrong_token(self) -> None:
        signature = twilio_signature("someone-else", URL, FORM)
        with pytest.raises(InvalidSignature):
            verify_twilio_signature(TOKEN, URL, FORM, signature)

    @pytest.mark.parametrize("signature", [None, ""])
    def test_missing_signature(self, signature: str | None) -> None:
        with pytest.raises(InvalidSignature, match="missing"):
            verify_twilio_signature(TOKEN, URL, FORM, signature)

    def test_default_port_either_way(self) -> None:
        with_port = URL.replace("app.example.com", "app.example.com:443")
        verify_twilio_signature(TOKEN, URL, FORM, twilio_signature(TOKEN, with_port, FORM))
        verify_twilio_signature(TOKEN, with_port, FORM, twilio_signature(TOKEN, URL, FORM))
        other_port = URL.replace("app.example.com", "app.example.com:8443")
        with pytest.raises(InvalidSignature):
            verify_twilio_signature(TOKEN, URL, FORM, twilio_signature(TOKEN, other_port, FORM))

    def test_verify_request_from_parts(self) -> None:
        url = twilio_request_url("https://app.example.com/", "/webhooks/twilio/status", "ref=msg_1")
        assert url == URL
        headers = Headers({"x-twilio-signature": twilio_signature(TOKEN, URL, FORM)})
        verify_twilio_request(
            TOKEN, "https://app.example.com", "/webhooks/twilio/status", "ref=msg_1", FORM, headers
        )
        assert twilio_request_url("https://a.example", "/p") == "https://a.example/p"


class TestForms:
    def test_decode_keeps_blanks_and_repeats(self) -> None:
        pairs = decode_twilio_form(b"Body=&MediaUrl0=a&MediaUrl0=b&From=%2B1555")
        assert pairs == [("Body", ""), ("MediaUrl0", "a"), ("MediaUrl0", "b"), ("From", "+1555")]

    def test_decode_rejects_non_utf8(self) -> None:
        with pytest.raises(MalformedWebhook):
            decode_twilio_form(b"Body=%FF")

    def test_empty_twiml(self) -> None:
        assert EMPTY_TWIML == '<?xml version="1.0" encoding="UTF-8"?><Response/>'


INBOUND = {
    "MessageSid": "SM" + "b" * 32,
    "SmsMessageSid": "SM" + "b" * 32,
    "AccountSid": "AC" + "c" * 32,
    "From": "+15557654321",
    "To": "+15551230000",
    "Body": "Is my appointment still on?",
    "NumMedia": "0",
}


class TestInbound:
    def test_parse(self) -> None:
        assert parse_twilio_inbound(INBOUND) == InboundSms(
            carrier="twilio",
            carrier_message_id="SM" + "b" * 32,
            from_number="+15557654321",
            to_number="+15551230000",
            text="Is my appointment still on?",
            media_count=0,
        )

    def test_mms_without_text(self) -> None:
        event = parse_twilio_inbound({**INBOUND, "Body": "", "NumMedia": "2"})
        assert (event.text, event.media_count) == ("", 2)

    def test_legacy_sid_and_absent_optional_fields(self) -> None:
        form = {k: v for k, v in INBOUND.items() if k not in ("MessageSid", "Body", "NumMedia")}
        event = parse_twilio_inbound(form)
        assert (event.carrier_message_id, event.text, event.media_count) == (
            "SM" + "b" * 32,
            "",
            0,
        )

    @pytest.mark.parametrize("field", ["From", "To"])
    def test_missing_required(self, field: str) -> None:
        with pytest.raises(MalformedWebhook, match=field):
            parse_twilio_inbound({k: v for k, v in INBOUND.items() if k != field})

    def test_missing_sid(self) -> None:
        form = {k: v for k, v in INBOUND.items() if not k.endswith("Sid") or k == "AccountSid"}
        with pytest.raises(MalformedWebhook, match="MessageSid"):
            parse_twilio_inbound(form)

    @pytest.mark.parametrize("num_media", ["two", "-1", "1.5"])
    def test_bad_num_media(self, num_media: str) -> None:
        with pytest.raises(MalformedWebhook, match="NumMedia"):
            parse_twilio_inbound({**INBOUND, "NumMedia": num_media})


class TestStatus:
    @pytest.mark.parametrize(
        ("twilio_status", "ours"),
        [
            ("sent", "sent"),
            ("delivered", "delivered"),
            ("read", "delivered"),
            ("undelivered", "undelivered"),
            ("failed", "failed"),
            ("canceled", "failed"),
        ],
    )
    def test_recorded_states(self, twilio_status: str, ours: str) -> None:
        event = parse_twilio_status({**FORM, "MessageStatus": twilio_status}, "msg_1")
        assert isinstance(event, StatusUpdate)
        assert (event.status, event.reference, event.carrier) == (ours, "msg_1", "twilio")

    @pytest.mark.parametrize(
        "twilio_status", ["accepted", "queued", "sending", "scheduled", "receiving", "new-thing"]
    )
    def test_unrecorded_states(self, twilio_status: str) -> None:
        assert parse_twilio_status({**FORM, "MessageStatus": twilio_status}, "r") is None

    def test_error_code_gets_a_title(self) -> None:
        event = parse_twilio_status(
            {**FORM, "MessageStatus": "undelivered", "ErrorCode": "30003"}, None
        )
        assert isinstance(event, StatusUpdate)
        assert event.error_code == "30003"
        assert event.error_message == "Unreachable destination handset"
        assert event.reference is None

    def test_error_message_when_given(self) -> None:
        event = parse_twilio_status(
            {**FORM, "MessageStatus": "failed", "ErrorCode": "12345", "ErrorMessage": "Nope"}, "r"
        )
        assert isinstance(event, StatusUpdate)
        assert (event.error_code, event.error_message) == ("12345", "Nope")

    def test_delivered_carries_no_error(self) -> None:
        event = parse_twilio_status({**FORM, "ErrorCode": "30003"}, "r")
        assert isinstance(event, StatusUpdate)
        assert event.error_code is None

    @pytest.mark.parametrize("field", ["MessageSid", "MessageStatus"])
    def test_missing_required(self, field: str) -> None:
        with pytest.raises(MalformedWebhook, match=field):
            parse_twilio_status({k: v for k, v in FORM.items() if k != field}, "r")


PUBLIC = "https://example.org/sms"


def _webhook(
    path: str, form: dict[str, str], query: str = "", token: str = TOKEN
) -> WebhookRequest:
    """A Twilio webhook as it reaches us, signed over the URL Twilio called."""
    url = f"{PUBLIC}{path}" + (f"?{query}" if query else "")
    signature = twilio_signature(token, url, form)
    headers = Headers({"X-Twilio-Signature": signature})
    return WebhookRequest.received(PUBLIC, path, query, headers, urlencode(form).encode())


class TestWebhooks:
    reader = TwilioWebhooks(auth_token=TOKEN)

    def test_inbound_messages_are_read_and_answered_with_empty_twiml(self) -> None:
        request = _webhook(INBOUND_PATH, INBOUND)
        assert request.public_url == "https://example.org/sms/webhooks/twilio/messages"
        assert self.reader.read(request) == parse_twilio_inbound(INBOUND)
        assert self.reader.acknowledge(request, "stored") == WebhookAck(
            200, EMPTY_TWIML.encode(), "application/xml"
        )

    def test_status_callbacks_carry_our_reference_and_are_answered_with_the_outcome(
        self,
    ) -> None:
        request = _webhook(STATUS_PATH, FORM, query="ref=msg_1")
        assert self.reader.read(request) == parse_twilio_status(FORM, "msg_1")
        ack = self.reader.acknowledge(request, "status_applied")
        assert ack == WebhookAck(200, b'{"status":"status_applied"}', "application/json")

    def test_the_signature_covers_the_public_url_with_its_prefix(self) -> None:
        request = _webhook(STATUS_PATH, FORM, query="ref=msg_1")
        without_prefix = WebhookRequest.received(
            "https://example.org", STATUS_PATH, "ref=msg_1", request.headers, request.body
        )
        with pytest.raises(InvalidSignature):
            self.reader.read(without_prefix)
        other_ref = WebhookRequest.received(
            PUBLIC, STATUS_PATH, "ref=msg_2", request.headers, request.body
        )
        with pytest.raises(InvalidSignature):
            self.reader.read(other_ref)

    def test_signed_with_another_token(self) -> None:
        with pytest.raises(InvalidSignature):
            self.reader.read(_webhook(INBOUND_PATH, INBOUND, token="someone-else"))

    def test_a_body_that_is_no_form_is_malformed_before_its_signature_is_checked(
        self,
    ) -> None:
        request = WebhookRequest.received(PUBLIC, INBOUND_PATH, "", Headers({}), b"Body=%FF")
        with pytest.raises(MalformedWebhook):
            self.reader.read(request)
