"""TelnyxCarrier and TwilioCarrier against the simulator server, running for real.

The simulator sends its delivery receipts and inbound messages to a small
receiver app; every one of them must verify with our own verify functions.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from app.carriers.base import CarrierError, InboundSms, SendResult, StatusUpdate
from app.carriers.telnyx import TelnyxCarrier, parse_telnyx_webhook, verify_telnyx_request
from app.carriers.twilio import (
    TwilioCarrier,
    decode_twilio_form,
    parse_twilio_inbound,
    parse_twilio_status,
    verify_twilio_signature,
)
from devtools.simulator_server import SimulatorConfig

from .conftest import TELNYX_API_KEY, TWILIO_SID, TWILIO_TOKEN, Received, Receiver, eventually

FROM = "+15551230000"
TO = "+15557654321"
TOLERANCE = 300


def telnyx(
    sim: str, receiver: Receiver, *, key: str = TELNYX_API_KEY, timeout: float = 10
) -> TelnyxCarrier:
    return TelnyxCarrier(api_key=key, api_base=sim, public_base_url=receiver.url, timeout=timeout)


def twilio(
    sim: str, receiver: Receiver, *, token: str = TWILIO_TOKEN, timeout: float = 10
) -> TwilioCarrier:
    return TwilioCarrier(
        account_sid=TWILIO_SID,
        auth_token=token,
        api_base=sim,
        public_base_url=receiver.url,
        timeout=timeout,
    )


def sim_post(sim: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{sim}{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def sim_messages(sim: str) -> list[Any]:
    items: list[Any] = httpx.get(f"{sim}/_sim/messages").json()["items"]
    return items


def telnyx_event(req: Received, sim: str) -> InboundSms | StatusUpdate | None:
    """Verify a received Telnyx webhook with the simulator's public key, then parse it."""
    public_key = httpx.get(f"{sim}/_sim/public-key").json()["public_key"]
    verify_telnyx_request(public_key, req.headers, req.body, TOLERANCE)
    return parse_telnyx_webhook(req.body)


async def hooks_at(receiver: Receiver, path: str, count: int, about: str) -> list[Received]:
    """Wait until at least `count` webhooks about message `about` reached `path`; return them.

    Filtering on the message id keeps a straggler from an earlier test out.
    """

    def matching() -> list[Received]:
        return [r for r in receiver.at(path) if about.encode() in r.body]

    await eventually(lambda: len(matching()) >= count)
    return matching()


def twilio_url(receiver: Receiver, req: Received) -> str:
    return f"{receiver.url}{req.path}" + (f"?{req.query}" if req.query else "")


def twilio_form(receiver: Receiver, req: Received) -> dict[str, str]:
    """Verify a received Twilio webhook over its exact URL, then return its form."""
    pairs = decode_twilio_form(req.body)
    verify_twilio_signature(
        TWILIO_TOKEN, twilio_url(receiver, req), pairs, req.headers.get("x-twilio-signature")
    )
    return dict(pairs)


# --- Telnyx ---------------------------------------------------------------------------


async def test_telnyx_send_and_signed_receipts(sim: str, receiver_server: Receiver) -> None:
    carrier = telnyx(sim, receiver_server)
    try:
        result = await carrier.send(
            from_number=FROM, to_number=TO, body="See you at 3", reference="msg_1"
        )
    finally:
        await carrier.aclose()
    assert result.status == "sent"
    [accepted] = sim_messages(sim)
    assert accepted["id"] == result.carrier_message_id
    assert (accepted["carrier"], accepted["from"], accepted["to"]) == ("telnyx", FROM, TO)
    assert accepted["text"] == "See you at 3"
    assert accepted["callback_url"] == f"{receiver_server.url}/webhooks/telnyx?ref=msg_1"

    hooks = await hooks_at(receiver_server, "/webhooks/telnyx", 2, result.carrier_message_id)
    events = [telnyx_event(r, sim) for r in hooks]
    assert events == [
        StatusUpdate("telnyx", result.carrier_message_id, "sent", reference="msg_1"),
        StatusUpdate("telnyx", result.carrier_message_id, "delivered", reference="msg_1"),
    ]


