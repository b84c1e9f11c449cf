"""API rate limits: requests per token, failed authentications per client address, and
the work one send may cause. Each test runs apps with small limits and Redis keys of
their own, so that no other test shares their counters; the session's app (used here
for set-up) has limits far above what the suite needs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import SendTelnyx
from tests.support import OPERATOR_TOKEN, Member, Tenant, auth, new_number, unique


@pytest.fixture
def own_prefix(redis_prefix: str) -> str:
    """A Redis key prefix of this test's own (still under the run's, which is cleaned up)."""
    return f"{redis_prefix}limits-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def limited(make_app: Any, own_prefix: str) -> Callable[..., Any]:
    """Apps with some limits changed, sharing Redis keys of their own: two of them are
    two processes of one deployment."""

    def factory(**overrides: Any) -> Any:
        return make_app(redis_key_prefix=own_prefix, **overrides)

    return factory


@asynccontextmanager
async def client_at(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` whose requests come from `address` (`request.client.host`)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=30
    ) as http:
        yield http


def assert_limited(r: httpx.Response, limited_by: str) -> dict[str, Any]:
    """A 429 in the contract's error shape, with a Retry-After in whole seconds."""
    assert r.status_code == 429, f"{r.status_code} {r.text}"
    retry_after = r.headers.get("retry-after", "")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    error = r.json()["error"]
    assert error["code"] == "too_many_requests" and error["message"], error
    assert error["details"]["limited_by"] == limited_by, error
    assert error["details"]["retry_after"] == int(retry_after), error
    details: dict[str, Any] = error["details"]
    return details


async def conversation_with(tenant: Tenant, sender: Member, recipient: Member) -> str:
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=sender,
        expect=201,
        json={"to": [{"username": recipient.username}], "body": "hello"},
    )
    conversation_id: str = r.json()["messages"][0]["conversation_id"]
    return conversation_id


async def test_a_token_past_its_limit_gets_429_with_retry_after_on_every_api_route(
    tenant: Tenant, limited: Any
) -> None:
    bob, carol = await tenant.add_user(), await tenant.add_user()
    conv_id = await conversation_with(tenant, bob, carol)
    history = f"/v1/conversations/{conv_id}/messages"
    async with limited(api_rate_limit_per_minute=3) as (_, http):
        # The lean history read checks the token inside its own SQL statement; it
        # draws on the same budget as the routes that authenticate the usual way.
        for path in (history, "/v1/me", "/v1/conversations"):
            assert (await http.get(path, headers=bob.headers)).status_code == 200
        for path in (history, "/v1/me", "/v1/conversations", f"/v1/conversations/{conv_id}"):
            details = assert_limited(await http.get(path, headers=bob.headers), "token")
            assert details["limit"] == 3 and details["window_seconds"] == 60
        r = await http.post(
            "/v1/messages",
            headers=bob.headers,
            json={"to": [{"username": carol.username}], "body": "one more"},
        )
        assert_limited(r, "token")
        # Refused before the stream opens (bounded: before the fix the stream stayed open).
        assert_limited(
            await asyncio.wait_for(http.get("/v1/events", headers=bob.headers), 20), "token"
        )
        # Each token has its own budget.
        assert (await http.get("/v1/me", headers=carol.headers)).status_code == 200
        # Operations and documentation are never limited.
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            for _ in range(4):
                assert (await http.get(path, headers=bob.headers)).status_code == 200, path
    # Nothing the refused send asked for was stored.
    assert len(await tenant.messages(bob, conv_id)) == 1


async def test_the_operator_token_is_limited_too(limited: Any) -> None:
    async with limited(api_rate_limit_per_minute=2) as (_, http):
        for _ in range(2):
            await Tenant.create(http)
        r = await http.post(
            "/v1/organizations",
            headers=auth(OPERATOR_TOKEN),
            json={"name": unique("Clinic "), "admin_username": unique("admin")},
        )
        assert_limited(r, "token")


async def test_the_token_limit_holds_across_processes_and_redis_never_holds_the_token(
    tenant: Tenant, limited: Any, own_prefix: str
) -> None:
    bob = await tenant.add_user()
    async with (
        limited(api_rate_limit_per_minute=4) as (app, one),
        limited(api_rate_limit_per_minute=4) as (_, two),
    ):
        for http in (one, two, one, two):
            assert (await http.get("/v1/me", headers=bob.headers)).status_code == 200
        for http in (one, two):
            assert_limited(await http.get("/v1/me", headers=bob.headers), "token")
        redis = app.state.ctx.redis
        keys = [k.decode() async for k in redis.scan_iter(match=f"{own_prefix}*")]
    assert any(hashlib.sha256(bob.token.encode()).hexdigest() in k for k in keys), keys
    assert not any(bob.token in k for k in keys), keys


