"""`POST /v1/messages` has a fast path for its usual request (`routers._lean.fast_path`):
whatever it turns down must be answered by the API route exactly as before, its body
read once, and nothing stored by a refused request."""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Message

from app.routers._lean import FastPathRoute
from app.routers.messages import send_message_fast
from tests.api.test_errors import assert_error
from tests.support import Member, Tenant, new_number


async def _sender(tenant: Tenant) -> Member:
    return await tenant.add_user(sms=True, outbound=True)


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/v1/messages", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "text/plain", "authorization": "Bearer t"}, b'{"to": [], "body": "x"}'),
        ({"content-type": "application/json"}, b'{"to": [{"phone_number": "+1"}], "body": "x"}'),
        ({"content-type": "application/json", "authorization": "Basic dTpw"}, b"{}"),
        ({"content-type": "application/json", "authorization": "Bearer t"}, b'{"to": '),
        ({"content-type": "application/json", "authorization": "Bearer t"}, b'{"to": [], "x": 1}'),
        (
            {
                "content-type": "application/json",
                "authorization": "Bearer t",
                "idempotency-key": "k" * 201,
            },
            b'{"to": [{"phone_number": "+14155550100"}], "body": "x"}',
        ),
    ],
)
async def test_the_fast_path_turns_down_what_the_api_route_must_answer(
    headers: dict[str, str], body: bytes
) -> None:
    assert await send_message_fast(_request(headers), body) is None


async def test_refusals_past_the_fast_path_are_the_api_routes_and_store_nothing(
    tenant: Tenant,
) -> None:
    alice = await _sender(tenant)
    patient = new_number()
    good = {"to": [{"phone_number": patient}], "body": "hello"}
    json_headers = {**alice.headers, "content-type": "application/json"}
    post = tenant.client.post

    r = await post("/v1/messages", content=b'{"to": ', headers=json_headers)
    assert_error(r, 400, "malformed_json")
    r = await post("/v1/messages", content=orjson.dumps({**good, "x": 1}), headers=json_headers)
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"][0]["field"] == "x"
    r = await post(
        "/v1/messages",
        content=orjson.dumps(good),
        headers={**alice.headers, "content-type": "text/plain"},
    )
    assert_error(r, 415, "unsupported_media_type")
    r = await post("/v1/messages", json=good)
    assert_error(r, 401, "missing_token")
    r = await post(
        "/v1/messages", json=good, headers={**alice.headers, "idempotency-key": "k" * 201}
    )
    assert_error(r, 422, "validation_error")
    assert await tenant.sms_conversation(alice, patient) is None

    # The usual request, and the same with an Idempotency-Key (the API route's path),
    # both store and answer alike.
    r = await post("/v1/messages", json=good, headers=alice.headers)
    assert r.status_code == 201, r.text
    fast = r.json()["messages"][0]
    r = await post("/v1/messages", json=good, headers={**alice.headers, "idempotency-key": "k1"})
    assert r.status_code == 201, r.text
    slow = r.json()["messages"][0]
    assert set(fast) == set(slow)
    for field in ("direction", "from_number", "to_number", "body", "status", "sender_username"):
        assert fast[field] == slow[field]
    conv = await tenant.sms_conversation(alice, patient)
    assert conv is not None
    bodies = [m["body"] for m in await tenant.messages(alice, conv["id"])]
    assert bodies == ["hello", "hello"]
    # Counted under the route's own name, whichever path served it.
    metrics = (await tenant.client.get("/metrics")).text
    assert 'method="POST",route="/v1/messages",status="201"' in metrics


async def test_a_client_gone_before_its_body_is_whole_is_not_an_error(
    app_client: tuple[FastAPI, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    # wrk stopping mid-request showed it: the fast path read the body, the client had
    # left, and the server logged an unhandled error and tried to answer 500.
    app, _ = app_client
    route = next(
        r for r in app.router.routes if isinstance(r, FastPathRoute) and r.path == "/v1/messages"
    )
    parts: list[Message] = [
        {"type": "http.request", "body": b'{"to": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return parts.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "headers": [(b"content-type", b"application/json")],
        "app": app,
    }
    with caplog.at_level(logging.WARNING):
        await route.handle(scope, receive, send)
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
