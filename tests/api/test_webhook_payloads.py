"""What carriers really send: unsigned hints, odd channels, several recipients, poison.

Every webhook here is signed as its carrier signs it, so each one is a payload the
carrier would deliver again and again if it were answered with a 5xx.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import nacl.signing
import orjson
from sqlalchemy import func, select, text

from app.carriers.telnyx import sign_telnyx_webhook
from app.carriers.twilio import twilio_signature
from app.context import AppContext
from app.models import Message, UnroutedMessage
from tests.conftest import TWILIO_AUTH_TOKEN, fresh_database
from tests.support import Member, Tenant, eventually, new_number, telnyx_inbound_event


async def post_telnyx(
    client: httpx.AsyncClient,
    key: nacl.signing.SigningKey,
    event: dict[str, Any],
    query: str = "",
) -> httpx.Response:
    raw = orjson.dumps(event)
    headers = sign_telnyx_webhook(key, raw, int(time.time()))
    headers["content-type"] = "application/json"
    path = f"/webhooks/telnyx?{query}" if query else "/webhooks/telnyx"
    return await client.post(path, content=raw, headers=headers)


async def post_twilio(
    client: httpx.AsyncClient, path: str, form: dict[str, str], query: str = ""
) -> httpx.Response:
    url = f"http://testserver{path}" + (f"?{query}" if query else "")
    return await client.post(
        path + (f"?{query}" if query else ""),
        content=urlencode(form).encode(),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(TWILIO_AUTH_TOKEN, url, form),
        },
    )


def finalized(carrier_id: str, ref: str, status: str = "delivery_failed") -> dict[str, Any]:
    """A Telnyx `message.finalized` for the message we sent with `ref` in its webhook URL."""
    return {
        "data": {
            "event_type": "message.finalized",
            "id": str(uuid.uuid4()),
            "record_type": "event",
            "payload": {
                "id": carrier_id,
                "record_type": "message",
                "direction": "outbound",
                "type": "SMS",
                "from": {"phone_number": "+14155550101"},
                "to": [{"phone_number": "+14155550100", "status": status}],
                "text": "x",
                "webhook_url": f"https://sms.example.org/webhooks/telnyx?ref={ref}",
                "errors": [{"code": "40002", "title": "Blocked as spam"}],
            },
        }
    }


async def queued_message(tenant: Tenant, sender: Member) -> str:
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=sender,
        expect=201,
        json={"to": [{"phone_number": new_number()}], "body": "see you at 3"},
    )
    return str(r.json()["messages"][0]["id"])


async def status_of(tenant: Tenant, member: Member, message_id: str) -> str:
    r = await tenant.call("GET", f"/v1/messages/{message_id}", as_=member, expect=200)
    return str(r.json()["status"])


async def job_state(ctx: AppContext, message_id: str) -> str | None:
    async with ctx.sessionmaker() as s:
        state = await s.scalar(
            text("SELECT state FROM delivery_jobs WHERE message_id = :m"), {"m": message_id}
        )
    return None if state is None else str(state)


# --------------------------------------------------------------------------- receipts


async def test_telnyx_receipt_replayed_with_another_ref_changes_only_its_own_message(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    # Its own database: no worker may deliver the messages meanwhile.
    async with (
        fresh_database("ref") as url,
        make_app(run_worker=False, database_url=url) as (app, client),
    ):
        ctx: AppContext = app.state.ctx
        tenant = await Tenant.create(client)
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        mine, victim = await queued_message(tenant, alice), await queued_message(tenant, alice)
        event = finalized(str(uuid.uuid4()), ref=mine)
        # The signature covers the body, not the query string: someone who saw this
        # webhook points it at another message.
        r = await post_telnyx(client, telnyx_key, event, query=f"ref={victim}")
        assert r.status_code == 200, r.text
        assert await status_of(tenant, alice, victim) == "queued"
        assert await job_state(ctx, victim) == "pending"
        # The receipt still counts for the message it names in its own payload.
        assert await status_of(tenant, alice, mine) == "undelivered"
        assert await job_state(ctx, mine) == "done"


async def test_receipt_matched_by_reference_never_touches_a_message_with_another_carrier_id(
    make_app: Any,
) -> None:
    async with (
        fresh_database("ref") as url,
        make_app(run_worker=False, database_url=url) as (_, client),
    ):
        tenant = await Tenant.create(client)
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        message_id = await queued_message(tenant, alice)
        sid = "SM" + uuid.uuid4().hex

        async def receipt(carrier_id: str, status: str) -> str:
            form = {
                "AccountSid": "AC" + "0" * 32,
                "From": "+14155550101",
                "To": "+14155550100",
                "MessageSid": carrier_id,
                "MessageStatus": status,
            }
            r = await post_twilio(client, "/webhooks/twilio/status", form, f"ref={message_id}")
            assert r.status_code == 200, r.text
            return str(r.json()["status"])

        assert await receipt(sid, "sent") == "status_applied"
        assert await status_of(tenant, alice, message_id) == "sent"
        # A receipt for some other carrier message that names ours: it is not ours.
        assert await receipt("SM" + uuid.uuid4().hex, "undelivered") == "status_unmatched"
        assert await status_of(tenant, alice, message_id) == "sent"
        # Its own receipts still apply.
        assert await receipt(sid, "delivered") == "status_applied"
        assert await status_of(tenant, alice, message_id) == "delivered"


async def test_a_receipt_that_waits_for_the_worker_storing_its_carrier_id_still_counts(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    """The receipt finds no message by its carrier id and waits on the job the worker is
    recording; the worker then stores that very carrier id: the receipt is the message's."""
    async with (
        fresh_database("ref") as url,
        make_app(run_worker=False, database_url=url) as (app, client),
    ):
        ctx: AppContext = app.state.ctx
        tenant = await Tenant.create(client)
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        message_id = await queued_message(tenant, alice)
        carrier_id = str(uuid.uuid4())

        async def receipt_waits_on_a_lock() -> bool:
            async with ctx.engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            return bool(waiting)

        async with ctx.engine.connect() as worker:
            # What the worker does when the carrier accepted the message: job, then message.
            await worker.execute(
                text("SELECT id FROM delivery_jobs WHERE message_id = :m FOR UPDATE"),
                {"m": message_id},
            )
            receipt = asyncio.create_task(
                post_telnyx(client, telnyx_key, finalized(carrier_id, message_id, "delivered"))
            )
            await eventually(receipt_waits_on_a_lock)
            await worker.execute(
                text(
                    "UPDATE messages SET carrier = 'telnyx', carrier_message_id = :c,"
                    " status = 'sent' WHERE id = :m"
                ),
                {"c": carrier_id, "m": message_id},
            )
            await worker.commit()
        r = await receipt
        assert r.status_code == 200 and r.json() == {"status": "status_applied"}, r.text
        assert await status_of(tenant, alice, message_id) == "delivered"


