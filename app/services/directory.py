"""Provisioning: organizations, users, tokens, groups, phone numbers and their routing."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.errors import Conflict, Invalid, NotFound
from app.models import (
    ApiToken,
    Extension,
    Group,
    GroupMember,
    Organization,
    PhoneNumber,
    User,
    utcnow,
)
from app.security import hash_token, new_token
from app.services import audit
from app.services.pagination import fetch_page
from app.services.phone import InvalidPhoneNumber, normalize_e164
from app.services.sealing import open_auto_reply, seal_auto_reply

# ---------------------------------------------------------------------------
# Shared checks


def parse_number(raw: str, field: str) -> str:
    """A phone number in E.164, or a 422 that names the field."""
    try:
        return normalize_e164(raw)
    except InvalidPhoneNumber as exc:
        raise Invalid(
            f"'{raw}' is not a valid phone number: {exc}",
            code="invalid_phone_number",
            details=[{"field": field, "value": raw}],
        ) from None


async def _commit(session: AsyncSession, conflict_message: str, code: str) -> None:
    """Commit, turning a unique-constraint race into the same 409 the checks give."""
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(conflict_message, code=code) from None


async def _ensure_extension_free(
    session: AsyncSession,
    org_id: uuid.UUID,
    extension: str,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> None:
    existing = await session.get(Extension, (org_id, extension))
    if existing is None:
        return
    if (user_id and existing.user_id == user_id) or (group_id and existing.group_id == group_id):
        return
    owner = "a user" if existing.user_id else "a group"
    raise Conflict(
        f"Extension {extension} is already used by {owner} of this organization.",
        code="extension_taken",
        details={"extension": extension},
    )


async def _set_extension(
    session: AsyncSession,
    org_id: uuid.UUID,
    extension: str | None,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> None:
    """Give a user or group exactly this extension (or none)."""
    owner_col = Extension.user_id if user_id else Extension.group_id
    owner_id = user_id or group_id
    if extension is not None:
        await _ensure_extension_free(session, org_id, extension, user_id=user_id, group_id=group_id)
    await session.execute(
        delete(Extension).where(
            Extension.org_id == org_id,
            owner_col == owner_id,
            Extension.extension != (extension or ""),
        )
    )
    if extension is not None and await session.get(Extension, (org_id, extension)) is None:
        session.add(
            Extension(org_id=org_id, extension=extension, user_id=user_id, group_id=group_id)
        )
    await session.flush()


async def _owned_number(session: AsyncSession, org_id: uuid.UUID, raw: str, field: str) -> str:
    """An outbound number must be one of the organization's own numbers."""
    number = parse_number(raw, field)
    owned = await session.scalar(
        select(PhoneNumber.id).where(PhoneNumber.org_id == org_id, PhoneNumber.number == number)
    )
    if owned is None:
        raise Invalid(
            f"{number} is not a phone number of this organization; add it first.",
            code="number_not_owned",
            details=[{"field": field, "value": number}],
        )
    return number


# ---------------------------------------------------------------------------
# Organizations


@dataclass(frozen=True)
class CreatedOrganization:
    org: Organization
    admin: User
    admin_token: str


async def create_organization(
    session: AsyncSession, *, name: str, admin_username: str, actor: str = "operator"
) -> CreatedOrganization:
    """A new tenant with its first admin and that admin's token (shown once)."""
    org = Organization(name=name)
    session.add(org)
    await session.flush()
    admin = User(org_id=org.id, username=admin_username, role="admin")
    session.add(admin)
    await session.flush()
    token = new_token()
    session.add(
        ApiToken(org_id=org.id, user_id=admin.id, token_hash=hash_token(token), name="admin")
    )
    audit.record(
        session,
        org_id=org.id,
        actor=actor,
        action="organization.create",
        target_type="organization",
        target_id=org.id,
        changes={"name": name, "admin_username": admin_username},
    )
    await session.commit()
    return CreatedOrganization(org=org, admin=admin, admin_token=token)


# ---------------------------------------------------------------------------
# Users


