"""Routing: where an inbound SMS goes, whom a send reaches, and what in an organization's
routing would confuse people.

Inbound. Each number's route is read once and kept per process.

A route is what the inbound rules need to know about the number texted: its
organization, the user or group its SMS extension names, that user's auto-reply
settings and hours, the group's outbound number, after-hours reply and members (the
audience of its events), the organization's HELP text. Schedules are kept parsed, so
deciding costs no query. Reading a route takes one query; the cache keeps it by number.

A cached route is never trusted blindly: it carries the organization's
`directory_version` from when it was read, and the statement that stores an inbound
message checks that version in the same snapshot (`inbound.store`). Triggers bump the
version on every change to numbers, extensions, users, groups, members, the HELP text,
auto-responder hours or after-hours replies (migrations 0002 and 0004), so a stale route
stores nothing: it is read again and the message is routed by the new one. Numbers that
route nowhere are not cached.

Sends. `resolve_recipients` turns the addresses of a send into the parties it reaches
(a username, an extension of a user or of a group fanned out to its members, a phone
number), all checked before anything is stored.

The check. `check_routing` lists what an admin should fix: outbound numbers whose
replies go to someone else, numbers routed to no one, and so on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import lazyload

from app.crypto import Keyring
from app.errors import Conflict, Invalid
from app.infra.caches import LruCache
from app.models import Extension, Group, GroupMember, Organization, PhoneNumber, User
from app.services import opt_out
from app.services.after_hours import AfterHoursReply, stored_after_hours
from app.services.auto_responder import stored_hours
from app.services.outbound_numbers import outbound_number_for
from app.services.phone import InvalidPhoneNumber, is_textable_destination, normalize_e164
from app.services.schedules import AwayPeriod, Schedule
from app.services.sealing import open_auto_reply


@dataclass(frozen=True, slots=True)
class RouteUser:
    id: uuid.UUID
    username: str
    sms_enabled: bool
    outbound_sms_number: str | None
    auto_reply_enabled: bool
    auto_reply_text: str
    # Whether the user ever set up an auto-responder (no text stored otherwise).
    auto_reply_set_up: bool
    # When the auto-responder answers (None: at all hours).
    auto_reply_schedule: Schedule | None
    auto_reply_away: tuple[AwayPeriod, ...]


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
    # The group's: its outbound number, its after-hours reply (None: it has none).
    group_outbound_sms_number: str | None
    after_hours: AfterHoursReply | None

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
            schedule, away = stored_hours(user.auto_reply_schedule, user.auto_reply_away)
            route_user = RouteUser(
                id=user.id,
                username=user.username,
                sms_enabled=user.sms_enabled,
                outbound_sms_number=user.outbound_sms_number,
                auto_reply_enabled=user.auto_reply_enabled,
                auto_reply_text=open_auto_reply(keyring, user.id, user.auto_reply_ciphertext),
                auto_reply_set_up=user.auto_reply_ciphertext is not None,
                auto_reply_schedule=schedule,
                auto_reply_away=away,
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
                group_outbound_sms_number=group.outbound_sms_number if group else None,
                after_hours=stored_after_hours(keyring, group) if group else None,
            )
        )
    return routes


class RouteCache:
    """number -> Route; only routes that deliver."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._routes: LruCache[str, Route] = LruCache(max_entries)

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
        self._facts: LruCache[tuple[uuid.UUID, str], SenderFacts] = LruCache(max_entries)

    def get(self, org_id: uuid.UUID, number: str) -> SenderFacts:
        return self._facts.get((org_id, number)) or SenderFacts()

    def put(self, org_id: uuid.UUID, number: str, facts: SenderFacts) -> None:
        if facts == SenderFacts():
            self._facts.pop((org_id, number))
        else:
            self._facts.put((org_id, number), facts)


# --------------------------------------------------------------------------- sends


