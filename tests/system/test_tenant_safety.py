"""Tenant safety through real processes: a number released while messages wait for it, and
what an open event stream may still see after its caller lost access."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.servers import app_process, free_port
from tests.support import Tenant, eventually, new_number
from tests.system.carrier_kit import carrier_env, sim_control, sim_sends, simulator
from tests.system.conftest import post_telnyx_inbound

pytestmark = pytest.mark.slow


async def test_a_message_queued_through_an_outage_is_never_sent_from_a_released_number(
    system_env: dict[str, str], system_db: AsyncEngine
) -> None:
    """A message waits in the outbox while the carrier is down; meanwhile its sender gets
    another number, the old one is released, and another organization takes it. When the
    carrier is back the message is not sent from that number: it ends `failed` with
    `from_number_released`."""
    port = free_port()
    with simulator(port) as (sim, cfg):
        await sim_control(sim, "/_sim/fail", {"mode": "5xx", "count": 10_000})
        env = carrier_env(system_env, "telnyx", sim, cfg, DELIVERY_MAX_ATTEMPTS="1000")
        with app_process(env, port=port) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                a, b = await Tenant.create(client), await Tenant.create(client)
                alice = await a.add_user(extension="101", sms=True, outbound=True)
                released = alice.outbound_sms_number
                assert released is not None
                spare = await a.add_number("101")
                r = await a.call(
                    "POST",
                    "/v1/messages",
                    as_=alice,
                    expect=201,
                    json={"to": [{"phone_number": new_number()}], "body": "Your results are in"},
                )
                message_id = r.json()["messages"][0]["id"]

                async def tried() -> bool:
                    # The carrier refused it at least once: it waits in the outbox.
                    async with system_db.connect() as conn:
                        attempts = await conn.scalar(
                            text("SELECT attempts FROM delivery_jobs WHERE message_id = :id"),
                            {"id": message_id},
                        )
                    return bool(attempts and attempts >= 2)

                await eventually(tried)
                await a.call(
                    "PATCH",
                    f"/v1/users/{alice.id}",
                    expect=200,
                    json={"outbound_sms_number": spare},
                )
                numbers = (await a.call("GET", "/v1/phone-numbers", expect=200)).json()["items"]
                (number_id,) = [n["id"] for n in numbers if n["number"] == released]
                await a.call("DELETE", f"/v1/phone-numbers/{number_id}", expect=204)
                await b.add_number(None, released)
                await sim_control(sim, "/_sim/reset", {})

                async def final() -> dict[str, Any] | None:
                    row = await _message(a, alice, message_id)
                    return row if row["status"] not in ("queued", "sending") else None

                m = await eventually(final, timeout=60)
        assert m["status"] == "failed", m
        assert m["error_code"] == "from_number_released"
        assert [s for s in await sim_sends(sim) if s["from"] == released] == []


async def _message(tenant: Tenant, member: Any, message_id: str) -> dict[str, Any]:
    r = await tenant.call("GET", f"/v1/messages/{message_id}", as_=member, expect=200)
    body: dict[str, Any] = r.json()
    return body


# ------------------------------------------------------------- what open streams may see


@dataclass
class Watched:
    """An event stream read in the background, noting when it ends."""

    status: int | None = None
    events: list[tuple[float, str, Any]] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None


@asynccontextmanager
async def watch(base_url: str, token: str) -> AsyncIterator[Watched]:
    watched = Watched()

    async def read() -> None:
        try:
            async with (
                httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as http,
                http.stream("GET", "/v1/events", headers={"Authorization": f"Bearer {token}"}) as r,
            ):
                watched.status = r.status_code
                watched.opened.set()
                event = "message"
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line.partition(":")[2])
                        watched.events.append((time.monotonic(), event, data))
        finally:
            watched.ended_at = time.monotonic()
            watched.opened.set()
            watched.ended.set()

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(watched.opened.wait(), 20)
        await asyncio.sleep(0.3)  # subscribed once its first bytes are out
        yield watched
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task


def _bodies_after(watched: Watched, moment: float) -> list[str]:
    return [d.get("body") for at, e, d in watched.events if at > moment and e == "message.created"]


async def _inbound(
    client: httpx.AsyncClient, key: Any, patient: str, number: str, text_: str
) -> None:
    r = await post_telnyx_inbound(client, key, patient, number, text_)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("change", ["revoke_token", "deactivate_user", "leave_group"])
async def test_an_open_stream_ends_within_five_seconds_of_losing_access_on_another_process(
    system_env: dict[str, str], telnyx_key: Any, change: str
) -> None:
    """The stream is open on one process; the change is made through another. Within five
    seconds the stream is closed by the server, and a text that arrives afterwards is
    never sent on it; a colleague's stream is untouched and gets that text."""
    with app_process(system_env) as one, app_process(system_env) as two:
        async with (
            httpx.AsyncClient(base_url=one.url, timeout=30) as c1,
            httpx.AsyncClient(base_url=two.url, timeout=30) as c2,
        ):
            tenant = await Tenant.create(c1)
            admin_on_two = Tenant(c2, tenant.id, tenant.admin, tenant.users)
            bob = await tenant.add_user()
            carol = await tenant.add_user()
            await tenant.add_group("Front desk", "300", [bob.username, carol.username])
            number = await tenant.add_number("300")
            patient = new_number()
            r = await tenant.call("POST", f"/v1/users/{bob.id}/tokens", expect=201, json={})
            token, token_id = r.json()["token"], r.json()["id"]
            async with watch(one.url, token) as bobs, watch(one.url, carol.token) as carols:
                assert bobs.status == 200
                await _inbound(c2, telnyx_key, patient, number, "before the change")
                await eventually(lambda: _async(_bodies_after(bobs, 0) == ["before the change"]))
                if change == "revoke_token":
                    await admin_on_two.call(
                        "DELETE", f"/v1/users/{bob.id}/tokens/{token_id}", expect=204
                    )
                elif change == "deactivate_user":
                    await admin_on_two.call("DELETE", f"/v1/users/{bob.id}", expect=204)
                else:
                    groups = (await admin_on_two.call("GET", "/v1/groups", expect=200)).json()
                    (group_id,) = [g["id"] for g in groups["items"]]
                    await admin_on_two.call(
                        "PATCH",
                        f"/v1/groups/{group_id}",
                        expect=200,
                        json={"members": [carol.username]},
                    )
                changed_at = time.monotonic()
                await asyncio.wait_for(bobs.ended.wait(), 10)
                assert bobs.ended_at is not None
                assert bobs.ended_at - changed_at <= 5.0
                await _inbound(c2, telnyx_key, patient, number, "after the change")
                await eventually(
                    lambda: _async("after the change" in _bodies_after(carols, changed_at))
                )
                assert "after the change" not in _bodies_after(bobs, 0)
                assert not carols.ended.is_set()