async def get_user(session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> User:
    """An active user of this organization; 404 for anything else, another org's included."""
    user = await session.scalar(
        select(User).where(User.id == user_id, User.org_id == org_id, User.deactivated_at.is_(None))
    )
    if user is None:
        raise NotFound("No such user in this organization.", code="user_not_found")
    return user


async def list_users(
    session: AsyncSession, org_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[User], str | None]:
    """The organization's active users, oldest first."""
    return await fetch_page(
        session,
        select(User).where(User.org_id == org_id, User.deactivated_at.is_(None)),
        User.id,
        limit,
        cursor,
    )


async def create_user(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    *,
    username: str,
    display_name: str | None,
    role: str,
    extension: str | None,
    sms_enabled: bool,
) -> User:
    """A new user; the username and extension must be free in the organization."""
    existing = (
        await session.execute(
            select(User.deactivated_at).where(User.org_id == org_id, User.username == username)
        )
    ).first()
    if existing is not None:
        hint = " (by a deactivated user, whose history keeps the name)" if existing[0] else ""
        raise Conflict(
            f"The username '{username}' is already taken{hint}.",
            code="username_taken",
            details={"username": username},
        )
    if extension is not None:
        await _ensure_extension_free(session, org_id, extension)
    user = User(
        org_id=org_id,
        username=username,
        display_name=display_name,
        role=role,
        sms_enabled=sms_enabled,
    )
    session.add(user)
    await session.flush()
    if extension is not None:
        await _set_extension(session, org_id, extension, user_id=user.id)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="user.create",
        target_type="user",
        target_id=user.id,
        changes={
            "username": username,
            "role": role,
            "extension": extension,
            "sms_enabled": sms_enabled,
        },
    )
    await _commit(session, "The username or extension was taken meanwhile.", "conflict")
    await session.refresh(user, ["extension_entry"])
    return user


async def update_user(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    user_id: uuid.UUID,
    changes: dict[str, Any],
) -> User:
    """Apply a PATCH: only the fields given change; null clears extension or outbound number."""
    user = await get_user(session, org_id, user_id)
    if changes.get("role") not in (None, "admin") and user.role == "admin":
        await _ensure_another_admin(session, org_id, user)
    before = {k: getattr(user, k) for k in changes}
    if "extension" in changes:
        await _set_extension(session, org_id, changes["extension"], user_id=user.id)
    if "outbound_sms_number" in changes:
        raw = changes["outbound_sms_number"]
        changes["outbound_sms_number"] = (
            None
            if raw is None
            else await _owned_number(session, org_id, raw, "outbound_sms_number")
        )
        user.outbound_sms_number = changes["outbound_sms_number"]
    for field in ("display_name", "role", "sms_enabled"):
        if field in changes:
            if changes[field] is None and field != "display_name":
                raise Invalid(
                    f"'{field}' cannot be null.",
                    code="validation_error",
                    details=[{"field": field}],
                )
            setattr(user, field, changes[field])
    user.updated_at = utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="user.update",
        target_type="user",
        target_id=user.id,
        changes={k: {"from": before[k], "to": changes[k]} for k in changes},
    )
    await _commit(session, "The extension was taken meanwhile.", "extension_taken")
    await session.refresh(user, ["extension_entry"])
    return user


async def deactivate_user(
    session: AsyncSession, org_id: uuid.UUID, actor: str, user_id: uuid.UUID
) -> None:
    """Deactivate: tokens revoked, extension and group seats released, history kept."""
    user = await get_user(session, org_id, user_id)
    if user.role == "admin":
        await _ensure_another_admin(session, org_id, user)
    now = utcnow()
    user.deactivated_at = now
    user.outbound_sms_number = None
    await session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.execute(delete(Extension).where(Extension.user_id == user.id))
    await session.execute(delete(GroupMember).where(GroupMember.user_id == user.id))
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="user.deactivate",
        target_type="user",
        target_id=user.id,
        changes={"username": user.username},
    )
    await session.commit()


