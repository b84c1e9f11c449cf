"""The Redis bus when Redis goes away: publish fails clearly, the reader resumes after."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from app.infra.event_bus import (
    RESYNC_EVENTS_LOST,
    Event,
    EventBusUnavailable,
    RedisEventBus,
    Resync,
    Subscription,
)

from .conftest import Kit, assert_idle, take

ORG = "org-1"


class Proxy:
    """A TCP proxy to Redis that can be cut and restored, to play a network outage."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        # Cleared: bytes are held back but connections stay open (a silent network).
        self.flowing = asyncio.Event()
        self.flowing.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy()
    await p.start()
    yield p
    if p.server is not None:
        await p.cut()


def ids(items: list[Event | Resync]) -> list[str]:
    return [item.id for item in items if isinstance(item, Event)]


async def test_reader_resumes_from_its_last_id_after_an_outage(
    redis_kit: Kit, proxy: Proxy
) -> None:
    # "near" is another app process that can still reach Redis; "far" loses it.
    near = await redis_kit.bus()
    far = await redis_kit.bus(client=redis_kit.client(proxy.url, socket_connect_timeout=0.5))
    async with far.subscribe("alice", ORG) as sub:
        before = await near.publish("message.created", ORG, ["alice"], {"n": 0})
        assert ids(await take(sub, 1)) == [before]

        await proxy.cut()
        with pytest.raises(EventBusUnavailable):
            await far.publish("message.created", ORG, ["alice"], {"lost": True})
        during = [await near.publish("message.created", ORG, ["alice"], {"n": n}) for n in (1, 2)]
        await asyncio.sleep(0.5)  # the reader fails and backs off meanwhile
        await assert_idle(sub, 0.1)

        await proxy.start()
        after = await near.publish("message.updated", ORG, ["alice"], {"n": 3})
        assert ids(await take(sub, 3, timeout=15)) == [*during, after]
        # And "far" publishes again.
        again = await far.publish("message.updated", ORG, ["alice"], {"n": 4})
        assert ids(await take(sub, 1, timeout=5)) == [again]


async def test_reader_recovers_from_a_network_that_goes_silent(
    redis_kit: Kit, proxy: Proxy
) -> None:
    near = await redis_kit.bus()
    far = await redis_kit.bus(
        client=redis_kit.client(proxy.url, socket_connect_timeout=0.5),
        block_ms=200,
        command_timeout=0.3,
    )
    async with far.subscribe("alice", ORG) as sub:
        before = await near.publish("message.created", ORG, ["alice"], {})
        assert ids(await take(sub, 1)) == [before]
        proxy.flowing.clear()
        during = [await near.publish("message.created", ORG, ["alice"], {}) for _ in range(2)]
        await asyncio.sleep(1)  # past the reader's deadline: it drops the connection
        proxy.flowing.set()
        assert ids(await take(sub, 2, timeout=15)) == during


async def test_events_trimmed_during_an_outage_end_subscriptions_with_resync(
    redis_kit: Kit, proxy: Proxy
) -> None:
    near = await redis_kit.bus()
    assert isinstance(near, RedisEventBus)
    far = await redis_kit.bus(client=redis_kit.client(proxy.url, socket_connect_timeout=0.5))
    async with far.subscribe("alice", ORG) as sub:
        before = await near.publish("message.created", ORG, ["alice"], {})
        assert ids(await take(sub, 1)) == [before]
        await proxy.cut()
        for _ in range(5):
            newest = await near.publish("message.created", ORG, ["alice"], {})
        # Retention passes while "far" is cut off: what it had not read is gone.
        await redis_kit.client().xtrim(near.key, maxlen=1, approximate=False)
        await proxy.start()
        items = await asyncio.wait_for(_collect(sub), 15)
        assert items == [Resync(RESYNC_EVENTS_LOST, newest)]
        assert far.subscriber_count == 0

    # New subscriptions work normally afterwards.
    async with far.subscribe("alice", ORG) as sub:
        live = await near.publish("message.created", ORG, ["alice"], {})
        assert ids(await take(sub, 1, timeout=5)) == [live]


async def _collect(sub: Subscription) -> list[Event | Resync]:
    return [item async for item in sub]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_redis_at_all(redis_kit: Kit) -> None:
    client = redis_kit.client(f"redis://127.0.0.1:{_dead_port()}/0", socket_connect_timeout=0.2)
    bus = await redis_kit.bus(client=client, ready_timeout=0.3)
    with pytest.raises(EventBusUnavailable):
        await bus.publish("message.created", ORG, ["alice"], {})
    with pytest.raises(EventBusUnavailable):
        async with bus.subscribe("alice", ORG):
            pass
    assert bus.subscriber_count == 0


async def test_publish_gives_up_on_a_redis_that_does_not_answer(redis_kit: Kit) -> None:
    # Accepts connections and never replies: the worst case for a request path.
    async def blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = redis_kit.client(f"redis://127.0.0.1:{port}/0")
        bus = await redis_kit.bus(client=client, command_timeout=0.3, ready_timeout=0.3)
        with pytest.raises(EventBusUnavailable):
            await bus.publish("message.created", ORG, ["alice"], {})
        await bus.stop()
    finally:
        server.close()


async def test_redis_bus_must_be_started(redis_kit: Kit) -> None:
    bus = await redis_kit.bus(start=False)
    with pytest.raises(RuntimeError):
        async with bus.subscribe("alice", ORG):
            pass
    assert bus.subscriber_count == 0
