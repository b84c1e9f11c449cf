"""Contacts: the organization's address book, names encrypted at rest and still found by
parts of them; one per number; invisible to other organizations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text

from app.context import AppContext
from app.crypto import Keyring, generate_key_setting, key_id_of
from app.models import Contact, ContactSearchTerm
from app.services import inbox
from app.services.contact_search import parse_search
from app.services.key_rotation import reencrypt_bodies
from app.settings import Settings
from tests.conftest import fresh_database
from tests.support import Member, Tenant, new_number


async def add_contact(tenant: Tenant, name: str, number: str | None = None, **kw: Any) -> str:
    r = await tenant.call(
        "POST",
        "/v1/contacts",
        expect=201,
        json={"phone_number": number or new_number(), "name": name},
        **kw,
    )
    contact_id: str = r.json()["id"]
    return contact_id


async def search(tenant: Tenant, q: str, as_: Member | None = None, **params: Any) -> list[str]:
    """The names `GET /v1/contacts?q=` finds, following every page."""
    names: list[str] = []
    cursor = None
    while True:
        query = {"q": q, **params, **({"cursor": cursor} if cursor else {})}
        r = await tenant.call("GET", "/v1/contacts", as_=as_, expect=200, params=query)
        names += [c["name"] for c in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return names


async def test_a_member_adds_reads_changes_and_removes_a_contact(tenant: Tenant) -> None:
    member = await tenant.add_user()
    number = new_number()
    r = await tenant.call(
        "POST",
        "/v1/contacts",
        as_=member,
        expect=201,
        json={"phone_number": f"({number[2:5]}) {number[5:8]}-{number[8:]}", "name": " Ana Silva "},
    )
    contact = r.json()
    assert (contact["phone_number"], contact["name"]) == (number, "Ana Silva")
    path = f"/v1/contacts/{contact['id']}"
    assert (await tenant.call("GET", path, as_=member, expect=200)).json() == contact
    r = await tenant.call("PATCH", path, as_=member, expect=200, json={"name": "Ana Souza"})
    assert r.json()["name"] == "Ana Souza" and r.json()["phone_number"] == number
    assert await search(tenant, "souza") == ["Ana Souza"]
    assert await search(tenant, "silva") == []
    await tenant.call("DELETE", path, as_=member, expect=204)
    await tenant.call("GET", path, as_=member, expect=404)
    assert await search(tenant, "ana") == []


async def test_one_contact_per_number(tenant: Tenant) -> None:
    number = new_number()
    first = await add_contact(tenant, "First", number)
    r = await tenant.call(
        "POST", "/v1/contacts", json={"phone_number": number[2:], "name": "Second"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "contact_exists"
    assert r.json()["error"]["details"]["contact_id"] == first
    other = await add_contact(tenant, "Other")
    r = await tenant.call("PATCH", f"/v1/contacts/{other}", json={"phone_number": number})
    assert r.status_code == 409 and r.json()["error"]["code"] == "contact_exists"
    names = [c["name"] for c in (await tenant.call("GET", "/v1/contacts")).json()["items"]]
    assert names == ["First", "Other"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"phone_number": "not a number", "name": "X"}, 422, "invalid_phone_number"),
        ({"phone_number": "+14155550123", "name": "   "}, 422, "validation_error"),
        ({"phone_number": "+14155550123", "name": "x" * 201}, 422, "validation_error"),
        ({"phone_number": "+14155550123"}, 422, "validation_error"),
        ({"phone_number": "+14155550123", "name": "X", "notes": "?"}, 422, "validation_error"),
    ],
)
async def test_bad_contacts_are_refused_and_nothing_is_stored(
    tenant: Tenant, body: dict[str, str], status: int, code: str
) -> None:
    r = await tenant.call("POST", "/v1/contacts", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert r.json()["error"]["message"]
    assert (await tenant.call("GET", "/v1/contacts", expect=200)).json()["items"] == []


async def test_bad_changes_and_searches_are_refused(tenant: Tenant) -> None:
    contact = await add_contact(tenant, "Kept Name")
    for body in ({"name": None}, {"phone_number": None}, {"name": ""}, {"phone_number": "12"}):
        r = await tenant.call("PATCH", f"/v1/contacts/{contact}", json=body)
        assert r.status_code == 422, (body, r.text)
    r = await tenant.call("GET", "/v1/contacts", params={"q": "?!"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_search"
    r = await tenant.call("GET", "/v1/contacts", params={"q": "x" * 101})
    assert r.status_code == 422
    r = await tenant.call("GET", "/v1/contacts", params={"cursor": "garbage!"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    assert (await tenant.call("GET", f"/v1/contacts/{contact}")).json()["name"] == "Kept Name"


async def test_search_finds_names_by_parts_in_any_case_and_accent_and_numbers_by_digits(
    tenant: Tenant,
) -> None:
    numbers = {name: new_number() for name in ("María González", "Mario Rossi", "Ann O'Brien")}
    numbers["Joanne Smith"] = new_number()
    for name, number in numbers.items():
        await add_contact(tenant, name, number)

    assert await search(tenant, "gonz") == ["María González"]
    assert await search(tenant, "GONZÁLEZ") == ["María González"]
    assert await search(tenant, "mar") == ["María González", "Mario Rossi"]
    assert await search(tenant, "ari") == ["María González", "Mario Rossi"]
    # One or two letters: the start of a word.
    assert await search(tenant, "an") == ["Ann O'Brien"]
    assert await search(tenant, "o") == ["Ann O'Brien"]
    # Three or more: anywhere in a word.
    assert await search(tenant, "ann") == ["Ann O'Brien", "Joanne Smith"]
    # Every word, in any order.
    assert await search(tenant, "maria gonz") == ["María González"]
    assert await search(tenant, "gonzalez, m") == ["María González"]
    assert await search(tenant, "o'brien") == ["Ann O'Brien"]
    assert await search(tenant, "maria rossi") == []
    # Digits: anywhere in the number, typed as people type them.
    mario = numbers["Mario Rossi"]
    assert await search(tenant, mario) == ["Mario Rossi"]
    assert await search(tenant, f"({mario[2:5]}) {mario[5:8]}-{mario[8:]}") == ["Mario Rossi"]
    assert await search(tenant, mario[-6:]) == ["Mario Rossi"]
    # Every test number has 555 in it; two digits are scanned rather than looked up.
    assert len(await search(tenant, "555")) == 4
    assert len(await search(tenant, "55")) == 4


async def test_search_checks_every_candidate_so_no_false_match_reaches_the_client(
    tenant: Tenant, ctx: AppContext
) -> None:
    # "olan" is in none of these names, yet each holds both its pieces ("ola", "lan") in
    # two different words: the index offers them, the real test must turn them down.
    decoys = [f"Nola Landry{i}" for i in range(7)]
    for name in decoys[:4]:
        await add_contact(tenant, name)
    await add_contact(tenant, "Rolando Ortiz")
    for name in decoys[4:]:
        await add_contact(tenant, name)
    await add_contact(tenant, "Yolanda Park")

    async with ctx.sessionmaker() as s:
        candidates = await s.scalar(
            select(func.count())
            .select_from(Contact)
            .where(
                Contact.org_id == tenant.id,
                Contact.id.in_(
                    select(ContactSearchTerm.contact_id)
                    .where(ContactSearchTerm.term.in_(await _terms(ctx, tenant, "olan")))
                    .group_by(ContactSearchTerm.contact_id)
                    .having(func.count() >= 2)
                ),
            )
        )
    assert candidates == 9  # the index alone would answer the decoys too
    # Pages of one: the decoys in between are skipped, nothing is missed or repeated.
    assert await search(tenant, "olan", limit=1) == ["Rolando Ortiz", "Yolanda Park"]
    assert await search(tenant, "olan") == ["Rolando Ortiz", "Yolanda Park"]


async def _terms(ctx: AppContext, tenant: Tenant, q: str) -> list[int]:
    terms, _ = parse_search(q).terms(ctx.keyring, uuid.UUID(tenant.id))
    return terms


async def test_contact_names_are_encrypted_at_rest(tenant: Tenant, ctx: AppContext) -> None:
    name = "Bartholomew Quigley-Featherstonehaugh"
    contact = await add_contact(tenant, name)
    await tenant.call("PATCH", f"/v1/contacts/{contact}", expect=200, json={"name": name + " Jr"})
    async with ctx.engine.connect() as conn:
        dump = b""
        for table in ("contacts", "contact_search_terms", "audit_log"):
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            dump += repr(rows).encode()
        blobs = (await conn.execute(select(Contact.name_ciphertext))).scalars().all()
    dump += b"".join(blobs)
    for secret in ("Bartholomew", "bartholomew", "Quigley", "quigley", "featherstonehaugh"):
        assert secret.encode() not in dump
        assert secret.encode().hex().encode() not in dump
        assert secret.encode("utf-16-le") not in dump
    assert await search(tenant, "quigley") == [name + " Jr"]


async def test_another_orgs_contacts_are_not_found_nor_searched(tenant: Tenant) -> None:
    other = await Tenant.create(tenant.client)
    number = new_number()
    theirs = await add_contact(other, "Shared Name", number)
    mine = await add_contact(tenant, "Shared Name", number)  # the same number is fine here
    for method, body in (("GET", None), ("PATCH", {"name": "Stolen"}), ("DELETE", None)):
        r = await tenant.call(method, f"/v1/contacts/{theirs}", json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "contact_not_found"
    assert (await other.call("GET", f"/v1/contacts/{theirs}")).json()["name"] == "Shared Name"
    ids = [c["id"] for c in (await tenant.call("GET", "/v1/contacts")).json()["items"]]
    assert ids == [mine]
    r = await tenant.call("GET", "/v1/contacts", params={"q": "shared"})
    assert [c["id"] for c in r.json()["items"]] == [mine]


async def test_key_rotation_reseals_names_and_search_finds_them_throughout(
    base_settings: Settings, make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own database: rotating keys under the shared one would strand other tests.
    async with fresh_database("contacts_rotate") as url, make_app(database_url=url) as (app, c):
        ctx: AppContext = app.state.ctx
        tenant = await Tenant.create(c)
        numbers = {n: new_number() for n in ("Imogen Halvorsen", "Idris Halloran", "Ivo Hallström")}
        for name in ("Imogen Halvorsen", "Idris Halloran"):
            await add_contact(tenant, name, numbers[name])
        assert base_settings.encryption_keys
        rotated = f"{generate_key_setting('k2')},{base_settings.encryption_keys}"
        async with make_app(database_url=url, encryption_keys=rotated) as (_, rotated_client):
            during = Tenant(rotated_client, tenant.id, tenant.admin)
            # Before the rotation: the old key's terms are found under the new keyring,
            # and a contact added now is sealed and indexed under the new key.
            await add_contact(during, "Ivo Hallström", numbers["Ivo Hallström"])
            assert await search(during, "hal") == [
                "Imogen Halvorsen",
                "Idris Halloran",
                "Ivo Hallström",
            ]
            # The inbox's search too, whichever way it reads the candidates (few: their
            # numbers first; many: each conversation's contact).
            alice = await during.add_user("alice", extension="105", sms=True, outbound=True)
            for number in numbers.values():
                await during.call(
                    "POST",
                    "/v1/messages",
                    as_=alice,
                    expect=201,
                    json={"to": [{"phone_number": number}], "body": "hello"},
                )
            for few in (inbox._FEW, 0):
                monkeypatch.setattr(inbox, "_FEW", few)
                for q, found in (("hal", list(reversed(numbers))), ("halv", ["Imogen Halvorsen"])):
                    r = await during.call(
                        "GET", "/v1/conversations", as_=alice, expect=200, params={"q": q}
                    )
                    assert [i["contact"]["name"] for i in r.json()["items"]] == found, (few, q)
            assert await reencrypt_bodies(ctx.sessionmaker, Keyring.from_setting(rotated)) == 2
            async with ctx.sessionmaker() as s:
                blobs = (await s.scalars(select(Contact.name_ciphertext))).all()
            assert {key_id_of(b) for b in blobs} == {"k2"}
            assert await search(during, "hal") == [
                "Imogen Halvorsen",
                "Idris Halloran",
                "Ivo Hallström",
            ]
            assert await search(during, "halv") == ["Imogen Halvorsen"]
            # Only the new key is needed now.
            async with make_app(database_url=url, encryption_keys=rotated.split(",")[0]) as (
                _,
                new_only,
            ):
                after = Tenant(new_only, tenant.id, tenant.admin)
                assert await search(after, "halloran") == ["Idris Halloran"]
