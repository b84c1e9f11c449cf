"""Scheduled messages (API.md, "Scheduled messages"): `send_at` on a send to phone
numbers, the caller's list of them, cancel, the rules checked again when one comes due,
and a cancel at the due instant that ends canceled or sent, never both."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.context import AppContext
from app.infra.event_bus import Event
from app.services.pagination import encode_cursor
from tests.conftest import SendTelnyx
from tests.support import Member, Tenant, eventually, new_number


def at(seconds: float) -> datetime:
    """An instant `seconds` from now, whole milliseconds (as a client would write it)."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def schedule(
    tenant: Tenant,
    member: Member,
    numbers: list[str],
    send_at: datetime | str,
    body: str = "Reminder: your appointment is tomorrow at 9am.",
) -> httpx.Response:
    return await tenant.call(
        "POST",
        "/v1/messages",
        as_=member,
        json={
            "to": [{"phone_number": n} for n in numbers],
            "body": body,
            "send_at": send_at if isinstance(send_at, str) else send_at.isoformat(),
        },
    )


async def scheduled_ids(tenant: Tenant, member: Member, **params: Any) -> list[str]:
    r = await tenant.call(
        "GET", "/v1/messages", as_=member, expect=200, params={"status": "scheduled", **params}
    )
    return [m["id"] for m in r.json()["items"]]


async def message(tenant: Tenant, member: Member, message_id: str) -> dict[str, Any]:
    r = await tenant.call("GET", f"/v1/messages/{message_id}", as_=member, expect=200)
    body: dict[str, Any] = r.json()
    return body


def carrier_got(ctx: AppContext, message_id: str) -> int:
    """How many times the (in-process simulator) carrier accepted this message."""
    return sum(1 for s in ctx.carrier.sent if s.reference == message_id)  # type: ignore[attr-defined]


async def final(tenant: Tenant, member: Member, message_id: str) -> dict[str, Any]:
    async def settled() -> dict[str, Any] | None:
        m = await message(tenant, member, message_id)
        return m if m["status"] in ("delivered", "undelivered", "failed", "canceled") else None

    result: dict[str, Any] = await eventually(settled, timeout=60)
    return result


# ------------------------------------------------------------------------ schedule and list


async def test_a_scheduled_send_is_stored_at_once_and_listed_soonest_first(
    tenant: Tenant, ctx: AppContext
) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    patient_a, patient_b = new_number(), new_number()
    later_at, sooner_at = at(7200), at(3600)
    r = await schedule(tenant, alice, [patient_a], later_at)
    assert r.status_code == 201, r.text
    (later,) = r.json()["messages"]
    assert later["status"] == "scheduled"
    assert datetime.fromisoformat(later["send_at"]) == later_at
    assert later["from_number"] == alice.outbound_sms_number
    assert later["to_number"] == patient_a
    r = await schedule(tenant, alice, [patient_b], sooner_at)
    assert r.status_code == 201, r.text
    (sooner,) = r.json()["messages"]
    # A message sent now is not scheduled, and shows no send_at.
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"phone_number": new_number()}], "body": "Now"},
    )
    assert r.json()["messages"][0]["send_at"] is None

    assert await scheduled_ids(tenant, alice) == [sooner["id"], later["id"]]
    # Paged like every list.
    r = await tenant.call(
        "GET", "/v1/messages", as_=alice, expect=200, params={"status": "scheduled", "limit": 1}
    )
    first = r.json()
    assert [m["id"] for m in first["items"]] == [sooner["id"]]
    assert first["next_cursor"]
    r = await tenant.call(
        "GET",
        "/v1/messages",
        as_=alice,
        expect=200,
        params={"status": "scheduled", "limit": 1, "cursor": first["next_cursor"]},
    )
    assert [m["id"] for m in r.json()["items"]] == [later["id"]]
    assert r.json()["next_cursor"] is None
    # The message and its conversation show it as it is.
    shown = await message(tenant, alice, later["id"])
    assert shown["status"] == "scheduled" and shown["send_at"] == later["send_at"]
    conv = await tenant.sms_conversation(alice, patient_a)
    assert conv is not None
    assert [m["status"] for m in await tenant.messages(alice, conv["id"])] == ["scheduled"]
    assert carrier_got(ctx, later["id"]) == carrier_got(ctx, sooner["id"]) == 0


async def test_the_list_takes_only_the_scheduled_status(tenant: Tenant) -> None:
    r = await tenant.call("GET", "/v1/messages", params={"status": "sent"})
    assert r.status_code == 422, r.text