async def _ensure_another_admin(session: AsyncSession, org_id: uuid.UUID, user: User) -> None:
    """Refuse to demote or deactivate the organization's last active admin.

    The organization's row is locked first, so two admins demoting each other at once
    are decided one after the other (the second sees the first's change)."""
    await session.execute(
        select(Organization.id).where(Organization.id == org_id).with_for_update()
    )
    others = await session.scalar(
        select(func.count(User.id)).where(
            User.org_id == org_id,
            User.role == "admin",
            User.deactivated_at.is_(None),
            User.id != user.id,
        )
    )
    if not others:
        raise Conflict(
            f"{user.username} is the organization's last admin; make someone else an admin first.",
            code="last_admin",
            details={"user_id": str(user.id)},
        )


async def create_token(
    session: AsyncSession, org_id: uuid.UUID, actor: str, user_id: uuid.UUID, name: str | None
) -> tuple[ApiToken, str]:
    """A new token for a user; the plain token is returned once and never stored."""
    user = await get_user(session, org_id, user_id)
    token = new_token()
    row = ApiToken(org_id=org_id, user_id=user.id, token_hash=hash_token(token), name=name)
    session.add(row)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="token.create",
        target_type="user",
        target_id=user.id,
        changes={"name": name},
    )
    await session.commit()
    return row, token


async def revoke_token(
    session: AsyncSession, org_id: uuid.UUID, actor: str, user_id: uuid.UUID, token_id: uuid.UUID
) -> None:
    """Revoke one of a user's tokens."""
    user = await get_user(session, org_id, user_id)
    row = await session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id)
    )
    if row is None:
        raise NotFound("No such token for this user.", code="token_not_found")
    row.revoked_at = row.revoked_at or utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="token.revoke",
        target_type="user",
        target_id=user.id,
        changes={"token_id": str(token_id)},
    )
    await session.commit()


async def get_auto_responder(
    keyring: Keyring, session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[bool, str]:
    """A user's auto-responder: enabled, and its text."""
    user = await get_user(session, org_id, user_id)
    return user.auto_reply_enabled, open_auto_reply(keyring, user.id, user.auto_reply_ciphertext)


async def set_auto_responder(
    keyring: Keyring,
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    user_id: uuid.UUID,
    *,
    enabled: bool,
    text: str,
) -> tuple[bool, str]:
    """Replace a user's auto-responder."""
    user = await get_user(session, org_id, user_id)
    user.auto_reply_enabled = enabled
    user.auto_reply_ciphertext = seal_auto_reply(keyring, user.id, text)
    user.updated_at = utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="auto_responder.set",
        target_type="user",
        target_id=user.id,
        changes={"enabled": enabled},
    )
    await session.commit()
    return enabled, text


# ---------------------------------------------------------------------------
# Groups


async def get_group(session: AsyncSession, org_id: uuid.UUID, group_id: uuid.UUID) -> Group:
    """A group of this organization; 404 for anything else."""
    group = await session.scalar(
        select(Group).where(
            Group.id == group_id, Group.org_id == org_id, Group.deleted_at.is_(None)
        )
    )
    if group is None:
        raise NotFound("No such group in this organization.", code="group_not_found")
    return group


async def list_groups(
    session: AsyncSession, org_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Group], str | None]:
    """The organization's groups, oldest first."""
    return await fetch_page(
        session,
        select(Group).where(Group.org_id == org_id, Group.deleted_at.is_(None)),
        Group.id,
        limit,
        cursor,
    )


async def _members_by_username(
    session: AsyncSession, org_id: uuid.UUID, usernames: Iterable[str]
) -> list[User]:
    wanted = sorted(set(usernames))
    if not wanted:
        return []
    users = (
        await session.scalars(
            select(User).where(
                User.org_id == org_id, User.username.in_(wanted), User.deactivated_at.is_(None)
            )
        )
    ).all()
    missing = sorted(set(wanted) - {u.username for u in users})
    if missing:
        raise Invalid(
            "Some members are not users of this organization: " + ", ".join(missing) + ".",
            code="unknown_members",
            details=[{"field": "members", "value": name} for name in missing],
        )
    return list(users)


