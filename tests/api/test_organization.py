"""Organization settings: the HELP reply, the time zone, quiet hours."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import SendTelnyx
from tests.support import Tenant, new_number


async def test_any_member_reads_the_settings_with_their_defaults(
    tenant: Tenant, base_settings: Settings
) -> None:
    member = await tenant.add_user()
    r = await tenant.call("GET", "/v1/organization", as_=member, expect=200)
    assert r.json() == {
        "id": tenant.id,
        "name": r.json()["name"],
        "help_text": base_settings.default_help_text,
        "help_text_is_default": True,
        "timezone": "America/New_York",
        "quiet_hours": None,
    }


async def test_the_admin_changes_them_and_only_their_organization_sees_it(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    other = await Tenant.create(client)
    r = await tenant.call(
        "PATCH",
        "/v1/organization",
        expect=200,
        json={
            "name": "North Clinic",
            "help_text": "North Clinic: call 555-0100. Reply STOP to opt out.",
            "timezone": "America/Chicago",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
        },
    )
    changed = {
        "id": tenant.id,
        "name": "North Clinic",
        "help_text": "North Clinic: call 555-0100. Reply STOP to opt out.",
        "help_text_is_default": False,
        "timezone": "America/Chicago",
        "quiet_hours": {"start": "21:00", "end": "08:00"},
    }
    assert r.json() == changed
    assert (await tenant.call("GET", "/v1/organization", expect=200)).json() == changed
    theirs = (await other.call("GET", "/v1/organization", expect=200)).json()
    assert theirs["id"] == other.id and theirs["timezone"] == "America/New_York"
    assert theirs["help_text_is_default"] and theirs["quiet_hours"] is None
    # Only what is given changes; null removes the quiet hours.
    r = await tenant.call("PATCH", "/v1/organization", expect=200, json={"quiet_hours": None})
    assert r.json() == {**changed, "quiet_hours": None}
    entries = (await tenant.call("GET", "/v1/audit-log", expect=200)).json()["items"]
    assert [e["action"] for e in entries[:2]] == ["organization.update", "organization.update"]
    assert entries[1]["changes"]["timezone"] == {
        "from": "America/New_York",
        "to": "America/Chicago",
    }
    assert entries[1]["actor"].endswith(tenant.admin.username)


async def test_members_cannot_change_them(tenant: Tenant) -> None:
    member = await tenant.add_user()
    r = await tenant.call("PATCH", "/v1/organization", as_=member, json={"name": "Mine"})
    assert r.status_code == 403


async def test_help_is_answered_with_the_organizations_text_then_the_default_again(
    tenant: Tenant, send_telnyx: SendTelnyx, base_settings: Settings
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number is not None
    text = "North Clinic, 555-0100. Reply STOP to opt out."

    async def help_answer() -> str:
        patient = new_number()
        await send_telnyx(patient, bob.outbound_sms_number, "HELP")
        conv = await tenant.sms_conversation(bob, patient)
        assert conv is not None
        (answer,) = [
            m for m in await tenant.messages(bob, conv["id"]) if m["direction"] == "outbound"
        ]
        return str(answer["body"])

    await tenant.call("PATCH", "/v1/organization", expect=200, json={"help_text": text})
    assert await help_answer() == text
    r = await tenant.call("PATCH", "/v1/organization", expect=200, json={"help_text": None})
    assert r.json()["help_text_is_default"] is True
    assert await help_answer() == base_settings.default_help_text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "EST"}, None),  # a name of the database, accepted
        ({"timezone": None}, "timezone"),
        ({"name": None}, "name"),
        ({"name": "  "}, "name"),
        ({"help_text": "   "}, "help_text"),
        ({"help_text": ""}, "help_text"),
        ({"help_text": "x" * 1601}, "help_text"),
        ({"quiet_hours": {"start": "21:00", "end": "21:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "21:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "21:00", "end": "24:00"}}, "quiet_hours.end"),
        ({"quiet_hours": "21:00-08:00"}, "quiet_hours"),
        ({"id": "00000000-0000-0000-0000-000000000000"}, "id"),
    ],
)
async def test_bad_settings_are_422_naming_the_field(
    tenant: Tenant, body: dict[str, Any], field: str | None
) -> None:
    r = await tenant.call("PATCH", "/v1/organization", json=body)
    if field is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert field in {d["field"] for d in error["details"]}, error
    assert (await tenant.call("GET", "/v1/organization", expect=200)).json()["quiet_hours"] is None
