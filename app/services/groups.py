"""Groups: a shared extension, members, and an optional outbound number."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import commit_or_conflict
from app.errors import Conflict, Invalid, NotFound
from app.models import (
    Extension,
    Group,
    GroupMember,
    User,
    utcnow,
)
from app.services import audit
from app.services.extensions import ensure_extension_free, set_extension
from app.services.outbound_numbers import require_own_number
from app.services.pagination import fetch_page


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
    await ensure_extension_free(session, org_id, extension)
    users = await _members_by_username(session, org_id, members)
    outbound = (
        await require_own_number(session, org_id, outbound_sms_number, "outbound_sms_number")
        if outbound_sms_number is not None
        else None
    )
    group = Group(org_id=org_id, name=name, outbound_sms_number=outbound)
    session.add(group)
    await session.flush()
    await set_extension(session, org_id, extension, group_id=group.id)
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
    await commit_or_conflict(session, "The group name or extension was taken meanwhile.", "conflict")
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
        await set_extension(session, org_id, changes["extension"], group_id=group.id)
    if changes.get("members") is not None:
        users = await _members_by_username(session, org_id, changes["members"])
        record["members"] = {"from": group.member_usernames, "to": sorted(changes["members"])}
        await _set_members(session, group, users)
    if "outbound_sms_number" in changes:
        raw = changes["outbound_sms_number"]
        number = (
            None
            if raw is None
            else await require_own_number(session, org_id, raw, "outbound_sms_number")
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
    await commit_or_conflict(session, "The group name or extension was taken meanwhile.", "conflict")
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
