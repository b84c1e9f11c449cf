"""Who is calling: bearer tokens of users, and the operator's token."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Forbidden, Unauthorized
from app.models import ApiToken, User
from app.security import hash_token, tokens_equal


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user of one organization."""

    user_id: uuid.UUID
    org_id: uuid.UUID
    username: str
    role: str
    # The SHA-256 of the token the caller authenticated with: its rate-limit budget.
    token_hash: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        return f"user:{self.username}"


@dataclass(frozen=True, slots=True)
class CachedSender:
    """What a send needs to know of its sender, as of a directory version (kept per
    process by token hash, checked by the statement that stores a send)."""

    principal: Principal
    sms_enabled: bool
    outbound_sms_number: str | None
    version: int


def token_owner(digest: Any) -> Select[str, uuid.UUID, uuid.UUID, str, str]:
    """The one definition of a valid token: the active user whose unrevoked token has
    this SHA-256 (`digest` a value or a bound parameter). Columns: token_hash, user_id,
    org_id, username, role."""
    return (
        select(
            ApiToken.token_hash,
            User.id.label("user_id"),
            User.org_id,
            User.username,
            User.role,
        )
        .join(User, User.id == ApiToken.user_id)
        .where(
            ApiToken.token_hash == digest,
            ApiToken.revoked_at.is_(None),
            User.deactivated_at.is_(None),
        )
    )


def principal_of(digest: str, row: Sequence[Any] | None) -> Principal:
    """The caller a `token_owner` row names, or Unauthorized when there is none.

    The lookup is by index; the comparison of the stored hash is constant-time so that
    a near-miss and a miss take the same time."""
    if row is None or not tokens_equal(row[0], digest):
        raise Unauthorized("The bearer token is not valid.", code="invalid_token")
    return Principal(
        user_id=row[1], org_id=row[2], username=row[3], role=row[4], token_hash=digest
    )


async def authenticate_user(session: AsyncSession, token: str) -> Principal:
    """The active user a bearer token belongs to, or Unauthorized."""
    digest = hash_token(token)
    row = (await session.execute(token_owner(digest))).first()
    return principal_of(digest, row)


def check_operator(configured: str | None, token: str) -> None:
    """Refuse anything but the configured operator token."""
    if not configured:
        raise Forbidden(
            "Operator access is disabled: set OPERATOR_TOKEN.", code="operator_disabled"
        )
    if not tokens_equal(configured, token):
        raise Unauthorized("The operator token is not valid.", code="invalid_token")


def require_admin(principal: Principal) -> None:
    """Refuse members: only organization admins change configuration."""
    if not principal.is_admin:
        raise Forbidden("Only organization admins may do this.", code="admin_required")
