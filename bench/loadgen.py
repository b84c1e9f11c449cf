"""Load: files of pre-built HTTP requests, and wrk (a separate process) to replay them."""

from __future__ import annotations

import base64
import random
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import orjson

from bench import dataset

WRK_DIR = Path(__file__).resolve().parent / "wrk"


# ---------------------------------------------------------------------------------
# Raw requests


def raw_request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def write_requests(path: Path, requests: Iterable[bytes]) -> int:
    """The file format replay.lua reads: "<length>\\n<bytes>" per request."""
    count = 0
    with path.open("wb") as out:
        for req in requests:
            out.write(f"{len(req)}\n".encode())
            out.write(req)
            count += 1
    return count


# ---------------------------------------------------------------------------------
# Telnyx webhooks


def telnyx_event(message_id: str, from_number: str, to_number: str, text: str) -> bytes:
    """A Telnyx v2 `message.received` event as Telnyx sends it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime())
    return orjson.dumps(
        {
            "data": {
                "event_type": "message.received",
                "id": str(uuid.uuid4()),
                "occurred_at": now,
                "record_type": "event",
                "payload": {
                    "id": message_id,
                    "record_type": "message",
                    "direction": "inbound",
                    "type": "SMS",
                    "messaging_profile_id": "40017f8e-49bd-4f52-8b8f-1c1a2f2b9a11",
                    "from": {
                        "phone_number": from_number,
                        "carrier": "T-Mobile USA",
                        "line_type": "Wireless",
                    },
                    "to": [{"phone_number": to_number, "status": "webhook_delivered"}],
                    "text": text,
                    "media": [],
                    "parts": 1,
                    "received_at": now,
                },
            },
            "meta": {"attempt": 1, "delivered_to": "https://clinic.example/webhooks/telnyx"},
        }
    )


def signed_webhook(key: nacl.signing.SigningKey, body: bytes, timestamp: int) -> bytes:
    signature = key.sign(f"{timestamp}|".encode() + body).signature
    return raw_request(
        "POST",
        "/webhooks/telnyx",
        {
            "Content-Type": "application/json",
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": str(timestamp),
        },
        body,
    )


@dataclass
class World:
    """What the request generators need to know of the seeded data."""

    size: dataset.Size
    users: list[dict[str, Any]]
    # (conversation id, owner index, external number)
    conversations: list[tuple[str, int, str]]
    hot_conversation_id: str
    hot_owner: int
    by_owner: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, user in enumerate(self.users):
            user["index"] = index
            user["uuid"] = uuid.UUID(user["id"])
            user["org_uuid"] = uuid.UUID(user["org_id"])
        for conv_id, owner, ext in self.conversations:
            self.by_owner.setdefault(owner, []).append((conv_id, ext))


def webhook_pairs(world: World, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """(from, to) for `count` inbound texts, as bursts that repeat one sender.

    A sender texts 1 to 6 times in a row (mean about 3) within a block of 1000
    requests, well inside the 30 s auto-reply window at any rate this runs at: the
    first text of a burst gets the auto-reply (if the user has it on: 4 in 5), the
    rest are rate-limited. 70% of senders already have a conversation with the user,
    30% are new (a new conversation).
    """
    pool = dataset.external_pool(world.size)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        block: list[tuple[str, str]] = []
        while len(block) < 1000:
            owner = rng.randrange(len(world.users))
            numbers = world.users[owner]["numbers"]
            if rng.random() < 0.7 and world.by_owner.get(owner):
                ext = rng.choice(world.by_owner[owner])[1]
            else:
                ext = rng.choice(pool)
            to = numbers[0] if rng.random() < 0.8 else numbers[1]
            block += [(ext, to)] * min(6, 1 + int(rng.expovariate(0.5)))
        rng.shuffle(block)
        pairs += block
    return pairs[:count]


def webhook_requests(
    world: World, key: nacl.signing.SigningKey, count: int, seed: int, marker: str = ""
) -> list[bytes]:
    """Signed webhooks with unique message ids, timestamped now."""
    rng = random.Random(seed)
    now = int(time.time())
    out = []
    for n, (ext, to) in enumerate(webhook_pairs(world, count, rng)):
        text = dataset.pick_text(rng)
        body = telnyx_event(str(uuid.uuid4()), ext, to, f"{text}{marker}" if marker else text)
        out.append(signed_webhook(key, body, now))
        del n
    return out


# ---------------------------------------------------------------------------------
# API requests


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def send_requests(world: World, count: int, seed: int) -> list[bytes]:
    """`POST /v1/messages` to one phone number: 70% to a patient the user already has a
    conversation with, 30% to a new one. The users take turns (each once in every run of
    `len(users)` requests, in a shuffled order): a user's number hands the carrier one
    message a second, so the outbox drains as soon as its busiest number's share allows,
    and an even share is the least any load of that size leaves behind."""
    rng = random.Random(seed)
    pool = dataset.external_pool(world.size)
    out = []
    turns: list[int] = []
    for _ in range(count):
        if not turns:
            turns = list(range(len(world.users)))
            rng.shuffle(turns)
        owner = turns.pop()
        if rng.random() < 0.7 and world.by_owner.get(owner):
            ext = rng.choice(world.by_owner[owner])[1]
        else:
            ext = rng.choice(pool)
        body = orjson.dumps({"to": [{"phone_number": ext}], "body": dataset.pick_text(rng)})
        headers = {**_auth(world.users[owner]["token"]), "Content-Type": "application/json"}
        out.append(raw_request("POST", "/v1/messages", headers, body))
    return out


def history_requests(world: World, count: int, seed: int, hot: bool) -> list[bytes]:
    """`GET /v1/conversations/{id}/messages?limit=50`: the hot conversation (100,000
    messages in the full set), or random conversations, each read by its owner."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if hot:
            conv_id, owner = world.hot_conversation_id, world.hot_owner
        else:
            conv_id, owner, _ext = rng.choice(world.conversations)
        path = f"/v1/conversations/{conv_id}/messages?limit=50"
        out.append(raw_request("GET", path, _auth(world.users[owner]["token"])))
    return out


# ---------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    wrapped: int
    statuses: dict[str, int]
    sample_error: str
    output: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        lat = self.latency_us
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(lat["p50"] / 1000, 2),
            "p90_ms": round(lat["p90"] / 1000, 2),
            "p99_ms": round(lat["p99"] / 1000, 2),
            "max_ms": round(lat["max"] / 1000, 2),
            "mean_ms": round(lat["mean"] / 1000, 2),
            "errors": self.error_count,
            "error_kinds": self.errors,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "wrapped": self.wrapped,
            "statuses": self.statuses,
            "sample_error": self.sample_error,
        }


def run_wrk(
    url: str,
    request_file: Path,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    mean_delay_ms: float | None = None,
    timeout_s: int = 10,
) -> WrkResult:
    """wrk replaying `request_file` against `url` (its own process), parsed."""
    script = WRK_DIR / ("replay_paced.lua" if mean_delay_ms else "replay.lua")
    args: Sequence[str] = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(request_file),
        str(threads),
    ]
    if mean_delay_ms:
        args = [*args, f"{mean_delay_ms:.3f}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    line = next(
        (ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")),
        None,
    )
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    data = orjson.loads(line.removeprefix("BENCH_JSON "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"],
        latency_us=data["latency_us"],
        wrapped=data["wrapped"],
        statuses=data.get("statuses", {}),
        sample_error=data.get("sample_error", ""),
        output=proc.stdout,
    )