async def test_telnyx_undelivered_receipt(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/outcome", {"status": "undelivered", "count": 1})
    carrier = telnyx(sim, receiver_server)
    result = await carrier.send(from_number=FROM, to_number=TO, body="x", reference="m2")
    await carrier.aclose()
    hooks = await hooks_at(receiver_server, "/webhooks/telnyx", 2, result.carrier_message_id)
    final = telnyx_event(hooks[-1], sim)
    assert isinstance(final, StatusUpdate)
    assert (final.carrier_message_id, final.status) == (result.carrier_message_id, "undelivered")
    assert final.error_code == "40001"
    assert final.error_message


async def test_telnyx_webhook_is_retried_after_5xx(sim: str, receiver_server: Receiver) -> None:
    receiver_server.script.extend([503, 500])
    carrier = telnyx(sim, receiver_server)
    result = await carrier.send(from_number=FROM, to_number=TO, body="x", reference="m3")
    await carrier.aclose()
    hooks = await hooks_at(receiver_server, "/webhooks/telnyx", 4, result.carrier_message_id)
    # Two refused attempts of message.sent, its successful retry, then message.finalized;
    # every attempt freshly signed.
    events = [telnyx_event(r, sim) for r in hooks]
    assert [e.status for e in events if isinstance(e, StatusUpdate)] == [
        "sent",
        "sent",
        "sent",
        "delivered",
    ]
    assert [json.loads(r.body)["meta"]["attempt"] for r in hooks] == [1, 2, 3, 1]
    log = httpx.get(f"{sim}/_sim/webhooks").json()["items"]
    assert [entry["status"] for entry in log if entry["message_id"] == result.carrier_message_id][
        :3
    ] == [503, 500, 200]


async def test_telnyx_5xx_is_retryable(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/fail", {"mode": "5xx", "count": 1})
    carrier = telnyx(sim, receiver_server)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    # The failure was consumed: the next send goes through.
    assert isinstance(
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r"), SendResult
    )
    await carrier.aclose()
    assert info.value.retryable is True
    assert info.value.http_status == 503
    assert len(sim_messages(sim)) == 1


async def test_telnyx_429_gives_retry_after(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/fail", {"mode": "429", "count": 1, "retry_after": 7})
    carrier = telnyx(sim, receiver_server)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.retry_after, info.value.http_status) == (True, 7, 429)
    assert sim_messages(sim) == []


async def test_telnyx_4xx_is_final_with_carrier_reason(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/fail", {"mode": "4xx", "count": 1})
    carrier = telnyx(sim, receiver_server)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert info.value.retryable is False
    assert info.value.code == "40001"
    assert "not routable" in info.value.message


async def test_telnyx_validation_error(sim: str, receiver_server: Receiver) -> None:
    carrier = telnyx(sim, receiver_server)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number="5557654321", body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.code) == (False, "10016")


async def test_telnyx_bad_api_key(sim: str, receiver_server: Receiver) -> None:
    carrier = telnyx(sim, receiver_server, key="wrong")
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.code, info.value.http_status) == (False, "10009", 401)


async def test_telnyx_timeout(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/fail", {"mode": "timeout", "count": 1, "seconds": 30})
    carrier = telnyx(sim, receiver_server, timeout=0.5)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.code) == (True, "carrier_timeout")
    # No answer does not mean not sent: the worker must treat it as in doubt.
    assert info.value.extra.get("maybe_accepted") == "true"
    assert sim_messages(sim) == []
    # The simulator still holds the call its client gave up on, until it is reset.
    assert httpx.get(f"{sim}/_sim/fail").json() == {"pending_failures": 0, "held": 1}
    sim_post(sim, "/_sim/reset", {})
    await eventually(lambda: httpx.get(f"{sim}/_sim/fail").json()["held"] == 0)


async def test_timeout_after_the_carrier_accepted(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/fail", {"mode": "timeout", "count": 1, "seconds": 30, "accept": True})
    carrier = telnyx(sim, receiver_server, timeout=0.5)
    with pytest.raises(CarrierError):
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="m9")
    await carrier.aclose()
    [accepted] = sim_messages(sim)
    # The receipts still arrive, and the reference ties them to our message.
    hooks = await hooks_at(receiver_server, "/webhooks/telnyx", 2, accepted["id"])
    final = telnyx_event(hooks[-1], sim)
    assert isinstance(final, StatusUpdate)
    assert (final.carrier_message_id, final.reference) == (accepted["id"], "m9")


async def test_unreachable_carrier(receiver_server: Receiver) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` any more.
    for carrier in (
        telnyx(f"http://127.0.0.1:{port}", receiver_server),
        twilio(f"http://127.0.0.1:{port}", receiver_server),
    ):
        with pytest.raises(CarrierError) as info:
            await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
        await carrier.aclose()
        assert (info.value.retryable, info.value.code) == (True, "carrier_unreachable")
        assert "maybe_accepted" not in info.value.extra


# --- Twilio ---------------------------------------------------------------------------


async def test_twilio_send_and_signed_callbacks(sim: str, receiver_server: Receiver) -> None:
    carrier = twilio(sim, receiver_server)
    result = await carrier.send(from_number=FROM, to_number=TO, body="Hello", reference="msg/7 x")
    await carrier.aclose()
    assert result.status == "sent"
    assert result.carrier_message_id.startswith("SM") and len(result.carrier_message_id) == 34
    [accepted] = sim_messages(sim)
    assert (accepted["id"], accepted["carrier"], accepted["text"]) == (
        result.carrier_message_id,
        "twilio",
        "Hello",
    )

    hooks = await hooks_at(receiver_server, "/webhooks/twilio/status", 2, result.carrier_message_id)
    updates = []
    for req in hooks:
        form = twilio_form(receiver_server, req)
        ref = parse_qs(req.query)["ref"][0]
        updates.append(parse_twilio_status(form, ref))
    assert updates == [
        StatusUpdate("twilio", result.carrier_message_id, "sent", reference="msg/7 x"),
        StatusUpdate("twilio", result.carrier_message_id, "delivered", reference="msg/7 x"),
    ]


async def test_twilio_signature_covers_the_query_string(
    sim: str, receiver_server: Receiver
) -> None:
    carrier = twilio(sim, receiver_server)
    result = await carrier.send(from_number=FROM, to_number=TO, body="Hello", reference="m1")
    await carrier.aclose()
    [req, *_] = await hooks_at(
        receiver_server, "/webhooks/twilio/status", 1, result.carrier_message_id
    )
    pairs = decode_twilio_form(req.body)
    with pytest.raises(Exception, match="does not match"):
        verify_twilio_signature(
            TWILIO_TOKEN,
            f"{receiver_server.url}{req.path}",
            pairs,
            req.headers["x-twilio-signature"],
        )


async def test_twilio_failed_outcome(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/outcome", {"status": "failed", "count": 1})
    carrier = twilio(sim, receiver_server)
    result = await carrier.send(from_number=FROM, to_number=TO, body="x", reference="m")
    await carrier.aclose()
    [req] = await hooks_at(receiver_server, "/webhooks/twilio/status", 1, result.carrier_message_id)
    update = parse_twilio_status(twilio_form(receiver_server, req), "m")
    assert isinstance(update, StatusUpdate)
    assert (update.status, update.error_code) == ("failed", "30008")


@pytest.mark.parametrize(
    ("mode", "retryable", "http_status"),
    [("5xx", True, 503), ("429", True, 429), ("4xx", False, 400)],
)
async def test_twilio_error_mapping(
    sim: str, receiver_server: Receiver, mode: str, retryable: bool, http_status: int
) -> None:
    sim_post(sim, "/_sim/fail", {"mode": mode, "count": 1, "retry_after": 2})
    carrier = twilio(sim, receiver_server)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.http_status) == (retryable, http_status)
    if mode == "429":
        assert info.value.retry_after == 2
    if mode == "4xx":
        assert info.value.code == "21211"
        assert "To" in info.value.message
    assert sim_messages(sim) == []


async def test_twilio_timeout(sim: str, receiver_server: Receiver) -> None:
    sim_post(sim, "/_sim/fail", {"mode": "timeout", "count": 1, "seconds": 30})
    carrier = twilio(sim, receiver_server, timeout=0.5)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.code) == (True, "carrier_timeout")


async def test_twilio_bad_credentials_and_validation(sim: str, receiver_server: Receiver) -> None:
    carrier = twilio(sim, receiver_server, token="wrong")
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="x", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.code, info.value.http_status) == (False, "20003", 401)

    carrier = twilio(sim, receiver_server)
    with pytest.raises(CarrierError) as info:
        await carrier.send(from_number=FROM, to_number=TO, body="", reference="r")
    await carrier.aclose()
    assert (info.value.retryable, info.value.code) == (False, "21602")


# --- inbound ---------------------------------------------------------------------------


async def test_telnyx_inbound_repeated(sim: str, receiver_server: Receiver) -> None:
    answer = sim_post(
        sim,
        "/_sim/inbound",
        {
            "carrier": "telnyx",
            "from": TO,
            "to": FROM,
            "text": "Running late",
            "media_urls": ["https://example.com/a.jpg"],
            "id": "inbound-1",
            "repeat": 2,
        },
    )
    assert answer["statuses"] == [200, 200]
    hooks = [r for r in receiver_server.at("/webhooks/telnyx") if b"inbound-1" in r.body]
    assert len(hooks) == 2
    events = [telnyx_event(r, sim) for r in hooks]
    expected = InboundSms("telnyx", "inbound-1", TO, FROM, "Running late", media_count=1)
    assert events == [expected, expected]


async def test_twilio_inbound_with_media(sim: str, receiver_server: Receiver) -> None:
    answer = sim_post(
        sim,
        "/_sim/inbound",
        {
            "carrier": "twilio",
            "from": TO,
            "to": FROM,
            "text": "",
            "media_urls": ["https://example.com/a.jpg", "https://example.com/b.jpg"],
            "repeat": 3,
            "concurrent": True,
        },
    )
    assert answer["statuses"] == [200, 200, 200]
    sid = str(answer["id"]).encode()
    hooks = [r for r in receiver_server.at("/webhooks/twilio/messages") if sid in r.body]
    assert len(hooks) == 3
    events = {parse_twilio_inbound(twilio_form(receiver_server, r)) for r in hooks}
    assert events == {InboundSms("twilio", str(answer["id"]), TO, FROM, "", media_count=2)}


async def test_inbound_reports_the_targets_5xx(sim: str, receiver_server: Receiver) -> None:
    receiver_server.script.extend([503])
    answer = sim_post(
        sim,
        "/_sim/inbound",
        {"carrier": "twilio", "from": TO, "to": FROM, "text": "a", "repeat": 2},
    )
    assert answer["statuses"] == [503, 200]
    receiver_server.script.extend([500, 502])
    answer = sim_post(
        sim,
        "/_sim/inbound",
        {"carrier": "telnyx", "from": TO, "to": FROM, "text": "b", "retry": True},
    )
    assert answer["statuses"] == [200]


# --- control API ---------------------------------------------------------------------


async def test_reset_and_control_validation(sim: str, sim_config: SimulatorConfig) -> None:
    assert httpx.get(f"{sim}/_sim/public-key").json() == {
        "public_key": sim_config.telnyx_public_key
    }
    sim_post(sim, "/_sim/fail", {"mode": "5xx", "count": 3})
    assert sim_post(sim, "/_sim/reset", {}) == {"reset": True}
    assert sim_post(sim, "/_sim/fail", {"mode": "5xx", "count": 0}) == {
        "pending_failures": 0,
        "held": 0,
    }
    for bad in (
        {"mode": "boom"},
        {"mode": "5xx", "count": -1},
        {"mode": "timeout", "seconds": "x"},
    ):
        assert httpx.post(f"{sim}/_sim/fail", json=bad).status_code == 400
    assert httpx.post(f"{sim}/_sim/inbound", json={"carrier": "sms"}).status_code == 400
    assert httpx.post(f"{sim}/_sim/outcome", json={"status": "lost"}).status_code == 400


def test_signing_key_from_seed() -> None:
    import base64

    seed = bytes(range(32))
    key = SimulatorConfig.signing_key_from_b64(base64.b64encode(seed).decode())
    assert bytes(key) == seed
    with pytest.raises(ValueError):
        SimulatorConfig.signing_key_from_b64(base64.b64encode(b"short").decode())