async def test_requests_charged_together_each_count_and_exactly_the_limit_is_served(
    tenant: Tenant, limited: Any
) -> None:
    """Requests arriving at once are charged in one batch per process; each still takes
    its own unit, and the library's own read of the window (the refusal's Retry-After)
    sees them all."""
    bob = await tenant.add_user()
    async with (
        limited(api_rate_limit_per_minute=10) as (_, one),
        limited(api_rate_limit_per_minute=10) as (_, two),
    ):
        answers = await asyncio.gather(
            *(http.get("/v1/me", headers=bob.headers) for http in [one, two] * 12)
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 10 + [429] * 14, codes
        for r in answers:
            if r.status_code == 429:
                assert assert_limited(r, "token")["limit"] == 10


async def test_repeated_bad_tokens_from_one_address_are_refused_before_any_token_check(
    tenant: Tenant, limited: Any, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user()
    async with (
        limited(auth_failure_limit_per_minute=3) as (app, _),
        limited(auth_failure_limit_per_minute=3) as (other_app, _),
        client_at(app, "192.0.2.10") as guesser,
        client_at(app, "192.0.2.11") as neighbour,
        client_at(other_app, "192.0.2.10") as guesser_elsewhere,
    ):
        assert (await guesser.get("/v1/me", headers=bob.headers)).status_code == 200
        for i in range(2):
            r = await guesser.get("/v1/me", headers=auth(f"msk_guess{i}"))
            assert r.status_code == 401, r.text
        assert (await guesser.get("/v1/me")).status_code == 401  # no token counts too
        # Past the limit: refused before any token check, even a valid one.
        for headers in (bob.headers, {}, auth("msk_guess-again")):
            details = assert_limited(await guesser.get("/v1/me", headers=headers), "client_address")
            assert details["limit"] == 3
        # Another client is not slowed down.
        assert (await neighbour.get("/v1/me", headers=bob.headers)).status_code == 200
        # Another process of the deployment refuses the address from its next failure on.
        r = await guesser_elsewhere.get("/v1/me", headers=auth("msk_guess-elsewhere"))
        assert_limited(r, "client_address")
        assert_limited(await guesser_elsewhere.get("/v1/me", headers=bob.headers), "client_address")
        # Carrier webhooks are never limited, whatever their address did.
        for _ in range(3):
            r = await send_telnyx(new_number(), new_number(), "hello", via=guesser)
            assert r.status_code == 200, r.text


async def test_a_send_reaching_more_parties_than_the_cap_is_refused_and_stores_nothing(
    tenant: Tenant, limited: Any
) -> None:
    bob = await tenant.add_user(sms=True, outbound=True)
    others = [await tenant.add_user() for _ in range(3)]
    extension = str(7000 + int(uuid.uuid4().int % 1000))
    await tenant.add_group(unique("Desk "), extension, [bob.username, *(o.username for o in others)])
    async with limited(max_recipients_per_send=2) as (_, http):
        r = await http.post(
            "/v1/messages",
            headers=bob.headers,
            json={"to": [{"extension": extension}], "body": "to the whole desk"},
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "too_many_recipients"
        assert error["details"] == {"recipients": 3, "max_recipients": 2}
        r = await http.post(
            "/v1/messages",
            headers=bob.headers,
            json={"to": [{"phone_number": new_number()} for _ in range(3)], "body": "to three"},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_recipients"
        r = await http.post(
            "/v1/messages",
            headers=bob.headers,
            json={"to": [{"username": o.username} for o in others[:2]], "body": "to two"},
        )
        assert r.status_code == 201, r.text
    assert len(await tenant.conversations(bob)) == 2
    assert await tenant.conversations(others[2]) == []


async def test_a_send_costs_one_unit_of_the_token_budget_per_message_it_creates(
    tenant: Tenant, limited: Any
) -> None:
    bob, carol = await tenant.add_user(), await tenant.add_user()
    others = [await tenant.add_user() for _ in range(3)]
    extension = str(8000 + int(uuid.uuid4().int % 1000))
    await tenant.add_group(unique("Desk "), extension, [bob.username, *(o.username for o in others)])
    send = {"to": [{"extension": extension}], "body": "desk meeting"}
    async with limited(api_rate_limit_per_minute=7) as (_, http):
        for _ in range(2):  # 3 messages each: 6 of 7 units
            r = await http.post("/v1/messages", headers=bob.headers, json=send)
            assert r.status_code == 201 and len(r.json()["messages"]) == 3, r.text
        details = assert_limited(
            await http.post("/v1/messages", headers=bob.headers, json=send), "token"
        )
        assert details["limit"] == 7
        assert (await http.get("/v1/me", headers=carol.headers)).status_code == 200
    conversations = await tenant.conversations(bob)
    assert len(conversations) == 3
    for conv in conversations:
        assert len(await tenant.messages(bob, conv["id"])) == 2


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_api_keeps_serving_when_redis_cannot_be_reached(make_app: Any) -> None:
    async with make_app(
        redis_url="redis://127.0.0.1:1/0",
        api_rate_limit_per_minute=2,
        auth_failure_limit_per_minute=1,
    ) as (_, http):
        capture = _Capture()
        logging.getLogger("app").addHandler(capture)
        try:
            tenant = await Tenant.create(http)
            for _ in range(4):
                await tenant.call("GET", "/v1/me", expect=200)
            for _ in range(2):
                assert (await http.get("/v1/me", headers=auth("msk_wrong"))).status_code == 401
            await tenant.call("GET", "/v1/me", expect=200)
        finally:
            logging.getLogger("app").removeHandler(capture)
    warnings = [r for r in capture.records if r.levelno == logging.WARNING]
    assert any("rate limit" in r.getMessage().lower() for r in warnings), [
        r.getMessage() for r in warnings
    ]


async def test_the_api_document_names_429_on_api_routes_only(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    limited = paths["/v1/me"]["get"]["responses"]["429"]
    assert "Retry-After" in limited["headers"]
    assert "429" in paths["/v1/conversations/{conversation_id}/messages"]["get"]["responses"]
    assert "429" in paths["/v1/organizations"]["post"]["responses"]
    for path, operations in paths.items():
        if not path.startswith("/v1/"):
            for operation in operations.values():
                assert "429" not in operation["responses"], path
