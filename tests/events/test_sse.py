"""SSE framing end to end: a small Starlette app served by uvicorn, read with httpx.

httpx's ASGITransport collects the whole body before returning, which never
happens for an endless stream, hence a real server on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.infra.event_bus import (
    RESYNC_UNKNOWN_ID,
    EventBus,
    RedisEventBus,
    sse_stream,
)

from .conftest import Kit, eventually

ORG = "org-1"
PING_SECONDS = 0.2


def make_app(bus: EventBus) -> Starlette:
    async def events(request: Request) -> Response:
        # Stands in for the real router, whose user comes from the bearer token.
        subscription = bus.subscribe(
            request.query_params["user"],
            request.query_params.get("org", ORG),
            request.headers.get("last-event-id"),
        )
        return EventSourceResponse(
            sse_stream(subscription, retry_ms=1000), ping=PING_SECONDS, send_timeout=5
        )

    return Starlette(routes=[Route("/v1/events", events)])


@dataclass
class Frame:
    """One SSE event block (or a comment)."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> object:
        return orjson.loads("\n".join(self.data))


class SseReader:
    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0) -> Frame:
        return await asyncio.wait_for(self._next(), timeout)

    async def next_event(self, timeout: float = 5.0) -> Frame:
        """The next frame with an event or retry field (heartbeat comments skipped)."""
        while True:
            frame = await self.next(timeout)
            if frame.event is not None or frame.retry is not None:
                return frame

    async def _next(self) -> Frame:
        frame = Frame()
        started = False
        async for line in self.lines:
            if line == "":
                if started:
                    return frame
                continue
            started = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                frame.comments.append(value)
            elif name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "data":
                frame.data.append(value)
            elif name == "retry":
                frame.retry = int(value)
        raise EOFError


@dataclass
class Server:
    bus: EventBus
    url: str
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def serve(kit: Kit, **bus_options: Any) -> AsyncIterator[Server]:
    """A uvicorn server on a free port with an events endpoint on a new bus."""
    bus = await kit.bus(**bus_options)
    config = uvicorn.Config(
        make_app(bus), log_level="warning", lifespan="off", timeout_graceful_shutdown=2
    )
    uv = uvicorn.Server(config)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    try:
        await eventually(lambda: uv.started)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(10, read=None)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            yield Server(bus, f"http://127.0.0.1:{port}/v1/events", client)
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def server(kit: Kit) -> AsyncIterator[Server]:
    async with serve(kit) as s:
        yield s


