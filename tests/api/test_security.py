"""Security: tokens at rest and in comparison, replayed webhooks, request size, secrets in
logs, the audit trail, and tenant isolation of conversations and messages."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import time
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nacl.signing
import orjson
import pytest
from sqlalchemy import text

import app.carriers.telnyx as telnyx_module
import app.services.auth as auth_service
from app.carriers.telnyx import sign_telnyx_webhook
from app.context import AppContext
from app.errors import Unauthorized
from app.observability import JsonFormatter
from app.security import tokens_equal
from app.services.auth import authenticate_user
from tests.conftest import SendTelnyx
from tests.support import (
    OPERATOR_TOKEN,
    Member,
    Tenant,
    auth,
    eventually,
    new_number,
    telnyx_inbound_event,
)


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def new_token(tenant: Tenant, member: Member, name: str | None = None) -> tuple[str, str]:
    """(token, token id) of a fresh token for `member`."""
    r = await tenant.call("POST", f"/v1/users/{member.id}/tokens", expect=201, json={"name": name})
    return r.json()["token"], r.json()["id"]


# --------------------------------------------------------------------------- tokens at rest


async def test_tokens_are_stored_only_as_sha256_hashes(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    tenant = await Tenant.create(client)
    bob = await tenant.add_user("bob")
    extra, _ = await new_token(tenant, bob, "phone app")
    tokens = [tenant.admin.token, bob.token, extra]
    async with ctx.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT token_hash FROM api_tokens WHERE org_id = :org"),
                {"org": uuid.UUID(tenant.id)},
            )
        ).scalars()
        assert sorted(stored) == sorted(sha256_hex(t) for t in tokens)
        tables = (
            await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                )
            )
        ).scalars()
        # The token, its random part without the prefix, and either as hex bytes: in no
        # column of any row of any table.
        needles = []
        for token in tokens:
            secret = token.removeprefix("msk_")
            needles += [token, secret, token.encode().hex(), secret.encode().hex()]
        where = " OR ".join(f"strpos(t::text, :n{i}) > 0" for i in range(len(needles)))
        params = {f"n{i}": n for i, n in enumerate(needles)}
        checked = 0
        for table in tables:
            found = await conn.scalar(
                text(f'SELECT count(*) FROM "{table}" AS t WHERE {where}'), params
            )
            assert found == 0, f"a plain token is stored in table {table}"
            checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- revocation


async def test_revoked_tokens_are_refused_and_others_keep_working(tenant: Tenant) -> None:
    bob = await tenant.add_user("bob", extension="102")
    laptop, laptop_id = await new_token(tenant, bob, "laptop")
    phone, _ = await new_token(tenant, bob, "phone")
    await tenant.call("DELETE", f"/v1/users/{bob.id}/tokens/{laptop_id}", expect=204)
    for path in ("/v1/me", "/v1/conversations", "/v1/me/auto-responder"):
        assert_error(await tenant.client.get(path, headers=auth(laptop)), 401, "invalid_token")
        assert (await tenant.client.get(path, headers=auth(phone))).status_code == 200
        assert (await tenant.client.get(path, headers=bob.headers)).status_code == 200
    # Revoking twice changes nothing and does not bring it back.
    await tenant.call("DELETE", f"/v1/users/{bob.id}/tokens/{laptop_id}", expect=204)
    assert_error(await tenant.client.get("/v1/me", headers=auth(laptop)), 401, "invalid_token")

    # A revoked admin token is 401 (not 403) on admin endpoints.
    ops = await tenant.add_user("ops", role="admin")
    ops_token, ops_token_id = await new_token(tenant, ops)
    r = await tenant.client.get("/v1/users", headers=auth(ops_token))
    assert r.status_code == 200
    await tenant.call("DELETE", f"/v1/users/{ops.id}/tokens/{ops_token_id}", expect=204)
    assert_error(
        await tenant.client.get("/v1/users", headers=auth(ops_token)), 401, "invalid_token"
    )
    r = await tenant.client.post("/v1/users", headers=auth(ops_token), json={"username": "x"})
    assert_error(r, 401, "invalid_token")


async def test_a_token_revoked_after_reading_the_inbox_reads_nothing_more(
    tenant: Tenant,
) -> None:
    """The inbox list keeps its caller per process and checks the token in the page's
    own statement: once revoked, every form of the request is 401 (no rows, no error
    that tells what the organization holds), each tried while the process still holds
    the revoked token's caller."""
    bob = await tenant.add_user("bob", extension="102")
    for name, extension in (("carol", "103"), ("dave", "104")):
        other = await tenant.add_user(name, extension=extension)
        await tenant.call(
            "POST",
            "/v1/messages",
            as_=bob,
            expect=201,
            json={"to": [{"username": other.username}], "body": "see you at 3"},
        )
    first = await tenant.client.get("/v1/conversations?limit=1", headers=bob.headers)
    cursor = first.json()["next_cursor"]
    assert len(first.json()["items"]) == 1 and cursor, first.text
    queries = (
        "",
        "?assignee=nobody-here",
        "?q=carol",
        "?status=closed",
        f"?limit=1&cursor={cursor}",
    )
    for query in queries:
        token, token_id = await new_token(tenant, bob, "laptop")
        r = await tenant.client.get("/v1/conversations", headers=auth(token))
        assert r.status_code == 200 and r.json()["items"], r.text
        await tenant.call("DELETE", f"/v1/users/{bob.id}/tokens/{token_id}", expect=204)
        r = await tenant.client.get(f"/v1/conversations{query}", headers=auth(token))
        assert_error(r, 401, "invalid_token")
    assert (await tenant.client.get("/v1/conversations", headers=bob.headers)).status_code == 200