# --------------------------------------------------------------------------- channels and recipients


async def test_telnyx_messages_on_other_channels_are_acknowledged_and_stored_nowhere(
    client: httpx.AsyncClient, tenant: Tenant, ctx: AppContext, telnyx_key: nacl.signing.SigningKey
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number is not None
    patient = new_number()
    rcs = telnyx_inbound_event(patient, bob.outbound_sms_number, "")
    payload = rcs["data"]["payload"]
    payload["type"] = "RCS"
    del payload["text"]
    payload["body"] = {"text": "Hi from RCS"}
    payload["to"] = [{"agent_id": "clinic_agent", "status": "webhook_delivered"}]
    whatsapp = telnyx_inbound_event(patient, bob.outbound_sms_number, "Hi from WhatsApp")
    whatsapp["data"]["payload"]["type"] = "WHATSAPP"
    for event in (rcs, whatsapp):
        r = await post_telnyx(client, telnyx_key, event)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ignored"}
        carrier_id = event["data"]["payload"]["id"]
        async with ctx.sessionmaker() as s:
            for model in (Message, UnroutedMessage):
                found = await s.scalar(
                    select(func.count())
                    .select_from(model)
                    .where(model.carrier_message_id == carrier_id)
                )
                assert found == 0
    assert await tenant.sms_conversation(bob, patient) is None


async def test_telnyx_inbound_is_routed_by_whichever_to_number_is_ours(
    client: httpx.AsyncClient, tenant: Tenant, telnyx_key: nacl.signing.SigningKey
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number is not None
    patient, stranger = new_number(), new_number()
    routed_to_no_one = await tenant.add_number(None)
    event = telnyx_inbound_event(patient, stranger, "for the clinic")
    event["data"]["payload"]["to"] += [
        {"phone_number": routed_to_no_one, "status": "webhook_delivered"},
        {"phone_number": bob.outbound_sms_number, "status": "webhook_delivered"},
    ]
    r = await post_telnyx(client, telnyx_key, event)
    assert r.status_code == 200 and r.json() == {"status": "stored"}
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    (message,) = await tenant.messages(bob, conv["id"])
    assert message["body"] == "for the clinic"
    assert message["to_number"] == bob.outbound_sms_number


# --------------------------------------------------------------------------- poison


async def invalid_rows(ctx: AppContext, body: str) -> list[UnroutedMessage]:
    """The unrouted rows kept as invalid whose (encrypted) text is `body`."""
    async with ctx.sessionmaker() as s:
        rows = (
            await s.scalars(
                select(UnroutedMessage).where(UnroutedMessage.reason == "invalid_payload")
            )
        ).all()
    return [r for r in rows if ctx.keyring.decrypt(r.body_ciphertext, r.id.bytes) == body]


def fits_its_columns(row: UnroutedMessage) -> bool:
    values = (row.carrier_message_id, row.from_number, row.to_number)
    printable = all(v.isprintable() for v in values)
    return (
        printable
        and len(row.carrier_message_id) <= 128
        and len(row.from_number) <= 16
        and len(row.to_number) <= 16
    )


async def test_signed_poison_telnyx_webhooks_are_acknowledged_and_kept_once(
    client: httpx.AsyncClient, tenant: Tenant, ctx: AppContext, telnyx_key: nacl.signing.SigningKey
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    line = bob.outbound_sms_number
    assert line is not None
    cases: dict[str, dict[str, Any]] = {}
    for case, (from_, to, carrier_id) in {
        "nul in id": (new_number(), line, f"{uuid.uuid4()}\x00"),
        "nul in from": (new_number() + "\x00", line, None),
        "nul in to": (new_number(), line + "\x00", None),
        "escape in from": ("\x1b[31m" + new_number(), line, None),
        "id too long": (new_number(), line, "m" * 129),
        "from too long": ("+1415555010012345678901", line, None),
    }.items():
        event = telnyx_inbound_event(from_, to, f"poison: {case} {uuid.uuid4()}", carrier_id)
        cases[case] = event
    for case, event in cases.items():
        for attempt in ("first", "repeat"):
            r = await post_telnyx(client, telnyx_key, event)
            assert r.status_code == 200, f"{case} ({attempt}): {r.status_code} {r.text}"
            expected = "unrouted" if attempt == "first" else "duplicate"
            assert r.json() == {"status": expected}, case
        (row,) = await invalid_rows(ctx, event["data"]["payload"]["text"])
        assert fits_its_columns(row), case
        assert row.org_id is None
    # Nothing reached the user the number routes to.
    assert await tenant.conversations(bob) == []


async def test_signed_poison_twilio_webhooks_are_answered_with_twiml_and_kept_once(
    client: httpx.AsyncClient, tenant: Tenant, ctx: AppContext
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    line = bob.outbound_sms_number
    assert line is not None
    base = {"AccountSid": "AC" + "0" * 32, "To": line, "NumMedia": "0"}
    forms = {
        "nul in sid": {**base, "MessageSid": f"SM{uuid.uuid4().hex}\x00", "From": new_number()},
        "absurd media": {
            **base,
            "MessageSid": "SM" + uuid.uuid4().hex,
            "From": new_number(),
            "NumMedia": "99999999999999999999999",
        },
    }
    for case, form in forms.items():
        form["Body"] = f"poison: {case} {uuid.uuid4()}"
        for attempt in ("first", "repeat"):
            r = await post_twilio(client, "/webhooks/twilio/messages", form)
            assert r.status_code == 200, f"{case} ({attempt}): {r.status_code} {r.text}"
            assert "<Response/>" in r.text
        (row,) = await invalid_rows(ctx, form["Body"])
        assert fits_its_columns(row), case
        assert 0 <= row.media_dropped < 2**31
    assert await tenant.conversations(bob) == []


async def test_signed_but_unreadable_webhooks_are_never_a_5xx(
    client: httpx.AsyncClient, tenant: Tenant, telnyx_key: nacl.signing.SigningKey
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    line = bob.outbound_sms_number
    assert line is not None
    received = telnyx_inbound_event(new_number(), line, "hello")
    odd_payloads: list[Any] = [
        {"text": 42},
        {"text": {"nested": True}},
        {"from": {"phone_number": 14155550100}},
        {"to": [{"phone_number": None}]},
        {"to": "+14155550100"},
        {"media": {"url": "x"}},
        {"id": 12345},
        {"type": 7},
        {"autoresponse_type": {"odd": 1}},
    ]
    events: list[dict[str, Any]] = []
    for change in odd_payloads:
        event = copy.deepcopy(received)
        event["data"]["payload"].update(change)
        event["data"]["payload"]["id"] = change.get("id", str(uuid.uuid4()))
        events.append(event)
    # Receipts whose ids or errors cannot be stored as they are.
    alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
    message_id = await queued_message(tenant, alice)
    events.append(finalized(f"{uuid.uuid4()}\x00", ref=message_id))
    events.append(finalized("c" * 300, ref=message_id))
    long_error = finalized(str(uuid.uuid4()), ref=str(uuid.uuid4()))
    long_error["data"]["payload"]["errors"] = [{"code": "4" * 200, "detail": "bad\x00byte"}]
    events.append(long_error)
    for event in events:
        r = await post_telnyx(client, telnyx_key, event)
        assert r.status_code < 500, f"{event['data']['payload']}: {r.status_code} {r.text}"
        if r.status_code >= 400:
            assert r.json()["error"]["code"] == "malformed_webhook"
    twilio_status = {
        "AccountSid": "AC" + "0" * 32,
        "MessageSid": "SM\x00" + uuid.uuid4().hex,
        "MessageStatus": "failed",
        "ErrorCode": "3" * 100,
        "ErrorMessage": "nul\x00here",
    }
    r = await post_twilio(
        client, "/webhooks/twilio/status", twilio_status, query=f"ref={message_id}"
    )
    assert r.status_code < 500, r.text
    # The message these receipts named is unharmed: none of them was about it.
    assert await status_of(tenant, alice, message_id) in ("queued", "sending", "sent", "delivered")
