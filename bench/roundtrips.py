"""Database and Redis round trips per request, counted two ways.

- On the wire: the app talks to PostgreSQL through a small proxy that reads the
  frontend protocol and counts each `Sync` and simple `Query` message, i.e. each time
  the client waits for the server (a round trip), including BEGIN, COMMIT, ROLLBACK,
  the pool's pre-ping and statement preparation. Each one is labelled with its SQL.
- In SQLAlchemy: `before_cursor_execute` events (the statements the ORM issues).

Redis round trips are counted by wrapping redis-py's `execute_command` and
`Pipeline.execute` (the event bus's own blocking reader is left out). The app runs in this process (httpx's ASGI
transport), without its delivery worker so that only the request's own work is seen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import nacl.signing
import redis.asyncio.client
from sqlalchemy import event

from bench import dataset
from bench.loadgen import World, telnyx_event

_STARTUP_CODES = {80877103, 80877104, 80877102}  # SSLRequest, GSSENCRequest, CancelRequest


@dataclass
class RoundTrip:
    connection: int
    sql: str


@dataclass
class PgProxy:
    """Forwards bytes both ways; parses only what the client sends, to count round trips."""

    upstream_host: str
    upstream_port: int
    trips: list[RoundTrip] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        conn_id = next(self._ids)

        async def pump_back() -> None:
            with contextlib.suppress(OSError):
                while data := await ureader.read(65536):
                    cwriter.write(data)
                    await cwriter.drain()
            cwriter.close()

        back = asyncio.create_task(pump_back())
        statements: dict[bytes, str] = {}
        batch: list[str] = []
        buf = b""
        startup = True
        try:
            while data := await creader.read(65536):
                uwriter.write(data)
                await uwriter.drain()
                buf += data
                while True:
                    if startup:
                        if len(buf) < 8:
                            break
                        length = int.from_bytes(buf[:4], "big")
                        if len(buf) < length:
                            break
                        code = int.from_bytes(buf[4:8], "big")
                        startup = code in _STARTUP_CODES
                        buf = buf[length:]
                        continue
                    if len(buf) < 5:
                        break
                    kind = buf[:1]
                    length = int.from_bytes(buf[1:5], "big")
                    if len(buf) < 1 + length:
                        break
                    body = buf[5 : 1 + length]
                    buf = buf[1 + length :]
                    if kind == b"P":  # Parse: name, query
                        name, rest = body.split(b"\0", 1)
                        query = rest.split(b"\0", 1)[0].decode(errors="replace")
                        statements[name] = query
                        batch.append(f"prepare: {query}")
                    elif kind == b"B":  # Bind: portal, statement
                        name = body.split(b"\0", 2)[1]
                        batch.append(statements.get(name, "?"))
                    elif kind == b"Q":
                        self.trips.append(RoundTrip(conn_id, body.rstrip(b"\0").decode()))
                    elif kind == b"S":
                        executed = [s for s in batch if not s.startswith("prepare: ")]
                        label = " + ".join(executed) if executed else " + ".join(batch)
                        self.trips.append(RoundTrip(conn_id, label or "(sync)"))
                        batch = []
        finally:
            uwriter.close()
            await back


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 110 else text[:107] + "..."


@dataclass
class Measured:
    name: str
    postgres: float
    statements: float
    redis: float
    redis_commands: list[str]
    trace: list[str]
    status: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "postgres_round_trips": self.postgres,
            "sqlalchemy_statements": self.statements,
            "redis_commands": self.redis,
            "redis_command_names": self.redis_commands,
            "statuses": sorted(set(self.status)),
            "trace": self.trace,
        }


async def measure(
    database: str,
    redis_url: str,
    prefix: str,
    encryption_keys: str,
    world: World,
    repeats: int = 5,
) -> dict[str, Any]:
    """Round trips of an inbound webhook (three cases), a history read and a send."""
    from app.main import create_app
    from app.settings import Settings
    from bench.seed import PG_BASE

    host_port = PG_BASE.rsplit("@", 1)[-1]
    host, port = host_port.split(":")
    proxy = PgProxy(host, int(port))
    await proxy.start()
    key = nacl.signing.SigningKey.generate()
    user_part = PG_BASE.split("://", 1)[1].rsplit("@", 1)[0]
    settings = Settings(
        database_url=f"postgresql+asyncpg://{user_part}@127.0.0.1:{proxy.port}/{database}",
        redis_url=redis_url,
        redis_key_prefix=prefix,
        operator_token=uuid.uuid4().hex,
        carrier="simulator",
        telnyx_public_key=base64.b64encode(bytes(key.verify_key)).decode(),
        encryption_keys=encryption_keys,
        run_worker=False,
        log_level="WARNING",
    )
    redis_calls: list[str] = []
    original = redis.asyncio.client.Redis.execute_command

    async def counting(self: Any, *args: Any, **options: Any) -> Any:
        name = str(args[0]).upper() if args else "?"
        if name not in ("XREAD", "XINFO STREAM"):
            redis_calls.append(name)
        return await original(self, *args, **options)

    original_pipeline = redis.asyncio.client.Pipeline.execute

    async def counting_pipeline(self: Any, *args: Any, **options: Any) -> Any:
        # A pipeline is one round trip, whatever it holds.
        names = sorted({str(c[0][0]).upper() for c in self.command_stack})
        redis_calls.append(f"PIPELINE({'+'.join(names)})")
        return await original_pipeline(self, *args, **options)

    statements: list[str] = []
    app = create_app(settings)
    results: dict[str, Any] = {}
    redis.asyncio.client.Redis.execute_command = counting  # type: ignore[method-assign]
    redis.asyncio.client.Pipeline.execute = counting_pipeline  # type: ignore[method-assign]
    try:
        async with app.router.lifespan_context(app):
            ctx = app.state.ctx
            event.listen(
                ctx.engine.sync_engine,
                "before_cursor_execute",
                lambda _c, _cur, stmt, *_a: statements.append(stmt),
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                users = [u for u in world.users if u["auto_reply"]]
                counter = itertools.count()

                async def webhook(user: dict[str, Any], ext: str) -> httpx.Response:
                    body = telnyx_event(
                        str(uuid.uuid4()), ext, user["numbers"][0], "Can I reschedule?"
                    )
                    ts = int(time.time())
                    sig = key.sign(f"{ts}|".encode() + body).signature
                    return await client.post(
                        "/webhooks/telnyx",
                        content=body,
                        headers={
                            "content-type": "application/json",
                            "telnyx-signature-ed25519": base64.b64encode(sig).decode(),
                            "telnyx-timestamp": str(ts),
                        },
                    )

                def new_external() -> str:
                    n = next(counter)
                    return f"+1415{2000000 + n * 7919 % 7000000:07d}"

                async def run_case(
                    name: str, make: Callable[[int], Awaitable[httpx.Response]]
                ) -> None:
                    # Two unmeasured calls warm the statement caches of the connection.
                    for i in range(2):
                        await make(1000 + i)
                    pg, st, rd, statuses = [], [], [], []
                    trace: list[str] = []
                    names: Counter[str] = Counter()
                    for i in range(repeats):
                        await asyncio.sleep(0.05)  # let publish/background calls settle
                        t0, s0, r0 = len(proxy.trips), len(statements), len(redis_calls)
                        response = await make(i)
                        await asyncio.sleep(0.05)
                        statuses.append(response.status_code)
                        pg.append(len(proxy.trips) - t0)
                        st.append(len(statements) - s0)
                        rd.append(len(redis_calls) - r0)
                        names.update(redis_calls[r0:])
                        if i == repeats - 1:
                            trace = [_short(t.sql) for t in proxy.trips[t0:]]
                    results[name] = Measured(
                        name,
                        sum(pg) / len(pg),
                        sum(st) / len(st),
                        sum(rd) / len(rd),
                        sorted(names),
                        trace,
                        statuses,
                    ).as_dict()

                ext_for: dict[int, str] = {}

                async def inbound_new(i: int) -> httpx.Response:
                    ext_for[i] = new_external()
                    return await webhook(users[i % len(users)], ext_for[i])

                async def inbound_repeat(i: int) -> httpx.Response:
                    return await webhook(users[i % len(users)], ext_for[i])

                async def inbound_existing(i: int) -> httpx.Response:
                    user = users[(i + 7) % len(users)]
                    ext = world.by_owner[int(user["index"])][0][1]
                    return await webhook(user, ext)

                async def history(i: int) -> httpx.Response:
                    token = world.users[world.hot_owner]["token"]
                    return await client.get(
                        f"/v1/conversations/{world.hot_conversation_id}/messages?limit=50",
                        headers={"Authorization": f"Bearer {token}"},
                    )

                async def send(i: int) -> httpx.Response:
                    user = users[(i + 13) % len(users)]
                    ext = world.by_owner[int(user["index"])][1][1]
                    return await client.post(
                        "/v1/messages",
                        json={"to": [{"phone_number": ext}], "body": dataset.TEXTS[0]},
                        headers={"Authorization": f"Bearer {user['token']}"},
                    )

                await run_case("inbound_new_conversation_auto_reply", inbound_new)
                await run_case("inbound_repeat_rate_limited", inbound_repeat)
                await run_case("inbound_existing_conversation_auto_reply", inbound_existing)
                await run_case("history_newest_50", history)
                await run_case("send_to_phone_number", send)
    finally:
        redis.asyncio.client.Redis.execute_command = original  # type: ignore[method-assign]
        redis.asyncio.client.Pipeline.execute = original_pipeline  # type: ignore[method-assign]
        await proxy.stop()
    return results
