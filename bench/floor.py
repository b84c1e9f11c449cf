"""The floor: the least work the inbound webhook path can do, as a bare ASGI app.

Per request it reads the body, parses the same Telnyx JSON, does one INSERT through
asyncpg into a table shaped like `messages` (`bench_floor_messages`, made with
`LIKE messages INCLUDING ALL`: same columns and indexes) and one Redis `SET NX EX`
(the auto-reply window), then answers 200. No framework, no ORM, no signature check,
no encryption, no routing lookups. Served by uvicorn with the same settings as the app:

    BENCH_FLOOR_DSN=postgresql://... BENCH_FLOOR_REDIS=redis://... \
        uvicorn bench.floor:app --workers N ...
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from app.ids import new_id

TABLE = "bench_floor_messages"
INSERT = f"""
INSERT INTO {TABLE} (id, org_id, conversation_id, direction, recipient_username, from_number,
    to_number, body_ciphertext, status, auto_reply, segments, encoding, media_dropped,
    carrier, carrier_message_id, created_at, updated_at)
VALUES ($1, $2, $3, 'inbound', NULL, $4, $5, $6, 'received', false, 1, 'GSM-7', $7,
    'telnyx', $8, $9, $9)
ON CONFLICT DO NOTHING
"""
# No foreign keys on the floor's table: any fixed ids do.
ORG_ID = uuid.UUID(int=1)
CONVERSATION_ID = uuid.UUID(int=2)
OK = orjson.dumps({"status": "stored"})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(OK)).encode())]

_state: dict[str, Any] = {}


async def _startup() -> None:
    # Up to 20 connections per worker like the app's pool (pool_size=20); opened on
    # demand and closed when idle, so that the floor and the app (both running during
    # the alternating rounds) together stay within max_connections.
    _state["pool"] = await asyncpg.create_pool(
        os.environ["BENCH_FLOOR_DSN"],
        min_size=1,
        max_size=int(os.environ.get("BENCH_FLOOR_POOL", "20")),
        max_inactive_connection_lifetime=2.0,
    )
    _state["redis"] = aioredis.Redis.from_url(os.environ["BENCH_FLOOR_REDIS"])
    _state["prefix"] = os.environ.get("BENCH_FLOOR_PREFIX", "bench:floor:")


async def _shutdown() -> None:
    await _state["pool"].close()
    await _state["redis"].aclose()


async def _respond(send: Any, status: int, body: bytes, headers: list[Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await _respond(send, 200, OK, HEADERS)
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    payload = orjson.loads(b"".join(chunks))["data"]["payload"]
    from_number = payload["from"]["phone_number"]
    to_number = payload["to"][0]["phone_number"]
    text = payload.get("text") or ""
    now = datetime.now(UTC)
    await _state["pool"].execute(
        INSERT,
        new_id(),
        ORG_ID,
        CONVERSATION_ID,
        from_number,
        to_number,
        text.encode(),
        len(payload.get("media") or ()),
        payload["id"],
        now,
    )
    await _state["redis"].set(f"{_state['prefix']}{to_number}:{from_number}", "1", nx=True, ex=30)
    await _respond(send, 200, OK, HEADERS)
