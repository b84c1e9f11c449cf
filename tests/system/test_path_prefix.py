"""Served under a path prefix, as behind a reverse proxy that takes `/sms/...` to the app
(`uvicorn --root-path /sms`, `PUBLIC_BASE_URL` ending in `/sms`): the carriers' signed
webhooks verify and are stored, and the callback URLs we give the carriers carry the
prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from devtools.simulator_server import RunningServer
from tests.servers import PrefixProxy, app_process, free_port
from tests.support import Tenant, eventually, new_number
from tests.system.carrier_kit import all_final, carrier_env, send_batch, sim_sends, simulator

pytestmark = pytest.mark.slow

PREFIX = "/sms"


@asynccontextmanager
async def served_under_prefix(
    system_env: dict[str, str], carrier: str
) -> AsyncIterator[tuple[httpx.AsyncClient, RunningServer, str]]:
    """The app behind a prefix-stripping proxy, the carrier simulator calling its public
    URL; yields an API client through the proxy, the simulator and the public URL."""
    app_port = free_port()
    proxy = PrefixProxy(PREFIX, "127.0.0.1", app_port)
    await proxy.start()
    try:
        with simulator(app_port, webhook_base=proxy.url) as (sim, cfg):
            env = carrier_env(system_env, carrier, sim, cfg, PUBLIC_BASE_URL=proxy.url)
            with app_process(env, port=app_port, uvicorn_args=("--root-path", PREFIX)):
                async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
                    yield client, sim, proxy.url
    finally:
        await proxy.stop()


async def sim_inbound(sim: RunningServer, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as http:
        r = await http.post("/_sim/inbound", json=body)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


async def sim_webhooks(sim: RunningServer, message_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        items: list[dict[str, Any]] = (await http.get("/_sim/webhooks")).json()["items"]
    return [item for item in items if item["message_id"] == message_id]


async def test_signed_inbound_texts_from_both_carriers_are_stored_under_a_prefix(
    system_env: dict[str, str],
) -> None:
    async with served_under_prefix(system_env, "simulator") as (client, sim, public):
        tenant = await Tenant.create(client)
        bob = await tenant.add_user(extension="102", sms=True, outbound=True)
        for carrier, path in (
            ("telnyx", "/webhooks/telnyx"),
            ("twilio", "/webhooks/twilio/messages"),
        ):
            patient, text = new_number(), f"hello through the prefix via {carrier}"
            delivery = await sim_inbound(
                sim,
                {"carrier": carrier, "from": patient, "to": bob.outbound_sms_number, "text": text},
            )
            assert delivery["url"] == f"{public}{path}"
            assert delivery["statuses"] == [200], f"{carrier}: {delivery}"
            conv = await tenant.sms_conversation(bob, patient)
            assert conv is not None, carrier
            assert [m["body"] for m in await tenant.messages(bob, conv["id"])] == [text]


@pytest.mark.parametrize(
    ("carrier", "callback_path"),
    [("telnyx", "/webhooks/telnyx"), ("twilio", "/webhooks/twilio/status")],
)
async def test_a_send_gives_the_carrier_a_callback_url_under_the_prefix_and_its_receipts_land(
    system_env: dict[str, str], carrier: str, callback_path: str
) -> None:
    async with served_under_prefix(system_env, carrier) as (client, sim, public):
        tenant = await Tenant.create(client)
        alice, (message_id,) = await send_batch(tenant, 1, f"{carrier}-prefix")

        async def handed_over() -> list[dict[str, Any]]:
            return [s for s in await sim_sends(sim) if s["text"].startswith(f"{carrier}-prefix")]

        (sent,) = await eventually(handed_over)
        assert sent["callback_url"] == f"{public}{callback_path}?ref={message_id}"

        # The carrier's two receipts (sent, then delivered) were each accepted at once.
        async def receipts() -> list[dict[str, Any]] | None:
            attempts = await sim_webhooks(sim, sent["id"])
            return attempts if len(attempts) >= 2 else None

        attempts = await eventually(receipts)
        assert [(a["url"], a["status"]) for a in attempts] == [(sent["callback_url"], 200)] * 2
        (message,) = await all_final(tenant, alice, [message_id])
        assert message["status"] == "delivered"
