"""What carriers really send: unsigned hints, other channels, several recipients.

Every webhook here is signed as its carrier signs it.
"""

from __future__ import annotations

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
from tests.support import Member, Tenant, new_number, telnyx_inbound_event


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
        base = {"AccountSid": "AC" + "0" * 32, "From": "+14155550101", "To": "+14155550100"}
        r = await post_twilio(
            client,
            "/webhooks/twilio/status",
            {**base, "MessageSid": sid, "MessageStatus": "sent"},
            query=f"ref={message_id}",
        )
        assert r.status_code == 200 and r.json() == {"status": "status_applied"}
        assert await status_of(tenant, alice, message_id) == "sent"
        # A receipt for some other carrier message that names ours: it is not ours.
        r = await post_twilio(
            client,
            "/webhooks/twilio/status",
            {**base, "MessageSid": "SM" + uuid.uuid4().hex, "MessageStatus": "undelivered"},
            query=f"ref={message_id}",
        )
        assert r.status_code == 200 and r.json() == {"status": "status_unmatched"}
        assert await status_of(tenant, alice, message_id) == "sent"
        # Its own receipts still apply.
        r = await post_twilio(
            client,
            "/webhooks/twilio/status",
            {**base, "MessageSid": sid, "MessageStatus": "delivered"},
            query=f"ref={message_id}",
        )
        assert r.json() == {"status": "status_applied"}
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
