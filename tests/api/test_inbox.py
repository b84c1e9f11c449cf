"""The shared inbox: conversations with status, assignee, contact and last message; their
filters and stable paging; internal notes; `conversation.updated` events; isolation."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, text

from app.context import AppContext
from app.db import CACHEABLE_STATEMENT_BYTES, DriverStatement
from app.infra.event_bus import Event, Subscription
from app.models import Message
from app.services import inbox
from app.services.contact_search import LOOKUP_PIECES
from tests.conftest import SendTelnyx
from tests.support import Member, Tenant, eventually, new_number


async def inbound(send_telnyx: SendTelnyx, patient: str, line: str, body: str = "hi") -> None:
    r = await send_telnyx(patient, line, body)
    assert r.status_code == 200 and r.json()["status"] == "stored", r.text


async def conversation_with(tenant: Tenant, member: Member, patient: str) -> dict[str, Any]:
    conv = await tenant.sms_conversation(member, patient)
    assert conv is not None
    return conv


async def front_desk(tenant: Tenant) -> tuple[Member, Member, Member, str]:
    """bob and carol share the Front Desk group's inbox, dave is in the organization but
    not in the group; the group's number."""
    bob = await tenant.add_user("bob")
    carol = await tenant.add_user("carol")
    dave = await tenant.add_user("dave")
    await tenant.add_group("Front Desk", "200", ["bob", "carol"])
    line = await tenant.add_number("200")
    return bob, carol, dave, line


async def patch(tenant: Tenant, conv_id: str, as_: Member, **body: Any) -> Any:
    return await tenant.call("PATCH", f"/v1/conversations/{conv_id}", as_=as_, json=body)


async def drain(sub: Subscription, count: int, timeout: float = 10) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        async for item in sub:
            assert isinstance(item, Event)
            events.append(item)
            if len(events) == count:
                break
    return events


async def events_since(
    sub: Subscription, first: Callable[[Event], bool], last: Callable[[Event], bool]
) -> list[Event]:
    """The events from the one `first` picks to the one `last` picks: a new subscriber may
    also get the events of the moment before it subscribed (README, "Events")."""
    events: list[Event] = []
    async with asyncio.timeout(10):
        async for item in sub:
            assert isinstance(item, Event)
            if events or first(item):
                events.append(item)
                if last(item):
                    return events
    raise AssertionError("unreachable")


def created(body: str) -> Callable[[Event], bool]:
    return lambda e: e.type == "message.created" and e.data["body"] == body


# --------------------------------------------------------------------------- the view


async def test_a_conversation_shows_status_assignee_contact_and_last_message(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
    assert alice.outbound_sms_number
    patient, stranger = new_number(), new_number()
    r = await tenant.call(
        "POST",
        "/v1/contacts",
        as_=alice,
        expect=201,
        json={"phone_number": patient, "name": "Zoë Ng"},
    )
    contact = r.json()
    await inbound(send_telnyx, patient, alice.outbound_sms_number, "Can I come at 3?")
    await inbound(send_telnyx, stranger, alice.outbound_sms_number, "Who is this?")
    await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"username": tenant.admin.username}], "body": "lunch"},
    )

    conv = await conversation_with(tenant, alice, patient)
    assert conv["status"] == "open" and conv["assignee"] is None
    assert conv["contact"] == {"id": contact["id"], "name": "Zoë Ng"}
    assert conv["last_message"]["body"] == "Can I come at 3?"
    assert conv["last_message"]["direction"] == "inbound"
    assert conv["last_message_at"] == conv["last_message"]["created_at"]
    assert (await conversation_with(tenant, alice, stranger))["contact"] is None
    internal = next(c for c in await tenant.conversations(alice) if c["kind"] == "internal")
    assert internal["contact"] is None and internal["last_message"]["body"] == "lunch"
    one = await tenant.call("GET", f"/v1/conversations/{conv['id']}", as_=alice, expect=200)
    assert one.json() == conv

    # Renaming the contact shows at once; deleting it leaves the conversation.
    await tenant.call(
        "PATCH", f"/v1/contacts/{contact['id']}", as_=alice, expect=200, json={"name": "Zoe N."}
    )
    assert (await conversation_with(tenant, alice, patient))["contact"]["name"] == "Zoe N."
    await tenant.call("DELETE", f"/v1/contacts/{contact['id']}", as_=alice, expect=204)
    assert (await conversation_with(tenant, alice, patient))["contact"] is None


