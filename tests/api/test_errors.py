"""Bad input gets the contract's error shape, with the right status; nothing is stored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from tests.support import Tenant


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


async def test_malformed_json_is_400(tenant: Tenant) -> None:
    r = await tenant.client.post(
        "/v1/users",
        content=b'{"username": ',
        headers={**tenant.admin.headers, "content-type": "application/json"},
    )
    assert_error(r, 400, "malformed_json")


async def test_unknown_fields_are_refused(tenant: Tenant) -> None:
    r = await tenant.call("POST", "/v1/users", json={"username": "bob", "is_superuser": True})
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"][0]["field"] == "is_superuser"
    users = (await tenant.call("GET", "/v1/users", expect=200)).json()["items"]
    assert "bob" not in {u["username"] for u in users}


async def test_missing_and_wrong_typed_fields_are_422(tenant: Tenant) -> None:
    assert_error(await tenant.call("POST", "/v1/users", json={}), 422, "validation_error")
    assert_error(await tenant.call("POST", "/v1/users", json={"username": "bad name!"}), 422)
    assert_error(
        await tenant.call("POST", "/v1/users", json={"username": "ok", "role": "god"}), 422
    )
    assert_error(
        await tenant.call("POST", "/v1/users", json={"username": "ok", "extension": "12ab"}), 422
    )


async def test_oversize_body_is_413(tenant: Tenant) -> None:
    big = b'{"username": "' + b"a" * 400_000 + b'"}'
    r = await tenant.client.post(
        "/v1/users",
        content=big,
        headers={**tenant.admin.headers, "content-type": "application/json"},
    )
    assert_error(r, 413, "payload_too_large")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await client.put("/healthz"), 405, "method_not_allowed")


async def test_bad_path_id_is_422(tenant: Tenant) -> None:
    assert_error(await tenant.call("GET", "/v1/users/not-a-uuid"), 422, "validation_error")


async def test_duplicate_username_is_409(tenant: Tenant) -> None:
    await tenant.add_user("bob")
    assert_error(
        await tenant.call("POST", "/v1/users", json={"username": "BOB"}), 409, "username_taken"
    )


async def test_health_ready_metrics_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    metrics = await client.get("/metrics")
    assert "http_requests_total" in metrics.text
    assert 'route="/healthz"' in metrics.text
    spec = (await client.get("/openapi.json")).json()
    # Carriers call the webhooks, clients of the API never: documented as webhooks.
    assert "/v1/messages" in spec["paths"] and "/webhooks/telnyx" in spec["webhooks"]
    assert not [path for path in spec["paths"] if path.startswith("/webhooks/")]
    assert (await client.get("/docs")).status_code == 200


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"x-request-id": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
    assert (await client.get("/healthz")).headers["x-request-id"]


async def test_liveness_reports_a_process_whose_delivery_worker_stopped(
    make_app: Callable[..., Any],
) -> None:
    """/healthz is 200 while the process can serve, and 503 naming what stopped when an
    essential part of it (here the in-process delivery worker) is gone."""
    async with make_app() as (app, client):
        assert (await client.get("/healthz")).status_code == 200
        worker = app.state.ctx.essential["delivery worker"]
        worker.cancel()
        with contextlib.suppress(BaseException):
            await worker
        r = await client.get("/healthz")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_alive"
        assert r.json()["error"]["details"] == {"delivery worker": "stopped"}


async def test_a_json_body_without_a_json_content_type_is_415_saying_so(tenant: Tenant) -> None:
    body = orjson.dumps({"username": "nurse-joy"})
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = dict(tenant.admin.headers)
        if content_type:
            headers["content-type"] = content_type
        r = await tenant.client.post("/v1/users", content=body, headers=headers)
        assert r.status_code == 415, (content_type, r.text)
        error = r.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert "Content-Type: application/json" in error["message"]
        assert error["details"] == {"content_type": content_type, "expected": "application/json"}
    # No body at all is a missing body, whatever the headers; a JSON one passes.
    r = await tenant.client.post("/v1/users", headers=tenant.admin.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = await tenant.client.post(
        "/v1/users",
        content=body,
        headers={**tenant.admin.headers, "content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 201, r.text
