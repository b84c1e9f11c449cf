"""Conversation history at scale, and key rotation of bodies at rest."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select

from app.carriers.simulator import SimulatorCarrier
from app.context import AppContext
from app.crypto import DecryptionError, Keyring, generate_key_setting, key_id_of
from app.ids import new_id
from app.models import Conversation, Message
from app.services.key_rotation import reencrypt_bodies
from app.services.sealing import open_body, seal_body
from app.settings import Settings
from tests.conftest import fresh_database, running_app
from tests.support import OPERATOR_TOKEN, Tenant, auth, new_number


async def bulk_messages(
    ctx: AppContext, conv_id: str, org_id: str, sender: str, count: int
) -> None:
    """Store `count` old messages in a conversation, fast, encrypted as the app does."""
    org, conv = uuid.UUID(org_id), uuid.UUID(conv_id)
    async with ctx.sessionmaker() as s:
        for start in range(0, count, 5000):
            rows: list[dict[str, Any]] = []
            for i in range(start, min(count, start + 5000)):
                mid = new_id()
                rows.append(
                    {
                        "id": mid,
                        "org_id": org,
                        "conversation_id": conv,
                        "direction": "internal",
                        "sender_username": sender,
                        "recipient_username": "bob",
                        "status": "delivered",
                        "body_ciphertext": seal_body(ctx.keyring, mid, org, f"old {i}"),
                        "segments": 1,
                        "encoding": "GSM-7",
                        "media_dropped": 0,
                        "auto_reply": False,
                    }
                )
            await s.execute(insert(Message), rows)
        await s.commit()


@pytest.mark.slow
async def test_paging_100k_messages_misses_and_repeats_nothing_while_new_ones_arrive(
    tenant: Tenant, ctx: AppContext
) -> None:
    alice, bob = await tenant.add_user("alice"), await tenant.add_user("bob")
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"username": "bob"}], "body": "first"},
    )
    conv_id = r.json()["messages"][0]["conversation_id"]
    await bulk_messages(ctx, conv_id, tenant.id, "alice", 100_000)
    async with ctx.sessionmaker() as s:
        existing = set(
            (await s.scalars(select(Message.id).where(Message.conversation_id == conv_id))).all()
        )
    assert len(existing) == 100_001

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = (
            await tenant.call(
                "GET", f"/v1/conversations/{conv_id}/messages", as_=bob, params=params, expect=200
            )
        ).json()
        ids = [m["id"] for m in page["items"]]
        assert ids == sorted(ids, reverse=True)
        seen += ids
        pages += 1
        cursor = page["next_cursor"]
        if pages % 50 == 0:
            # New messages arrive while the reader is paging back through history.
            await tenant.call(
                "POST",
                "/v1/messages",
                as_=bob,
                expect=201,
                json={"to": [{"username": "alice"}], "body": f"new {pages}"},
            )
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert {str(i) for i in existing} == set(seen)


async def test_reencrypt_moves_every_body_to_the_newest_key(
    base_settings: Settings, make_app: Any
) -> None:
    # Its own database: rotating keys under the shared one would strand other tests.
    async with fresh_database("rotate") as url, make_app(database_url=url) as (app, client):
        ctx: AppContext = app.state.ctx
        tenant = await Tenant.create(client)
        alice, _ = await tenant.add_user("alice"), await tenant.add_user("bob")
        await tenant.set_auto_responder(alice, "rotated reply")
        group = await tenant.add_group("desk", "200", ["alice"])
        after_hours = f"/v1/groups/{group['id']}/after-hours"
        await tenant.call(
            "PUT",
            after_hours,
            expect=200,
            json={"enabled": True, "text": "rotated night", "schedule": {"timezone": "UTC"}},
        )
        r = await client.post(
            "/v1/messages",
            headers={**alice.headers, "Idempotency-Key": "k"},
            json={"to": [{"username": "bob"}], "body": "rotate me"},
        )
        message_id = r.json()["messages"][0]["id"]
        assert base_settings.encryption_keys
        rotated = f"{generate_key_setting('k2')},{base_settings.encryption_keys}"
        keyring = Keyring.from_setting(rotated)
        # The body, the auto-reply and after-hours texts, the kept idempotent response.
        assert await reencrypt_bodies(ctx.sessionmaker, keyring) == 4
        async with ctx.sessionmaker() as s:
            blobs = (
                await s.execute(select(Message.id, Message.org_id, Message.body_ciphertext))
            ).all()
        assert {key_id_of(b[2]) for b in blobs} == {"k2"}
        (mine,) = blobs
        assert str(mine[0]) == message_id
        assert open_body(keyring, mine[0], mine[1], mine[2]) == "rotate me"
        with pytest.raises(DecryptionError):
            open_body(Keyring.from_setting(base_settings.encryption_keys), *mine)
        assert await reencrypt_bodies(ctx.sessionmaker, keyring) == 0
        # An app with the rotated keys reads it through the API.
        async with make_app(database_url=url, encryption_keys=rotated) as (_, rotated_client):
            r = await rotated_client.get(f"/v1/messages/{message_id}", headers=alice.headers)
            assert r.json()["body"] == "rotate me"
            r = await rotated_client.get("/v1/me/auto-responder", headers=alice.headers)
            assert r.json()["text"] == "rotated reply"
            r = await rotated_client.get(after_hours, headers=tenant.admin.headers)
            assert r.json()["text"] == "rotated night"


async def test_sms_conversation_is_one_per_owner_and_number(tenant: Tenant) -> None:
    alice = await tenant.add_user("alice", sms=True, outbound=True)
    patient = new_number()
    for _ in range(3):
        await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"phone_number": patient}], "body": "x"},
        )
    convs = [c for c in await tenant.conversations(alice) if c["external_number"] == patient]
    assert len(convs) == 1 and convs[0]["kind"] == "sms"
    assert Conversation.__tablename__ == "conversations"


# --------------------------------------------------------------------------- who may read


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_database(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> AsyncIterator[tuple[AppContext, httpx.AsyncClient]]:
    """The app on PostgreSQL (one statement reads a page) and on the embedded SQLite."""
    if request.param == "postgresql":
        app, client = app_client
        yield app.state.ctx, client
        return
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",  # type: ignore[call-arg]
        operator_token=OPERATOR_TOKEN,
    )
    async with running_app(settings) as (app, client):
        yield app.state.ctx, client


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


async def test_history_checks_the_token_and_who_may_see_the_conversation(
    any_database: tuple[AppContext, httpx.AsyncClient],
) -> None:
    ctx, client = any_database
    assert isinstance(ctx.carrier, SimulatorCarrier)
    clinic, other = await Tenant.create(client), await Tenant.create(client)
    alice = await clinic.add_user("alice", extension="101")
    bob = await clinic.add_user("bob", extension="102")
    carol = await clinic.add_user("carol", extension="103")
    await clinic.add_group("Front desk", "300", ["alice", "carol"])
    desk_number = await clinic.add_number("300")

    for i in range(5):
        await clinic.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"extension": "102"}], "body": f"note {i}"},
        )
    patient = new_number()
    await ctx.carrier.inject_inbound(from_number=patient, to_number=desk_number, text="hi desk")
    pair = next(c for c in await clinic.conversations(alice) if c["kind"] == "internal")
    desk = next(c for c in await clinic.conversations(carol) if c["kind"] == "sms")
    pair_path = f"/v1/conversations/{pair['id']}/messages"
    desk_path = f"/v1/conversations/{desk['id']}/messages"

    # The pair and the group's members read; the page is rendered in full, newest first.
    for reader in (alice, bob):
        items = (await clinic.call("GET", pair_path, as_=reader, expect=200)).json()["items"]
        assert [m["body"] for m in items] == [f"note {i}" for i in reversed(range(5))]
        assert items[0]["sender_username"] == "alice"
        assert items[0]["recipient_username"] == "bob"
        assert items[0]["conversation_id"] == pair["id"]
    for reader in (alice, carol):
        page = (await clinic.call("GET", desk_path, as_=reader, expect=200)).json()
        assert page["next_cursor"] is None
        [inbound] = page["items"]
        assert inbound["body"] == "hi desk" and inbound["from_number"] == patient
        assert inbound["direction"] == "inbound" and inbound["status"] == "received"
        assert isinstance(inbound["auto_reply_decision"], dict)
        assert inbound["auto_reply_decision"]["sent"] is False

    # Anyone else hears of no such conversation: a colleague outside it, another tenant.
    _error(await client.get(pair_path, headers=carol.headers), 404, "conversation_not_found")
    _error(await client.get(desk_path, headers=bob.headers), 404, "conversation_not_found")
    _error(await client.get(pair_path, headers=other.admin.headers), 404, "conversation_not_found")
    missing = f"/v1/conversations/{uuid.uuid4()}/messages"
    _error(await client.get(missing, headers=alice.headers), 404, "conversation_not_found")
    _error(
        await client.get("/v1/conversations/nope/messages", headers=alice.headers),
        422,
        "validation_error",
    )

    # Tokens: none, unknown, revoked, or of a deactivated user.
    _error(await client.get(pair_path), 401, "missing_token")
    _error(await client.get(pair_path, headers=auth("msk_" + "x" * 43)), 401, "invalid_token")
    r = await clinic.call("POST", f"/v1/users/{alice.id}/tokens", expect=201, json={})
    spare, spare_id = r.json()["token"], r.json()["id"]
    assert (await client.get(pair_path, headers=auth(spare))).status_code == 200
    await clinic.call("DELETE", f"/v1/users/{alice.id}/tokens/{spare_id}", expect=204)
    _error(await client.get(pair_path, headers=auth(spare)), 401, "invalid_token")
    await clinic.call("DELETE", f"/v1/users/{bob.id}", expect=204)
    _error(await client.get(pair_path, headers=bob.headers), 401, "invalid_token")

    # Paging back in time: every message once, in order, then no cursor.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await clinic.call("GET", pair_path, as_=alice, expect=200, params=params)
        seen += [m["body"] for m in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"note {i}" for i in reversed(range(5))]
    r = await client.get(pair_path, headers=alice.headers, params={"cursor": "!!"})
    _error(r, 400, "invalid_cursor")