async def test_a_scheduled_message_goes_when_due_and_every_change_is_an_event(
    tenant: Tenant, ctx: AppContext
) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    async with ctx.events.subscribe(alice.id, tenant.id) as sub:
        send_at = at(2)
        r = await schedule(tenant, alice, [new_number()], send_at)
        assert r.status_code == 201, r.text
        message_id = r.json()["messages"][0]["id"]
        done = await final(tenant, alice, message_id)
        assert done["status"] == "delivered"
        assert carrier_got(ctx, message_id) == 1
        (sent,) = [s for s in ctx.carrier.sent if s.reference == message_id]  # type: ignore[attr-defined]
        assert sent.accepted_at >= send_at.timestamp()
        seen: list[tuple[str, str]] = []

        async def all_seen() -> bool:
            while sub.queued:
                item = await anext(sub)
                if isinstance(item, Event) and item.data["id"] == message_id:
                    seen.append((item.type, item.data["status"]))
            return ("message.updated", "delivered") in seen

        await eventually(all_seen)
    assert seen[0] == ("message.created", "scheduled")
    # Queued when it came due, then as the carrier reports it (its receipt may overtake
    # the worker's record of the send).
    updates = [status for _, status in seen[1:]]
    assert updates[0] == "queued" and updates[-1] == "delivered", seen
    assert set(updates) <= {"queued", "sent", "delivered"}, seen


# ------------------------------------------------------------------------------- cancel


async def test_a_canceled_message_is_never_sent(tenant: Tenant, ctx: AppContext) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    r = await schedule(tenant, alice, [new_number()], at(2))
    canceled_id = r.json()["messages"][0]["id"]
    # Due just after it: once this one is sent, the canceled one would have been too.
    r = await schedule(tenant, alice, [new_number()], at(2.5))
    witness_id = r.json()["messages"][0]["id"]
    async with ctx.events.subscribe(alice.id, tenant.id) as sub:
        r = await tenant.call("POST", f"/v1/messages/{canceled_id}/cancel", as_=alice)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "canceled" and r.json()["send_at"] is not None
        event = await asyncio.wait_for(anext(sub), 10)
        while not (isinstance(event, Event) and event.data["id"] == canceled_id):
            event = await asyncio.wait_for(anext(sub), 10)
        assert (event.type, event.data["status"]) == ("message.updated", "canceled")
    r = await tenant.call("POST", f"/v1/messages/{canceled_id}/cancel", as_=alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_cancelable"
    assert await scheduled_ids(tenant, alice) == [witness_id]
    assert (await final(tenant, alice, witness_id))["status"] == "delivered"
    assert (await message(tenant, alice, canceled_id))["status"] == "canceled"
    assert carrier_got(ctx, canceled_id) == 0


async def test_only_a_scheduled_message_can_be_canceled(tenant: Tenant) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    bob = await tenant.add_user()
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"phone_number": new_number()}, {"username": bob.username}], "body": "Hi"},
    )
    for m in r.json()["messages"]:
        r = await tenant.call("POST", f"/v1/messages/{m['id']}/cancel", as_=alice)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "not_cancelable"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "send_at",
    [
        pytest.param(lambda: at(-3600).isoformat(), id="an hour ago"),
        pytest.param(lambda: at(36 * 86400).isoformat(), id="36 days ahead"),
        pytest.param(lambda: at(3600).replace(tzinfo=None).isoformat(), id="no offset"),
        pytest.param(lambda: "tomorrow at nine", id="not an instant"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: "2026-02-30T09:00:00Z", id="no such day"),
    ],
)
async def test_send_at_is_an_instant_from_now_to_35_days_ahead(
    tenant: Tenant, send_at: Any
) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    patient = new_number()
    r = await schedule(tenant, alice, [patient], send_at())
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_send_at", error
    assert await tenant.sms_conversation(alice, patient) is None
    assert await scheduled_ids(tenant, alice) == []


