"""Test helpers that act as the service's users do: over HTTP, with tokens."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import phonenumbers

from app.services.phone import fictional_number

OPERATOR_TOKEN = "operator-test-token"


def _valid_area_codes() -> list[str]:
    codes = []
    for ac in range(201, 990):
        n = fictional_number(0, str(ac))
        if phonenumbers.is_valid_number(phonenumbers.parse(n)):
            codes.append(str(ac))
    return codes


_AREA_CODES = _valid_area_codes()
_numbers = (fictional_number(i, ac) for ac in _AREA_CODES for i in range(100))
_lock = __import__("threading").Lock()


def new_number() -> str:
    """A fresh valid E.164 number, never handed out twice in one test run."""
    with _lock:
        return next(_numbers)


_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll until `check` returns something truthy; generous deadline, no speed assumption."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


@dataclass
class Member:
    id: str
    username: str
    token: str
    extension: str | None = None
    outbound_sms_number: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.token)


@dataclass
class Tenant:
    """One organization, driven through the API by its admin."""

    client: httpx.AsyncClient
    id: str
    admin: Member
    users: dict[str, Member] = field(default_factory=dict)

    @classmethod
    async def create(cls, client: httpx.AsyncClient, name: str | None = None) -> Tenant:
        admin_name = unique("admin")
        r = await client.post(
            "/v1/organizations",
            headers=auth(OPERATOR_TOKEN),
            json={"name": name or unique("Clinic "), "admin_username": admin_name},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        admin = Member(body["admin"]["id"], admin_name, body["admin_token"])
        return cls(client, body["id"], admin, {admin_name: admin})

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_: Member | None = None,
        expect: int | None = None,
        **kw: Any,
    ) -> httpx.Response:
        r = await self.client.request(method, path, headers=(as_ or self.admin).headers, **kw)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r

    async def add_number(self, sms_extension: str | None, number: str | None = None) -> str:
        number = number or new_number()
        await self.call(
            "POST",
            "/v1/phone-numbers",
            expect=201,
            json={"number": number, "sms_extension": sms_extension},
        )
        return number

    async def add_user(
        self,
        username: str | None = None,
        *,
        extension: str | None = None,
        sms: bool = False,
        outbound: bool | str = False,
        role: str = "member",
    ) -> Member:
        """A user; `outbound=True` buys a number routed to the user and sets it as outbound."""
        username = username or unique("user")
        r = await self.call(
            "POST",
            "/v1/users",
            expect=201,
            json={"username": username, "extension": extension, "sms_enabled": sms, "role": role},
        )
        user_id = r.json()["id"]
        r = await self.call("POST", f"/v1/users/{user_id}/tokens", expect=201, json={})
        member = Member(user_id, username, r.json()["token"], extension)
        if outbound:
            number = outbound if isinstance(outbound, str) else await self.add_number(extension)
            await self.call(
                "PATCH", f"/v1/users/{user_id}", expect=200, json={"outbound_sms_number": number}
            )
            member.outbound_sms_number = number
        self.users[username] = member
        return member

    async def add_group(
        self, name: str, extension: str, members: list[str], outbound_sms_number: str | None = None
    ) -> dict[str, Any]:
        r = await self.call(
            "POST",
            "/v1/groups",
            expect=201,
            json={
                "name": name,
                "extension": extension,
                "members": members,
                "outbound_sms_number": outbound_sms_number,
            },
        )
        body: dict[str, Any] = r.json()
        return body

    async def set_auto_responder(
        self,
        member: Member,
        text: str,
        enabled: bool = True,
        *,
        schedule: dict[str, Any] | None = None,
        away: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        r = await self.call(
            "PUT",
            "/v1/me/auto-responder",
            as_=member,
            expect=200,
            json={"enabled": enabled, "text": text, "schedule": schedule, "away": away or []},
        )
        body: dict[str, Any] = r.json()
        return body

    async def add_auto_replying_user(
        self, username: str, extension: str, text: str = "We got your message."
    ) -> tuple[Member, str]:
        """An SMS user with an outbound number and the auto-responder on; and that number."""
        member = await self.add_user(username, extension=extension, sms=True, outbound=True)
        await self.set_auto_responder(member, text)
        assert member.outbound_sms_number is not None
        return member, member.outbound_sms_number

    async def conversations(self, member: Member) -> list[dict[str, Any]]:
        r = await self.call("GET", "/v1/conversations", as_=member, expect=200)
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def messages(
        self, member: Member, conversation_id: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        r = await self.call(
            "GET",
            f"/v1/conversations/{conversation_id}/messages",
            as_=member,
            expect=200,
            params={"limit": limit},
        )
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def sms_conversation(self, member: Member, external: str) -> dict[str, Any] | None:
        for conv in await self.conversations(member):
            if conv["external_number"] == external:
                return conv
        return None


def telnyx_inbound_event(
    from_number: str, to_number: str, text: str, message_id: str | None = None, media: int = 0
) -> dict[str, Any]:
    """A Telnyx v2 `message.received` event, as Telnyx documents it."""
    mid = message_id or str(uuid.uuid4())
    return {
        "data": {
            "event_type": "message.received",
            "id": str(uuid.uuid4()),
            "occurred_at": "2026-11-25T10:00:00.000+00:00",
            "record_type": "event",
            "payload": {
                "id": mid,
                "record_type": "message",
                "direction": "inbound",
                "type": "MMS" if media else "SMS",
                "from": {
                    "phone_number": from_number,
                    "carrier": "T-Mobile USA",
                    "line_type": "Wireless",
                },
                "to": [{"phone_number": to_number, "status": "webhook_delivered"}],
                "text": text,
                "media": [
                    {"url": f"https://media.example/{i}.jpg", "content_type": "image/jpeg"}
                    for i in range(media)
                ],
                "received_at": "2026-11-25T10:00:00.000+00:00",
            },
        },
        "meta": {"attempt": 1, "delivered_to": "https://example.invalid/webhooks/telnyx"},
    }


# Schedules chosen relative to now in their own zone, so that tests drive time by what
# they ask for, never by waiting. Asia/Tokyo keeps no daylight saving: an hour there is
# always an hour.
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def open_all_week(timezone: str = "Asia/Tokyo") -> dict[str, Any]:
    """Open at every hour of every day."""
    return {"timezone": timezone, "weekly": {d: [["00:00", "24:00"]] for d in DAYS}, "closed": []}


def closed_today(timezone: str = "Asia/Tokyo") -> dict[str, Any]:
    """Open at every hour of every day, but for closed days from yesterday to tomorrow
    (so that it holds across midnight while a test runs)."""
    today = datetime.now(ZoneInfo(timezone)).date()
    closed = {
        "from": (today - timedelta(days=1)).isoformat(),
        "to": (today + timedelta(days=1)).isoformat(),
        "label": "Closed for the test",
    }
    return {**open_all_week(timezone), "closed": [closed]}


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def hours_around_now(
    open_now: bool, timezone: str = "Asia/Tokyo", hours: int = 3
) -> dict[str, Any]:
    """Weekly hours whose state now is `open_now`: open only from `hours` before now to
    `hours` after (split at midnight), or open at all other times."""
    now = datetime.now(ZoneInfo(timezone)).replace(tzinfo=None, second=0, microsecond=0)
    start, end = now - timedelta(hours=hours), now + timedelta(hours=hours)
    window: dict[str, list[int]] = {}
    day: date = start.date()
    while day <= end.date():
        first = max(start, datetime.combine(day, datetime.min.time()))
        last = min(end, datetime.combine(day + timedelta(days=1), datetime.min.time()))
        midnight = datetime.combine(day, datetime.min.time())
        minutes = [
            int((first - midnight).total_seconds() // 60),
            int((last - midnight).total_seconds() // 60),
        ]
        if minutes[1] > minutes[0]:
            window[DAYS[day.weekday()]] = minutes
        day += timedelta(days=1)
    weekly: dict[str, list[list[str]]] = {}
    for d in DAYS:
        if open_now:
            if d in window:
                weekly[d] = [[_clock(window[d][0]), _clock(window[d][1])]]
            continue
        a, b = window.get(d, [0, 0])
        rest = [(0, a), (b, 24 * 60)] if d in window else [(0, 24 * 60)]
        weekly[d] = [[_clock(x), _clock(y)] for x, y in rest if y > x]
    return {"timezone": timezone, "weekly": weekly, "closed": []}


def away_around_now(minutes_from: int = -60, minutes_until: int = 60) -> list[dict[str, str]]:
    """One away period, from and until these minutes away from now."""
    now = datetime.now(ZoneInfo("UTC"))
    return [
        {
            "from": (now + timedelta(minutes=minutes_from)).isoformat(),
            "until": (now + timedelta(minutes=minutes_until)).isoformat(),
        }
    ]