async def test_every_token_of_a_deactivated_user_is_refused(
    tenant: Tenant, ctx: AppContext
) -> None:
    bob = await tenant.add_user("bob", extension="102")
    second, _ = await new_token(tenant, bob)
    await tenant.call("DELETE", f"/v1/users/{bob.id}", expect=204)
    for token in (bob.token, second):
        for path in ("/v1/me", "/v1/conversations"):
            assert_error(await tenant.client.get(path, headers=auth(token)), 401, "invalid_token")
    # Even with its revocation undone in the database, a deactivated user's token is refused.
    async with ctx.engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_tokens SET revoked_at = NULL WHERE user_id = :u"),
            {"u": uuid.UUID(bob.id)},
        )
    assert_error(await tenant.client.get("/v1/me", headers=bob.headers), 401, "invalid_token")


# --------------------------------------------------------------------------- comparison


def test_tokens_equal_compares_exactly() -> None:
    token = "msk_" + "A1b2C3d4" * 5
    assert tokens_equal(token, token)
    assert tokens_equal("", "")
    assert tokens_equal("clé-é", "clé-é")  # any text, not only ASCII
    assert not tokens_equal("clé-é", "cle-e")
    assert not tokens_equal(token, token[:-1])
    assert not tokens_equal(token, token + "x")
    assert not tokens_equal(token, "")
    for i in range(len(token)):
        one_off = token[:i] + ("Z" if token[i] != "Z" else "Y") + token[i + 1 :]
        assert not tokens_equal(token, one_off)
        assert not tokens_equal(one_off, token)


def test_tokens_equal_uses_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert tokens_equal("secret-1", "secret-1")
    assert not tokens_equal("secret-1", "secret-2")
    assert calls == [(b"secret-1", b"secret-1"), (b"secret-1", b"secret-2")]


async def test_authenticate_user_refuses_a_hash_one_character_off(
    tenant: Tenant, ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = await tenant.add_user("bob")
    digest = sha256_hex(bob.token)
    compared: list[tuple[str, str]] = []
    real = tokens_equal

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_service, "tokens_equal", spy)
    async with ctx.sessionmaker() as session:
        principal = await authenticate_user(session, bob.token)
    assert str(principal.user_id) == bob.id and principal.username == "bob"
    # The stored hash is compared with the presented one in constant time.
    assert compared == [(digest, digest)]

    # A token one character off is refused.
    last = bob.token[-1]
    near = bob.token[:-1] + ("a" if last != "a" else "b")
    async with ctx.sessionmaker() as session:
        with pytest.raises(Unauthorized):
            await authenticate_user(session, near)

    # The stored hash one character off: the right token no longer matches anything.
    off = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    async with ctx.engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_tokens SET token_hash = :off WHERE token_hash = :h"),
            {"off": off, "h": digest},
        )
    try:
        async with ctx.sessionmaker() as session:
            with pytest.raises(Unauthorized):
                await authenticate_user(session, bob.token)
        assert_error(await tenant.client.get("/v1/me", headers=bob.headers), 401, "invalid_token")
    finally:
        async with ctx.engine.begin() as conn:
            await conn.execute(
                text("UPDATE api_tokens SET token_hash = :h WHERE token_hash = :off"),
                {"off": off, "h": digest},
            )
    assert (await tenant.client.get("/v1/me", headers=bob.headers)).status_code == 200