async def _set_members(session: AsyncSession, group: Group, users: list[User]) -> None:
    await session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
    for user in users:
        session.add(
            GroupMember(
                group_id=group.id, user_id=user.id, org_id=group.org_id, username=user.username
            )
        )
    await session.flush()


async def _ensure_group_name_free(
    session: AsyncSession, org_id: uuid.UUID, name: str, group_id: uuid.UUID | None = None
) -> None:
    existing = await session.scalar(
        select(Group.id).where(
            Group.org_id == org_id, Group.name == name, Group.deleted_at.is_(None)
        )
    )
    if existing is not None and existing != group_id:
        raise Conflict(f"A group named '{name}' already exists.", code="group_name_taken")


async def create_group(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    *,
    name: str,
    extension: str,
    members: list[str],
    outbound_sms_number: str | None,
) -> Group:
    """A new group with its extension and members."""
    await _ensure_group_name_free(session, org_id, name)
    await _ensure_extension_free(session, org_id, extension)
    users = await _members_by_username(session, org_id, members)
    outbound = (
        await _owned_number(session, org_id, outbound_sms_number, "outbound_sms_number")
        if outbound_sms_number is not None
        else None
    )
    group = Group(org_id=org_id, name=name, outbound_sms_number=outbound)
    session.add(group)
    await session.flush()
    await _set_extension(session, org_id, extension, group_id=group.id)
    await _set_members(session, group, users)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="group.create",
        target_type="group",
        target_id=group.id,
        changes={
            "name": name,
            "extension": extension,
            "members": sorted(members),
            "outbound_sms_number": outbound,
        },
    )
    await _commit(session, "The group name or extension was taken meanwhile.", "conflict")
    await session.refresh(group, ["extension_entry", "memberships"])
    return group


async def update_group(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    group_id: uuid.UUID,
    changes: dict[str, Any],
) -> Group:
    """Apply a PATCH to a group: name, extension, the whole member list, outbound number."""
    group = await get_group(session, org_id, group_id)
    record: dict[str, Any] = {}
    if changes.get("name") is not None:
        await _ensure_group_name_free(session, org_id, changes["name"], group.id)
        record["name"] = {"from": group.name, "to": changes["name"]}
        group.name = changes["name"]
    if "extension" in changes:
        if changes["extension"] is None:
            raise Invalid(
                "A group must keep an extension.",
                code="validation_error",
                details=[{"field": "extension"}],
            )
        record["extension"] = {"from": group.extension, "to": changes["extension"]}
        await _set_extension(session, org_id, changes["extension"], group_id=group.id)
    if changes.get("members") is not None:
        users = await _members_by_username(session, org_id, changes["members"])
        record["members"] = {"from": group.member_usernames, "to": sorted(changes["members"])}
        await _set_members(session, group, users)
    if "outbound_sms_number" in changes:
        raw = changes["outbound_sms_number"]
        number = (
            None
            if raw is None
            else await _owned_number(session, org_id, raw, "outbound_sms_number")
        )
        record["outbound_sms_number"] = {"from": group.outbound_sms_number, "to": number}
        group.outbound_sms_number = number
    group.updated_at = utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="group.update",
        target_type="group",
        target_id=group.id,
        changes=record,
    )
    await _commit(session, "The group name or extension was taken meanwhile.", "conflict")
    await session.refresh(group, ["extension_entry", "memberships"])
    return group


async def delete_group(
    session: AsyncSession, org_id: uuid.UUID, actor: str, group_id: uuid.UUID
) -> None:
    """Delete a group: its extension is released; its conversations stay in the history."""
    group = await get_group(session, org_id, group_id)
    group.deleted_at = utcnow()
    group.outbound_sms_number = None
    await session.execute(delete(Extension).where(Extension.group_id == group.id))
    await session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="group.delete",
        target_type="group",
        target_id=group.id,
        changes={"name": group.name},
    )
    await session.commit()


# ---------------------------------------------------------------------------
# Phone numbers


