"""Conversation history at scale, and key rotation of bodies at rest."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, select

from app.context import AppContext
from app.crypto import DecryptionError, Keyring, generate_key_setting, key_id_of
from app.ids import new_id
from app.models import Conversation, Message
from app.services.messaging import reencrypt_bodies
from app.services.sealing import open_body, seal_body
from app.settings import Settings
from tests.conftest import fresh_database
from tests.support import Tenant, new_number


async def bulk_messages(
    ctx: AppContext, conv_id: str, org_id: str, sender: str, count: int
) -> None:
    """Store `count` old messages in a conversation, fast, encrypted as the app does."""
    import uuid

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
        r = await client.post(
            "/v1/messages",
            headers={**alice.headers, "Idempotency-Key": "k"},
            json={"to": [{"username": "bob"}], "body": "rotate me"},
        )
        message_id = r.json()["messages"][0]["id"]
        assert base_settings.encryption_keys
        rotated = f"{generate_key_setting('k2')},{base_settings.encryption_keys}"
        keyring = Keyring.from_setting(rotated)
        # The body, the auto-reply text and the kept idempotent response.
        assert await reencrypt_bodies(ctx.sessionmaker, keyring) == 3
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
