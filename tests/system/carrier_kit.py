"""The carrier simulator as system tests use it: started beside an app process."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.simulator_server import (
    RunningServer,
    SimulatorConfig,
    create_simulator_app,
    serve_in_thread,
)
from tests.support import Tenant, eventually, new_number

TWILIO_SID = "AC" + "7" * 32
TWILIO_TOKEN = "sim-twilio-token"


@contextmanager
def simulator(
    app_port: int, webhook_base: str | None = None
) -> Iterator[tuple[RunningServer, SimulatorConfig]]:
    """`webhook_base`: where inbound webhooks go (the app's PUBLIC_BASE_URL), when the
    app is not reached on `app_port` directly."""
    cfg = SimulatorConfig(
        webhook_base=webhook_base or f"http://127.0.0.1:{app_port}",
        telnyx_api_key="KEY",
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
        status_delay=0.02,
        webhook_backoff=0.1,
        # Carriers keep retrying a webhook for minutes (Telnyx, then its failover URL):
        # about a minute here, longer than an app process takes to restart, so a
        # receipt sent while the app is down is not lost.
        webhook_attempts=12,
    )
    sim = serve_in_thread(create_simulator_app(cfg))
    try:
        yield sim, cfg
    finally:
        sim.stop()


def carrier_env(
    system_env: dict[str, str], carrier: str, sim: RunningServer, cfg: SimulatorConfig, **extra: str
) -> dict[str, str]:
    return {
        **system_env,
        "CARRIER": carrier,
        "TELNYX_API_KEY": "KEY",
        "TELNYX_API_BASE": sim.url,
        "TELNYX_PUBLIC_KEY": cfg.telnyx_public_key,
        "TWILIO_API_BASE": sim.url,
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "CARRIER_SEND_RATE_PER_NUMBER": "1000",
        **extra,
    }


def worker_env(
    system_env: dict[str, str],
    sim: RunningServer,
    cfg: SimulatorConfig,
    app_port: int,
    **extra: str,
) -> dict[str, str]:
    """Telnyx settings for an app process that leaves delivery to worker processes
    (`RUN_WORKER=false`), and for those workers: they must know the public URL too, it
    goes into each send's receipt URL."""
    return carrier_env(
        system_env,
        "telnyx",
        sim,
        cfg,
        RUN_WORKER="false",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{app_port}",
        **extra,
    )


async def hang_next_calls(sim: RunningServer) -> None:
    """The carrier holds its next four calls for a minute: two it accepts but never
    answers, two it never gets (the two ways a killed sender leaves a message)."""
    await sim_control(
        sim, "/_sim/fail", {"mode": "timeout", "count": 2, "accept": True, "seconds": 60}
    )
    await sim_control(sim, "/_sim/fail", {"mode": "timeout", "count": 2, "seconds": 60})


async def held_calls(sim: RunningServer) -> int:
    """How many sends the carrier holds now (in a simulated timeout, accepted or not)."""
    async with httpx.AsyncClient(base_url=sim.url) as http:
        held: int = (await http.get("/_sim/fail")).json()["held"]
        return held


async def handed_to_carrier(engine: AsyncEngine, ids: list[str]) -> int:
    """How many of these messages have been handed to the carrier (`sending`, or already
    `sent` or `delivered` by its answer or its receipt)."""
    async with engine.connect() as conn:
        n: int = await conn.scalar(
            text(
                "SELECT count(*) FROM messages WHERE id = ANY(:ids) "
                "AND status IN ('sending', 'sent', 'delivered')"
            ),
            {"ids": ids},
        )
        return n


async def sim_sends(sim: RunningServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        items: list[dict[str, Any]] = (await http.get("/_sim/messages")).json()["items"]
        return items


async def sim_control(sim: RunningServer, path: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post(path, json=body)
        assert r.status_code == 200, r.text


async def send_batch(tenant: Tenant, count: int, tag: str) -> tuple[Any, list[str]]:
    alice = await tenant.add_user(sms=True, outbound=True)
    ids = []
    for i in range(count):
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"phone_number": new_number()}], "body": f"{tag} #{i}"},
        )
        ids.append(r.json()["messages"][0]["id"])
    return alice, ids


async def all_final(tenant: Tenant, member: Any, ids: list[str]) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        out = []
        for mid in ids:
            m = (await tenant.call("GET", f"/v1/messages/{mid}", as_=member, expect=200)).json()
            if m["status"] not in ("delivered", "failed", "undelivered"):
                return None
            out.append(m)
        return out

    result: list[dict[str, Any]] = await eventually(check, timeout=90, interval=0.2)
    return result


def assert_exactly_once(sends: list[dict[str, Any]], tag: str, count: int) -> None:
    texts = collections.Counter(s["text"] for s in sends if s["text"].startswith(tag))
    assert texts == {f"{tag} #{i}": 1 for i in range(count)}
