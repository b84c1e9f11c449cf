"""Tenant safety as an attacker or a careless admin meets it: released numbers, the last
admin, and what a revoked caller can still see."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import SendTelnyx
from tests.support import Member, Tenant, new_number

# ---------------------------------------------------------------------------- last admin


async def test_the_last_admin_cannot_demote_or_deactivate_themselves(tenant: Tenant) -> None:
    me = tenant.admin
    r = await tenant.call("PATCH", f"/v1/users/{me.id}", json={"role": "member"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "last_admin"
    r = await tenant.call("DELETE", f"/v1/users/{me.id}")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "last_admin"
    # Nothing changed: still an admin, the token still works.
    r = await tenant.call("GET", "/v1/me", expect=200)
    assert r.json()["role"] == "admin"


async def test_an_admin_can_step_down_once_another_admin_exists(tenant: Tenant) -> None:
    other = await tenant.add_user(role="admin")
    await tenant.call("PATCH", f"/v1/users/{tenant.admin.id}", expect=200, json={"role": "member"})
    # Now `other` is the last one.
    r = await tenant.call("PATCH", f"/v1/users/{other.id}", as_=other, json={"role": "member"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    r = await tenant.call("DELETE", f"/v1/users/{other.id}", as_=other)
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    # Demoting a member to member, or deactivating a member, is no concern of the rule.
    await tenant.call(
        "PATCH", f"/v1/users/{tenant.admin.id}", as_=other, expect=200, json={"role": "member"}
    )


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(tenant: Tenant) -> None:
    other = await tenant.add_user(role="admin")
    for _ in range(5):
        results = await asyncio.gather(
            tenant.call("PATCH", f"/v1/users/{other.id}", json={"role": "member"}),
            tenant.call(
                "PATCH", f"/v1/users/{tenant.admin.id}", as_=other, json={"role": "member"}
            ),
        )
        assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
        roles = {
            m.id: (await tenant.call("GET", "/v1/me", as_=m, expect=200)).json()["role"]
            for m in (tenant.admin, other)
        }
        assert sorted(roles.values()) == ["admin", "member"]
        # Two admins again for the next round.
        survivor, demoted = (
            (tenant.admin, other) if roles[tenant.admin.id] == "admin" else (other, tenant.admin)
        )
        await tenant.call(
            "PATCH", f"/v1/users/{demoted.id}", as_=survivor, expect=200, json={"role": "admin"}
        )


# ---------------------------------------------------------------------- released numbers


async def _group_conversation_on(
    tenant: Tenant, send_telnyx: SendTelnyx, member: Member, number: str, patient: str
) -> dict[str, Any]:
    r = await send_telnyx(patient, number, "Is the clinic open today?")
    assert r.status_code == 200, r.text
    conv = await tenant.sms_conversation(member, patient)
    assert conv is not None
    return conv


async def test_a_group_reply_from_a_released_number_is_refused(
    client: httpx.AsyncClient, send_telnyx: SendTelnyx
) -> None:
    """Org A's group replies from the number last texted; once A released that number and
    org B took it, A's reply would reach the patient from B's number (and the patient's
    answer would land in B): it is refused, and nothing is stored or sent."""
    a, b = await Tenant.create(client), await Tenant.create(client)
    alice = await a.add_user("alice")
    await a.add_group("Front desk", "300", ["alice"])
    number = await a.add_number("300")
    patient = new_number()
    conv = await _group_conversation_on(a, send_telnyx, alice, number, patient)
    # While A owns the number, a reply goes from it.
    r = await a.call(
        "POST", f"/v1/conversations/{conv['id']}/messages", as_=alice, json={"body": "Yes"}
    )
    assert r.status_code == 201 and r.json()["from_number"] == number
    number_id = await _number_id(a, number)
    await a.call("DELETE", f"/v1/phone-numbers/{number_id}", expect=204)
    await b.add_number(None, number)
    before = [m["id"] for m in await a.messages(alice, conv["id"])]
    r = await a.call(
        "POST", f"/v1/conversations/{conv['id']}/messages", as_=alice, json={"body": "Still there?"}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "from_number_released"
    assert number in error["message"]
    # Nothing stored (statuses of the earlier reply may move on meanwhile).
    assert [m["id"] for m in await a.messages(alice, conv["id"])] == before


async def test_a_group_reply_after_the_number_came_back_goes_out_again(
    client: httpx.AsyncClient, send_telnyx: SendTelnyx
) -> None:
    a = await Tenant.create(client)
    alice = await a.add_user("alice")
    await a.add_group("Front desk", "300", ["alice"])
    number = await a.add_number("300")
    conv = await _group_conversation_on(a, send_telnyx, alice, number, new_number())
    await a.call("DELETE", f"/v1/phone-numbers/{await _number_id(a, number)}", expect=204)
    r = await a.call(
        "POST", f"/v1/conversations/{conv['id']}/messages", as_=alice, json={"body": "x"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "from_number_released"
    await a.add_number("300", number)
    r = await a.call(
        "POST", f"/v1/conversations/{conv['id']}/messages", as_=alice, json={"body": "y"}
    )
    assert r.status_code == 201 and r.json()["from_number"] == number


async def _number_id(tenant: Tenant, number: str) -> str:
    r = await tenant.call("GET", "/v1/phone-numbers", expect=200, params={"limit": 200})
    (found,) = [n["id"] for n in r.json()["items"] if n["number"] == number]
    return str(found)