@dataclass(frozen=True, slots=True)
class Address:
    """One recipient as a send names it: exactly one of a username, an extension (a
    user's or a group's) or a phone number."""

    username: str | None = None
    extension: str | None = None
    phone_number: str | None = None


@dataclass(frozen=True, slots=True)
class Party:
    """Someone a send reaches: a user of the organization, or an external number."""

    user: User | None = None
    number: str | None = None


@dataclass
class _Problems:
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, index: int, code: str, message: str) -> None:
        self.items.append({"index": index, "code": code, "message": message})


async def resolve_recipients(
    session: AsyncSession, sender: User, addresses: Sequence[Address]
) -> list[Party]:
    """Every party a send reaches (routing rules 1, 2 and 5), all checked before anything
    is stored: one bad recipient refuses the whole send, with per-recipient details."""
    problems = _Problems()
    parties: list[Party] = []
    seen_users: set[uuid.UUID] = set()
    seen_numbers: set[str] = set()
    sms_wanted = False
    for index, address in enumerate(addresses):
        if address.phone_number:
            try:
                number = normalize_e164(address.phone_number)
            except InvalidPhoneNumber as exc:
                problems.add(
                    index,
                    "invalid_phone_number",
                    f"'{address.phone_number}' is not a valid phone number: {exc}",
                )
                continue
            if not is_textable_destination(number):
                problems.add(index, "not_textable", f"{number} cannot receive text messages.")
                continue
            sms_wanted = True
            if number not in seen_numbers:
                seen_numbers.add(number)
                parties.append(Party(number=number))
            continue
        users: list[User] = []
        if address.username:
            user = await session.scalar(
                select(User).where(
                    User.org_id == sender.org_id,
                    User.username == address.username,
                    User.deactivated_at.is_(None),
                )
            )
            if user is None:
                problems.add(
                    index,
                    "unknown_recipient",
                    f"No user '{address.username}' in this organization.",
                )
                continue
            if user.id == sender.id:
                problems.add(index, "cannot_message_self", "You cannot send a message to yourself.")
                continue
            users = [user]
        else:
            entry = await session.get(Extension, (sender.org_id, address.extension))
            if entry is None:
                problems.add(
                    index,
                    "unknown_recipient",
                    f"No user or group has extension {address.extension}.",
                )
                continue
            if entry.user_id is not None:
                user = await session.get(User, entry.user_id)
                if user is None or user.deactivated_at is not None:
                    problems.add(
                        index,
                        "unknown_recipient",
                        f"No user or group has extension {address.extension}.",
                    )
                    continue
                if user.id == sender.id:
                    problems.add(
                        index, "cannot_message_self", "You cannot send a message to yourself."
                    )
                    continue
                users = [user]
            else:
                # A group's extension fans out to its members; the sender is never
                # its own recipient.
                users = list(
                    (
                        await session.scalars(
                            select(User)
                            .join(GroupMember, GroupMember.user_id == User.id)
                            .where(
                                GroupMember.group_id == entry.group_id,
                                User.id != sender.id,
                                User.deactivated_at.is_(None),
                            )
                            .order_by(User.username)
                        )
                    ).all()
                )
                if not users:
                    problems.add(
                        index,
                        "empty_group",
                        f"The group at extension {address.extension} has no other members.",
                    )
                    continue
        for user in users:
            if user.id not in seen_users:
                seen_users.add(user.id)
                parties.append(Party(user=user))
    if sms_wanted and not problems.items:
        outbound_number_for(sender=sender)
        for party in parties:
            if party.number and await opt_out.is_opted_out(session, sender.org_id, party.number):
                problems.add(
                    next(
                        i
                        for i, a in enumerate(addresses)
                        if a.phone_number and _same_number(a.phone_number, party.number)
                    ),
                    "recipient_opted_out",
                    f"{party.number} has opted out of texts from this organization (STOP).",
                )
        if problems.items:
            raise Conflict(
                "A recipient has opted out of texts from this organization.",
                code="recipient_opted_out",
                details=problems.items,
            )
    if problems.items:
        raise Invalid(
            "Some recipients cannot be reached; nothing was sent.",
            code="invalid_recipients",
            details=problems.items,
        )
    return parties


