"""The auto-responder's hours: a schedule and away periods decide when it answers.

Time is driven by the schedules asked for, chosen relative to now in their own zone
(tests/support.py): closed now, open now, a closed day today, an away period now.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_auto_responder import auto_replies, inbound_decisions
from tests.conftest import SendTelnyx
from tests.support import (
    Member,
    Tenant,
    away_around_now,
    closed_today,
    hours_around_now,
    new_number,
    open_all_week,
)

REPLY = "The clinic is closed. For emergencies call 911."


async def responder(tenant: Tenant) -> tuple[Member, str]:
    return await tenant.add_auto_replying_user("bob", "102", REPLY)


async def test_outside_its_hours_the_responder_answers(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, line = await responder(tenant)
    await tenant.set_auto_responder(bob, REPLY, schedule=hours_around_now(open_now=False))
    patient = new_number()
    await send_telnyx(patient, line, "are you open?")
    assert await inbound_decisions(tenant, bob, patient) == ["sent"]
    (reply,) = await auto_replies(tenant, bob, patient)
    assert reply["body"] == REPLY and reply["from_number"] == line


async def test_within_its_hours_it_records_within_hours_and_takes_no_window(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, line = await responder(tenant)
    await tenant.set_auto_responder(bob, REPLY, schedule=hours_around_now(open_now=True))
    patient = new_number()
    await send_telnyx(patient, line, "one")
    assert await inbound_decisions(tenant, bob, patient) == ["within_hours"]
    assert await auto_replies(tenant, bob, patient) == []
    # Had that message taken the window, this one would be rate_limited.
    await tenant.set_auto_responder(bob, REPLY, schedule=hours_around_now(open_now=False))
    await send_telnyx(patient, line, "two")
    await send_telnyx(patient, line, "three")
    assert await inbound_decisions(tenant, bob, patient) == ["within_hours", "sent", "rate_limited"]


async def test_on_a_closed_day_it_answers_all_day(tenant: Tenant, send_telnyx: SendTelnyx) -> None:
    bob, line = await responder(tenant)
    await tenant.set_auto_responder(bob, REPLY, schedule=closed_today())
    patient = new_number()
    await send_telnyx(patient, line, "hello")
    assert await inbound_decisions(tenant, bob, patient) == ["sent"]


async def test_an_away_period_makes_it_answer_within_hours(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, line = await responder(tenant)
    patients = [new_number(), new_number(), new_number()]
    # Away now: answered though the schedule is open.
    await tenant.set_auto_responder(bob, REPLY, schedule=open_all_week(), away=away_around_now())
    await send_telnyx(patients[0], line, "hi")
    # Away only later, or only before: within hours.
    await tenant.set_auto_responder(
        bob,
        REPLY,
        schedule=open_all_week(),
        away=away_around_now(60, 120) + away_around_now(-120, -1),
    )
    await send_telnyx(patients[1], line, "hi")
    # Without a schedule it answers at all hours, away or not.
    await tenant.set_auto_responder(bob, REPLY, away=away_around_now(60, 120))
    await send_telnyx(patients[2], line, "hi")
    assert [await inbound_decisions(tenant, bob, p) for p in patients] == [
        ["sent"],
        ["within_hours"],
        ["sent"],
    ]


async def test_the_other_criteria_come_first(tenant: Tenant, send_telnyx: SendTelnyx) -> None:
    bob, line = await responder(tenant)
    await tenant.set_auto_responder(
        bob, REPLY, enabled=False, schedule=hours_around_now(open_now=True)
    )
    patient = new_number()
    await send_telnyx(patient, line, "hi")
    await send_telnyx(patient, line, "STOP")
    assert await inbound_decisions(tenant, bob, patient) == ["disabled", "keyword"]


async def test_its_settings_read_back_as_stored_in_the_organizations_zone(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    bob = await tenant.add_user("bob")
    await tenant.call("PATCH", "/v1/organization", expect=200, json={"timezone": "Europe/Paris"})
    body = {
        "enabled": True,
        "text": REPLY,
        "schedule": {
            "weekly": {"tue": [["13:00", "18:00"], ["08:30", "12:00"]], "sat": []},
            "closed": [{"from": "2026-12-24", "to": "2026-12-26", "label": "Christmas"}],
        },
        "away": [{"from": "2026-08-03T09:00:00+02:00", "until": "2026-08-17T09:00:00+02:00"}],
    }
    shown = {
        "enabled": True,
        "text": REPLY,
        "schedule": {
            "timezone": "Europe/Paris",
            "weekly": {"tue": [["08:30", "12:00"], ["13:00", "18:00"]]},
            "closed": [{"from": "2026-12-24", "to": "2026-12-26", "label": "Christmas"}],
        },
        "away": [{"from": "2026-08-03T07:00:00Z", "until": "2026-08-17T07:00:00Z"}],
    }
    r = await tenant.call("PUT", f"/v1/users/{bob.id}/auto-responder", expect=200, json=body)
    assert r.json() == shown
    assert (await tenant.call("GET", "/v1/me/auto-responder", as_=bob, expect=200)).json() == shown
    entry = (await tenant.call("GET", "/v1/audit-log", expect=200)).json()["items"][0]
    assert entry["action"] == "auto_responder.set"
    assert entry["changes"]["schedule"]["timezone"] == "Europe/Paris"
    # Another organization's admin cannot read or set it.
    other = await Tenant.create(client)
    for method, json in (("GET", None), ("PUT", body)):
        r = await other.call(method, f"/v1/users/{bob.id}/auto-responder", json=json)
        assert r.status_code == 404 and r.json()["error"]["code"] == "user_not_found"
    # A PUT without schedule and away clears them.
    r = await tenant.call(
        "PUT", "/v1/me/auto-responder", as_=bob, expect=200, json={"enabled": True, "text": REPLY}
    )
    assert r.json() == {"enabled": True, "text": REPLY, "schedule": None, "away": []}


WEEKDAYS_OPEN = {"mon": [["08:00", "17:00"]]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schedule": {"timezone": "Mars/Olympus_Mons"}}, "schedule.timezone"),
        ({"schedule": {"timezone": "New York"}}, "schedule.timezone"),
        ({"schedule": {"weekly": {"mon": [["08:00", "25:00"]]}}}, "schedule.weekly.mon.0.1"),
        ({"schedule": {"weekly": {"mon": [["8am", "5pm"]]}}}, "schedule.weekly.mon.0.0"),
        ({"schedule": {"weekly": {"mon": [["17:00", "08:00"]]}}}, "schedule.weekly.mon.0"),
        ({"schedule": {"weekly": {"mon": [["22:00", "06:00"]]}}}, "schedule.weekly.mon.0"),
        ({"schedule": {"weekly": {"mon": [["24:00", "24:00"]]}}}, "schedule.weekly.mon.0.0"),
        (
            {"schedule": {"weekly": {"mon": [["08:00", "12:00"], ["11:00", "17:00"]]}}},
            "schedule.weekly.mon.1",
        ),
        ({"schedule": {"weekly": {"monday": [["08:00", "17:00"]]}}}, "schedule.weekly.monday"),
        ({"schedule": {"weekly": {"mon": [["08:00"]]}}}, "schedule.weekly.mon.0"),
        (
            {
                "schedule": {
                    "weekly": WEEKDAYS_OPEN,
                    "closed": [{"from": "2026-12-26", "to": "2026-12-24"}],
                }
            },
            "schedule.closed.0.to",
        ),
        (
            {"schedule": {"closed": [{"from": "2026-02-30", "to": "2026-03-01"}]}},
            "schedule.closed.0.from",
        ),
        ({"schedule": {"closed": [{"from": "2026-12-24"}]}}, "schedule.closed.0.to"),
        (
            {"away": [{"from": "2026-08-17T09:00:00Z", "until": "2026-08-03T09:00:00Z"}]},
            "away.0.until",
        ),
        (
            {"away": [{"from": "2026-08-03T09:00:00", "until": "2026-08-17T09:00:00Z"}]},
            "away.0.from",
        ),
        ({"away": [{"from": "2026-08-03T09:00:00Z"}]}, "away.0.until"),
    ],
)
async def test_bad_hours_are_422_naming_the_field_and_change_nothing(
    tenant: Tenant, change: dict[str, Any], field: str
) -> None:
    bob = await tenant.add_user("bob")
    before = await tenant.set_auto_responder(bob, REPLY, schedule=open_all_week())
    r = await tenant.call(
        "PUT", "/v1/me/auto-responder", as_=bob, json={"enabled": True, "text": REPLY, **change}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert any(d["field"].startswith(field) for d in error["details"]), error
    assert field in error["message"]
    assert (await tenant.call("GET", "/v1/me/auto-responder", as_=bob, expect=200)).json() == before
