"""A group's after-hours reply: one reply while the group's schedule is closed, from the
number the group's replies go from, under the auto-responder's window and exclusions.

Time is driven by the schedules asked for, chosen relative to now (tests/support.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import nacl.signing
import orjson
import pytest

from app.carriers.telnyx import sign_telnyx_webhook
from app.context import AppContext
from tests.conftest import SendTelnyx
from tests.support import (
    Member,
    Tenant,
    closed_today,
    eventually,
    hours_around_now,
    new_number,
    telnyx_inbound_event,
)

NIGHT = "The front desk is closed. We answer from 8am; for emergencies call 911."


async def front_desk(
    tenant: Tenant, *, own_number: bool = True
) -> tuple[dict[str, Any], list[Member], str, str | None]:
    """A group of two with a line routed to it; with `own_number`, a second number routed
    to it is its outbound number. Returns the group, its members, the line, the outbound
    number."""
    alice = await tenant.add_user("alice", extension="101")
    carol = await tenant.add_user("carol", extension="103")
    line = await tenant.add_number("200")
    outbound = await tenant.add_number("200") if own_number else None
    group = await tenant.add_group("Front desk", "200", ["alice", "carol"], outbound)
    return group, [alice, carol], line, outbound


async def set_after_hours(
    tenant: Tenant, group: dict[str, Any], schedule: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    body = {"enabled": True, "text": NIGHT, "schedule": schedule, **kw}
    r = await tenant.call("PUT", f"/v1/groups/{group['id']}/after-hours", expect=200, json=body)
    shown: dict[str, Any] = r.json()
    return shown


async def thread(tenant: Tenant, member: Member, patient: str) -> list[dict[str, Any]]:
    """The group's conversation with `patient`, oldest first, as `member` sees it."""
    conv = await tenant.sms_conversation(member, patient)
    assert conv is not None
    return list(reversed(await tenant.messages(member, conv["id"], limit=200)))


def reasons(messages: list[dict[str, Any]]) -> list[str]:
    return [m["auto_reply_decision"]["reason"] for m in messages if m["direction"] == "inbound"]