async def test_send_at_35_days_ahead_less_a_minute_is_accepted(tenant: Tenant) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    r = await schedule(tenant, alice, [new_number()], at(35 * 86400 - 60))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("internal", [{"username": "bob"}, {"extension": "102"}])
async def test_scheduling_is_for_phone_numbers_only(
    tenant: Tenant, internal: dict[str, str]
) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    bob = await tenant.add_user("bob", extension="102")
    patient = new_number()
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        json={
            "to": [{"phone_number": patient}, internal],
            "body": "Staff meeting at 9",
            "send_at": at(3600).isoformat(),
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "scheduling_not_supported"
    assert await tenant.conversations(bob) == []
    assert await tenant.sms_conversation(alice, patient) is None


# ------------------------------------------------------------- rules checked when due


async def test_a_recipient_who_opted_out_meanwhile_ends_failed(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user(extension="101", sms=True, outbound=True)
    assert alice.outbound_sms_number is not None
    patient = new_number()
    send_at = at(4)
    r = await schedule(tenant, alice, [patient], send_at)
    message_id = r.json()["messages"][0]["id"]
    r = await send_telnyx(patient, alice.outbound_sms_number, "STOP")
    assert r.status_code == 200, r.text
    assert time.time() < send_at.timestamp(), "the opt-out came after the message was due"
    done = await final(tenant, alice, message_id)
    assert (done["status"], done["error_code"]) == ("failed", "recipient_opted_out")
    assert carrier_got(ctx, message_id) == 0


async def test_a_number_released_meanwhile_ends_failed(tenant: Tenant, ctx: AppContext) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    send_at = at(4)
    r = await schedule(tenant, alice, [new_number()], send_at)
    message_id = r.json()["messages"][0]["id"]
    await tenant.call(
        "PATCH", f"/v1/users/{alice.id}", expect=200, json={"outbound_sms_number": None}
    )
    numbers = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    (number_id,) = [n["id"] for n in numbers if n["number"] == alice.outbound_sms_number]
    await tenant.call("DELETE", f"/v1/phone-numbers/{number_id}", expect=204)
    assert time.time() < send_at.timestamp(), "the number was released after the message was due"
    done = await final(tenant, alice, message_id)
    assert (done["status"], done["error_code"]) == ("failed", "from_number_released")
    assert carrier_got(ctx, message_id) == 0


# ---------------------------------------------------------------------------- isolation


async def test_nobody_else_reads_lists_or_cancels_a_scheduled_message(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    bob = await tenant.add_user(sms=True, outbound=True)
    other = await Tenant.create(client)
    r = await schedule(tenant, alice, [new_number()], at(3600))
    message_id = r.json()["messages"][0]["id"]
    for org, who in ((tenant, bob), (other, other.admin)):
        r = await org.call("GET", f"/v1/messages/{message_id}", as_=who)
        assert r.status_code == 404, r.text
        r = await org.call("POST", f"/v1/messages/{message_id}/cancel", as_=who)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "message_not_found"
        assert await scheduled_ids(org, who) == []
        # Nor does a cursor naming it page anyone else's list.
        r = await org.call(
            "GET",
            "/v1/messages",
            as_=who,
            params={"status": "scheduled", "cursor": encode_cursor(uuid.UUID(message_id))},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    assert (await message(tenant, alice, message_id))["status"] == "scheduled"
    r = await tenant.call("POST", f"/v1/messages/{message_id}/cancel", as_=alice, expect=200)


# ------------------------------------------------------------------------ the cancel race


async def test_a_cancel_at_the_due_instant_is_canceled_or_sent_never_both(
    tenant: Tenant, ctx: AppContext
) -> None:
    """Cancels fired around each message's due instant, while the worker claims it: each
    message ends either canceled (one cancel answered 200, the carrier never got it) or
    sent (every cancel answered 409, the carrier got it once)."""
    senders = [await tenant.add_user(sms=True, outbound=True) for _ in range(8)]
    # Around the due instant: a little before, at, and after it (the worker looks for
    # due jobs every 0.1 s here).
    offsets = [-0.05, -0.02, 0.0, 0.01, 0.03, 0.05, 0.08, 0.12]
    start = time.time() + 3
    plan: list[tuple[Member, str, float]] = []
    for k in range(32):
        sender = senders[k % len(senders)]
        due = start + k * 0.15
        r = await schedule(
            tenant, sender, [new_number()], datetime.fromtimestamp(due, UTC), body=f"race {k}"
        )
        assert r.status_code == 201, r.text
        plan.append((sender, r.json()["messages"][0]["id"], due + offsets[k % len(offsets)]))
    assert time.time() < start, "scheduling took longer than the lead time"

    async def cancel_at(sender: Member, message_id: str, when: float) -> list[int]:
        await asyncio.sleep(max(0.0, when - time.time()))
        answers = await asyncio.gather(
            *(
                tenant.call("POST", f"/v1/messages/{message_id}/cancel", as_=sender)
                for _ in range(3)
            )
        )
        return [a.status_code for a in answers]

    answers = await asyncio.gather(*(cancel_at(*p) for p in plan))
    outcomes: collections.Counter[str] = collections.Counter()
    for (sender, message_id, _), codes in zip(plan, answers, strict=True):
        assert set(codes) <= {200, 409}, codes
        done = await final(tenant, sender, message_id)
        if 200 in codes:
            assert codes.count(200) == 1, codes
            assert done["status"] == "canceled", done
            assert carrier_got(ctx, message_id) == 0, done
            outcomes["canceled"] += 1
        else:
            assert done["status"] == "delivered", done
            assert carrier_got(ctx, message_id) == 1, done
            outcomes["sent"] += 1
    assert sum(outcomes.values()) == len(plan), outcomes
