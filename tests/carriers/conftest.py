"""Servers for the carrier tests: the HTTP simulator and a webhook receiver, on free ports."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import nacl.signing
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.simulator_server import (
    RunningServer,
    SimulatorConfig,
    create_simulator_app,
    serve_in_thread,
)

TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "test-auth-token"
TELNYX_API_KEY = "KEY-test"

T = TypeVar("T")


async def eventually(probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy; generous deadline, no timing asserts."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny webhook target that records every request and answers a scripted status."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    # Statuses to answer first, then 200.
    script: deque[int] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.script.clear()

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


def _receiver_app(receiver: Receiver) -> Starlette:
    async def record(request: Request) -> Response:
        body = await request.body()
        with receiver.lock:
            receiver.requests.append(
                Received(
                    method=request.method,
                    path=request.url.path,
                    query=request.url.query,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                )
            )
            status = receiver.script.popleft() if receiver.script else 200
        return Response(status_code=status)

    return Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])


@pytest.fixture(scope="session")
def receiver_server() -> Iterator[Receiver]:
    receiver = Receiver()
    running = serve_in_thread(_receiver_app(receiver))
    receiver.url = running.url
    yield receiver
    running.stop()


@pytest.fixture(scope="session")
def sim_config(receiver_server: Receiver) -> SimulatorConfig:
    return SimulatorConfig(
        webhook_base=receiver_server.url,
        telnyx_signing_key=nacl.signing.SigningKey.generate(),
        telnyx_api_key=TELNYX_API_KEY,
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
        status_delay=0.01,
        webhook_attempts=4,
        webhook_backoff=0.05,
    )


@pytest.fixture(scope="session")
def sim_server(sim_config: SimulatorConfig) -> Iterator[RunningServer]:
    running = serve_in_thread(create_simulator_app(sim_config))
    yield running
    running.stop()


@pytest.fixture
def sim(sim_server: RunningServer, receiver_server: Receiver) -> Iterator[str]:
    """The simulator's base URL, with its state and the receiver's reset around each test."""
    httpx.post(f"{sim_server.url}/_sim/reset").raise_for_status()
    receiver_server.clear()
    yield sim_server.url
    httpx.post(f"{sim_server.url}/_sim/reset").raise_for_status()
    receiver_server.clear()