def _same_number(raw: str, e164: str) -> bool:
    try:
        return normalize_e164(raw) == e164
    except InvalidPhoneNumber:
        return False


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    subject_type: str
    subject_id: uuid.UUID
    subject: str


async def check_routing(session: AsyncSession, org_id: uuid.UUID) -> list[Problem]:
    """Routing that would confuse people: replies that come back to someone else, and so on."""
    users = (
        await session.scalars(
            select(User)
            .where(User.org_id == org_id, User.deactivated_at.is_(None))
            .order_by(User.id)
        )
    ).all()
    groups = (
        await session.scalars(
            select(Group)
            .where(Group.org_id == org_id, Group.deleted_at.is_(None))
            .order_by(Group.id)
        )
    ).all()
    numbers = (
        await session.scalars(
            select(PhoneNumber).where(PhoneNumber.org_id == org_id).order_by(PhoneNumber.number)
        )
    ).all()
    route_of = {n.number: n.sms_extension for n in numbers}
    user_by_ext = {u.extension: u for u in users if u.extension}
    group_by_ext = {g.extension: g for g in groups if g.extension}
    problems: list[Problem] = []

    for u in users:
        if u.sms_enabled and not u.outbound_sms_number:
            problems.append(
                Problem(
                    "sms_enabled_without_outbound_number",
                    f"{u.username} has SMS enabled but no outbound number: their texts are refused.",
                    "user",
                    u.id,
                    u.username,
                )
            )
        problems.extend(
            _replies_elsewhere(
                "user", u.id, u.username, u.username, u.outbound_sms_number, u.extension, route_of
            )
        )
    for g in groups:
        if not g.memberships:
            problems.append(
                Problem(
                    "group_has_no_members",
                    f"Group {g.name} has no members: its texts reach no one.",
                    "group",
                    g.id,
                    g.name,
                )
            )
        problems.extend(
            _replies_elsewhere(
                "group", g.id, g.name, f"Group {g.name}", g.outbound_sms_number, g.extension, route_of
            )
        )
    for n in numbers:
        if n.sms_extension is None:
            problems.append(
                Problem(
                    "number_unrouted",
                    f"{n.number} routes to no one: its texts are kept unrouted.",
                    "phone_number",
                    n.id,
                    n.number,
                )
            )
        elif n.sms_extension not in user_by_ext and n.sms_extension not in group_by_ext:
            problems.append(
                Problem(
                    "extension_not_found",
                    f"{n.number} routes to extension {n.sms_extension}, which no user or group has.",
                    "phone_number",
                    n.id,
                    n.number,
                )
            )
        elif (target := user_by_ext.get(n.sms_extension)) and not target.sms_enabled:
            problems.append(
                Problem(
                    "routes_to_sms_disabled_user",
                    f"{n.number} routes to {target.username}, who has SMS disabled and cannot reply.",
                    "phone_number",
                    n.id,
                    n.number,
                )
            )
    return problems


def _replies_elsewhere(
    subject_type: str,
    subject_id: uuid.UUID,
    subject: str,
    who: str,
    outbound: str | None,
    extension: str | None,
    route_of: dict[str, str | None],
) -> list[Problem]:
    """A user or group that texts from a number whose replies go to someone else."""
    if not outbound:
        return []
    routed = route_of.get(outbound)
    if routed is not None and routed == extension:
        return []
    where = f"extension {routed}" if routed else "no one"
    return [
        Problem(
            "outbound_number_routes_elsewhere",
            f"{who} texts from {outbound}, but replies to it go to {where}.",
            subject_type,
            subject_id,
            subject,
        )
    ]
