"""Webhook-to-SSE latency, measured from a process of its own.

    python -m bench.sse_client <config.json> <result.json>

Opens the configured `GET /v1/events` streams (raw asyncio sockets, chunked HTTP/1.1),
waits until every stream is up, then posts signed Telnyx webhooks at a steady rate to
numbers of the users that hold streams, each text carrying a marker `#m<n>#`. The
latency of a delivery is the time from just before the webhook's POST to the moment
the `message.created` event carrying that marker arrives on a stream of that user.
Writes percentiles, counts and errors as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import orjson

from bench.loadgen import telnyx_event

MARKER = re.compile(rb"#m(\d+)#")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class Stream:
    """One SSE connection as one user; reports each marked event it receives."""

    def __init__(self, client: Client, user: int, token: str) -> None:
        self.client = client
        self.user = user
        self.token = token
        self.connected = asyncio.Event()
        self.error: str | None = None
        self.events = 0

    async def run(self, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            self.error = f"connect: {exc!r}"
            self.connected.set()
            return
        try:
            writer.write(
                (
                    f"GET /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                self.error = f"status {status.decode()}"
                return
            chunked = b"transfer-encoding: chunked" in head.lower()
            buffer = b""
            while True:
                if chunked:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        break
                    data = (await reader.readexactly(size + 2))[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                # Any bytes mean the stream is up (the first is the `retry:` field).
                self.connected.set()
                buffer += data
                while True:
                    end = buffer.find(b"\r\n\r\n")
                    sep = 4
                    if end < 0:
                        end, sep = buffer.find(b"\n\n"), 2
                    if end < 0:
                        break
                    self._event(buffer[:end])
                    buffer = buffer[end + sep :]
            self.error = self.error or "stream ended"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.connected.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _event(self, raw: bytes) -> None:
        if b"event: message.created" not in raw:
            return
        self.events += 1
        found = MARKER.search(raw)
        if found:
            self.client.delivered(int(found.group(1)), self.user)


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sent_at: dict[int, float] = {}
        self.target_of: dict[int, int] = {}
        self.latencies: list[float] = []
        self.received: dict[int, int] = {}
        self.late_or_unknown = 0
        self.expected = 0
        self.streams_of: dict[int, int] = {}

    def delivered(self, marker: int, user: int) -> None:
        at = time.perf_counter()
        sent = self.sent_at.get(marker)
        if sent is None or self.target_of.get(marker) != user:
            self.late_or_unknown += 1
            return
        self.latencies.append((at - sent) * 1000)
        self.received[marker] = self.received.get(marker, 0) + 1

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        host, port = "127.0.0.1", int(cfg["port"])
        streams = [Stream(self, s["user"], s["token"]) for s in cfg["streams"]]
        for s in streams:
            self.streams_of[s.user] = self.streams_of.get(s.user, 0) + 1
        opening = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for n, stream in enumerate(streams):
            tasks.append(asyncio.create_task(stream.run(host, port)))
            if n % 50 == 49:
                await asyncio.sleep(0.01)  # spread the connects a little
        # A stream the app cannot serve answers an error (or nothing) eventually;
        # give up on those after `open_timeout` and measure with the rest.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.connected.wait() for s in streams)),
                float(cfg.get("open_timeout", 90)),
            )
        open_seconds = time.perf_counter() - opening
        for s in streams:
            if not s.connected.is_set():
                s.error = "no response to the stream request"
        failed_ids = {id(s) for s in streams if s.error}
        failed = [s.error for s in streams if s.error]
        # The app subscribes a stream just after sending its first bytes: let it settle.
        await asyncio.sleep(float(cfg.get("settle", 2.0)))

        key = nacl.signing.SigningKey(bytes.fromhex(cfg["signing_key"]))
        rng = random.Random(7)
        targets = cfg["targets"]
        externals = cfg["externals"]
        rate = float(cfg["rate"])
        total = int(rate * float(cfg["duration"]))
        post_ms: list[float] = []
        post_errors: list[str] = []
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}", limits=limits, timeout=45
        ) as http:

            async def post(n: int, target: dict[str, Any]) -> None:
                body = telnyx_event(
                    str(uuid.uuid4()),
                    rng.choice(externals),
                    target["number"],
                    f"Bench message {n} #m{n}#",
                )
                ts = int(time.time())
                signature = key.sign(f"{ts}|".encode() + body).signature
                headers = {
                    "content-type": "application/json",
                    "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
                    "telnyx-timestamp": str(ts),
                }
                self.target_of[n] = target["user"]
                self.expected += self.streams_of.get(target["user"], 0)
                started = time.perf_counter()
                self.sent_at[n] = started
                try:
                    r = await http.post("/webhooks/telnyx", content=body, headers=headers)
                    if r.status_code != 200:
                        post_errors.append(f"status {r.status_code}")
                except httpx.HTTPError as exc:
                    post_errors.append(type(exc).__name__)
                post_ms.append((time.perf_counter() - started) * 1000)

            start = time.perf_counter()
            posts = []
            for n in range(total):
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                posts.append(asyncio.create_task(post(n, rng.choice(targets))))
            # Bounded: when the app cannot answer (e.g. its pool is exhausted), posts
            # queue behind each other; those still unanswered then count as errors.
            _, pending = await asyncio.wait(posts, timeout=float(cfg.get("post_wait", 60)))
            for task in pending:
                task.cancel()
            post_errors += ["unanswered"] * len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
            send_seconds = time.perf_counter() - start
        grace_until = time.perf_counter() + float(cfg.get("grace", 10.0))
        while sum(self.received.values()) < self.expected and time.perf_counter() < grace_until:
            await asyncio.sleep(0.05)
        dropped = [s.error for s in streams if s.error and id(s) not in failed_ids]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        got = sum(self.received.values())
        lat = self.latencies
        return {
            "streams": len(streams),
            "streams_open": len(streams) - len(failed),
            "streams_failed": len(failed),
            "streams_dropped": len(dropped),
            "stream_errors": sorted(set(failed + dropped))[:5],
            "open_seconds": round(open_seconds, 2),
            "webhooks": total,
            "webhook_rate": round(total / send_seconds, 1) if send_seconds else 0,
            "webhook_errors": len(post_errors),
            # What went wrong, by kind ("status 503", "ReadTimeout", "unanswered").
            "webhook_error_kinds": {kind: post_errors.count(kind) for kind in set(post_errors)},
            "webhook_p50_ms": round(percentile(post_ms, 50), 2),
            "webhook_p99_ms": round(percentile(post_ms, 99), 2),
            "deliveries_expected": self.expected,
            "deliveries": got,
            "missing": self.expected - got,
            "unexpected": self.late_or_unknown,
            "p50_ms": round(percentile(lat, 50), 2),
            "p90_ms": round(percentile(lat, 90), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(max(lat), 2) if lat else None,
        }


def main() -> None:
    config = orjson.loads(Path(sys.argv[1]).read_bytes())
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(Client(config).run())
    Path(sys.argv[2]).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
