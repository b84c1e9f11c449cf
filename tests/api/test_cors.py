"""CORS: which browser pages may call the API (CORS_ALLOWED_ORIGINS), and none by default.
The real browser's view of it is tests/system/test_browser.py."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import Tenant

PAGE = "http://clinic-frontend.example:3000"


def _preflight(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        asked["Access-Control-Request-Headers"] = headers
    return asked


async def test_allowed_origins_get_preflights_answered_and_the_headers_they_need(
    make_app: Any,
) -> None:
    async with make_app(cors_allowed_origins=f"{PAGE}, https://other.example/") as (_, client):
        tenant = await Tenant.create(client)
        r = await client.options(
            "/v1/messages",
            headers=_preflight(PAGE, "POST", "authorization, content-type, idempotency-key"),
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == PAGE
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed
        assert "POST" in r.headers["access-control-allow-methods"]
        r = await client.options(
            "/v1/users/x", headers=_preflight("https://other.example", "PATCH", "authorization")
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://other.example"

        # The answer itself: readable by the page, with Retry-After and X-Request-ID shown.
        r = await client.get("/v1/me", headers={**tenant.admin.headers, "Origin": PAGE})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == PAGE
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "x-request-id"} <= exposed
        # An error too: the page can read why it was refused.
        r = await client.get("/v1/me", headers={"Origin": PAGE})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == PAGE

        # Another origin is not allowed: no preflight, no header on the answer.
        evil = "https://evil.example"
        r = await client.options("/v1/messages", headers=_preflight(evil, "POST", "authorization"))
        assert r.status_code == 400
        assert "access-control-allow-origin" not in r.headers
        r = await client.get("/v1/me", headers={**tenant.admin.headers, "Origin": evil})
        assert "access-control-allow-origin" not in r.headers


async def test_without_the_setting_there_are_no_cors_headers(client: httpx.AsyncClient) -> None:
    r = await client.options("/v1/messages", headers=_preflight(PAGE, "POST", "authorization"))
    assert r.status_code == 405
    r = await client.get("/healthz", headers={"Origin": PAGE})
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