async def _async(value: bool) -> bool:
    return value


async def test_a_user_holds_at_most_the_cap_of_streams_across_processes(
    system_env: dict[str, str],
) -> None:
    env = {**system_env, "EVENTS_MAX_STREAMS_PER_USER": "2"}
    with app_process(env) as one, app_process(env) as two:
        async with httpx.AsyncClient(base_url=one.url, timeout=30) as c1:
            tenant = await Tenant.create(c1)
            bob = await tenant.add_user()
            async with watch(one.url, bob.token) as first, watch(two.url, bob.token) as second:
                assert (first.status, second.status) == (200, 200)
                for url in (one.url, two.url):
                    status, body = await _open_stream(url, bob.headers)
                    assert status == 429, body
                    assert json.loads(body)["error"]["code"] == "too_many_streams"
                # Another user is not affected.
                async with watch(two.url, tenant.admin.token) as admins:
                    assert admins.status == 200

            # Both closed: their slots are free again (given back within a check or two).
            async def reopens() -> bool:
                return (await _open_stream(two.url, bob.headers))[0] == 200

            assert await eventually(reopens)


async def _open_stream(base_url: str, headers: dict[str, str]) -> tuple[int, str]:
    """The status of a new stream (and the body, when it is refused), without reading on."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        http.stream("GET", "/v1/events", headers=headers) as r,
    ):
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode()
        return r.status_code, ""