async def test_events_are_framed_with_id_type_and_json(server: Server) -> None:
    bus = server.bus
    async with server.client.stream("GET", server.url, params={"user": "alice"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        reader = SseReader(response)
        first = await reader.next_event()
        assert first.retry == 1000
        await eventually(lambda: bus.subscriber_count == 1)

        body = {"id": "m1", "body": "line one\nline two", "status": "queued"}
        created = await bus.publish("message.created", ORG, ["alice"], body)
        await bus.publish("message.created", ORG, ["bob"], {"id": "not yours"})
        await bus.publish("message.created", "org-2", ["alice"], {"id": "other org"})
        updated = await bus.publish("message.updated", ORG, ["alice"], {"id": "m1", "x": 1})

        frame = await reader.next_event()
        assert (frame.id, frame.event) == (created, "message.created")
        assert len(frame.data) == 1  # newlines in the body stay escaped inside the JSON
        assert frame.json == body
        frame = await reader.next_event()
        assert (frame.id, frame.event, frame.json) == (
            updated,
            "message.updated",
            {"id": "m1", "x": 1},
        )


async def test_heartbeats_are_sent_as_comments(server: Server) -> None:
    async with server.client.stream("GET", server.url, params={"user": "alice"}) as response:
        reader = SseReader(response)
        await reader.next_event()  # the retry hint
        frame = await reader.next(timeout=PING_SECONDS * 10)
        assert frame.event is None and frame.data == []
        assert frame.comments and frame.comments[0].startswith("ping")


async def test_reconnect_with_last_event_id_gets_what_was_missed(server: Server) -> None:
    bus = server.bus
    seen = await bus.publish("message.created", ORG, ["alice"], {"n": 0})
    missed = [await bus.publish("message.created", ORG, ["alice"], {"n": n}) for n in (1, 2)]
    headers = {"Last-Event-ID": seen}
    async with server.client.stream(
        "GET", server.url, params={"user": "alice"}, headers=headers
    ) as response:
        reader = SseReader(response)
        await reader.next_event()
        frames = [await reader.next_event() for _ in missed]
        assert [f.id for f in frames] == missed
        assert [f.json for f in frames] == [{"n": 1}, {"n": 2}]


async def test_unknown_last_event_id_gets_a_resync_frame(server: Server) -> None:
    bus = server.bus
    newest = await bus.publish("message.created", ORG, ["alice"], {})
    headers = {"Last-Event-ID": "not-an-id"}
    async with server.client.stream(
        "GET", server.url, params={"user": "alice"}, headers=headers
    ) as response:
        reader = SseReader(response)
        await reader.next_event()
        frame = await reader.next_event()
        assert frame.event == "resync"
        # The id moves the browser's Last-Event-ID past what it is told to reload.
        assert frame.id == newest
        assert frame.json == {"reason": RESYNC_UNKNOWN_ID, "checkpoint": newest}
        live = await bus.publish("message.created", ORG, ["alice"], {"n": 1})
        frame = await reader.next_event()
        assert (frame.id, frame.json) == (live, {"n": 1})


async def test_a_client_going_away_frees_its_subscription(server: Server) -> None:
    bus = server.bus
    for _ in range(3):
        async with server.client.stream("GET", server.url, params={"user": "alice"}) as response:
            await SseReader(response).next_event()
            await eventually(lambda: bus.subscriber_count == 1)
        await eventually(lambda: bus.subscriber_count == 0)


async def test_many_streams_at_once(server: Server) -> None:
    bus = server.bus
    users = [f"user-{n}" for n in range(200)]

    async def listen(user: str) -> object:
        async with server.client.stream("GET", server.url, params={"user": user}) as response:
            reader = SseReader(response)
            await reader.next_event()
            return (await reader.next_event(timeout=30)).json

    listeners = [asyncio.create_task(listen(user)) for user in users]
    await eventually(lambda: bus.subscriber_count == len(users), timeout=30)
    await bus.publish("message.created", ORG, users, {"to": "everyone"})
    assert await asyncio.gather(*listeners) == [{"to": "everyone"}] * len(users)
    await eventually(lambda: bus.subscriber_count == 0)


async def test_a_client_that_stops_reading_is_dropped(kit: Kit) -> None:
    # Once the socket buffers are full the server's sends wait, the subscription's
    # bounded queue fills and the bus drops it, though the client is still connected.
    async with serve(kit, max_queue=5) as server:
        bus = server.bus
        async with server.client.stream("GET", server.url, params={"user": "alice"}) as response:
            await SseReader(response).next_event()
            await eventually(lambda: bus.subscriber_count == 1)
            big = {"body": "x" * 200_000}
            for _ in range(200):
                await bus.publish("message.created", ORG, ["alice"], big)
                if bus.subscriber_count == 0:
                    break
                await asyncio.sleep(0.005)
            await eventually(lambda: bus.subscriber_count == 0)
            # Others are unaffected.
            async with server.client.stream("GET", server.url, params={"user": "bob"}) as other:
                reader = SseReader(other)
                await reader.next_event()
                await eventually(lambda: bus.subscriber_count == 1)
                sent = await bus.publish("message.created", ORG, ["bob"], {"n": 1})
                assert (await reader.next_event()).id == sent


async def test_stream_ends_cleanly_when_redis_is_unreachable(redis_kit: Kit) -> None:
    kit = redis_kit
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    client = kit.client(f"redis://127.0.0.1:{dead}/0", socket_connect_timeout=0.2)
    bus = RedisEventBus(client, kit.prefix, ready_timeout=0.3)
    kit.buses.append(bus)
    await bus.start()
    frames = [frame async for frame in sse_stream(bus.subscribe("alice", ORG), retry_ms=500)]
    # Only the retry hint: the browser reconnects later with its Last-Event-ID.
    assert frames == [{"retry": 500}]
    assert bus.subscriber_count == 0