# --------------------------------------------------------------------------- status, assignee


async def test_any_member_who_sees_it_closes_assigns_and_reopens_it(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, carol, _, line = await front_desk(tenant)
    patient = new_number()
    await inbound(send_telnyx, patient, line)
    conv = await conversation_with(tenant, bob, patient)

    r = await patch(tenant, conv["id"], bob, status="closed", assignee="CAROL")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["assignee"]) == ("closed", "carol")
    seen = await conversation_with(tenant, carol, patient)
    assert (seen["status"], seen["assignee"]) == ("closed", "carol")

    r = await patch(tenant, conv["id"], carol, assignee=None)
    assert (r.json()["status"], r.json()["assignee"]) == ("closed", None)
    r = await patch(tenant, conv["id"], carol, status="open")
    assert (r.json()["status"], r.json()["assignee"]) == ("open", None)
    r = await patch(tenant, conv["id"], carol)
    assert r.status_code == 200 and r.json()["status"] == "open"


async def test_the_assignee_must_be_able_to_read_the_conversation(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, _, _, line = await front_desk(tenant)
    gone = await tenant.add_user("gone")
    await tenant.call(
        "PATCH",
        "/v1/groups/" + (await _group_id(tenant)),
        expect=200,
        json={"members": ["bob", "carol", "gone"]},
    )
    await tenant.call("DELETE", f"/v1/users/{gone.id}", expect=204)
    other = await Tenant.create(tenant.client)
    await other.add_user("erin")
    patient = new_number()
    await inbound(send_telnyx, patient, line)
    conv = await conversation_with(tenant, bob, patient)
    await patch(tenant, conv["id"], bob, assignee="carol")

    for name in ("dave", "gone", "erin", "nobody"):
        r = await patch(tenant, conv["id"], bob, status="closed", assignee=name)
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["code"] == "invalid_assignee"
        assert r.json()["error"]["details"] == [{"field": "assignee", "value": name}]
    for body in ({"status": "done"}, {"status": None}, {"assignee": "not a name"}, {"x": 1}):
        r = await patch(tenant, conv["id"], bob, **body)
        assert r.status_code == 422 and r.json()["error"]["message"], (body, r.text)
    # Nothing of the refused requests was stored.
    seen = await conversation_with(tenant, bob, patient)
    assert (seen["status"], seen["assignee"]) == ("open", "carol")
    # A user of an SMS conversation owned by one user: only that user can be assigned.
    alice = await tenant.add_user("alice", extension="105", sms=True, outbound=True)
    assert alice.outbound_sms_number
    await inbound(send_telnyx, patient, alice.outbound_sms_number)
    mine = await conversation_with(tenant, alice, patient)
    r = await patch(tenant, mine["id"], alice, assignee="bob")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_assignee"
    assert (await patch(tenant, mine["id"], alice, assignee="alice")).json()["assignee"] == "alice"


async def _group_id(tenant: Tenant) -> str:
    groups = (await tenant.call("GET", "/v1/groups", expect=200)).json()["items"]
    group_id: str = groups[0]["id"]
    return group_id


async def test_a_new_inbound_message_reopens_a_closed_conversation(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    bob, carol, _, line = await front_desk(tenant)
    patient = new_number()
    await inbound(send_telnyx, patient, line, "first")
    conv = await conversation_with(tenant, bob, patient)
    await patch(tenant, conv["id"], bob, status="closed", assignee="bob")
    # A note or a reply does not reopen it; the patient's next text does.
    await tenant.call(
        "POST", f"/v1/conversations/{conv['id']}/notes", as_=bob, expect=201, json={"body": "ok"}
    )
    await tenant.call(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        as_=bob,
        expect=201,
        json={"body": "See you Thursday."},
    )
    assert (await conversation_with(tenant, carol, patient))["status"] == "closed"
    async with ctx.events.subscribe(carol.id, tenant.id) as sub:
        await inbound(send_telnyx, patient, line, "one more question")
        reopened = await conversation_with(tenant, carol, patient)
        # An open conversation's new message tells nobody it was "updated".
        await inbound(send_telnyx, patient, line, "and another")
        events = await events_since(sub, created("one more question"), created("and another"))
    assert (reopened["status"], reopened["assignee"]) == ("open", "bob")
    assert reopened["last_message"]["body"] == "one more question"
    # (The reply's receipts may come in between: message.updated.)
    events = [e for e in events if e.type != "message.updated"]
    assert [e.type for e in events] == [
        "message.created",
        "conversation.updated",
        "message.created",
    ]
    assert events[1].data == reopened


async def test_changes_are_published_to_everyone_who_sees_the_conversation_only(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    bob, carol, dave, line = await front_desk(tenant)
    patient = new_number()
    await inbound(send_telnyx, patient, line, "hello")
    conv = await conversation_with(tenant, bob, patient)
    await tenant.call("POST", f"/v1/conversations/{conv['id']}/read", as_=bob, expect=200)
    subs = {m.username: ctx.events.subscribe(m.id, tenant.id) for m in (bob, carol, dave)}
    for sub in subs.values():
        await sub.__aenter__()
    try:
        await patch(tenant, conv["id"], carol, status="closed", assignee="bob")
        updated: Callable[[Event], bool] = lambda e: e.type == "conversation.updated"  # noqa: E731
        got = {
            name: (await events_since(subs[name], updated, updated))[0] for name in ("bob", "carol")
        }
        # dave sees nothing of it: the next event he gets is one of his own.
        await tenant.call(
            "POST",
            "/v1/messages",
            as_=bob,
            expect=201,
            json={"to": [{"username": "dave"}], "body": "x"},
        )
        (next_for_dave,) = await drain(subs["dave"], 1)
    finally:
        for sub in subs.values():
            await sub.__aexit__(None, None, None)
    assert next_for_dave.type == "message.created" and next_for_dave.data["body"] == "x"
    for name, event in got.items():
        assert event.type == "conversation.updated"
        member = {"bob": bob, "carol": carol}[name]
        shown = await tenant.call("GET", f"/v1/conversations/{conv['id']}", as_=member, expect=200)
        assert event.data == shown.json()
    assert got["bob"].data["unread_count"] == 0 and got["carol"].data["unread_count"] == 1
    assert got["bob"].data["group_id"] == conv["owner"]["id"]


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize("plan", ["by_numbers", "by_probes"])
async def test_filters_by_status_assignee_unread_and_search(
    tenant: Tenant, send_telnyx: SendTelnyx, monkeypatch: pytest.MonkeyPatch, plan: str
) -> None:
    # A name search either filters by the numbers of the contacts holding its rarest
    # piece, or probes each conversation's contact: the same answers either way.
    if plan == "by_probes":
        monkeypatch.setattr(inbox, "_FEW", -1)
    bob, carol, _, line = await front_desk(tenant)
    people = {"Maria Gonzalez": new_number(), "Mario Rossi": new_number(), "Li Wei": new_number()}
    unknown = new_number()
    for name, number in people.items():
        await tenant.call(
            "POST", "/v1/contacts", as_=bob, expect=201, json={"phone_number": number, "name": name}
        )
        await inbound(send_telnyx, number, line, f"hello from {name}")
    await inbound(send_telnyx, unknown, line, "no name")
    convs = {c["external_number"]: c["id"] for c in await tenant.conversations(bob)}
    maria, mario, li = (convs[people[n]] for n in people)
    await patch(tenant, maria, bob, assignee="bob")
    await patch(tenant, mario, bob, assignee="carol", status="closed")
    await tenant.call("POST", f"/v1/conversations/{li}/read", as_=bob, expect=200)
    await tenant.call(
        "POST", f"/v1/conversations/{maria}/notes", as_=carol, expect=201, json={"body": "n"}
    )
    await tenant.call("POST", f"/v1/conversations/{convs[unknown]}/read", as_=bob, expect=200)

    async def ids(as_: Member = bob, **params: Any) -> list[str]:
        r = await tenant.call("GET", "/v1/conversations", as_=as_, params=params)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    newest_first = [maria, convs[unknown], li, mario]  # carol's note is the newest activity
    assert await ids() == newest_first
    assert await ids(status="open") == [maria, convs[unknown], li]
    assert await ids(status="closed") == [mario]
    assert await ids(assignee="me") == [maria]
    assert await ids(as_=carol, assignee="me") == [mario]
    assert await ids(assignee="carol") == [mario]
    assert await ids(assignee="CAROL") == [mario]
    assert await ids(assignee="none") == [convs[unknown], li]
    assert await ids(unread="true") == [maria, mario]  # carol's note is unread for bob
    assert await ids(as_=carol, unread="true") == newest_first
    assert await ids(unread="false") == [convs[unknown], li]
    assert await ids(q="mar") == [maria, mario]
    assert await ids(q="gonz") == [maria]
    assert await ids(q="wei li") == [li]
    assert await ids(q=people["Li Wei"][-9:]) == [li]
    assert await ids(q=unknown) == [convs[unknown]]
    assert await ids(q="mar", status="open", assignee="me", unread="true") == [maria]
    assert await ids(q="nobody") == []

    for params, code in (
        ({"status": "done"}, "validation_error"),
        ({"assignee": "nobody"}, "invalid_assignee"),
        ({"assignee": "no body"}, "validation_error"),
        ({"unread": "maybe"}, "validation_error"),
        ({"q": "?!"}, "invalid_search"),
        ({"cursor": "bm90IG91cnM"}, "invalid_cursor"),
    ):
        r = await tenant.call("GET", "/v1/conversations", as_=bob, params=params)
        assert r.status_code in (400, 422) and r.json()["error"]["code"] == code, (params, r.text)


async def test_search_pages_past_candidates_whose_names_do_not_match(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user("alice", extension="105", sms=True, outbound=True)
    assert alice.outbound_sms_number
    # Each decoy holds "ola" and "lan" in two words, so the index offers it for "olan".
    names = ["Yolanda Park", *(f"Nola Landry{i}" for i in range(5)), "Rolando Ortiz", "Nola Lane"]
    for name in names:
        number = new_number()
        await tenant.call(
            "POST", "/v1/contacts", expect=201, json={"phone_number": number, "name": name}
        )
        await inbound(send_telnyx, number, alice.outbound_sms_number)
    found: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"q": "olan", "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await tenant.call("GET", "/v1/conversations", as_=alice, params=params)).json()
        found += [c["contact"]["name"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert found == ["Rolando Ortiz", "Yolanda Park"]


async def test_a_search_by_name_follows_a_contacts_new_number(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, _, _, line = await front_desk(tenant)
    old, new = new_number(), new_number()
    for number in (old, new):
        await inbound(send_telnyx, number, line)
    contact = await tenant.call(
        "POST",
        "/v1/contacts",
        as_=bob,
        expect=201,
        json={"phone_number": old, "name": "Ines Ortega"},
    )
    convs = {c["external_number"]: c["id"] for c in await tenant.conversations(bob)}

    async def found() -> list[str]:
        r = await tenant.call("GET", "/v1/conversations", as_=bob, params={"q": "ortega"})
        return [c["id"] for c in r.json()["items"]]

    assert await found() == [convs[old]]
    await tenant.call(
        "PATCH",
        f"/v1/contacts/{contact.json()['id']}",
        as_=bob,
        expect=200,
        json={"phone_number": new},
    )
    assert await found() == [convs[new]]


# --------------------------------------------------------------------------- paging


async def test_paging_misses_and_repeats_nothing_while_conversations_get_new_messages(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    alice = await tenant.add_user("alice", extension="105", sms=True, outbound=True)
    assert alice.outbound_sms_number
    line = alice.outbound_sms_number
    patients = [new_number() for _ in range(24)]
    # Twelve at once (one send: the same instant, ordered by id), twelve one by one.
    await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"phone_number": p} for p in patients[:12]], "body": "reminder"},
    )
    for p in patients[12:]:
        await inbound(send_telnyx, p, line)
    listed = await _all_pages(tenant, alice)
    before = [c["id"] for c in listed]
    number_of = {c["id"]: c["external_number"] for c in listed}
    assert len(before) == 24

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = (await tenant.call("GET", "/v1/conversations", as_=alice, params=params)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
        # While the reader pages: new messages in conversations on later pages and on
        # pages already read, and a conversation that did not exist before.
        later = [c for c in before if c not in seen]
        for conv_id in (later[-1], later[len(later) // 2], seen[0]):
            await inbound(send_telnyx, number_of[conv_id], line, f"news {pages}")
        await inbound(send_telnyx, new_number(), line, "a new patient")
    assert pages == 5
    assert len(seen) == len(set(seen)), "a conversation was shown twice"
    assert set(seen) == set(before), "a conversation was missed"
    # And the order is the one of the moment the first page was read.
    assert seen == before


async def _all_pages(
    tenant: Tenant, member: Member, limit: int = 200, **filters: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {
            "limit": limit,
            **filters,
            **({"cursor": cursor} if cursor else {}),
        }
        page = (await tenant.call("GET", "/v1/conversations", as_=member, params=params)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_paging_merges_owned_pair_and_group_conversations_while_they_move(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    # alice sees conversations she owns (her number), those with a colleague (internal)
    # and her group's: each kind read on its own, in activity order, and merged.
    alice = await tenant.add_user("alice", extension="105", sms=True, outbound=True)
    bob = await tenant.add_user("bob")
    carol = await tenant.add_user("carol")
    assert alice.outbound_sms_number
    await tenant.add_group("Front Desk", "200", ["alice", "bob"])
    desk = await tenant.add_number("200")
    mine, ours = [new_number() for _ in range(4)], [new_number() for _ in range(4)]

    async def internal(sender: Member, to: str, body: str) -> None:
        await tenant.call(
            "POST",
            "/v1/messages",
            as_=sender,
            expect=201,
            json={"to": [{"username": to}], "body": body},
        )

    for i in range(4):
        await inbound(send_telnyx, mine[i], alice.outbound_sms_number)
        await inbound(send_telnyx, ours[i], desk)
    await internal(alice, "bob", "to bob")
    await internal(carol, "alice", "to alice")
    await internal(alice, "carol", "back to carol")  # the same pair: one conversation
    await internal(bob, "carol", "not alice's")
    before = await _all_pages(tenant, alice)
    ids = [c["id"] for c in before]
    assert len(ids) == len(set(ids)) == 10
    assert {c["owner"]["type"] if c["owner"] else "pair" for c in before} == {
        "user",
        "group",
        "pair",
    }
    assert [c["id"] for c in await _all_pages(tenant, alice, limit=3)] == ids
    number_of = {c["id"]: c["external_number"] for c in before}

    async def touch(conv: dict[str, Any], body: str) -> None:
        if conv["owner"] is None:
            other = next(p for p in conv["participants"] if p != "alice")
            await internal(alice, other, body)
        elif conv["owner"]["type"] == "group":
            await inbound(send_telnyx, number_of[conv["id"]], desk, body)
        else:
            await inbound(send_telnyx, number_of[conv["id"]], alice.outbound_sms_number, body)

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await tenant.call("GET", "/v1/conversations", as_=alice, params=params)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # Activity in each kind, on pages to come and on pages read, and a new one.
        for conv in before:
            if conv["id"] not in seen or conv["id"] == seen[0]:
                await touch(conv, f"news {len(seen)}")
        await inbound(send_telnyx, new_number(), desk, "a new patient")
    assert seen == ids

    # The tests that read other tables run in each kind's walk, across pages too.
    now = await _all_pages(tenant, alice)
    unread = [c["id"] for c in now if c["unread_count"] > 0]
    assert 0 < len(unread) < len(now)
    assert [c["id"] for c in await _all_pages(tenant, alice, limit=2, unread="true")] == unread


async def test_a_cursor_placed_after_its_own_snapshot_is_refused(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", extension="105", sms=True, outbound=True)
    await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"phone_number": new_number()} for _ in range(2)], "body": "hi"},
    )
    page = (await tenant.call("GET", "/v1/conversations", as_=alice, params={"limit": 1})).json()
    raw = base64.urlsafe_b64decode(page["next_cursor"] + "=" * (-len(page["next_cursor"]) % 4))
    snapshot, place = raw[:8], raw[8:16]
    assert int.from_bytes(place, "big") <= int.from_bytes(snapshot, "big")
    later = (int.from_bytes(snapshot, "big") + 1).to_bytes(8, "big")
    forged = base64.urlsafe_b64encode(snapshot + later + raw[16:]).decode().rstrip("=")
    r = await tenant.call("GET", "/v1/conversations", as_=alice, params={"cursor": forged})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor", r.text


# --------------------------------------------------------------------------- notes


async def test_notes_are_seen_by_members_only_never_sent_and_not_unread_for_their_author(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    bob, carol, dave, line = await front_desk(tenant)
    patient = new_number()
    await inbound(send_telnyx, patient, line, "my results?")
    conv = await conversation_with(tenant, bob, patient)
    for member in (bob, carol):
        await tenant.call("POST", f"/v1/conversations/{conv['id']}/read", as_=member, expect=200)
    secret = "Note: results show elevated A1C, call the doctor first"

    async with ctx.events.subscribe(carol.id, tenant.id) as sub:
        r = await tenant.call(
            "POST",
            f"/v1/conversations/{conv['id']}/notes",
            as_=bob,
            expect=201,
            json={"body": secret},
        )
        (event,) = await events_since(sub, created(secret), created(secret))
    note = r.json()
    assert (note["direction"], note["sender_username"], note["body"]) == ("note", "bob", secret)
    assert note["from_number"] is None and note["to_number"] is None
    assert event.type == "message.created" and event.data == note

    history = await tenant.messages(carol, conv["id"])
    assert [m["direction"] for m in history] == ["note", "inbound"]
    assert (await conversation_with(tenant, carol, patient))["unread_count"] == 1
    assert (await conversation_with(tenant, bob, patient))["unread_count"] == 0
    assert (await conversation_with(tenant, bob, patient))["last_message"]["id"] == note["id"]
    await tenant.call("GET", f"/v1/messages/{note['id']}", as_=carol, expect=200)
    r = await tenant.call("GET", f"/v1/messages/{note['id']}", as_=dave)
    assert r.status_code == 404
    r = await tenant.call(
        "POST", f"/v1/conversations/{conv['id']}/notes", as_=dave, json={"body": "sneaky"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"

    # A reply sent after the note reaches the carrier; the note never does.
    reply = await tenant.call(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        as_=bob,
        expect=201,
        json={"body": "We will call you today."},
    )
    await eventually(lambda: _sent_body(ctx, "We will call you today."))
    assert not any(secret in s.body for s in ctx.carrier.sent)  # type: ignore[attr-defined]
    async with ctx.sessionmaker() as s:
        jobs = await s.execute(
            text("SELECT message_id FROM delivery_jobs WHERE message_id IN (:n, :r)"),
            {"n": note["id"], "r": reply.json()["id"]},
        )
        assert [str(j[0]) for j in jobs] == [reply.json()["id"]]
        blobs = (await s.scalars(select(Message.body_ciphertext))).all()
    assert not any(secret.encode() in b for b in blobs)


async def _sent_body(ctx: AppContext, body: str) -> bool:
    return any(s.body == body for s in ctx.carrier.sent)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"body": "  "}, "empty_body"),
        ({"body": "x" * 1601}, "body_too_long"),
        ({}, "validation_error"),
        ({"body": "x", "to": "y"}, "validation_error"),
    ],
)
async def test_bad_notes_are_refused_and_store_nothing(
    tenant: Tenant, send_telnyx: SendTelnyx, body: dict[str, str], code: str
) -> None:
    bob, _, _, line = await front_desk(tenant)
    patient = new_number()
    await inbound(send_telnyx, patient, line)
    conv = await conversation_with(tenant, bob, patient)
    r = await tenant.call("POST", f"/v1/conversations/{conv['id']}/notes", as_=bob, json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert [m["direction"] for m in await tenant.messages(bob, conv["id"])] == ["inbound"]


# --------------------------------------------------------------------------- isolation


async def test_another_orgs_conversations_and_notes_are_not_found(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob, _, _, line = await front_desk(tenant)
    patient = new_number()
    await inbound(send_telnyx, patient, line)
    conv = await conversation_with(tenant, bob, patient)
    note = await tenant.call(
        "POST", f"/v1/conversations/{conv['id']}/notes", as_=bob, expect=201, json={"body": "n"}
    )
    other = await Tenant.create(tenant.client)
    await other.add_user("bob")
    probes = [
        ("GET", f"/v1/conversations/{conv['id']}", None),
        ("PATCH", f"/v1/conversations/{conv['id']}", {"status": "closed"}),
        ("PATCH", f"/v1/conversations/{conv['id']}", {"assignee": "bob"}),
        ("POST", f"/v1/conversations/{conv['id']}/notes", {"body": "hi"}),
        ("GET", f"/v1/conversations/{conv['id']}/messages", None),
        ("GET", f"/v1/messages/{note.json()['id']}", None),
    ]
    for method, path, body in probes:
        r = await other.call(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
    assert (await other.call("GET", "/v1/conversations", params={"q": patient})).json()[
        "items"
    ] == []
    seen = await conversation_with(tenant, bob, patient)
    assert seen["status"] == "open" and seen["assignee"] is None
    assert [m["body"] for m in await tenant.messages(bob, conv["id"])] == ["n", "hi"]


async def test_the_inbox_is_in_the_api_document(tenant: Tenant) -> None:
    spec = (await tenant.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert {"post", "get"} <= set(paths["/v1/contacts"])
    assert {"get", "patch", "delete"} <= set(paths["/v1/contacts/{contact_id}"])
    assert "patch" in paths["/v1/conversations/{conversation_id}"]
    assert "post" in paths["/v1/conversations/{conversation_id}/notes"]
    listed = {p["name"] for p in paths["/v1/conversations"]["get"]["parameters"]}
    assert {"status", "assignee", "unread", "q", "limit", "cursor"} <= listed
    shown = spec["components"]["schemas"]["ConversationOut"]["properties"]
    assert {"status", "assignee", "contact", "last_message"} <= set(shown)
    assert "note" in str(spec["components"]["schemas"]["MessageOut"])
    assert "conversation.updated" in str(paths["/v1/events"])


def test_every_page_statement_stays_prepared_on_postgresql() -> None:
    # asyncpg re-parses and re-plans a statement longer than its cacheable size at every
    # run: the largest shapes of the page statement must stay under it.
    for resumed, unread, search in itertools.product(
        (False, True), (None, True), (None, "digits", "few", "many")
    ):
        by_name = search in ("few", "many")
        shape = inbox._Shape(
            status=True,
            assignee="user",
            unread=unread,
            search=search,
            pieces=LOOKUP_PIECES if by_name else 0,
            terms=2 if by_name else 0,
            resumed=resumed,
            postgresql=True,
        )
        assert len(DriverStatement(inbox._page_select(shape)).sql) < CACHEABLE_STATEMENT_BYTES
