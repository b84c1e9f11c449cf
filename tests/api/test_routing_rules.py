"""The routing rules of the contract, walked end to end through the HTTP API."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select, text

from app.context import AppContext
from app.models import Message
from tests.conftest import SendTelnyx
from tests.support import Member, Tenant, eventually, new_number


async def send(
    tenant: Tenant, sender: Member, to: list[dict[str, str]], body: str = "hi", **kw: Any
) -> httpx.Response:
    return await tenant.call(
        "POST", "/v1/messages", as_=sender, json={"to": to, "body": body, **kw}
    )


async def test_user_to_user_by_username(tenant: Tenant) -> None:
    alice, bob = await tenant.add_user("alice"), await tenant.add_user("bob")
    r = await send(tenant, alice, [{"username": "bob"}], "lunch?")
    assert r.status_code == 201
    (m,) = r.json()["messages"]
    assert m["direction"] == "internal" and m["status"] == "delivered"
    assert (m["sender_username"], m["recipient_username"]) == ("alice", "bob")
    assert m["from_number"] is None and m["to_number"] is None
    convs = await tenant.conversations(bob)
    assert convs[0]["participants"] == ["alice", "bob"] and convs[0]["unread_count"] == 1
    msgs = await tenant.messages(bob, convs[0]["id"])
    assert [x["body"] for x in msgs] == ["lunch?"]


async def test_user_to_user_by_extension_stores_the_username(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice")
    await tenant.add_user("bob", extension="102")
    (m,) = (await send(tenant, alice, [{"extension": "102"}])).json()["messages"]
    assert m["recipient_username"] == "bob"


async def test_internal_messages_never_touch_the_carrier(tenant: Tenant, ctx: AppContext) -> None:
    alice = await tenant.add_user("alice")
    await tenant.add_user("bob")
    (m,) = (await send(tenant, alice, [{"username": "bob"}])).json()["messages"]
    async with ctx.sessionmaker() as s:
        jobs = await s.execute(
            text("SELECT count(*) FROM delivery_jobs WHERE message_id = :id"), {"id": m["id"]}
        )
        assert jobs.scalar() == 0


async def test_user_to_phone_goes_from_the_outbound_number(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
    patient = new_number()
    (m,) = (await send(tenant, alice, [{"phone_number": patient}], "Your results are in")).json()[
        "messages"
    ]
    assert m["direction"] == "outbound" and m["status"] == "queued"
    assert m["from_number"] == alice.outbound_sms_number and m["to_number"] == patient

    async def delivered() -> bool:
        r = await tenant.call("GET", f"/v1/messages/{m['id']}", as_=alice, expect=200)
        return bool(r.json()["status"] == "delivered")

    await eventually(delivered)


async def test_sms_refused_without_outbound_number_or_when_disabled(tenant: Tenant) -> None:
    no_number = await tenant.add_user(sms=True)
    disabled = await tenant.add_user(sms=False)
    r = await send(tenant, no_number, [{"phone_number": new_number()}])
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_outbound_number"
    r = await send(tenant, disabled, [{"phone_number": new_number()}])
    assert r.status_code == 422 and r.json()["error"]["code"] == "sms_disabled"
    assert await tenant.conversations(no_number) == []
    assert await tenant.conversations(disabled) == []


async def test_one_bad_recipient_refuses_the_whole_send(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", sms=True, outbound=True)
    bob = await tenant.add_user("bob")
    r = await send(
        tenant, alice, [{"username": "bob"}, {"username": "ghost"}, {"phone_number": "12"}]
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_recipients"
    assert [(d["index"], d["code"]) for d in err["details"]] == [
        (1, "unknown_recipient"),
        (2, "invalid_phone_number"),
    ]
    assert await tenant.conversations(bob) == []


async def test_body_limits(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice")
    await tenant.add_user("bob")
    for body, code in [("", "empty_body"), ("   ", "empty_body"), ("x" * 1601, "body_too_long")]:
        r = await send(tenant, alice, [{"username": "bob"}], body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code
    r = await send(tenant, alice, [{"username": "bob"}], "x" * 1600)
    assert r.status_code == 201


async def test_body_text_kept_exactly_with_segments(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", sms=True, outbound=True)
    body = "Grüße 👋 你好 https://example.org/a?b=c&d=e"
    (m,) = (await send(tenant, alice, [{"phone_number": new_number()}], body)).json()["messages"]
    assert m["body"] == body and m["encoding"] == "UCS-2" and m["segments"] == 1
    (m,) = (await send(tenant, alice, [{"phone_number": new_number()}], "a" * 161)).json()[
        "messages"
    ]
    assert m["encoding"] == "GSM-7" and m["segments"] == 2


async def test_phone_to_user(tenant: Tenant, send_telnyx: SendTelnyx) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    patient = new_number()
    r = await send_telnyx(patient, bob.outbound_sms_number, "Can I move my appointment?")
    assert r.status_code == 200
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None and conv["owner"]["name"] == "bob" and conv["unread_count"] == 1
    (m,) = await tenant.messages(bob, conv["id"])
    assert m["direction"] == "inbound" and m["status"] == "received"
    assert m["recipient_username"] == "bob" and m["body"] == "Can I move my appointment?"


async def test_many_numbers_route_to_one_user_who_replies_from_outbound_only(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    extra = await tenant.add_number("102")
    patient = new_number()
    await send_telnyx(patient, extra, "via the second number")
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    r = await tenant.call(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        as_=bob,
        json={"body": "Sure"},
        expect=201,
    )
    assert r.json()["from_number"] == bob.outbound_sms_number != extra
    assert r.json()["to_number"] == patient


async def test_phone_to_group_is_one_shared_conversation(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob")
    carol = await tenant.add_user("carol")
    outsider = await tenant.add_user("dave")
    group_number = await tenant.add_number("200")
    await tenant.add_group("Front Desk", "200", ["bob", "carol"], group_number)
    patient = new_number()
    await send_telnyx(patient, group_number, "Is the clinic open Saturday?")
    conv_b = await tenant.sms_conversation(bob, patient)
    conv_c = await tenant.sms_conversation(carol, patient)
    assert conv_b is not None and conv_c is not None and conv_b["id"] == conv_c["id"]
    assert conv_b["owner"]["type"] == "group"
    assert await tenant.sms_conversation(outsider, patient) is None
    (inbound,) = await tenant.messages(bob, conv_b["id"])
    assert inbound["auto_reply_decision"] == {"sent": False, "reason": "group_recipient"}
    # Any member replies; the reply goes from the group's outbound number.
    r = await tenant.call(
        "POST",
        f"/v1/conversations/{conv_c['id']}/messages",
        as_=carol,
        json={"body": "Yes, 9 to 12."},
        expect=201,
    )
    assert r.json()["from_number"] == group_number and r.json()["sender_username"] == "carol"
    msgs = await tenant.messages(bob, conv_b["id"])
    assert [m["body"] for m in msgs] == ["Yes, 9 to 12.", "Is the clinic open Saturday?"]
    # Unread is per member: bob has not read carol's reply nor the inbound.
    assert (await tenant.sms_conversation(bob, patient) or {})["unread_count"] == 2
    await tenant.call("POST", f"/v1/conversations/{conv_b['id']}/read", as_=bob, expect=200)
    assert (await tenant.sms_conversation(bob, patient) or {})["unread_count"] == 0
    assert (await tenant.sms_conversation(carol, patient) or {})["unread_count"] == 1


async def test_group_without_outbound_replies_from_number_last_texted(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob")
    first, second = await tenant.add_number("210"), await tenant.add_number("210")
    await tenant.add_group("Billing", "210", ["bob"])
    patient = new_number()
    await send_telnyx(patient, first, "one")
    await send_telnyx(patient, second, "two")
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    r = await tenant.call(
        "POST", f"/v1/conversations/{conv['id']}/messages", as_=bob, json={"body": "ok"}, expect=201
    )
    assert r.json()["from_number"] == second


async def test_fan_out_to_a_list_and_to_a_group_extension(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", sms=True, outbound=True)
    for name in ("bob", "carol", "dave"):
        await tenant.add_user(name)
    await tenant.add_group("Nurses", "300", ["alice", "bob", "carol"])
    patient = new_number()
    r = await send(
        tenant,
        alice,
        [
            {"extension": "300"},
            {"username": "dave"},
            {"username": "bob"},
            {"phone_number": patient},
        ],
    )
    msgs = r.json()["messages"]
    # One message per party: bob once, alice (the sender) never, the group fanned out.
    assert sorted(m["recipient_username"] or m["to_number"] for m in msgs) == sorted(
        ["bob", "carol", "dave", patient]
    )
    assert all(m["sender_username"] == "alice" for m in msgs)


async def test_messaging_yourself_is_refused(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", extension="101")
    r = await send(tenant, alice, [{"username": "alice"}])
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["code"] == "cannot_message_self"


async def test_media_is_refused_and_inbound_mms_drops_it(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
    r = await send(
        tenant, alice, [{"phone_number": new_number()}], media=["https://example.org/x.jpg"]
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "mms_not_supported"
    assert await tenant.conversations(alice) == []
    patient = new_number()
    await send_telnyx(patient, alice.outbound_sms_number, "see photo", media=2)
    conv = await tenant.sms_conversation(alice, patient)
    assert conv is not None
    (m,) = await tenant.messages(alice, conv["id"])
    assert m["body"] == "see photo" and m["media_dropped"] == 2
    r = await tenant.call(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        as_=alice,
        json={"body": "x", "media": ["https://example.org/y.jpg"]},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "mms_not_supported"


async def test_inbound_to_unrouted_or_unknown_numbers_is_kept(
    tenant: Tenant, send_telnyx: SendTelnyx, ctx: AppContext
) -> None:
    unrouted = await tenant.add_number(None)
    nobody = await tenant.add_number("777")
    stranger = new_number()
    for to in (unrouted, nobody, stranger):
        r = await send_telnyx(new_number(), to, "hello?")
        assert r.status_code == 200
    async with ctx.sessionmaker() as s:
        rows = (
            await s.execute(
                text(
                    "SELECT to_number, reason FROM unrouted_messages WHERE to_number IN (:a, :b, :c)"
                ),
                {"a": unrouted, "b": nobody, "c": stranger},
            )
        ).all()
    assert dict(rows) == {
        unrouted: "no_route",
        nobody: "extension_not_found",
        stranger: "number_not_owned",
    }


async def test_idempotency_key_returns_first_response_and_sends_once(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", sms=True, outbound=True)
    patient = new_number()
    headers = {**alice.headers, "Idempotency-Key": "abc-1"}
    body = {"to": [{"phone_number": patient}], "body": "once"}
    first = await tenant.client.post("/v1/messages", json=body, headers=headers)
    again = await tenant.client.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    conv = await tenant.sms_conversation(alice, patient)
    assert conv is not None and len(await tenant.messages(alice, conv["id"])) == 1
    other = await tenant.client.post(
        "/v1/messages", json={**body, "body": "different"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_conversations_are_invisible_to_other_users_and_orgs(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    alice, bob = await tenant.add_user("alice"), await tenant.add_user("bob")
    carol = await tenant.add_user("carol")
    (m,) = (await send(tenant, alice, [{"username": "bob"}])).json()["messages"]
    other = await Tenant.create(client)
    for who, t in ((carol, tenant), (other.admin, other)):
        assert (
            await t.call("GET", f"/v1/conversations/{m['conversation_id']}", as_=who)
        ).status_code == 404
        assert (await t.call("GET", f"/v1/messages/{m['id']}", as_=who)).status_code == 404
        r = await t.call(
            "POST",
            f"/v1/conversations/{m['conversation_id']}/messages",
            as_=who,
            json={"body": "intrude"},
        )
        assert r.status_code == 404
    assert len(await tenant.messages(bob, m["conversation_id"])) == 1


async def test_bodies_are_encrypted_at_rest(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
    await tenant.add_user("bob")
    secrets = ["Diagnosis: strep throat, amoxicillin 500mg", "SSN 078-05-1120 on file"]
    await send(tenant, alice, [{"username": "bob"}], secrets[0])
    await send_telnyx(new_number(), alice.outbound_sms_number, secrets[1])
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(select(Message.body_ciphertext))).scalars().all()
        dump = (await conn.execute(text("SELECT * FROM messages"))).all()
    blob = b"".join(rows) + repr(dump).encode()
    for secret in secrets:
        assert secret.encode() not in blob
        assert secret.encode("utf-16-le") not in blob


async def test_unread_counts_hold_for_a_user_who_has_read_several_conversations(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number
    patients = [new_number() for _ in range(3)]
    for p in patients:
        for text_ in ("one", "two"):
            await send_telnyx(p, bob.outbound_sms_number, text_)
    ids = [(await tenant.sms_conversation(bob, p) or {})["id"] for p in patients]
    for conv_id in ids[:2]:
        r = await tenant.call("POST", f"/v1/conversations/{conv_id}/read", as_=bob, expect=200)
        assert r.json()["unread_count"] == 0
    await send_telnyx(patients[0], bob.outbound_sms_number, "three")
    counts = {c["id"]: c["unread_count"] for c in await tenant.conversations(bob)}
    assert [counts[i] for i in ids] == [1, 0, 2]
