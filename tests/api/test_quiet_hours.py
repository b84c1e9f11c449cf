"""Quiet hours (API.md, "Scheduled messages"): a send to several recipients, or a
scheduled send, that would reach a recipient inside the organization's quiet hours in
the recipient's own time zone waits until they end there, stored `scheduled` with that
`send_at`; a single reply, or a single send to one number, is never held.

Quiet hours are chosen around the current time in the zones the tests text, never by
waiting for a time of day. Honolulu and Tokyo keep no daylight saving: an hour there is
always an hour; New York is five or six hours from Honolulu, Tokyo nineteen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from app.context import AppContext
from app.services.phone import fictional_number
from tests.conftest import SendTelnyx
from tests.support import Member, Tenant, eventually

HONOLULU, TOKYO = "Pacific/Honolulu", "Asia/Tokyo"


def numbers(area_code: str) -> list[str]:
    """Fictional numbers of one area code (808 Hawaii, 212 New York City, 907 Alaska,
    which spans two zones)."""
    return [fictional_number(i, area_code) for i in range(100)]


HAWAII, NEW_YORK, ALASKA = numbers("808"), numbers("212"), numbers("907")


def quiet_hours(zone: str, from_minutes: int, to_minutes: int) -> tuple[dict[str, str], datetime]:
    """Quiet hours from `from_minutes` to `to_minutes` away from now on the clocks of
    `zone`, and the instant they end next."""
    now = datetime.now(ZoneInfo(zone)).replace(second=0, microsecond=0)
    start, end = now + timedelta(minutes=from_minutes), now + timedelta(minutes=to_minutes)
    return {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}, end.astimezone(UTC)


async def set_quiet_hours(
    tenant: Tenant, quiet: dict[str, str], timezone: str | None = None
) -> None:
    changes: dict[str, Any] = {"quiet_hours": quiet}
    if timezone:
        changes["timezone"] = timezone
    await tenant.call("PATCH", "/v1/organization", expect=200, json=changes)


async def send(
    tenant: Tenant, member: Member, to: list[dict[str, str]], **extra: Any
) -> list[dict[str, Any]]:
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=member,
        json={"to": to, "body": "Your prescription is ready for pickup.", **extra},
    )
    assert r.status_code == 201, r.text
    sent: list[dict[str, Any]] = r.json()["messages"]
    return sent


def by_recipient(messages: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {m["to_number"] or m["recipient_username"]: m for m in messages}


def send_at(m: dict[str, Any]) -> datetime | None:
    return datetime.fromisoformat(m["send_at"]) if m["send_at"] else None


async def test_a_fan_out_waits_where_it_is_quiet_hours_for_the_recipient(
    tenant: Tenant, ctx: AppContext
) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    bob = await tenant.add_user()
    quiet, end = quiet_hours(HONOLULU, -60, 60)
    await set_quiet_hours(tenant, quiet)
    sent = by_recipient(
        await send(
            tenant,
            alice,
            [
                {"phone_number": HAWAII[0]},
                {"phone_number": NEW_YORK[0]},
                {"username": bob.username},
            ],
        )
    )
    held = sent[HAWAII[0]]
    # Night in Honolulu: held until quiet hours end there, and it says when it will go.
    assert held["status"] == "scheduled"
    assert send_at(held) == end
    # Not in New York, where it is five or six hours later: it goes now.
    assert sent[NEW_YORK[0]]["status"] == "queued" and sent[NEW_YORK[0]]["send_at"] is None
    # A colleague is no patient: quiet hours are for texts.
    assert sent[bob.username]["status"] == "delivered"
    r = await tenant.call(
        "GET", "/v1/messages", as_=alice, expect=200, params={"status": "scheduled"}
    )
    assert [m["id"] for m in r.json()["items"]] == [held["id"]]

    async def new_york_sent() -> bool:
        r = await tenant.call("GET", f"/v1/messages/{sent[NEW_YORK[0]]['id']}", as_=alice)
        return bool(r.json()["status"] == "delivered")

    await eventually(new_york_sent)
    assert not any(s.reference == held["id"] for s in ctx.carrier.sent)  # type: ignore[attr-defined]
    r = await tenant.call("GET", f"/v1/messages/{held['id']}", as_=alice, expect=200)
    assert r.json()["status"] == "scheduled"


async def test_a_single_send_and_a_reply_are_never_held(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user(extension="101", sms=True, outbound=True)
    assert alice.outbound_sms_number is not None
    quiet, _ = quiet_hours(HONOLULU, -60, 60)
    await set_quiet_hours(tenant, quiet)
    (one,) = await send(tenant, alice, [{"phone_number": HAWAII[1]}])
    assert one["status"] == "queued" and one["send_at"] is None
    r = await send_telnyx(HAWAII[2], alice.outbound_sms_number, "Can I come in tomorrow?")
    assert r.status_code == 200, r.text
    conv = await tenant.sms_conversation(alice, HAWAII[2])
    assert conv is not None
    r = await tenant.call(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        as_=alice,
        expect=201,
        json={"body": "Yes, at 10am."},
    )
    assert r.json()["status"] == "queued" and r.json()["send_at"] is None


async def test_a_scheduled_send_due_in_quiet_hours_waits_for_their_end(tenant: Tenant) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    quiet, end = quiet_hours(HONOLULU, 60, 180)
    await set_quiet_hours(tenant, quiet)
    wanted = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    sent = by_recipient(
        await send(
            tenant,
            alice,
            [{"phone_number": HAWAII[3]}, {"phone_number": NEW_YORK[3]}],
            send_at=wanted.isoformat(),
        )
    )
    assert {m["status"] for m in sent.values()} == {"scheduled"}
    assert send_at(sent[HAWAII[3]]) == end
    assert send_at(sent[NEW_YORK[3]]) == wanted
    # A single scheduled send is held too.
    (one,) = await send(tenant, alice, [{"phone_number": HAWAII[4]}], send_at=wanted.isoformat())
    assert one["status"] == "scheduled" and send_at(one) == end


async def test_a_number_of_several_zones_follows_the_organizations_zone(tenant: Tenant) -> None:
    """Alaska's area code spans two zones (Anchorage, Adak): the organization's zone
    (Tokyo here) decides for its numbers."""
    alice = await tenant.add_user(sms=True, outbound=True)
    quiet, end = quiet_hours(TOKYO, -60, 60)
    await set_quiet_hours(tenant, quiet, timezone=TOKYO)
    sent = by_recipient(
        await send(tenant, alice, [{"phone_number": ALASKA[5]}, {"phone_number": HAWAII[5]}])
    )
    assert sent[ALASKA[5]]["status"] == "scheduled" and send_at(sent[ALASKA[5]]) == end
    # Honolulu, its own single zone, is five hours ahead of Tokyo's clocks: not quiet there.
    assert sent[HAWAII[5]]["status"] == "queued"


async def test_without_quiet_hours_nothing_waits(tenant: Tenant) -> None:
    alice = await tenant.add_user(sms=True, outbound=True)
    sent = await send(tenant, alice, [{"phone_number": HAWAII[6]}, {"phone_number": NEW_YORK[6]}])
    assert {m["status"] for m in sent} == {"queued"}
    assert {m["send_at"] for m in sent} == {None}
