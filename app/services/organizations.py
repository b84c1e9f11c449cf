"""Organizations: a new tenant with its first admin."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    ApiToken,
    Organization,
    User,
)
from app.security import hash_token, new_token
from app.services import audit


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
