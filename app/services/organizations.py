"""Organizations: a new tenant with its first admin; its settings (the HELP reply, its
time zone, its quiet hours)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound, invalid_field
from app.models import (
    ApiToken,
    Organization,
    User,
)
from app.security import hash_token, new_token
from app.services import audit
from app.services.schedules import QuietHours, parse_quiet_hours, parse_timezone


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


@dataclass(frozen=True)
class OrganizationSettings:
    id: uuid.UUID
    name: str
    # The HELP reply as it is sent: the organization's own, else the service's default.
    help_text: str
    help_text_is_default: bool
    timezone: str
    quiet_hours: QuietHours | None

    def as_dict(self) -> dict[str, Any]:
        """The settings as the API shows them."""
        return {
            "id": self.id,
            "name": self.name,
            "help_text": self.help_text,
            "help_text_is_default": self.help_text_is_default,
            "timezone": self.timezone,
            "quiet_hours": self.quiet_hours.as_json() if self.quiet_hours else None,
        }


async def _organization(session: AsyncSession, org_id: uuid.UUID) -> Organization:
    org = await session.get(Organization, org_id)
    if org is None:
        raise NotFound("No such organization.", code="organization_not_found")
    return org


def _settings(org: Organization, default_help_text: str) -> OrganizationSettings:
    return OrganizationSettings(
        id=org.id,
        name=org.name,
        help_text=org.help_text or default_help_text,
        help_text_is_default=org.help_text is None,
        timezone=org.timezone,
        quiet_hours=parse_quiet_hours(org.quiet_hours),
    )


async def get_organization(
    session: AsyncSession, org_id: uuid.UUID, default_help_text: str
) -> OrganizationSettings:
    """The organization's settings."""
    return _settings(await _organization(session, org_id), default_help_text)


async def update_organization(
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    changes: dict[str, Any],
    default_help_text: str,
) -> OrganizationSettings:
    """Apply a PATCH: only the fields given change; `help_text` null goes back to the
    default HELP reply, `quiet_hours` null removes them."""
    org = await _organization(session, org_id)
    record: dict[str, Any] = {}
    for field in ("name", "timezone"):
        if field in changes and changes[field] is None:
            raise invalid_field(field, f"{field} cannot be null.")
    if "name" in changes:
        record["name"] = {"from": org.name, "to": changes["name"]}
        org.name = changes["name"]
    if "help_text" in changes:
        text = changes["help_text"]
        if text is not None and not text.strip():
            raise invalid_field(
                "help_text", "the HELP reply cannot be blank; null restores the default."
            )
        record["help_text"] = {"from": org.help_text, "to": text}
        org.help_text = text
    if "timezone" in changes:
        parse_timezone(changes["timezone"], "timezone")
        record["timezone"] = {"from": org.timezone, "to": changes["timezone"]}
        org.timezone = changes["timezone"]
    if "quiet_hours" in changes:
        quiet = parse_quiet_hours(changes["quiet_hours"], "quiet_hours")
        stored = quiet.as_json() if quiet else None
        record["quiet_hours"] = {"from": org.quiet_hours, "to": stored}
        org.quiet_hours = stored
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="organization.update",
        target_type="organization",
        target_id=org.id,
        changes=record,
    )
    await session.commit()
    return _settings(org, default_help_text)
