"""Where an inbound SMS goes: each number's route, read once and kept per process.

A route is what the inbound rules need to know about the number texted: its
organization, the user or group its SMS extension names, that user's auto-reply
settings, the group's members (the audience of its events), the organization's HELP
text. Reading it takes one query; the cache keeps it by number.

A cached route is never trusted blindly: it carries the organization's
`directory_version` from when it was read, and the statement that stores an inbound
message checks that version in the same snapshot (`inbound.store`). Triggers bump the
version on every change to numbers, extensions, users, groups, members or the HELP
text (migration 0002), so a stale route stores nothing: it is read again and the
message is routed by the new one. Numbers that route nowhere are not cached.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import lazyload

from app.crypto import Keyring
from app.models import Extension, Group, GroupMember, Organization, PhoneNumber, User
from app.services.sealing import open_auto_reply

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class RouteUser:
    id: uuid.UUID
    username: str
    sms_enabled: bool
    outbound_sms_number: str | None
    auto_reply_enabled: bool
    auto_reply_text: str


@dataclass(frozen=True, slots=True)
class Route:
    number: str
    org_id: uuid.UUID
    version: int
    sms_extension: str | None
    user: RouteUser | None
    group_id: uuid.UUID | None
    # User ids (strings) who see the conversations this route creates.
    audience: tuple[str, ...]
    help_text: str | None

    @property
    def unrouted_reason(self) -> str | None:
        """Why an SMS to this number cannot be delivered to anyone, if it cannot."""
        if self.sms_extension is None:
            return "no_route"
        if self.user is None and self.group_id is None:
            return "extension_not_found"
        return None


async def load_routes(
    session: AsyncSession, keyring: Keyring, number: str | None = None, limit: int = 0
) -> list[Route]:
    """Routes as stored now: of `number` (none if no organization owns it), or of up to
    `limit` numbers, newest first (to warm a cache at start-up)."""
    stmt = (
        select(PhoneNumber, User, Group, Organization.directory_version, Organization.help_text)
        .join(Organization, Organization.id == PhoneNumber.org_id)
        .outerjoin(
            Extension,
            (Extension.org_id == PhoneNumber.org_id)
            & (Extension.extension == PhoneNumber.sms_extension),
        )
        .outerjoin(User, (User.id == Extension.user_id) & User.deactivated_at.is_(None))
        .outerjoin(Group, (Group.id == Extension.group_id) & Group.deleted_at.is_(None))
        .options(
            lazyload(User.extension_entry),
            lazyload(Group.extension_entry),
            lazyload(Group.memberships),
        )
    )
    if number is not None:
        stmt = stmt.where(PhoneNumber.number == number)
    else:
        stmt = stmt.order_by(PhoneNumber.created_at.desc()).limit(limit)
    rows = (await session.execute(stmt)).all()
    group_ids = {group.id for _, _, group, _, _ in rows if group is not None}
    members: dict[uuid.UUID, list[str]] = {g: [] for g in group_ids}
    if group_ids:
        found = await session.execute(
            select(GroupMember.group_id, GroupMember.user_id).where(
                GroupMember.group_id.in_(group_ids)
            )
        )
        for group_id, user_id in found:
            members[group_id].append(str(user_id))
    routes = []
    for phone, user, group, version, help_text in rows:
        route_user = None
        audience: tuple[str, ...] = ()
        if user is not None:
            route_user = RouteUser(
                id=user.id,
                username=user.username,
                sms_enabled=user.sms_enabled,
                outbound_sms_number=user.outbound_sms_number,
                auto_reply_enabled=user.auto_reply_enabled,
                auto_reply_text=open_auto_reply(keyring, user.id, user.auto_reply_ciphertext),
            )
            audience = (str(user.id),)
        elif group is not None:
            audience = tuple(sorted(members[group.id]))
        routes.append(
            Route(
                number=phone.number,
                org_id=phone.org_id,
                version=version,
                sms_extension=phone.sms_extension,
                user=route_user,
                group_id=group.id if group is not None else None,
                audience=audience,
                help_text=help_text,
            )
        )
    return routes


class _Lru(Generic[K, V]):
    """A bounded map, least recently used out first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)


class RouteCache:
    """number -> Route; only routes that deliver."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._routes: _Lru[str, Route] = _Lru(max_entries)

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, number: str) -> Route | None:
        return self._routes.get(number)

    def put(self, route: Route) -> None:
        if route.unrouted_reason is not None:
            self._routes.pop(route.number)
        else:
            self._routes.put(route.number, route)

    def forget(self, number: str) -> None:
        self._routes.pop(number)

    @property
    def capacity(self) -> int:
        return self._routes.max_entries


@dataclass(frozen=True, slots=True)
class SenderFacts:
    """What the store found about a sender: one of our numbers? opted out of the org?"""

    internal: bool = False
    opted_out: bool = False


class SenderFactsCache:
    """(org, external number) -> the facts last seen, for senders that are not the
    common case (an outside number that has not opted out). A guess only: the store
    checks it in the same statement and answers with the truth when it was wrong."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._facts: _Lru[tuple[uuid.UUID, str], SenderFacts] = _Lru(max_entries)

    def get(self, org_id: uuid.UUID, number: str) -> SenderFacts:
        return self._facts.get((org_id, number)) or SenderFacts()

    def put(self, org_id: uuid.UUID, number: str, facts: SenderFacts) -> None:
        if facts == SenderFacts():
            self._facts.pop((org_id, number))
        else:
            self._facts.put((org_id, number), facts)
