"""The in-process SimulatorCarrier."""

from __future__ import annotations

import asyncio

import pytest

from app.carriers.base import Carrier, CarrierError, InboundSms, StatusUpdate
from app.carriers.simulator import SimulatorCarrier
from app.carriers.telnyx import TelnyxCarrier
from app.carriers.twilio import TwilioCarrier

from .conftest import eventually


async def test_send_then_delivered_receipt() -> None:
    updates: list[StatusUpdate] = []

    async def sink(update: StatusUpdate) -> None:
        updates.append(update)

    carrier = SimulatorCarrier(status_sink=sink, delivery_delay=0.01)
    try:
        result = await carrier.send(
            from_number="+15551230000", to_number="+15557654321", body="hi", reference="msg_1"
        )
        assert result.status == "sent"
        assert result.carrier_message_id.startswith("sim-")
        await eventually(lambda: updates)
        assert updates == [
            StatusUpdate(
                carrier="simulator",
                carrier_message_id=result.carrier_message_id,
                status="delivered",
                reference="msg_1",
            )
        ]
        [record] = carrier.sent
        assert (record.to_number, record.body, record.reference) == ("+15557654321", "hi", "msg_1")
    finally:
        await carrier.aclose()


async def test_record_is_bounded() -> None:
    carrier = SimulatorCarrier(max_records=3)
    for i in range(5):
        await carrier.send(from_number="+1", to_number="+2", body=str(i), reference=str(i))
    assert [s.body for s in carrier.sent] == ["2", "3", "4"]
    await carrier.aclose()


@pytest.mark.parametrize("retryable", [True, False])
async def test_fail_next(retryable: bool) -> None:
    carrier = SimulatorCarrier()
    carrier.fail_next(2, retryable=retryable)
    for _ in range(2):
        with pytest.raises(CarrierError) as info:
            await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")
        assert info.value.retryable is retryable
    await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")
    assert len(carrier.sent) == 1
    await carrier.aclose()


async def test_sink_failure_is_retried() -> None:
    calls: list[StatusUpdate] = []

    async def flaky(update: StatusUpdate) -> None:
        calls.append(update)
        if len(calls) < 3:
            raise RuntimeError("database down")

    carrier = SimulatorCarrier(status_sink=flaky, delivery_delay=0.01)
    await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")
    await eventually(lambda: len(calls) >= 3)
    await carrier.aclose()
    assert len(calls) == 3


async def test_aclose_cancels_pending_receipts() -> None:
    called = asyncio.Event()

    async def sink(update: StatusUpdate) -> None:
        called.set()

    carrier = SimulatorCarrier(status_sink=sink, delivery_delay=3600)
    await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")
    await carrier.aclose()
    assert not called.is_set()
    with pytest.raises(CarrierError):
        await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")


async def test_sink_assigned_after_construction_and_inbound() -> None:
    got: list[object] = []

    async def sink(event: object) -> None:
        got.append(event)

    carrier = SimulatorCarrier(delivery_delay=0.01)
    carrier.status_sink = sink
    carrier.inbound_sink = sink
    await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")
    sms = await carrier.inject_inbound(from_number="+2", to_number="+1", text="yo")
    assert isinstance(sms, InboundSms)
    await eventually(lambda: len(got) == 2)
    await carrier.aclose()


async def test_all_carriers_satisfy_the_protocol() -> None:
    # Checked statically by mypy; constructing them checks the keyword names too.
    carriers: list[Carrier] = [
        SimulatorCarrier(),
        TelnyxCarrier(api_key="k", api_base="http://x", public_base_url="http://y", timeout=1),
        TwilioCarrier(
            account_sid="AC1",
            auth_token="t",
            api_base="http://x",
            public_base_url="http://y",
            timeout=1,
        ),
    ]
    assert [c.name for c in carriers] == ["simulator", "telnyx", "twilio"]
    for carrier in carriers:
        await carrier.aclose()


async def test_sink_assigned_after_the_send() -> None:
    got: list[StatusUpdate] = []

    async def sink(update: StatusUpdate) -> None:
        got.append(update)

    carrier = SimulatorCarrier(delivery_delay=0.05)
    await carrier.send(from_number="+1", to_number="+2", body="x", reference="r")
    carrier.status_sink = sink
    await eventually(lambda: got)
    await carrier.aclose()
