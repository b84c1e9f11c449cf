"""Roles and tenant isolation: members cannot configure; another org's ids are 404."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Tenant


@pytest.fixture
async def two(client: httpx.AsyncClient) -> tuple[Tenant, Tenant]:
    return await Tenant.create(client), await Tenant.create(client)


ADMIN_ONLY = [
    ("POST", "/v1/users", {"username": "zed"}),
    ("GET", "/v1/users", None),
    ("POST", "/v1/groups", {"name": "g", "extension": "900", "members": []}),
    ("POST", "/v1/phone-numbers", {"number": "+14155550199", "sms_extension": "1"}),
    ("GET", "/v1/phone-numbers", None),
    ("GET", "/v1/routing/check", None),
    ("GET", "/v1/audit-log", None),
    ("PATCH", "/v1/organization", {"name": "x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_members_cannot_reach_admin_endpoints(
    tenant: Tenant, method: str, path: str, body: dict[str, object] | None
) -> None:
    member = await tenant.add_user()
    r = await tenant.call(method, path, as_=member, json=body)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "admin_required"


async def test_members_cannot_change_routing_of_existing_objects(tenant: Tenant) -> None:
    member = await tenant.add_user(extension="150")
    await tenant.add_number("150")
    numbers = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    r = await tenant.call(
        "PATCH", f"/v1/phone-numbers/{numbers[0]['id']}", as_=member, json={"sms_extension": "999"}
    )
    assert r.status_code == 403
    r = await tenant.call("PATCH", f"/v1/users/{member.id}", as_=member, json={"role": "admin"})
    assert r.status_code == 403


async def test_another_orgs_ids_are_not_found(two: tuple[Tenant, Tenant]) -> None:
    a, b = two
    bob = await b.add_user("bob", extension="102", sms=True, outbound=True)
    group = await b.add_group("Desk", "300", ["bob"])
    numbers = (await b.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    number_id = numbers[0]["id"]
    probes = [
        ("GET", f"/v1/users/{bob.id}", None),
        ("PATCH", f"/v1/users/{bob.id}", {"display_name": "x"}),
        ("DELETE", f"/v1/users/{bob.id}", None),
        ("POST", f"/v1/users/{bob.id}/tokens", {}),
        ("GET", f"/v1/users/{bob.id}/auto-responder", None),
        ("GET", f"/v1/groups/{group['id']}", None),
        ("PATCH", f"/v1/groups/{group['id']}", {"name": "x"}),
        ("DELETE", f"/v1/groups/{group['id']}", None),
        ("GET", f"/v1/groups/{group['id']}/after-hours", None),
        (
            "PUT",
            f"/v1/groups/{group['id']}/after-hours",
            {"enabled": True, "text": "x", "schedule": {}},
        ),
        ("GET", f"/v1/phone-numbers/{number_id}", None),
        ("PATCH", f"/v1/phone-numbers/{number_id}", {"sms_extension": "1"}),
        ("DELETE", f"/v1/phone-numbers/{number_id}", None),
    ]
    for method, path, body in probes:
        r = await a.call(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"].endswith("not_found")
    # Nothing of b changed.
    r = await b.call("GET", f"/v1/users/{bob.id}", expect=200)
    assert r.json()["display_name"] is None


async def test_lists_never_show_another_org(two: tuple[Tenant, Tenant]) -> None:
    a, b = two
    await b.add_user("bob")
    await b.add_number("1")
    users = (await a.call("GET", "/v1/users", expect=200)).json()["items"]
    assert [u["username"] for u in users] == [a.admin.username]
    assert (await a.call("GET", "/v1/phone-numbers", expect=200)).json()["items"] == []
    assert (await a.call("GET", "/v1/groups", expect=200)).json()["items"] == []
