"""One timestamp format across every resource: RFC 3339 in UTC with `Z` (microseconds
when there are any), whether pydantic or a hand-made row writes it, on PostgreSQL and on
the embedded default's SQLite."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from app.settings import Settings
from app.vocabulary import format_instant
from tests.conftest import running_app
from tests.support import OPERATOR_TOKEN, Tenant, new_number

INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
# Fields that hold an instant, besides every `*_at`.
INSTANT_FIELDS = {"until", "send_at"}


def instants(doc: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, value) of an instant field in a JSON document."""
    found: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = f"{path}.{key}"
            if isinstance(value, str) and (key.endswith("_at") or key in INSTANT_FIELDS):
                found.append((here, value))
            else:
                found += instants(value, here)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += instants(value, f"{path}.{i}")
    return found


async def every_resource(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """Each kind of resource once, as the API returns it: their instants."""
    tenant = await Tenant.create(client)
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    carol = await tenant.add_user("carol", extension="103")
    docs: list[Any] = []

    async def get(path: str, **kw: Any) -> Any:
        r = await tenant.call("GET", path, expect=200, **kw)
        docs.append(r.json())
        return r.json()

    async def call(method: str, path: str, expect: int, **kw: Any) -> Any:
        r = await tenant.call(method, path, expect=expect, **kw)
        docs.append(r.json())
        return r.json()

    await get("/v1/me")
    await get("/v1/users", params={"include_deactivated": "true"})
    await call("POST", f"/v1/users/{carol.id}/tokens", 201, json={})
    await call(
        "POST", "/v1/groups", 201, json={"name": "Desk", "extension": "200", "members": ["carol"]}
    )
    await get("/v1/groups")
    await get("/v1/phone-numbers")
    sent = await call(
        "POST",
        "/v1/messages",
        201,
        as_=bob,
        json={"to": [{"username": "carol"}, {"phone_number": new_number()}], "body": "hello"},
    )
    message = sent["messages"][0]
    await get(f"/v1/messages/{message['id']}", as_=bob)
    conversations = await get("/v1/conversations", as_=bob)
    conv_id = conversations["items"][0]["id"]
    await get(f"/v1/conversations/{conv_id}", as_=bob)
    await get(f"/v1/conversations/{conv_id}/messages", as_=bob)
    await call("POST", f"/v1/conversations/{conv_id}/notes", 201, as_=bob, json={"body": "n"})
    await call(
        "POST", "/v1/contacts", 201, as_=bob, json={"phone_number": new_number(), "name": "Ann"}
    )
    await get("/v1/contacts", as_=bob)
    away = {"from": "2026-08-03T09:00:00+02:00", "until": "2026-08-17T09:00:00.5+02:00"}
    await call(
        "PUT",
        "/v1/me/auto-responder",
        200,
        as_=bob,
        json={"enabled": True, "text": "Away", "away": [away]},
    )
    await get("/v1/audit-log")
    await get("/v1/organization")
    found = instants(docs)
    # Each kind of writer was seen: pydantic models and the hand-made rows.
    names = {p.rsplit(".", 1)[1] for p, _ in found}
    assert {"created_at", "updated_at", "last_message_at", "until"} <= names, found
    return found


def assert_one_format(found: list[tuple[str, str]]) -> None:
    wrong = [(p, v) for p, v in found if not INSTANT.fullmatch(v)]
    assert not wrong, wrong


async def test_every_resource_writes_instants_one_way_on_postgresql(
    client: httpx.AsyncClient,
) -> None:
    assert_one_format(await every_resource(client))


async def test_every_resource_writes_instants_one_way_on_the_embedded_default(
    tmp_path: Path,
) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",  # type: ignore[call-arg]
        operator_token=OPERATOR_TOKEN,
    )
    async with running_app(settings) as (_, client):
        assert_one_format(await every_resource(client))


@pytest.mark.parametrize("micros", [0, 1, 340200, 999999])
@pytest.mark.parametrize("offset", [0, 2, -5])
def test_hand_made_rows_write_instants_as_pydantic_does(micros: int, offset: int) -> None:
    moment = datetime(2026, 3, 8, 6, 59, 59, micros, tzinfo=timezone(timedelta(hours=offset)))
    as_pydantic = TypeAdapter(datetime).dump_python(moment.astimezone(UTC), mode="json")
    assert format_instant(moment) == as_pydantic
    assert INSTANT.fullmatch(format_instant(moment))
    # Stored without a zone (SQLite): UTC.
    assert format_instant(moment.astimezone(UTC).replace(tzinfo=None)) == as_pydantic
