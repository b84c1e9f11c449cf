"""`GET /v1/conversations` has a fast path for its usual request (`routers._lean.fast_path`):
whatever it turns down must be answered by the API route exactly as before, and what it
answers must be what the API route would."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from app.routers.conversations import list_conversations_fast
from tests.api.test_errors import assert_error
from tests.conftest import SendTelnyx
from tests.support import Tenant, new_number


def _request(query: str, token: str | None = "t") -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/v1/conversations",
            "query_string": query.encode(),
            "headers": headers,
        }
    )


@pytest.mark.parametrize(
    ("query", "token"),
    [
        ("", None),
        ("limit=0", "t"),
        ("limit=201", "t"),
        ("limit=ten", "t"),
        ("limit=%EF%BC%95", "t"),  # a full-width digit: pydantic's to judge
        ("limit=1000", "t"),
        ("status=done", "t"),
        ("status=open&status=closed", "t"),
        ("assignee=no+body", "t"),
        ("assignee=bob%0A", "t"),
        ("unread=1", "t"),
        ("unread=maybe", "t"),
        ("q=", "t"),
        ("q=" + "a" * 101, "t"),
        ("cursor=" + "c" * 201, "t"),
        ("colour=blue", "t"),
    ],
)
async def test_the_fast_path_turns_down_what_the_api_route_must_answer(
    query: str, token: str | None
) -> None:
    assert await list_conversations_fast(_request(query, token), b"") is None


async def test_both_paths_answer_alike_and_refusals_are_the_api_routes(
    tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob")
    await tenant.add_group("Front Desk", "200", ["bob"])
    line = await tenant.add_number("200")
    for name in ("Maria Gonzalez", "Mario Rossi", "Li Wei"):
        number = new_number()
        await tenant.call(
            "POST", "/v1/contacts", as_=bob, expect=201, json={"phone_number": number, "name": name}
        )
        r = await send_telnyx(number, line, f"hello from {name}")
        assert r.status_code == 200, r.text

    async def get(params: dict[str, str] | str) -> list[str]:
        query = params if isinstance(params, str) else urlencode(params)
        r = await tenant.client.get(f"/v1/conversations?{query}", headers=bob.headers)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    everything = await get({})
    assert len(everything) == 3
    # Each pair: the first served by the fast path, the second (a spelling only the API
    # route reads, or a parameter it ignores) by the API route.
    pairs = [
        ({"unread": "true"}, {"unread": "1"}),
        ({"unread": "false"}, {"unread": "no"}),
        ({"status": "open", "q": "mar"}, {"status": "open", "q": "mar", "colour": "blue"}),
        ({"limit": "2"}, {"limit": "2", "colour": "blue"}),
        ({"assignee": "none"}, {"assignee": "none", "colour": "blue"}),
    ]
    for fast, api in pairs:
        assert await get(fast) == await get(api), (fast, api)
    assert await get({"unread": "true"}) == everything
    assert len(await get({"q": "mar"})) == 2
    # A repeated parameter: the API route reads the last.
    assert await get("status=closed&status=open") == everything

    async def refused(query: str, status: int, code: str, auth: bool = True) -> None:
        headers = bob.headers if auth else {}
        r = await tenant.client.get(f"/v1/conversations?{query}", headers=headers)
        assert_error(r, status, code)

    await refused("", 401, "missing_token", auth=False)
    await refused("limit=0", 422, "validation_error")
    await refused("limit=ten", 422, "validation_error")
    await refused("status=done", 422, "validation_error")
    await refused("assignee=bob%0A", 422, "validation_error")
    await refused("q=", 422, "validation_error")
    await refused("q=%3F%21", 422, "invalid_search")
    await refused("assignee=nobody", 422, "invalid_assignee")
    await refused("cursor=bm90IG91cnM", 400, "invalid_cursor")