# --------------------------------------------------------------------------- replay


async def test_webhook_signatures_expire_after_the_tolerance(
    tenant: Tenant,
    ctx: AppContext,
    telnyx_key: nacl.signing.SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's clock is pinned, so the ages below are exact whatever the machine."""
    assert ctx.settings.webhook_tolerance_seconds == 300
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    now = int(time.time())
    monkeypatch.setattr(telnyx_module, "time", types.SimpleNamespace(time=lambda: float(now)))

    async def post_signed(age: int) -> tuple[httpx.Response, str]:
        mid = str(uuid.uuid4())
        event = telnyx_inbound_event(new_number(), bob.outbound_sms_number or "", "hi", mid)
        raw = orjson.dumps(event)
        headers = sign_telnyx_webhook(telnyx_key, raw, now - age)
        headers["content-type"] = "application/json"
        return await tenant.client.post("/webhooks/telnyx", content=raw, headers=headers), mid

    async def stored(mid: str) -> int:
        async with ctx.engine.connect() as conn:
            n = await conn.scalar(
                text("SELECT count(*) FROM messages WHERE carrier_message_id = :m"), {"m": mid}
            )
        return int(n or 0)

    for age in (301, 1000, -301):  # too old (a replay), or from too far in the future
        r, mid = await post_signed(age)
        assert_error(r, 401, "invalid_signature")
        assert await stored(mid) == 0
    for age in (299, 300, 0, -300):
        r, mid = await post_signed(age)
        assert r.status_code == 200, (age, r.text)
        assert await stored(mid) == 1


# --------------------------------------------------------------------------- request size


async def _chunks(total: int, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b" " * n
        sent += n


async def test_request_bodies_over_the_limit_are_413(tenant: Tenant, ctx: AppContext) -> None:
    limit = ctx.settings.max_request_bytes
    headers = {**tenant.admin.headers, "content-type": "application/json"}

    # Declared with content-length.
    r = await tenant.client.post("/v1/users", content=b" " * (limit + 1), headers=headers)
    assert_error(r, 413, "payload_too_large")
    r = await tenant.client.post("/v1/users", content=b" " * limit, headers=headers)
    assert r.status_code not in (413,) and r.status_code < 500, r.text

    # Streamed in chunks, with no content-length to go by: JSON endpoints (the framework
    # reads the body), raw-body webhooks, and before authentication.
    cases = [
        ("/v1/users", headers),
        ("/v1/messages", headers),
        ("/webhooks/telnyx", headers),
        ("/webhooks/twilio/messages", headers),
        ("/v1/messages", {"content-type": "application/json"}),
    ]
    answers = {}
    for path, hdrs in cases:
        r = await tenant.client.post(path, content=_chunks(limit + 1), headers=hdrs)
        assert "content-length" not in r.request.headers
        assert r.request.headers.get("transfer-encoding") == "chunked"
        answers[(path, "Authorization" in hdrs)] = (r.status_code, r.text)
    assert {k: v for k, v in answers.items() if v[0] != 413} == {}
    for status, body in answers.values():
        assert_error(httpx.Response(status, content=body), 413, "payload_too_large")
    r = await tenant.client.post("/v1/users", content=_chunks(limit), headers=headers)
    assert r.status_code != 413 and r.status_code < 500, r.text
    # The service still answers normally afterwards.
    assert (await tenant.call("GET", "/v1/me")).status_code == 200


# --------------------------------------------------------------------------- logs


class _Capture(logging.Handler):
    """Every record, formatted as the service formats it, plus its raw attributes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.json.format(record))
        self.lines.append(repr(record.__dict__))


async def test_no_message_body_or_token_in_the_logs(
    tenant: Tenant, send_telnyx: SendTelnyx, telnyx_key: nacl.signing.SigningKey
) -> None:
    tag = uuid.uuid4().hex[:12]
    sms_body = f"Biopsy result {tag} SMS-OUT"
    internal_body = f"Chart note {tag} INTERNAL"
    inbound_body = f"My prescription {tag} INBOUND"
    auto_text = f"Away today {tag} AUTO"
    refused_body = f"Lab values {tag} REFUSED"
    unsigned_body = f"Forged {tag} UNSIGNED"
    wrong_token = f"msk_wrong{tag}"

    capture = _Capture()
    stream = io.StringIO()
    stderr_like = logging.StreamHandler(stream)
    stderr_like.setFormatter(JsonFormatter())
    app_logger = logging.getLogger("app")
    root = logging.getLogger()
    old_level = app_logger.level
    app_logger.addHandler(capture)
    app_logger.addHandler(stderr_like)
    root.addHandler(capture)
    app_logger.setLevel(logging.DEBUG)
    try:
        alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
        bob = await tenant.add_user("bob", extension="102")
        await tenant.set_auto_responder(alice, auto_text)
        new, _ = await new_token(tenant, bob, "tablet")
        assert (await tenant.client.get("/v1/me", headers=auth(new))).status_code == 200

        # An SMS out, delivered through the worker and the carrier.
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"phone_number": new_number()}], "body": sms_body},
        )
        sms_id = r.json()["messages"][0]["id"]
        await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"username": "bob"}], "body": internal_body},
        )
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            json={"to": [{"username": "nobody-here"}], "body": refused_body},
        )
        assert r.status_code == 422

        # An SMS in, answered by the auto-responder.
        patient = new_number()
        r = await send_telnyx(patient, alice.outbound_sms_number, inbound_body)
        assert r.status_code == 200
        raw = orjson.dumps(
            telnyx_inbound_event(patient, alice.outbound_sms_number or "", unsigned_body)
        )
        r = await tenant.client.post(
            "/webhooks/telnyx", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 401

        # Failed authentication, as a user and as the operator.
        assert (await tenant.client.get("/v1/me", headers=auth(wrong_token))).status_code == 401
        r = await tenant.client.post(
            "/v1/organizations",
            headers=auth(wrong_token),
            json={"name": "X", "admin_username": "x"},
        )
        assert r.status_code == 401

        async def sms_delivered() -> bool:
            m = await tenant.call("GET", f"/v1/messages/{sms_id}", as_=alice, expect=200)
            return bool(m.json()["status"] == "delivered")

        async def auto_reply_delivered() -> bool:
            conv = await tenant.sms_conversation(alice, patient)
            if conv is None:
                return False
            replies = [m for m in await tenant.messages(alice, conv["id"]) if m["auto_reply"]]
            return bool(replies) and replies[0]["status"] == "delivered"

        await eventually(sms_delivered, timeout=60)
        await eventually(auto_reply_delivered, timeout=60)
    finally:
        app_logger.removeHandler(capture)
        app_logger.removeHandler(stderr_like)
        root.removeHandler(capture)
        app_logger.setLevel(old_level)

    lines = capture.lines + stream.getvalue().splitlines()
    # The capture saw the requests above (so an empty capture cannot pass).
    assert any('"route":"/v1/messages"' in line for line in lines)
    assert any('"route":"/webhooks/telnyx"' in line for line in lines)
    secrets = {
        "outbound SMS body": sms_body,
        "internal message body": internal_body,
        "inbound SMS body": inbound_body,
        "auto-reply text": auto_text,
        "refused message body": refused_body,
        "unsigned webhook body": unsigned_body,
        "admin token": tenant.admin.token,
        "alice's token": alice.token,
        "bob's token": bob.token,
        "new token": new,
        "wrong token": wrong_token,
        "operator token": OPERATOR_TOKEN,
    }
    for what, secret in secrets.items():
        needles = {secret, secret.removeprefix("msk_")} if secret.startswith("msk_") else {secret}
        for needle in needles:
            leaked = [line for line in lines if needle in line]
            assert not leaked, f"{what} appears in the logs: {leaked[0][:300]}"
    # The tag alone appears nowhere either: no fragment of any body was logged.
    assert not [line for line in lines if tag in line]


# --------------------------------------------------------------------------- audit log


async def audit_entries(tenant: Tenant) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await tenant.call("GET", "/v1/audit-log", params=params, expect=200)).json()
        entries += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return entries


async def test_audit_log_records_who_changed_what_and_when(client: httpx.AsyncClient) -> None:
    tenant = await Tenant.create(client)
    other = await Tenant.create(client)
    await other.add_user("outsider")
    admin_actor = f"user:{tenant.admin.username}"
    secret_text = f"Out until Monday {uuid.uuid4().hex}"
    before = datetime.now(UTC)

    bob = await tenant.add_user("bob", extension="102", sms=True)
    await tenant.call("PATCH", f"/v1/users/{bob.id}", expect=200, json={"display_name": "Bob B"})
    _, token_id = await new_token(tenant, bob, "laptop")
    await tenant.call("DELETE", f"/v1/users/{bob.id}/tokens/{token_id}", expect=204)
    await tenant.call(
        "PUT",
        f"/v1/users/{bob.id}/auto-responder",
        expect=200,
        json={"enabled": True, "text": secret_text},
    )
    carol = await tenant.add_user("carol", extension="103")
    await tenant.set_auto_responder(carol, secret_text)  # carol, for herself
    group = await tenant.add_group("Front Desk", "300", ["bob"])
    await tenant.call(
        "PATCH", f"/v1/groups/{group['id']}", expect=200, json={"members": ["bob", "carol"]}
    )
    await tenant.call("DELETE", f"/v1/groups/{group['id']}", expect=204)
    number = await tenant.add_number("102")
    numbers = (await tenant.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
    number_id = next(n["id"] for n in numbers if n["number"] == number)
    await tenant.call(
        "PATCH", f"/v1/phone-numbers/{number_id}", expect=200, json={"sms_extension": "103"}
    )
    await tenant.call("DELETE", f"/v1/phone-numbers/{number_id}", expect=204)
    await tenant.call("DELETE", f"/v1/users/{bob.id}", expect=204)
    after = datetime.now(UTC)

    entries = await audit_entries(tenant)
    expected = [
        ("user.create", "user", bob.id, admin_actor),
        ("user.update", "user", bob.id, admin_actor),
        ("token.create", "user", bob.id, admin_actor),
        ("token.revoke", "user", bob.id, admin_actor),
        ("auto_responder.set", "user", bob.id, admin_actor),
        ("auto_responder.set", "user", carol.id, "user:carol"),
        ("group.create", "group", group["id"], admin_actor),
        ("group.update", "group", group["id"], admin_actor),
        ("group.delete", "group", group["id"], admin_actor),
        ("phone_number.create", "phone_number", number_id, admin_actor),
        ("phone_number.route", "phone_number", number_id, admin_actor),
        ("phone_number.delete", "phone_number", number_id, admin_actor),
        ("user.deactivate", "user", bob.id, admin_actor),
    ]
    # Clocks are compared with slack: the bounds only say "during this test".
    slack = timedelta(seconds=5)
    for action, target_type, target_id, actor in expected:
        matching = [
            e
            for e in entries
            if e["action"] == action and e["target_id"] == target_id and e["actor"] == actor
        ]
        assert matching, f"no audit entry for {action} on {target_id} by {actor}"
        entry = matching[0]
        assert entry["target_type"] == target_type
        when = datetime.fromisoformat(entry["created_at"])
        assert when.tzinfo is not None
        assert before - slack <= when <= after + slack, (action, when, before, after)

    by_action = {e["action"]: e for e in entries}
    assert by_action["user.update"]["changes"] == {"display_name": {"from": None, "to": "Bob B"}}
    assert by_action["group.update"]["changes"]["members"] == {
        "from": ["bob"],
        "to": ["bob", "carol"],
    }
    assert by_action["phone_number.route"]["changes"]["sms_extension"] == {
        "from": "102",
        "to": "103",
    }
    # Newest first.
    stamps = [datetime.fromisoformat(e["created_at"]) for e in entries]
    assert stamps == sorted(stamps, reverse=True)
    # The auto-reply text is encrypted at rest: the audit trail does not keep it either.
    assert secret_text not in orjson.dumps(entries).decode()
    # Only this organization's entries.
    assert "outsider" not in orjson.dumps(entries).decode()
    assert all(e["actor"] in {admin_actor, "user:carol", "operator"} for e in entries), {
        e["actor"] for e in entries
    }


# --------------------------------------------------------------------------- isolation


async def test_another_orgs_conversation_and_message_ids_are_not_found(
    client: httpx.AsyncClient, send_telnyx: SendTelnyx
) -> None:
    a, b = await Tenant.create(client), await Tenant.create(client)
    bob = await b.add_user("bob", extension="102", sms=True, outbound=True)
    carol = await b.add_user("carol", extension="103")
    r = await b.call(
        "POST",
        "/v1/messages",
        as_=bob,
        expect=201,
        json={"to": [{"username": "carol"}], "body": "B internal"},
    )
    b_internal_msg = r.json()["messages"][0]
    patient = new_number()
    assert (await send_telnyx(patient, bob.outbound_sms_number, "B inbound")).status_code == 200
    b_sms_conv = await b.sms_conversation(bob, patient)
    assert b_sms_conv is not None
    b_sms_msgs = await b.messages(bob, b_sms_conv["id"])
    b_conversations = [b_internal_msg["conversation_id"], b_sms_conv["id"]]
    b_messages = [b_internal_msg["id"], *[m["id"] for m in b_sms_msgs]]
    carol_before = await b.conversations(carol)

    alice = await a.add_user("alice", extension="101", sms=True, outbound=True)
    r = await a.call(
        "POST",
        "/v1/messages",
        as_=alice,
        expect=201,
        json={"to": [{"username": a.admin.username}], "body": "A internal"},
    )
    a_conv = r.json()["messages"][0]["conversation_id"]

    for member in (a.admin, alice):
        probes: list[tuple[str, str, dict[str, Any] | None]] = []
        for conv in b_conversations:
            probes += [
                ("GET", f"/v1/conversations/{conv}", None),
                ("GET", f"/v1/conversations/{conv}/messages", None),
                ("POST", f"/v1/conversations/{conv}/messages", {"body": "leak?"}),
                ("POST", f"/v1/conversations/{conv}/read", None),
                ("POST", f"/v1/conversations/{conv}/read", {"message_id": b_messages[0]}),
            ]
        for message in b_messages:
            probes += [
                ("GET", f"/v1/messages/{message}", None),
                # Another org's message id in the body of a call on one's own conversation.
                ("POST", f"/v1/conversations/{a_conv}/read", {"message_id": message}),
            ]
        for method, path, body in probes:
            r = await a.call(method, path, as_=member, json=body)
            assert r.status_code == 404, (member.username, method, path, r.text)
            assert_error(r, 404)
            assert r.json()["error"]["code"].endswith("not_found")
            assert "B internal" not in r.text and "B inbound" not in r.text

        listed = {c["id"] for c in await a.conversations(member)}
        assert not listed & set(b_conversations)

    # Nothing of b changed: no reply went out, no read marker moved.
    assert [m["id"] for m in await b.messages(bob, b_sms_conv["id"])] == [
        m["id"] for m in b_sms_msgs
    ]
    assert await b.conversations(carol) == carol_before


async def test_idempotency_keys_never_cross_organizations_or_users(
    client: httpx.AsyncClient,
) -> None:
    a, b = await Tenant.create(client), await Tenant.create(client)
    a_bob = await a.add_user("bob")
    a_eve = await a.add_user("eve")
    b_bob = await b.add_user("bob")
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}

    async def send(t: Tenant, sender: Member, to: str, body: str) -> dict[str, Any]:
        r = await t.client.post(
            "/v1/messages",
            headers={**sender.headers, **key},
            json={"to": [{"username": to}], "body": body},
        )
        assert r.status_code == 201, r.text
        message: dict[str, Any] = r.json()["messages"][0]
        return message

    first_a = await send(a, a_bob, a.admin.username, "from a's bob")
    first_b = await send(b, b_bob, b.admin.username, "from b's bob")
    first_eve = await send(a, a_eve, a.admin.username, "from eve")
    assert len({first_a["id"], first_b["id"], first_eve["id"]}) == 3
    assert first_b["body"] == "from b's bob" and first_eve["body"] == "from eve"
    # The repeat in each place answers as that place's first request did.
    assert (await send(a, a_bob, a.admin.username, "from a's bob"))["id"] == first_a["id"]
    assert (await send(b, b_bob, b.admin.username, "from b's bob"))["id"] == first_b["id"]