async def test_a_group_without_one_stays_group_recipient(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    group, (alice, _), line, _ = await front_desk(tenant)
    r = await tenant.call("GET", f"/v1/groups/{group['id']}/after-hours", expect=200)
    assert r.json() == {"enabled": False, "text": "", "schedule": None}
    patient = new_number()
    await send_telnyx(patient, line, "hello")
    assert reasons(await thread(tenant, alice, patient)) == ["group_recipient"]


async def test_while_closed_one_reply_goes_from_the_groups_outbound_number_to_every_member(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    group, (alice, carol), line, outbound = await front_desk(tenant)
    await set_after_hours(tenant, group, hours_around_now(open_now=False))
    patient = new_number()
    async with ctx.events.subscribe(carol.id, tenant.id) as sub:
        await send_telnyx(patient, line, "is anyone there?")
        events = []
        async with asyncio.timeout(10):
            async for event in sub:
                events.append(event.data)
                if len(events) == 2:
                    break
    await send_telnyx(patient, line, "hello?")
    messages = await thread(tenant, alice, patient)
    assert reasons(messages) == ["sent", "rate_limited"]
    (reply,) = [m for m in messages if m["direction"] == "outbound"]
    assert reply["body"] == NIGHT and reply["auto_reply"] is True
    assert reply["from_number"] == outbound != line and reply["to_number"] == patient
    assert reply["sender_username"] is None and reply["group_id"] == group["id"]
    assert [m["id"] for m in await thread(tenant, carol, patient)] == [m["id"] for m in messages]
    # The stream shows the text and the reply as the API does.
    assert [e["id"] for e in events] == [messages[0]["id"], reply["id"]]
    assert events[1]["body"] == NIGHT and events[1]["auto_reply"] is True

    async def delivered() -> bool:
        r = await tenant.call("GET", f"/v1/messages/{reply['id']}", as_=alice, expect=200)
        return bool(r.json()["status"] == "delivered")

    await eventually(delivered)


async def test_without_an_outbound_number_it_replies_from_the_number_texted(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    group, (alice, _), line, _ = await front_desk(tenant, own_number=False)
    await set_after_hours(tenant, group, closed_today())
    patient = new_number()
    await send_telnyx(patient, line, "hi")
    (reply,) = [m for m in await thread(tenant, alice, patient) if m["auto_reply"]]
    assert reply["from_number"] == line


async def test_while_open_disabled_or_blank_it_records_why_and_takes_no_window(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    group, (alice, _), line, _ = await front_desk(tenant)
    patient = new_number()
    await set_after_hours(tenant, group, hours_around_now(open_now=True))
    await send_telnyx(patient, line, "one")
    await set_after_hours(tenant, group, closed_today(), enabled=False)
    await send_telnyx(patient, line, "two")
    await set_after_hours(tenant, group, closed_today(), text=" \t ")
    await send_telnyx(patient, line, "three")
    # None of them took the window: the next one, while closed, is answered.
    await set_after_hours(tenant, group, closed_today())
    await send_telnyx(patient, line, "four")
    messages = await thread(tenant, alice, patient)
    assert reasons(messages) == ["within_hours", "disabled", "empty_text", "sent"]
    assert len([m for m in messages if m["auto_reply"]]) == 1


async def test_the_auto_responders_exclusions_hold(
    client: httpx.AsyncClient, tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    group, (alice, _), line, _ = await front_desk(tenant)
    await set_after_hours(tenant, group, closed_today())
    patient = new_number()
    await send_telnyx(patient, line, "STOP")
    await send_telnyx(patient, line, "one more thing")
    await send_telnyx(patient, line, "START")
    await send_telnyx(patient, line, "HELP")
    messages = await thread(tenant, alice, patient)
    assert reasons(messages) == ["keyword", "opted_out", "keyword", "keyword"]
    # The HELP answer is no after-hours reply.
    (answer,) = [m for m in messages if m["direction"] == "outbound"]
    assert not answer["auto_reply"] and "STOP" in answer["body"]
    # A text from a number of this service (another clinic's) is never answered.
    other = await Tenant.create(client)
    internal = await other.add_number(None)
    await send_telnyx(internal, line, "hello from another clinic")
    assert reasons(await thread(tenant, alice, internal)) == ["internal_sender"]


async def test_the_window_is_the_auto_responders(tenant: Tenant, send_telnyx: SendTelnyx) -> None:
    group, (alice, _), line, _ = await front_desk(tenant)
    await set_after_hours(tenant, group, closed_today())
    bob, bobs_line = await tenant.add_auto_replying_user("bob", "102", "Bob is out.")
    patient = new_number()
    await send_telnyx(patient, line, "to the desk")
    await send_telnyx(patient, bobs_line, "to bob")
    assert reasons(await thread(tenant, alice, patient)) == ["sent"]
    assert reasons(await thread(tenant, bob, patient)) == ["rate_limited"]


async def test_its_settings_read_back_and_are_audited(tenant: Tenant) -> None:
    group, _, _, _ = await front_desk(tenant)
    await tenant.call("PATCH", "/v1/organization", expect=200, json={"timezone": "America/Denver"})
    shown = await set_after_hours(
        tenant,
        group,
        {"weekly": {"mon": [["08:00", "17:00"]], "sat": [["09:00", "12:00"]]}},
    )
    assert shown == {
        "enabled": True,
        "text": NIGHT,
        "schedule": {
            "timezone": "America/Denver",
            "weekly": {"mon": [["08:00", "17:00"]], "sat": [["09:00", "12:00"]]},
            "closed": [],
        },
    }
    r = await tenant.call("GET", f"/v1/groups/{group['id']}/after-hours", expect=200)
    assert r.json() == shown
    entry = (await tenant.call("GET", "/v1/audit-log", expect=200)).json()["items"][0]
    assert entry["action"] == "group.after_hours.set" and entry["target_id"] == group["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": True, "text": NIGHT}, "schedule"),
        ({"enabled": True, "text": "", "schedule": {}}, "text"),
        (
            {"enabled": True, "text": NIGHT, "schedule": {"timezone": "Nowhere"}},
            "schedule.timezone",
        ),
        (
            {"enabled": True, "text": NIGHT, "schedule": {"weekly": {"fri": [["18:00", "09:00"]]}}},
            "schedule.weekly.fri.0",
        ),
        (
            {
                "enabled": True,
                "text": NIGHT,
                "schedule": {"weekly": {"fri": [["08:00", "12:00"], ["09:00", "10:00"]]}},
            },
            "schedule.weekly.fri.1",
        ),
    ],
)
async def test_bad_settings_are_422_naming_the_field(
    tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    group, _, _, _ = await front_desk(tenant)
    r = await tenant.call("PUT", f"/v1/groups/{group['id']}/after-hours", json=body)
    assert r.status_code == 422, r.text
    assert field in {d["field"] for d in r.json()["error"]["details"]}, r.text
    r = await tenant.call("GET", f"/v1/groups/{group['id']}/after-hours", expect=200)
    assert r.json()["schedule"] is None


async def test_only_the_groups_own_admins_reach_it(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    group, (alice, _), _, _ = await front_desk(tenant)
    path = f"/v1/groups/{group['id']}/after-hours"
    body = {"enabled": True, "text": NIGHT, "schedule": closed_today()}
    for method in ("GET", "PUT"):
        r = await tenant.call(method, path, as_=alice, json=body if method == "PUT" else None)
        assert r.status_code == 403
    other = await Tenant.create(client)
    for method in ("GET", "PUT"):
        r = await other.call(method, path, json=body if method == "PUT" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "group_not_found"
    r = await tenant.call("GET", path, expect=200)
    assert r.json()["schedule"] is None


async def test_a_concurrent_burst_through_two_app_instances_gets_exactly_one_reply(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    async with make_app() as (_, client_a), make_app() as (_, client_b):
        tenant = await Tenant.create(client_a)
        group, (alice, _), line, outbound = await front_desk(tenant)
        await set_after_hours(tenant, group, closed_today())
        patient = new_number()

        async def inbound(i: int) -> int:
            raw = orjson.dumps(telnyx_inbound_event(patient, line, f"msg {i}", str(uuid.uuid4())))
            r = await (client_a if i % 2 else client_b).post(
                "/webhooks/telnyx",
                content=raw,
                headers=sign_telnyx_webhook(telnyx_key, raw, int(time.time())),
            )
            return r.status_code

        assert set(await asyncio.gather(*(inbound(i) for i in range(40)))) == {200}
        messages = await thread(tenant, alice, patient)
        decided = reasons(messages)
        assert len(decided) == 40
        assert decided.count("sent") == 1 and decided.count("rate_limited") == 39
        (reply,) = [m for m in messages if m["auto_reply"]]
        assert reply["from_number"] == outbound
