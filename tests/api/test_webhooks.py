"""Carrier webhooks: signatures, replays, idempotency and status progression."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import nacl.signing
import orjson
from sqlalchemy import func, select, text

from app.carriers.telnyx import sign_telnyx_webhook
from app.carriers.twilio import twilio_signature
from app.context import AppContext
from app.models import Message
from tests.conftest import TWILIO_AUTH_TOKEN, SendTelnyx, fresh_database
from tests.support import Tenant, new_number, telnyx_inbound_event


async def stored_count(ctx: AppContext, carrier_id: str) -> int:
    async with ctx.sessionmaker() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.carrier_message_id == carrier_id)
        )
        return int(n or 0)


async def test_valid_telnyx_webhook_is_stored(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    mid = str(uuid.uuid4())
    r = await send_telnyx(new_number(), bob.outbound_sms_number, "hello", message_id=mid)
    assert r.status_code == 200 and r.json() == {"status": "stored"}
    assert await stored_count(ctx, mid) == 1


async def test_bad_stale_or_missing_telnyx_signatures_store_nothing(
    client: httpx.AsyncClient,
    tenant: Tenant,
    ctx: AppContext,
    telnyx_key: nacl.signing.SigningKey,
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    mid = str(uuid.uuid4())
    raw = orjson.dumps(telnyx_inbound_event(new_number(), bob.outbound_sms_number or "", "x", mid))
    now = int(time.time())
    other_key = nacl.signing.SigningKey.generate()
    tampered = raw.replace(b'"x"', b'"y"')
    cases: list[tuple[bytes, dict[str, str]]] = [
        (raw, sign_telnyx_webhook(other_key, raw, now)),  # wrong key
        (tampered, sign_telnyx_webhook(telnyx_key, raw, now)),  # body changed
        (raw, sign_telnyx_webhook(telnyx_key, raw, now - 301)),  # replayed too late
        (raw, sign_telnyx_webhook(telnyx_key, raw, now + 3600)),  # from the future
        (raw, {}),  # unsigned
    ]
    for body, headers in cases:
        r = await client.post(
            "/webhooks/telnyx",
            content=body,
            headers={**headers, "content-type": "application/json"},
        )
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_signature"
    assert await stored_count(ctx, mid) == 0


async def test_webhook_delivered_ten_times_concurrently_stores_one(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.set_auto_responder(bob, "We got your message.")
    patient, mid = new_number(), str(uuid.uuid4())
    results = await asyncio.gather(
        *[send_telnyx(patient, bob.outbound_sms_number, "hello", message_id=mid) for _ in range(10)]
    )
    assert all(r.status_code == 200 for r in results)
    assert sorted(r.json()["status"] for r in results).count("stored") == 1
    assert await stored_count(ctx, mid) == 1
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    msgs = await tenant.messages(bob, conv["id"])
    assert [m["auto_reply"] for m in msgs].count(True) == 1


async def test_twilio_inbound_verified_and_answered_with_twiml(
    client: httpx.AsyncClient, tenant: Tenant, ctx: AppContext
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    sid = "SM" + uuid.uuid4().hex
    form = {
        "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": new_number(),
        "To": bob.outbound_sms_number or "",
        "Body": "Hi from Twilio",
        "NumMedia": "0",
    }
    url = "http://testserver/webhooks/twilio/messages"
    r = await client.post(
        "/webhooks/twilio/messages",
        data=form,
        headers={"X-Twilio-Signature": twilio_signature("wrong-token", url, form)},
    )
    assert r.status_code == 401 and await stored_count(ctx, sid) == 0
    r = await client.post(
        "/webhooks/twilio/messages",
        data=form,
        headers={"X-Twilio-Signature": twilio_signature(TWILIO_AUTH_TOKEN, url, form)},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    assert "<Response/>" in r.text
    assert await stored_count(ctx, sid) == 1
    # A replay is acknowledged and changes nothing.
    r = await client.post(
        "/webhooks/twilio/messages",
        data=form,
        headers={"X-Twilio-Signature": twilio_signature(TWILIO_AUTH_TOKEN, url, form)},
    )
    assert r.status_code == 200 and await stored_count(ctx, sid) == 1


def telnyx_status_event(
    event_type: str, carrier_id: str, status: str, ref: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": carrier_id,
        "record_type": "message",
        "direction": "outbound",
        "to": [{"phone_number": "+14155550100", "status": status}],
        "from": {"phone_number": "+14155550101"},
        "text": "x",
        "errors": [],
    }
    if ref:
        payload["webhook_url"] = f"https://example.invalid/webhooks/telnyx?ref={ref}"
    return {"data": {"event_type": event_type, "id": str(uuid.uuid4()), "payload": payload}}


async def test_statuses_progress_and_never_regress(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    # Its own database: no other app's worker may deliver the message meanwhile.
    async with (
        fresh_database("hooks") as url,
        make_app(run_worker=False, database_url=url) as (app, client),
    ):
        tenant = await Tenant.create(client)
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"phone_number": new_number()}], "body": "hi"},
        )
        message_id = r.json()["messages"][0]["id"]
        carrier_id = str(uuid.uuid4())

        async def post(event: dict[str, Any]) -> None:
            raw = orjson.dumps(event)
            headers = sign_telnyx_webhook(telnyx_key, raw, int(time.time()))
            resp = await client.post("/webhooks/telnyx", content=raw, headers=headers)
            assert resp.status_code == 200, resp.text

        async def status() -> str:
            m = await tenant.call("GET", f"/v1/messages/{message_id}", as_=alice, expect=200)
            return str(m.json()["status"])

        await post(telnyx_status_event("message.sent", carrier_id, "sent", ref=message_id))
        assert await status() == "sent"
        await post(telnyx_status_event("message.finalized", carrier_id, "delivered"))
        assert await status() == "delivered"
        await post(telnyx_status_event("message.sent", carrier_id, "sent"))
        assert await status() == "delivered"
        ctx: AppContext = app.state.ctx
        async with ctx.sessionmaker() as s:
            state = await s.scalar(
                text("SELECT state FROM delivery_jobs WHERE message_id = :m"), {"m": message_id}
            )
        # The receipt settled the job: the worker will never send it again.
        assert state == "done"


async def test_unknown_status_receipts_are_acknowledged(
    client: httpx.AsyncClient, telnyx_key: nacl.signing.SigningKey
) -> None:
    raw = orjson.dumps(telnyx_status_event("message.sent", str(uuid.uuid4()), "sent"))
    r = await client.post(
        "/webhooks/telnyx",
        content=raw,
        headers=sign_telnyx_webhook(telnyx_key, raw, int(time.time())),
    )
    assert r.status_code == 200 and r.json() == {"status": "status_unmatched"}


async def test_signed_but_malformed_webhook_is_400(
    client: httpx.AsyncClient, telnyx_key: nacl.signing.SigningKey
) -> None:
    raw = b'{"data": {"event_type": "message.received", "payload": {"id": 5}}}'
    r = await client.post(
        "/webhooks/telnyx",
        content=raw,
        headers=sign_telnyx_webhook(telnyx_key, raw, int(time.time())),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_webhook"


async def test_workers_late_success_never_overwrites_a_receipt(make_app: Any) -> None:
    """The receipt (delivered) lands before the worker records its send (sent)."""
    from app.carriers.base import StatusUpdate
    from app.services.delivery_status import advance_outbound, apply_status

    # Its own database: no other app's worker may deliver the message meanwhile.
    async with (
        fresh_database("hooks") as url,
        make_app(run_worker=False, database_url=url) as (app, client),
    ):
        ctx: AppContext = app.state.ctx
        tenant = await Tenant.create(client)
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"phone_number": new_number()}], "body": "hi"},
        )
        message_id = r.json()["messages"][0]["id"]
        async with ctx.sessionmaker() as s:
            assert await apply_status(
                ctx,
                s,
                StatusUpdate(
                    carrier="telnyx",
                    carrier_message_id="c-1",
                    status="delivered",
                    reference=message_id,
                ),
            )
        async with ctx.sessionmaker() as s:
            changed = await advance_outbound(
                s, uuid.UUID(message_id), "sent", carrier="telnyx", carrier_message_id="c-1"
            )
            await s.commit()
        assert changed is False
        m = await tenant.call("GET", f"/v1/messages/{message_id}", as_=alice, expect=200)
        assert m.json()["status"] == "delivered"


async def test_inbound_text_and_its_auto_reply_reach_the_user_as_events(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    """What the event stream shows of a new inbound text is what the API shows of it."""
    bob, line = await tenant.add_auto_replying_user("bob", "102")
    patient = new_number()
    async with ctx.events.subscribe(bob.id, tenant.id) as sub:
        r = await send_telnyx(patient, line, "hello there")
        assert r.json()["status"] == "stored"
        events = []
        async with asyncio.timeout(10):
            async for event in sub:
                events.append(event)
                if len(events) == 2:
                    break
    assert [e.type for e in events] == ["message.created", "message.created"]
    for event in events:
        shown = await tenant.call("GET", f"/v1/messages/{event.data['id']}", as_=bob, expect=200)
        # Only the status of the auto-reply may have moved on since.
        assert {**event.data, "status": None, "updated_at": None} == {
            **shown.json(),
            "status": None,
            "updated_at": None,
        }
    inbound, reply = (e.data for e in events)
    assert inbound["body"] == "hello there" and inbound["direction"] == "inbound"
    assert inbound["auto_reply_decision"] == {"sent": True, "reason": "sent"}
    assert reply["auto_reply"] is True and reply["sender_username"] == "bob"


async def test_webhooks_are_served_lean_yet_documented_and_counted(
    app_client: tuple[Any, httpx.AsyncClient], tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    from app.routers._lean import LeanRoute

    app, client = app_client
    lean = [r for r in app.router.routes if isinstance(r, LeanRoute)]
    assert {r.path for r in lean} == {
        "/webhooks/telnyx",
        "/webhooks/twilio/messages",
        "/webhooks/twilio/status",
        "/v1/messages",  # the fast path of the usual send (tests/api/test_send_fast_path.py)
        "/v1/conversations",  # and of the inbox list (tests/api/test_inbox_fast_path.py)
    }
    # Matched before anything else.
    assert app.router.routes[: len(lean)] == lean

    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number is not None
    assert (await send_telnyx(new_number(), bob.outbound_sms_number, "hi")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'route="/webhooks/telnyx",status="200"' in metrics

    spec = (await client.get("/openapi.json")).json()
    telnyx_op = spec["webhooks"]["/webhooks/telnyx"]["post"]
    assert {p["name"] for p in telnyx_op["parameters"]} == {
        "telnyx-signature-ed25519",
        "telnyx-timestamp",
    }
    twilio_op = spec["webhooks"]["/webhooks/twilio/messages"]["post"]
    assert [p["name"] for p in twilio_op["parameters"]] == ["X-Twilio-Signature"]


async def test_a_carrier_whose_secret_is_not_set_gets_503_carrier_not_configured(
    make_app: Any, telnyx_key: nacl.signing.SigningKey
) -> None:
    raw = orjson.dumps(telnyx_inbound_event(new_number(), new_number(), "x"))
    async with make_app(run_worker=False, telnyx_public_key=None, twilio_auth_token=None) as (
        _,
        client,
    ):
        for path, content, headers in (
            ("/webhooks/telnyx", raw, sign_telnyx_webhook(telnyx_key, raw, int(time.time()))),
            ("/webhooks/twilio/messages", b"MessageSid=SM1", {"X-Twilio-Signature": "x"}),
            ("/webhooks/twilio/status", b"MessageSid=SM1", {"X-Twilio-Signature": "x"}),
        ):
            r = await client.post(path, content=content, headers=headers)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "carrier_not_configured"


async def test_twilio_webhooks_verify_when_served_under_a_root_path(
    make_app: Any, tenant: Tenant, ctx: AppContext
) -> None:
    """ASGI servers put the root path in front of the request's path; Twilio signed the
    public URL, which holds the prefix once, in PUBLIC_BASE_URL."""
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    sid = "SM" + uuid.uuid4().hex
    form = {"MessageSid": sid, "From": new_number(), "To": bob.outbound_sms_number or ""}
    url = "https://example.org/sms/webhooks/twilio/messages"
    async with make_app(run_worker=False, public_base_url="https://example.org/sms") as (app, _):
        transport = httpx.ASGITransport(app=app, root_path="/sms")
        async with httpx.AsyncClient(transport=transport, base_url="https://example.org") as c:
            r = await c.post(
                "/sms/webhooks/twilio/messages",
                data=form,
                headers={"X-Twilio-Signature": twilio_signature(TWILIO_AUTH_TOKEN, url, form)},
            )
    assert r.status_code == 200, r.text
    assert await stored_count(ctx, sid) == 1