async def get_phone_number(
    session: AsyncSession, org_id: uuid.UUID, number_id: uuid.UUID
) -> PhoneNumber:
    """A phone number of this organization; 404 for anything else."""
    row = await session.scalar(
        select(PhoneNumber).where(PhoneNumber.id == number_id, PhoneNumber.org_id == org_id)
    )
    if row is None:
        raise NotFound("No such phone number in this organization.", code="phone_number_not_found")
    return row


async def list_phone_numbers(
    session: AsyncSession, org_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[PhoneNumber], str | None]:
    """The organization's numbers, oldest first."""
    return await fetch_page(
        session,
        select(PhoneNumber).where(PhoneNumber.org_id == org_id),
        PhoneNumber.id,
        limit,
        cursor,
    )


async def add_phone_number(
    session: AsyncSession, org_id: uuid.UUID, actor: str, *, number: str, sms_extension: str | None
) -> PhoneNumber:
    """Add a number to the organization; a number belongs to one organization only."""
    e164 = parse_number(number, "number")
    if await session.scalar(select(PhoneNumber.id).where(PhoneNumber.number == e164)):
        raise Conflict(
            f"{e164} is already registered with this service.",
            code="phone_number_taken",
            details={"number": e164},
        )
    row = PhoneNumber(org_id=org_id, number=e164, sms_extension=sms_extension)
    session.add(row)
    await session.flush()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="phone_number.create",
        target_type="phone_number",
        target_id=row.id,
        changes={"number": e164, "sms_extension": sms_extension},
    )
    await _commit(session, f"{e164} was registered meanwhile.", "phone_number_taken")
    return row


async def update_phone_number(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    number_id: uuid.UUID,
    sms_extension: str | None,
) -> PhoneNumber:
    """Route a number's inbound SMS to another extension (or to no one)."""
    row = await get_phone_number(session, org_id, number_id)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="phone_number.route",
        target_type="phone_number",
        target_id=row.id,
        changes={
            "number": row.number,
            "sms_extension": {"from": row.sms_extension, "to": sms_extension},
        },
    )
    row.sms_extension = sms_extension
    row.updated_at = utcnow()
    await session.commit()
    return row


async def delete_phone_number(
    session: AsyncSession, org_id: uuid.UUID, actor: str, number_id: uuid.UUID
) -> None:
    """Release a number; refused while a user or group sends from it."""
    row = await get_phone_number(session, org_id, number_id)
    users = (
        await session.scalars(
            select(User.username).where(
                User.org_id == org_id, User.outbound_sms_number == row.number
            )
        )
    ).all()
    groups = (
        await session.scalars(
            select(Group.name).where(
                Group.org_id == org_id, Group.outbound_sms_number == row.number
            )
        )
    ).all()
    if users or groups:
        raise Conflict(
            f"{row.number} is the outbound number of "
            + ", ".join([*users, *groups])
            + "; give them another number first.",
            code="phone_number_in_use",
            details={"users": list(users), "groups": list(groups)},
        )
    await session.delete(row)
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="phone_number.delete",
        target_type="phone_number",
        target_id=row.id,
        changes={"number": row.number},
    )
    await session.commit()


# ---------------------------------------------------------------------------
# Routing check


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
        if u.outbound_sms_number:
            routed = route_of.get(u.outbound_sms_number)
            if routed is None or routed != u.extension:
                where = f"extension {routed}" if routed else "no one"
                problems.append(
                    Problem(
                        "outbound_number_routes_elsewhere",
                        f"{u.username} texts from {u.outbound_sms_number}, but replies to it go to "
                        f"{where}.",
                        "user",
                        u.id,
                        u.username,
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
        if g.outbound_sms_number:
            routed = route_of.get(g.outbound_sms_number)
            if routed is None or routed != g.extension:
                where = f"extension {routed}" if routed else "no one"
                problems.append(
                    Problem(
                        "outbound_number_routes_elsewhere",
                        f"Group {g.name} texts from {g.outbound_sms_number}, but replies to it go to "
                        f"{where}.",
                        "group",
                        g.id,
                        g.name,
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
