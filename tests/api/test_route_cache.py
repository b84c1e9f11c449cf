"""Each app process keeps the routes it has used; a change made anywhere is used at once.

Two app instances share the database and Redis, as two processes or hosts would. One
(`webhooks`) receives every webhook, so its route cache is warm; the other (`admin`)
makes the changes. The webhook instance must never route by what it remembers once
the change is committed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import nacl.signing
import orjson

from app.carriers.telnyx import sign_telnyx_webhook
from tests.support import (
    Member,
    Tenant,
    away_around_now,
    closed_today,
    hours_around_now,
    new_number,
    open_all_week,
    telnyx_inbound_event,
)

REPLY = "We got your text."


async def post_inbound(
    client: httpx.AsyncClient,
    key: nacl.signing.SigningKey,
    from_number: str,
    to_number: str,
    text: str,
    message_id: str | None = None,
) -> str:
    raw = orjson.dumps(
        telnyx_inbound_event(from_number, to_number, text, message_id or str(uuid.uuid4()))
    )
    headers = sign_telnyx_webhook(key, raw, int(time.time()))
    headers["content-type"] = "application/json"
    r = await client.post("/webhooks/telnyx", content=raw, headers=headers)
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


async def inbound_of(tenant: Tenant, member: Member, patient: str) -> list[dict[str, Any]]:
    conv = await tenant.sms_conversation(member, patient)
    if conv is None:
        return []
    msgs = await tenant.messages(member, conv["id"], limit=100)
    return [m for m in reversed(msgs) if m["direction"] == "inbound"]


async def number_id(tenant: Tenant, number: str) -> str:
    r = await tenant.call("GET", "/v1/phone-numbers", expect=200, params={"limit": 200})
    (found,) = [n for n in r.json()["items"] if n["number"] == number]
    return str(found["id"])


async def test_routing_changes_made_elsewhere_are_used_at_once(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (_, webhooks), make_app() as (_, admin):
        tenant = await Tenant.create(admin)
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
        line = await tenant.add_number("101")
        patient = new_number()

        assert await post_inbound(webhooks, telnyx_key, patient, line, "one") == "stored"
        assert [m["body"] for m in await inbound_of(tenant, alice, patient)] == ["one"]

        # The number now routes to bob: the warm cache must not send it to alice.
        await tenant.call(
            "PATCH",
            f"/v1/phone-numbers/{await number_id(tenant, line)}",
            expect=200,
            json={"sms_extension": "102"},
        )
        assert await post_inbound(webhooks, telnyx_key, patient, line, "two") == "stored"
        assert [m["body"] for m in await inbound_of(tenant, bob, patient)] == ["two"]
        assert [m["body"] for m in await inbound_of(tenant, alice, patient)] == ["one"]

        # Bob turns his auto-responder on, then off, through the other instance.
        await tenant.set_auto_responder(bob, REPLY)
        other = new_number()
        await post_inbound(webhooks, telnyx_key, other, line, "hi")
        (first,) = await inbound_of(tenant, bob, other)
        assert first["auto_reply_decision"] == {"sent": True, "reason": "sent"}
        conv = await tenant.sms_conversation(bob, other)
        assert conv is not None
        replies = [m for m in await tenant.messages(bob, conv["id"]) if m["auto_reply"]]
        assert [m["body"] for m in replies] == [REPLY]

        await tenant.set_auto_responder(bob, REPLY, enabled=False)
        third = new_number()
        await post_inbound(webhooks, telnyx_key, third, line, "hello?")
        (msg,) = await inbound_of(tenant, bob, third)
        assert msg["auto_reply_decision"] == {"sent": False, "reason": "disabled"}

        # The extension is removed from the number: kept unrouted, not routed by memory.
        await tenant.call(
            "PATCH",
            f"/v1/phone-numbers/{await number_id(tenant, line)}",
            expect=200,
            json={"sms_extension": None},
        )
        assert await post_inbound(webhooks, telnyx_key, patient, line, "three") == "unrouted"
        assert [m["body"] for m in await inbound_of(tenant, bob, patient)] == ["two"]


async def test_members_added_to_a_group_see_its_texts_from_then_on(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (_, webhooks), make_app() as (_, admin):
        tenant = await Tenant.create(admin)
        alice = await tenant.add_user("alice", extension="101", sms=True)
        bob = await tenant.add_user("bob", extension="102", sms=True)
        group = await tenant.add_group("front desk", "200", ["alice"])
        line = await tenant.add_number("200")
        patient = new_number()
        await post_inbound(webhooks, telnyx_key, patient, line, "one")
        assert await tenant.sms_conversation(bob, patient) is None

        await tenant.call(
            "PATCH", f"/v1/groups/{group['id']}", expect=200, json={"members": ["alice", "bob"]}
        )
        await post_inbound(webhooks, telnyx_key, patient, line, "two")
        for member in (alice, bob):
            bodies = [m["body"] for m in await inbound_of(tenant, member, patient)]
            assert bodies == ["one", "two"]


async def test_auto_responder_hours_changed_elsewhere_are_used_at_once(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (webhooks_app, webhooks), make_app() as (_, admin):
        tenant = await Tenant.create(admin)
        bob, line = await tenant.add_auto_replying_user("bob", "102", REPLY)
        patients = [new_number() for _ in range(3)]
        await post_inbound(webhooks, telnyx_key, patients[0], line, "hi")
        assert webhooks_app.state.ctx.routes.get(line) is not None  # cached there

        # Its hours change on the admin instance: open now, then away now.
        await tenant.set_auto_responder(bob, REPLY, schedule=open_all_week())
        await post_inbound(webhooks, telnyx_key, patients[1], line, "hi")
        await tenant.set_auto_responder(
            bob, REPLY, schedule=open_all_week(), away=away_around_now()
        )
        await post_inbound(webhooks, telnyx_key, patients[2], line, "hi")
        decisions = [
            [m["auto_reply_decision"]["reason"] for m in await inbound_of(tenant, bob, p)]
            for p in patients
        ]
        assert decisions == [["sent"], ["within_hours"], ["sent"]]


async def test_a_groups_after_hours_reply_changed_elsewhere_is_used_at_once(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (webhooks_app, webhooks), make_app() as (_, admin):
        tenant = await Tenant.create(admin)
        alice = await tenant.add_user("alice", extension="101")
        group = await tenant.add_group("front desk", "200", ["alice"])
        line = await tenant.add_number("200")
        patients = [new_number() for _ in range(3)]
        await post_inbound(webhooks, telnyx_key, patients[0], line, "hi")
        assert webhooks_app.state.ctx.routes.get(line) is not None  # cached there

        # Set on the admin instance: closed now, then open now.
        path = f"/v1/groups/{group['id']}/after-hours"
        body = {"enabled": True, "text": "Closed; call 911 for emergencies."}
        await tenant.call("PUT", path, expect=200, json={**body, "schedule": closed_today()})
        await post_inbound(webhooks, telnyx_key, patients[1], line, "hi")
        await tenant.call(
            "PUT", path, expect=200, json={**body, "schedule": hours_around_now(open_now=True)}
        )
        await post_inbound(webhooks, telnyx_key, patients[2], line, "hi")
        decisions = [
            [m["auto_reply_decision"]["reason"] for m in await inbound_of(tenant, alice, p)]
            for p in patients
        ]
        assert decisions == [["group_recipient"], ["sent"], ["within_hours"]]


async def test_opt_out_and_internal_senders_are_checked_where_the_message_is_stored(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (_, webhooks), make_app() as (_, admin):
        tenant = await Tenant.create(admin)
        bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
        await tenant.set_auto_responder(bob, REPLY)
        line = bob.outbound_sms_number
        assert line is not None
        patient = new_number()

        # The STOP arrives through the admin instance; the webhook instance has never
        # heard of this patient and guesses "not opted out": the store corrects it.
        assert await post_inbound(admin, telnyx_key, patient, line, "STOP") == "stored"
        await post_inbound(webhooks, telnyx_key, patient, line, "are you there?")
        decisions = [
            m["auto_reply_decision"]["reason"] for m in await inbound_of(tenant, bob, patient)
        ]
        assert decisions == ["keyword", "opted_out"]
        conv = await tenant.sms_conversation(bob, patient)
        assert conv is not None
        assert not [m for m in await tenant.messages(bob, conv["id"]) if m["auto_reply"]]

        # The window the wrong guess took was given back: after START, the next text
        # gets its reply at once.
        await post_inbound(webhooks, telnyx_key, patient, line, "START")
        await post_inbound(webhooks, telnyx_key, patient, line, "hello again")
        decisions = [
            m["auto_reply_decision"]["reason"] for m in await inbound_of(tenant, bob, patient)
        ]
        assert decisions == ["keyword", "opted_out", "keyword", "sent"]

        # A text from one of the service's own numbers never gets an auto-reply.
        own = await tenant.add_number(None)
        await post_inbound(webhooks, telnyx_key, own, line, "internal test")
        (internal,) = await inbound_of(tenant, bob, own)
        assert internal["auto_reply_decision"] == {"sent": False, "reason": "internal_sender"}


async def test_a_late_duplicate_does_not_keep_a_window_it_took(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app(auto_reply_window_seconds=0.3) as (_, client):
        tenant = await Tenant.create(client)
        bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
        await tenant.set_auto_responder(bob, REPLY)
        line = bob.outbound_sms_number
        assert line is not None
        patient = new_number()
        await post_inbound(client, telnyx_key, patient, line, "first", message_id="dup-late-1")
        time.sleep(0.4)  # the window has passed
        # The carrier delivers the first message again: nothing is stored, and the
        # window its decision took is not kept (no reply stands behind it).
        status = await post_inbound(
            client, telnyx_key, patient, line, "first", message_id="dup-late-1"
        )
        assert status == "duplicate"
        await post_inbound(client, telnyx_key, patient, line, "second")
        decisions = [
            m["auto_reply_decision"]["reason"] for m in await inbound_of(tenant, bob, patient)
        ]
        assert decisions == ["sent", "sent"]


async def test_a_number_used_once_is_routed_from_memory_after(
    tenant: Tenant, ctx: Any, send_telnyx: Any
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    line = bob.outbound_sms_number
    assert line is not None
    ctx.routes.forget(line)
    await send_telnyx(new_number(), line, "one")
    route = ctx.routes.get(line)
    assert route is not None and route.user.username == "bob"
    await send_telnyx(new_number(), line, "two")
    assert ctx.routes.get(line) is route  # not read again
