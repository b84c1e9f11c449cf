"""The auto-responder: exactly the replies the rules allow, with a recorded reason."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import nacl.signing
import orjson

from app.carriers.telnyx import sign_telnyx_webhook
from tests.conftest import SendTelnyx
from tests.support import Member, Tenant, eventually, new_number, telnyx_inbound_event

REPLY = "Thanks! The clinic will answer during opening hours."


async def inbound_decisions(tenant: Tenant, member: Member, patient: str) -> list[Any]:
    conv = await tenant.sms_conversation(member, patient)
    assert conv is not None
    msgs = await tenant.messages(member, conv["id"], limit=200)
    return [
        m["auto_reply_decision"]["reason"] for m in reversed(msgs) if m["direction"] == "inbound"
    ]


async def auto_replies(tenant: Tenant, member: Member, patient: str) -> list[dict[str, Any]]:
    conv = await tenant.sms_conversation(member, patient)
    assert conv is not None
    return [m for m in await tenant.messages(member, conv["id"], limit=200) if m["auto_reply"]]


async def text_status(tenant: Tenant, member: Member, patient: str) -> int:
    """The status of a text from `member` to `patient`: 201 sent, 409 opted out."""
    r = await tenant.call(
        "POST", "/v1/messages", as_=member, json={"to": [{"phone_number": patient}], "body": "x"}
    )
    return r.status_code


async def test_first_message_gets_the_reply_from_the_outbound_number(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    other_line = await tenant.add_number("102")
    await tenant.set_auto_responder(bob, REPLY)
    patient = new_number()
    await send_telnyx(patient, other_line, "hello")
    (reply,) = await auto_replies(tenant, bob, patient)
    assert reply["body"] == REPLY and reply["direction"] == "outbound"
    assert reply["from_number"] == bob.outbound_sms_number != other_line
    assert reply["to_number"] == patient
    assert await inbound_decisions(tenant, bob, patient) == ["sent"]

    async def delivered() -> bool:
        r = await tenant.call("GET", f"/v1/messages/{reply['id']}", as_=bob, expect=200)
        return bool(r.json()["status"] == "delivered")

    await eventually(delivered)


async def test_second_message_inside_the_window_gets_none(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, REPLY)
    patient = new_number()
    for body in ("one", "two", "three"):
        await send_telnyx(patient, bob.outbound_sms_number, body)
    assert await inbound_decisions(tenant, bob, patient) == ["sent", "rate_limited", "rate_limited"]
    assert len(await auto_replies(tenant, bob, patient)) == 1


async def test_window_is_per_org_and_number_across_users(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    carol = await tenant.add_user("carol", extension="103", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, REPLY)
    await tenant.set_auto_responder(carol, REPLY)
    patient = new_number()
    await send_telnyx(patient, bob.outbound_sms_number, "to bob")
    await send_telnyx(patient, carol.outbound_sms_number, "to carol")
    assert await inbound_decisions(tenant, bob, patient) == ["sent"]
    assert await inbound_decisions(tenant, carol, patient) == ["rate_limited"]


async def test_a_message_that_fails_another_rule_does_not_take_the_window(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    carol = await tenant.add_user("carol", extension="103", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, REPLY, enabled=False)
    await tenant.set_auto_responder(carol, REPLY)
    patient = new_number()
    await send_telnyx(patient, bob.outbound_sms_number, "to bob")
    await send_telnyx(patient, carol.outbound_sms_number, "to carol")
    assert await inbound_decisions(tenant, bob, patient) == ["disabled"]
    assert await inbound_decisions(tenant, carol, patient) == ["sent"]


async def test_each_unmet_criterion_records_its_reason(
    client: httpx.AsyncClient, tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    no_outbound = await tenant.add_user(extension="110", sms=True)
    line_no_outbound = await tenant.add_number("110")
    disabled_sms = await tenant.add_user(extension="111", sms=False)
    line_disabled_sms = await tenant.add_number("111")
    off = await tenant.add_user(extension="112", sms=True, outbound=True)
    blank = await tenant.add_user(extension="113", sms=True, outbound=True)
    for m in (no_outbound, disabled_sms):
        await tenant.set_auto_responder(m, REPLY)
    await tenant.set_auto_responder(off, REPLY, enabled=False)
    await tenant.set_auto_responder(blank, "   ")
    cases = [
        (no_outbound, line_no_outbound, "no_outbound_number"),
        (disabled_sms, line_disabled_sms, "sms_disabled"),
        (off, off.outbound_sms_number, "disabled"),
        (blank, blank.outbound_sms_number, "empty_text"),
    ]
    for member, line, reason in cases:
        patient = new_number()
        await send_telnyx(patient, line, "hello")
        assert await inbound_decisions(tenant, member, patient) == [reason]
        assert await auto_replies(tenant, member, patient) == []
    # From a number some organization of this service owns: never auto-replied.
    other = await Tenant.create(client)
    internal = await other.add_number("1")
    target = await tenant.add_user(extension="114", sms=True, outbound=True)
    await tenant.set_auto_responder(target, REPLY)
    await send_telnyx(internal, target.outbound_sms_number, "hi from another clinic")
    assert await inbound_decisions(tenant, target, internal) == ["internal_sender"]


async def test_a_new_reply_after_the_window_has_passed(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app(auto_reply_window_seconds=0.5) as (_, client):
        tenant = await Tenant.create(client)
        bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
        await tenant.set_auto_responder(bob, REPLY)
        patient = new_number()

        async def inbound(body: str) -> None:
            raw = orjson.dumps(telnyx_inbound_event(patient, bob.outbound_sms_number or "", body))
            r = await client.post(
                "/webhooks/telnyx",
                content=raw,
                headers=sign_telnyx_webhook(telnyx_key, raw, int(time.time())),
            )
            assert r.status_code == 200

        await inbound("one")
        await inbound("two")
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await inbound("three")
        assert await inbound_decisions(tenant, bob, patient) == ["sent", "rate_limited", "sent"]


async def test_burst_of_fifty_through_two_app_instances_gets_one_reply(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (_, client_a), make_app() as (_, client_b):
        tenant = await Tenant.create(client_a)
        bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
        await tenant.set_auto_responder(bob, REPLY)
        patient = new_number()

        async def inbound(i: int) -> int:
            raw = orjson.dumps(
                telnyx_inbound_event(
                    patient, bob.outbound_sms_number or "", f"msg {i}", str(uuid.uuid4())
                )
            )
            via = client_a if i % 2 else client_b
            r = await via.post(
                "/webhooks/telnyx",
                content=raw,
                headers=sign_telnyx_webhook(telnyx_key, raw, int(time.time())),
            )
            return r.status_code

        assert set(await asyncio.gather(*(inbound(i) for i in range(50)))) == {200}
        decisions = await inbound_decisions(tenant, bob, patient)
        assert len(decisions) == 50
        assert decisions.count("sent") == 1 and decisions.count("rate_limited") == 49
        assert len(await auto_replies(tenant, bob, patient)) == 1


async def test_redis_unreachable_fails_closed_and_still_stores(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app(redis_url="redis://127.0.0.1:1/0") as (_, client):
        tenant = await Tenant.create(client)
        bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
        await tenant.set_auto_responder(bob, REPLY)
        patient = new_number()
        raw = orjson.dumps(telnyx_inbound_event(patient, bob.outbound_sms_number or "", "hi"))
        r = await client.post(
            "/webhooks/telnyx",
            content=raw,
            headers=sign_telnyx_webhook(telnyx_key, raw, int(time.time())),
        )
        assert r.status_code == 200
        assert await inbound_decisions(tenant, bob, patient) == ["limiter_unavailable"]
        assert await auto_replies(tenant, bob, patient) == []
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["redis"] == "unreachable"


async def test_stop_opts_out_start_opts_back_in_help_answers(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, REPLY)
    patient = new_number()
    await send_telnyx(patient, bob.outbound_sms_number, "  stop ")
    assert await inbound_decisions(tenant, bob, patient) == ["keyword"]
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=bob,
        json={"to": [{"phone_number": patient}], "body": "reminder"},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "recipient_opted_out"
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    r = await tenant.call(
        "POST", f"/v1/conversations/{conv['id']}/messages", as_=bob, json={"body": "are you there?"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "recipient_opted_out"
    await send_telnyx(patient, bob.outbound_sms_number, "are you open?")
    assert (await inbound_decisions(tenant, bob, patient))[-1] == "opted_out"
    await send_telnyx(patient, bob.outbound_sms_number, "START")
    await tenant.call(
        "POST",
        "/v1/messages",
        as_=bob,
        expect=201,
        json={"to": [{"phone_number": patient}], "body": "welcome back"},
    )
    await send_telnyx(patient, bob.outbound_sms_number, "help")
    msgs = await tenant.messages(bob, conv["id"])
    assert "STOP" in msgs[0]["body"] and msgs[0]["direction"] == "outbound"
    assert msgs[0]["from_number"] == bob.outbound_sms_number
    assert [m for m in msgs if m["auto_reply"]] == []


async def test_stop_words_are_all_recognised(tenant: Tenant, send_telnyx: SendTelnyx) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    for word in (
        "STOP",
        "stopall",
        "Unsubscribe",
        "CANCEL",
        "end",
        "QUIT",
        "revoke",
        "OptOut",
        "OPT OUT",
        "Stop.",
        " opt out ",
        "opt   out",
        "\u201cQuit!\u201d",
    ):
        patient = new_number()
        await send_telnyx(patient, bob.outbound_sms_number, word)
        assert await text_status(tenant, bob, patient) == 409, word
    for text in ("please stop calling me", "stop please", "opt out of what?", "STOPPED"):
        patient = new_number()
        await send_telnyx(patient, bob.outbound_sms_number, text)
        assert await text_status(tenant, bob, patient) == 201, text


async def test_a_keyword_never_gets_the_auto_reply(tenant: Tenant, send_telnyx: SendTelnyx) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, REPLY)
    words = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
    words += ["OPT OUT", "START", "UNSTOP", "YES", "HELP", "INFO", "Info?", " yes! "]
    for word in words:
        patient = new_number()
        await send_telnyx(patient, bob.outbound_sms_number, word)
        assert await inbound_decisions(tenant, bob, patient) == ["keyword"], word
        assert await auto_replies(tenant, bob, patient) == [], word


async def test_start_words_opt_back_in_and_help_words_are_answered(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    for word in ("START", "unstop", "Yes."):
        patient = new_number()
        await send_telnyx(patient, bob.outbound_sms_number, "REVOKE")
        assert await text_status(tenant, bob, patient) == 409
        await send_telnyx(patient, bob.outbound_sms_number, word)
        assert await text_status(tenant, bob, patient) == 201, word
    for word in ("HELP", "info", " Help! "):
        patient = new_number()
        await send_telnyx(patient, bob.outbound_sms_number, word)
        conv = await tenant.sms_conversation(bob, patient)
        assert conv is not None
        answers = [
            m for m in await tenant.messages(bob, conv["id"]) if m["direction"] == "outbound"
        ]
        assert len(answers) == 1, word
        assert "STOP" in answers[0]["body"] and not answers[0]["auto_reply"]


def telnyx_answered(
    from_number: str, to_number: str, text: str, autoresponse_type: str
) -> dict[str, Any]:
    """A `message.received` for a keyword Telnyx has already answered itself."""
    event = telnyx_inbound_event(from_number, to_number, text)
    event["data"]["payload"]["autoresponse_type"] = autoresponse_type
    return event


async def test_keywords_the_carrier_answered_get_no_second_answer_but_still_count(
    client: httpx.AsyncClient, tenant: Tenant, telnyx_key: nacl.signing.SigningKey
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, REPLY)
    assert bob.outbound_sms_number is not None

    async def post(event: dict[str, Any]) -> None:
        raw = orjson.dumps(event)
        headers = sign_telnyx_webhook(telnyx_key, raw, int(time.time()))
        r = await client.post("/webhooks/telnyx", content=raw, headers=headers)
        assert r.status_code == 200 and r.json() == {"status": "stored"}, r.text

    async def outbound_in(patient: str) -> list[dict[str, Any]]:
        conv = await tenant.sms_conversation(bob, patient)
        assert conv is not None
        return [m for m in await tenant.messages(bob, conv["id"]) if m["direction"] == "outbound"]

    patient = new_number()
    await post(telnyx_answered(patient, bob.outbound_sms_number, "HELP", "HELP"))
    assert await outbound_in(patient) == []
    assert await inbound_decisions(tenant, bob, patient) == ["keyword"]
    # The opt-out Telnyx confirmed is ours too, and so is the opt-in.
    await post(telnyx_answered(patient, bob.outbound_sms_number, "stop", "STOP"))
    assert await text_status(tenant, bob, patient) == 409
    await post(telnyx_answered(patient, bob.outbound_sms_number, "start", "START"))
    assert await text_status(tenant, bob, patient) == 201
    # A keyword of the messaging profile's own that Telnyx answered: no auto-reply either.
    other = new_number()
    await post(telnyx_answered(other, bob.outbound_sms_number, "JOIN", "START"))
    assert await inbound_decisions(tenant, bob, other) == ["keyword"]
    assert await auto_replies(tenant, bob, other) == []


async def test_admin_sets_a_users_auto_responder(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob")
    await tenant.call(
        "PUT",
        f"/v1/users/{bob.id}/auto-responder",
        expect=200,
        json={"enabled": True, "text": "Out today"},
    )
    r = await tenant.call("GET", "/v1/me/auto-responder", as_=bob, expect=200)
    assert r.json() == {"enabled": True, "text": "Out today", "schedule": None, "away": []}
    r = await tenant.call(
        "PUT", "/v1/me/auto-responder", as_=bob, json={"enabled": True, "text": "x" * 1601}
    )
    assert r.status_code == 422
    r = await tenant.call(
        "PUT", "/v1/me/auto-responder", as_=bob, json={"enabled": True, "text": ""}
    )
    assert r.status_code == 422


async def test_a_responder_never_set_up_is_recorded_disabled_not_empty_text(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    """Nobody chose a blank text: a user who never set up an auto-responder has it off.
    One set up with a blank text keeps `empty_text`."""
    never = await tenant.add_user(extension="120", sms=True, outbound=True)
    blank = await tenant.add_user(extension="121", sms=True, outbound=True)
    await tenant.set_auto_responder(blank, " ", enabled=False)
    for member, reason in ((never, "disabled"), (blank, "empty_text")):
        patient = new_number()
        assert member.outbound_sms_number
        await send_telnyx(patient, member.outbound_sms_number, "hello")
        assert await inbound_decisions(tenant, member, patient) == [reason]
