"""The standalone simulator (`python -m devtools.simulator_server`) prints every setting
the service needs to talk to it: with exactly those, the service starts, sends through
it, and takes its signed inbound webhooks, for Telnyx and for Twilio."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.servers import ROOT, app_process, free_port
from tests.support import Tenant, eventually, new_number

pytestmark = pytest.mark.slow

# What the system tests' environment sets for the carriers, all of it left out here.
CARRIER_SETTINGS = (
    "CARRIER",
    "TELNYX_API_KEY",
    "TELNYX_API_BASE",
    "TELNYX_PUBLIC_KEY",
    "TWILIO_API_BASE",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "PUBLIC_BASE_URL",
)


@contextmanager
def standalone_simulator(app_port: int) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    """The simulator as a newcomer runs it; its URL and the settings it printed, by carrier."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.simulator_server",
            "--port",
            str(port),
            "--webhook-base",
            f"http://127.0.0.1:{app_port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed: dict[str, dict[str, str]] = {}
        carrier = ""
        deadline = time.monotonic() + 60
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True
        ).start()
        while len(printed) < 2 or len(printed[carrier]) < 5:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic())).strip()
            except queue.Empty:
                raise AssertionError(f"the simulator printed no more settings: {printed}") from None
            name, _, value = line.partition("=")
            if name == "CARRIER":
                carrier = value
                printed[carrier] = {}
            if name.isupper() and value and carrier:
                printed[carrier][name] = value
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=2) as http:
            while True:
                try:
                    http.get(url + "/_sim/messages")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        yield url, printed
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("carrier", ["telnyx", "twilio"])
async def test_the_printed_settings_are_all_the_service_needs(
    system_env: dict[str, str], carrier: str
) -> None:
    app_port = free_port()
    with standalone_simulator(app_port) as (sim_url, printed):
        assert set(printed) == {"telnyx", "twilio"}
        settings = printed[carrier]
        assert settings["PUBLIC_BASE_URL"] == f"http://127.0.0.1:{app_port}"
        env = {k: v for k, v in system_env.items() if k not in CARRIER_SETTINGS}
        with app_process({**env, **settings}, port=app_port) as app:
            async with (
                httpx.AsyncClient(base_url=app.url, timeout=30) as client,
                httpx.AsyncClient(base_url=sim_url, timeout=30) as sim,
            ):
                tenant = await Tenant.create(client)
                _, line = await tenant.add_auto_replying_user("bob", "102", "Auto: got it.")
                patient = new_number()
                r = await sim.post(
                    "/_sim/inbound",
                    json={"carrier": carrier, "from": patient, "to": line, "text": "hi"},
                )
                assert r.json()["statuses"] == [200], r.text

                async def replied() -> bool:
                    sends = (await sim.get("/_sim/messages")).json()["items"]
                    return any(
                        (s["carrier"], s["from"], s["to"], s["text"])
                        == (carrier, line, patient, "Auto: got it.")
                        for s in sends
                    )

                assert await eventually(replied)
