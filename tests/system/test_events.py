"""Live events across processes: a message received by one app process reaches a client
connected to another, in order; nobody else sees it; a reconnect replays what was missed."""

from __future__ import annotations

import httpx
import nacl.signing
import pytest

from tests.servers import app_process
from tests.support import Tenant, new_number
from tests.system.conftest import post_telnyx_inbound, sse

pytestmark = pytest.mark.slow


async def test_events_cross_processes_in_order_and_only_to_their_audience(
    system_env: dict[str, str], telnyx_key: nacl.signing.SigningKey
) -> None:
    with app_process(system_env) as a, app_process(system_env) as b:
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=30) as ca,
            httpx.AsyncClient(base_url=b.url, timeout=30) as cb,
        ):
            tenant = await Tenant.create(ca)
            bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
            carol = await tenant.add_user("carol", extension="103")
            stranger_org = await Tenant.create(ca)
            patient = new_number()
            async with (
                sse(a.url, bob.token) as bob_events,
                sse(a.url, carol.token) as carol_events,
                sse(a.url, stranger_org.admin.token) as stranger_events,
            ):
                for text in ("one", "two", "three"):
                    r = await post_telnyx_inbound(
                        cb, telnyx_key, patient, bob.outbound_sms_number or "", text
                    )
                    assert r.status_code == 200
                got = [await bob_events.next() for _ in range(3)]
                assert [e.event for e in got] == ["message.created"] * 3
                assert [e.data["body"] for e in got] == ["one", "two", "three"]
                assert all(e.id for e in got)
                # The next thing carol and the other org see is their own message,
                # proving nothing of bob's conversation reached them before it.
                await tenant.call(
                    "POST",
                    "/v1/messages",
                    as_=bob,
                    expect=201,
                    json={"to": [{"username": "carol"}], "body": "for carol"},
                )
                first_for_carol = await carol_events.next()
                assert first_for_carol.data["body"] == "for carol"
                other = await stranger_org.add_user("ann")
                await stranger_org.call(
                    "POST",
                    "/v1/messages",
                    expect=201,
                    json={"to": [{"username": "ann"}], "body": "own org"},
                )
                assert (await stranger_events.next()).data["body"] == "own org"
                assert other.username == "ann"

            # Reconnect with the id of the first event: the two after it come back.
            async with sse(b.url, bob.token, last_event_id=got[0].id) as replay:
                again = [await replay.next() for _ in range(3)]
                assert [e.data["body"] for e in again] == ["two", "three", "for carol"]
                assert [e.id for e in again[:2]] == [got[1].id, got[2].id]


async def test_unknown_last_event_id_asks_the_client_to_resync(system_env: dict[str, str]) -> None:
    with app_process(system_env) as a:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as ca:
            tenant = await Tenant.create(ca)
            bob = await tenant.add_user("bob")
            async with sse(a.url, bob.token, last_event_id="1-0") as events:
                assert (await events.next()).event == "resync"


async def test_status_changes_are_events_too(system_env: dict[str, str]) -> None:
    with app_process(system_env) as a:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as ca:
            tenant = await Tenant.create(ca)
            alice = await tenant.add_user("alice", extension="101", sms=True, outbound=True)
            async with sse(a.url, alice.token) as events:
                r = await tenant.call(
                    "POST",
                    "/v1/messages",
                    as_=alice,
                    expect=201,
                    json={"to": [{"phone_number": new_number()}], "body": "hi"},
                )
                mid = r.json()["messages"][0]["id"]
                seen = []
                while "delivered" not in seen:
                    e = await events.next()
                    assert e.data["id"] == mid
                    seen.append(e.data["status"])
                assert seen[0] == "queued" and seen[-1] == "delivered"


async def test_open_streams_hold_no_database_connection(system_env: dict[str, str]) -> None:
    """More streams than the pool has connections, and the API still answers."""
    env = {**system_env, "DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "0"}
    with app_process(env) as a:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as ca:
            tenant = await Tenant.create(ca)
            bob = await tenant.add_user("bob")
            streams = [sse(a.url, bob.token) for _ in range(6)]
            opened = [await s.__aenter__() for s in streams]
            try:
                r = await tenant.call(
                    "POST",
                    "/v1/messages",
                    expect=201,
                    json={"to": [{"username": "bob"}], "body": "still here"},
                )
                assert r.json()["messages"][0]["body"] == "still here"
                for events in opened:
                    assert (await events.next()).data["body"] == "still here"
            finally:
                for s in streams:
                    await s.__aexit__(None, None, None)
