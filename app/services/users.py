"""Users of an organization and their tokens; the last active admin stays."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import commit_or_conflict
from app.errors import Conflict, Invalid, NotFound
from app.models import (
    ApiToken,
    Extension,
    GroupMember,
    Organization,
    User,
    utcnow,
)
from app.security import hash_token, new_token
from app.services import audit
from app.services.extensions import ensure_extension_free, set_extension
from app.services.outbound_numbers import require_own_number
from app.services.pagination import fetch_page


async def get_user(session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> User:
    """An active user of this organization; 404 for anything else, another org's included."""
    user = await session.scalar(
        select(User).where(User.id == user_id, User.org_id == org_id, User.deactivated_at.is_(None))
    )
    if user is None:
        raise NotFound("No such user in this organization.", code="user_not_found")
    return user


async def list_users(
    session: AsyncSession,
    org_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    *,
    include_deactivated: bool = False,
) -> tuple[list[User], str | None]:
    """The organization's active users (and deactivated ones when asked), oldest first."""
    query = select(User).where(User.org_id == org_id)
    if not include_deactivated:
        query = query.where(User.deactivated_at.is_(None))
    return await fetch_page(session, query, User.id, limit, cursor)


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
        await ensure_extension_free(session, org_id, extension)
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
        await set_extension(session, org_id, extension, user_id=user.id)
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
    await commit_or_conflict(session, "The username or extension was taken meanwhile.", "conflict")
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
        await set_extension(session, org_id, changes["extension"], user_id=user.id)
    if "outbound_sms_number" in changes:
        raw = changes["outbound_sms_number"]
        changes["outbound_sms_number"] = (
            None
            if raw is None
            else await require_own_number(session, org_id, raw, "outbound_sms_number")
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
    await commit_or_conflict(session, "The extension was taken meanwhile.", "extension_taken")
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


async def reactivate_user(
    session: AsyncSession, org_id: uuid.UUID, actor: str, user_id: uuid.UUID
) -> User:
    """Make a deactivated user active again, with their username, role and history. What
    deactivation took stays taken: old tokens stay revoked (an admin gives a new one), and
    the extension, group seats and outbound number are given again by an admin (someone
    else may hold them now). Only adds an active user, so the last-admin rule holds."""
    user = await session.scalar(select(User).where(User.id == user_id, User.org_id == org_id))
    if user is None:
        raise NotFound("No such user in this organization.", code="user_not_found")
    if user.deactivated_at is None:
        raise Conflict(f"{user.username} is active.", code="user_active")
    user.deactivated_at = None
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="user.reactivate",
        target_type="user",
        target_id=user.id,
        changes={"username": user.username},
    )
    await session.commit()
    await session.refresh(user, ["extension_entry"])
    return user


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
