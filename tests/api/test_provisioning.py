"""Provisioning as operators and org admins meet it: organizations, users, groups, numbers."""

from __future__ import annotations

import httpx

from tests.support import OPERATOR_TOKEN, Tenant, auth, new_number, unique


async def test_operator_creates_organization_with_admin_token(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/organizations",
        headers=auth(OPERATOR_TOKEN),
        json={"name": "North Clinic", "admin_username": "Dana"},
    )
    assert r.status_code == 201
    body = r.json()
    assert body["name"] == "North Clinic"
    assert body["admin"]["username"] == "dana"
    me = await client.get("/v1/me", headers=auth(body["admin_token"]))
    assert me.status_code == 200
    assert me.json()["role"] == "admin"


async def test_organization_creation_requires_the_operator_token(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = {"name": "X", "admin_username": "x"}
    r = await client.post("/v1/organizations", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    r = await client.post("/v1/organizations", json=body, headers=auth("wrong"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = await client.post("/v1/organizations", json=body, headers=tenant.admin.headers)
    assert r.status_code == 401


async def test_admin_manages_users_and_tokens(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True)
    r = await tenant.call("GET", f"/v1/users/{bob.id}", expect=200)
    assert r.json()["extension"] == "102" and r.json()["sms_enabled"] is True
    r = await tenant.call(
        "PATCH",
        f"/v1/users/{bob.id}",
        expect=200,
        json={"display_name": "Bob B", "extension": "150"},
    )
    assert r.json()["extension"] == "150" and r.json()["display_name"] == "Bob B"
    r = await tenant.call("PATCH", f"/v1/users/{bob.id}", expect=200, json={"extension": None})
    assert r.json()["extension"] is None
    listed = (await tenant.call("GET", "/v1/users", expect=200)).json()
    assert {u["username"] for u in listed["items"]} == {tenant.admin.username, "bob"}
    # A second token works; revoking it stops it.
    r = await tenant.call("POST", f"/v1/users/{bob.id}/tokens", expect=201, json={"name": "app"})
    token, token_id = r.json()["token"], r.json()["id"]
    assert (await tenant.client.get("/v1/me", headers=auth(token))).status_code == 200
    await tenant.call("DELETE", f"/v1/users/{bob.id}/tokens/{token_id}", expect=204)
    assert (await tenant.client.get("/v1/me", headers=auth(token))).status_code == 401


async def test_deactivated_user_loses_access_and_extension(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob", extension="102")
    await tenant.call("DELETE", f"/v1/users/{bob.id}", expect=204)
    assert (await tenant.client.get("/v1/me", headers=bob.headers)).status_code == 401
    await tenant.call("GET", f"/v1/users/{bob.id}", expect=404)
    # The extension is free again; the username stays with the history.
    await tenant.add_user("carol", extension="102")
    r = await tenant.call("POST", "/v1/users", json={"username": "bob"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "username_taken"


async def test_extension_is_unique_across_users_and_groups(tenant: Tenant) -> None:
    await tenant.add_user("bob", extension="200")
    r = await tenant.call(
        "POST", "/v1/groups", json={"name": "Desk", "extension": "200", "members": ["bob"]}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "extension_taken"
    await tenant.add_group("Desk", "201", ["bob"])
    r = await tenant.call("POST", "/v1/users", json={"username": "eve", "extension": "201"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "extension_taken"
    eve = await tenant.add_user("eve")
    r = await tenant.call("PATCH", f"/v1/users/{eve.id}", json={"extension": "201"})
    assert r.status_code == 409


async def test_same_extension_in_two_organizations_is_fine(client: httpx.AsyncClient) -> None:
    a, b = await Tenant.create(client), await Tenant.create(client)
    await a.add_user("bob", extension="300")
    await b.add_user("bob", extension="300")


async def test_phone_numbers_are_stored_e164_and_owned_by_one_org(
    client: httpx.AsyncClient,
) -> None:
    a, b = await Tenant.create(client), await Tenant.create(client)
    number = new_number()
    national = f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    r = await a.call(
        "POST", "/v1/phone-numbers", expect=201, json={"number": national, "sms_extension": "100"}
    )
    assert r.json()["number"] == number
    r = await b.call("POST", "/v1/phone-numbers", json={"number": number, "sms_extension": "1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "phone_number_taken"


async def test_bad_phone_number_is_422_naming_the_field(tenant: Tenant) -> None:
    for bad in ["12", "not a number", "+1 555 123 0000", "4155550100 x12"]:
        r = await tenant.call(
            "POST", "/v1/phone-numbers", json={"number": bad, "sms_extension": "100"}
        )
        assert r.status_code == 422, bad
        err = r.json()["error"]
        assert err["code"] == "invalid_phone_number"
        assert err["details"][0]["field"] == "number"


async def test_outbound_number_must_belong_to_the_org(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True)
    r = await tenant.call(
        "PATCH", f"/v1/users/{bob.id}", json={"outbound_sms_number": new_number()}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "number_not_owned"


async def test_number_in_use_as_outbound_cannot_be_deleted(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    numbers = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    number_id = next(n["id"] for n in numbers if n["number"] == bob.outbound_sms_number)
    r = await tenant.call("DELETE", f"/v1/phone-numbers/{number_id}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "phone_number_in_use"
    await tenant.call(
        "PATCH", f"/v1/users/{bob.id}", expect=200, json={"outbound_sms_number": None}
    )
    await tenant.call("DELETE", f"/v1/phone-numbers/{number_id}", expect=204)


async def test_groups_crud(tenant: Tenant) -> None:
    await tenant.add_user("bob")
    await tenant.add_user("carol")
    number = await tenant.add_number("500")
    group = await tenant.add_group("Front Desk", "500", ["bob", "carol"], number)
    assert group["members"] == ["bob", "carol"] and group["outbound_sms_number"] == number
    r = await tenant.call(
        "PATCH",
        f"/v1/groups/{group['id']}",
        expect=200,
        json={"members": ["carol"], "name": "Desk"},
    )
    assert r.json()["members"] == ["carol"] and r.json()["name"] == "Desk"
    r = await tenant.call(
        "POST", "/v1/groups", json={"name": "G2", "extension": "501", "members": ["nobody"]}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_members"
    await tenant.call("DELETE", f"/v1/groups/{group['id']}", expect=204)
    await tenant.call("GET", f"/v1/groups/{group['id']}", expect=404)


async def test_routing_check_reports_confusing_routing(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.add_user("carol", extension="103", sms=True)  # no outbound number
    orphan = await tenant.add_number("999")  # routes to an extension nobody has
    unrouted = await tenant.add_number(None)
    # bob's outbound number now routes to carol: replies would reach the wrong person.
    numbers = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    bobs = next(n["id"] for n in numbers if n["number"] == bob.outbound_sms_number)
    await tenant.call(
        "PATCH", f"/v1/phone-numbers/{bobs}", expect=200, json={"sms_extension": "103"}
    )
    r = await tenant.call("GET", "/v1/routing/check", expect=200)
    found = {(p["code"], p["subject"]) for p in r.json()["problems"]}
    assert r.json()["ok"] is False
    assert ("outbound_number_routes_elsewhere", "bob") in found
    assert ("sms_enabled_without_outbound_number", "carol") in found
    assert ("extension_not_found", orphan) in found
    assert ("number_unrouted", unrouted) in found


async def test_routing_check_is_clean_for_good_routing(tenant: Tenant) -> None:
    await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    r = await tenant.call("GET", "/v1/routing/check", expect=200)
    assert r.json() == {"ok": True, "problems": []}


async def test_audit_log_records_routing_changes(tenant: Tenant) -> None:
    number = await tenant.add_number("100")
    numbers = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    await tenant.call(
        "PATCH", f"/v1/phone-numbers/{numbers[0]['id']}", expect=200, json={"sms_extension": "101"}
    )
    entries = (await tenant.call("GET", "/v1/audit-log", expect=200)).json()["items"]
    route = next(e for e in entries if e["action"] == "phone_number.route")
    assert route["actor"] == f"user:{tenant.admin.username}"
    assert route["changes"] == {"number": number, "sms_extension": {"from": "100", "to": "101"}}


async def test_pagination_walks_every_user_once(tenant: Tenant) -> None:
    for _ in range(7):
        await tenant.add_user()
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await tenant.call("GET", "/v1/users", params=params, expect=200)).json()
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 8 and len(set(seen)) == 8
    r = await tenant.call("GET", "/v1/users", params={"cursor": "garbage!"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"


async def test_unique_names_helper_is_unique() -> None:
    assert unique("a") != unique("a")


async def test_deactivated_users_are_listed_on_request_and_an_admin_can_reactivate_one(
    tenant: Tenant,
) -> None:
    bob = await tenant.add_user(extension="140", sms=True)
    old_token = bob.token
    await tenant.call("DELETE", f"/v1/users/{bob.id}", expect=204)
    listed = await tenant.call("GET", "/v1/users", expect=200)
    assert bob.id not in [u["id"] for u in listed.json()["items"]]
    listed = await tenant.call(
        "GET", "/v1/users", expect=200, params={"include_deactivated": "true"}
    )
    (gone,) = [u for u in listed.json()["items"] if u["id"] == bob.id]
    assert gone["deactivated_at"] is not None
    members = [m for m in tenant.users.values() if m.username != tenant.admin.username]
    assert all(u["deactivated_at"] is None for u in listed.json()["items"] if u["id"] != bob.id), (
        members
    )

    # A member cannot; another organization's admin finds no such user.
    carol = await tenant.add_user()
    r = await tenant.call("POST", f"/v1/users/{bob.id}/reactivate", as_=carol)
    assert r.status_code == 403
    other = await Tenant.create(tenant.client)
    r = await other.call("POST", f"/v1/users/{bob.id}/reactivate")
    assert r.status_code == 404 and r.json()["error"]["code"] == "user_not_found"

    r = await tenant.call("POST", f"/v1/users/{bob.id}/reactivate", expect=200)
    back = r.json()
    assert back["deactivated_at"] is None and back["username"] == bob.username
    assert back["extension"] is None  # released when deactivated, not taken back
    r = await tenant.call("POST", f"/v1/users/{bob.id}/reactivate")
    assert r.status_code == 409 and r.json()["error"]["code"] == "user_active"
    # Old tokens stay revoked: the admin gives a new one.
    bob.token = old_token
    assert (await tenant.call("GET", "/v1/me", as_=bob)).status_code == 401
    r = await tenant.call("POST", f"/v1/users/{bob.id}/tokens", expect=201, json={})
    bob.token = r.json()["token"]
    assert (await tenant.call("GET", "/v1/me", as_=bob, expect=200)).json()[
        "username"
    ] == bob.username
    audit = await tenant.call("GET", "/v1/audit-log", expect=200)
    assert "user.reactivate" in [e["action"] for e in audit.json()["items"]]


async def test_a_reactivated_admin_counts_as_an_admin_again(tenant: Tenant) -> None:
    """Reactivation only adds an admin; the last-admin rule then lets the other step down."""
    dana = await tenant.add_user(role="admin")
    await tenant.call("DELETE", f"/v1/users/{dana.id}", expect=204)
    r = await tenant.call("PATCH", f"/v1/users/{tenant.admin.id}", json={"role": "member"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    r = await tenant.call("POST", f"/v1/users/{dana.id}/reactivate", expect=200)
    assert r.json()["role"] == "admin"
    await tenant.call("PATCH", f"/v1/users/{tenant.admin.id}", expect=200, json={"role": "member"})


async def test_a_number_needs_its_sms_extension_said_even_if_null(tenant: Tenant) -> None:
    """Left out, a number would be routed to no one without a word: 422 naming the field,
    nothing stored. Null says it on purpose: stored, routed to no one."""
    number = new_number()
    r = await tenant.call("POST", "/v1/phone-numbers", json={"number": number})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "sms_extension"
    listed = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    assert number not in {n["number"] for n in listed}
    r = await tenant.call(
        "POST", "/v1/phone-numbers", expect=201, json={"number": number, "sms_extension": None}
    )
    assert r.json()["sms_extension"] is None
    check = await tenant.call("GET", "/v1/routing/check", expect=200)
    assert number in check.text, check.text
